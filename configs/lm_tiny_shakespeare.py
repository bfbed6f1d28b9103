"""Character-level language model on tfds `tiny_shakespeare` (needs a prepared data_dir).

    tfds build tiny_shakespeare --data_dir DIR --file_format array_record   # once, online
    mbx train --config configs/lm_tiny_shakespeare.py data.data_dir=DIR

The corpus (~1.1 M characters, 65 distinct) comes in tfds's own train / validation / test
splits, one example each; tokenization is per character, the vocabulary being the sorted
character set of all three splits (mbx.data.text). The model and recipe are those of
configs/lm_kjv_small.py (4 layers x 128 wide, 4 heads, context 64; AdamW; 600 steps of 32
windows), so the two corpora can be compared at equal cost. For reference, nanoGPT's CPU
recipe on the same text (4 x 4 x 128, context 64, batch 12, 2,000 iterations) reports a
validation loss near 1.88 nats per character (2.7 bits); this config is not yet measured.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='tiny_shakespeare', options={'seq_len': 64, 'tokenizer': 'char'},
                          eval_split='validation'),
      model=mbx.ModelConfig(name='transformer',
                            options={'num_layers': 4, 'width': 128, 'num_heads': 4,
                                     'max_len': 64, 'dropout': 0.0, 'positions': 'learned'}),
      task=mbx.TaskConfig(name='classification'),
      optim=mbx.OptimConfig(name='adamw', learning_rate=3e-3, b2=0.99, weight_decay=0.1,
                            clip_grad_norm=1.0, schedule='cosine', warmup='50 steps',
                            end_lr_factor=0.1),
      train=mbx.TrainConfig(batch_size=32, duration='600 steps', log_every='50 steps',
                            eval_every='300 steps', eval_batch_size=256,
                            checkpoint_every='300 steps'),
      name='lm_tiny_shakespeare',
  )
