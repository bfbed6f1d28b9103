"""MNIST-1D CNN with plain SGD for 30 epochs: the small-batch study's config (Masters & Luschi
2018, arXiv 1804.07612).

    mbx study small-batch --config configs/small_batch_mnist1d.py   # the whole study
    mbx train --config configs/small_batch_mnist1d.py               # one run, B = 32

Plain SGD (no momentum, as in their main experiments) at LR 0.1 with a cosine decay to 0 over
30 epochs; validation every 5 epochs, test once at the end; a training loss above 10 (it starts
at 2.3) counts as divergence. The study derives its grid from this config: 10 learning rates
0.1 × (0.01 … 30) = 1e-3 … 3, the same at every B = 2, 4, …, 2048, 4000 (the whole training
set), 30 epochs each, 2 seeds, without and with BatchNorm (the CNN's `norm` option); see
experiments/small_batch.py. Expected for the single run: test accuracy ~88% after ~12 s of
training on a 2-core CPU.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='sgd', learning_rate=0.1, schedule='cosine'),
      train=mbx.TrainConfig(batch_size=32, duration='30 epochs', log_every='1 epochs',
                            eval_every='5 epochs', checkpoint_every=None, keep_checkpoints=1,
                            max_loss=10.0),
      name='small_batch_mnist1d')
