"""MNIST-1D CNN baseline (Greydanus & Kobak 2020, arXiv 2011.14439: CNN 94% test accuracy).

    mbx train --config configs/mnist1d_cnn.py

The paper's reference training (batch 100, lr 1e-2, 8000 steps, constant LR) with
AdamW's decoupled weight decay 0.05 (not biases): plain Adam, as in the paper, gives
~93% here (its test loss climbs from step ~500 on) — both are in results/baselines.md.
Expected: ~94% test accuracy (mean of 3 seeds), ~10 s of training on a 2-core CPU.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='adamw', learning_rate=1e-2, weight_decay=0.05),
      train=mbx.TrainConfig(batch_size=100, duration='8000 steps', log_every='200 steps',
                            eval_every='500 steps', checkpoint_every='2000 steps'),
  )
