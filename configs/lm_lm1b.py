"""Byte-level language model on tfds `lm1b` (One Billion Word; needs a prepared data_dir).

    tfds build lm1b --data_dir DIR --file_format array_record   # once, online (~4 GB of text)
    mbx train --config configs/lm_lm1b.py data.data_dir=DIR

Sentences are joined by '\\n' in stored order and read as UTF-8 bytes (vocabulary 256).
lm1b has no validation split: its test split's first half is used for validation, the
second half for test (mbx.data.text.tfds_texts). Windows live in memory (12 bytes per
token), so `max_characters` keeps the first 200 M characters of each split (~2.4 GB);
raise it on a machine with the memory. A 6-layer, 512-wide decoder (rotary positions, tied
embeddings, context 256), AdamW with 1,000 warmup steps and cosine decay, 256 windows
(65,536 tokens) per step for 2e9 tokens. Sized for one GPU; not yet measured.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='lm1b', options={'seq_len': 256, 'tokenizer': 'byte',
                                                'max_characters': 200_000_000},
                          eval_split='validation'),
      model=mbx.ModelConfig(name='transformer',
                            options={'num_layers': 6, 'width': 512, 'num_heads': 8,
                                     'max_len': 256, 'dropout': 0.0, 'positions': 'rotary',
                                     'tie_embeddings': True},
                            dtype='bfloat16'),
      task=mbx.TaskConfig(name='classification'),
      optim=mbx.OptimConfig(name='adamw', learning_rate=1e-3, b2=0.95, weight_decay=0.1,
                            clip_grad_norm=1.0, schedule='cosine', warmup='1000 steps',
                            end_lr_factor=0.1),
      train=mbx.TrainConfig(batch_size=256, duration='2e9 tokens', log_every='100 steps',
                            eval_every='2e8 tokens', eval_batch_size=512,
                            checkpoint_every='2000 steps'),
      name='lm_lm1b',
  )
