"""MNIST-1D MLP baseline (Greydanus & Kobak 2020, arXiv 2011.14439: MLP 68% test accuracy).

    mbx train --config configs/mnist1d_mlp.py

The paper's MLPBase: two hidden layers of 100 ReLU units, the second residual; Adam, peak
lr 1e-2, batch 100, 8000 steps (200 epochs) as in the paper's reference training, with the
LR divided by 10 for the last 50 epochs so the run ends converged (results/baselines.md has
the paper's constant LR beside it). ~5 s of training on a 2-core CPU.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='mlp', options={'hidden': (100, 100), 'residual': True}),
      optim=mbx.OptimConfig(name='adam', learning_rate=1e-2, schedule='step',
                            milestones=(150,)),
      train=mbx.TrainConfig(batch_size=100, duration='8000 steps', log_every='200 steps',
                            eval_every='500 steps', checkpoint_every='2000 steps'),
  )
