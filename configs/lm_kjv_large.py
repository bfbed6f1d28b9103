"""A larger character-level model on the King James Bible, sized for one GPU.

    mbx train --config configs/lm_kjv_large.py

nanoGPT's `shakespeare_char` shape (6 layers x 384 wide, 6 heads, context 256, dropout 0.2,
~10.7 M parameters) in bfloat16 compute, AdamW lr 1e-3 (b2 0.99, weight decay 0.1), 100
warmup steps and cosine decay to 10%, 64 windows (16,384 characters) per step for 5,000
steps: 8.2e7 characters, ~22 epochs of the 3.7 M-character train block, so the dropout
matters. Expected result: not yet measured (no GPU was available when it was written;
nanoGPT reaches ~1.47 nats/char on Tiny Shakespeare with this shape, a smaller corpus).
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='kjv', options={'seq_len': 256, 'tokenizer': 'char'},
                          eval_split='validation'),
      model=mbx.ModelConfig(name='transformer',
                            options={'num_layers': 6, 'width': 384, 'num_heads': 6,
                                     'max_len': 256, 'dropout': 0.2, 'positions': 'learned'},
                            dtype='bfloat16'),
      task=mbx.TaskConfig(name='classification'),
      optim=mbx.OptimConfig(name='adamw', learning_rate=1e-3, b2=0.99, weight_decay=0.1,
                            clip_grad_norm=1.0, schedule='cosine', warmup='100 steps',
                            end_lr_factor=0.1),
      train=mbx.TrainConfig(batch_size=64, duration='5000 steps', log_every='100 steps',
                            eval_every='1000 steps', eval_batch_size=512,
                            checkpoint_every='1000 steps'),
      name='lm_kjv_large',
  )
