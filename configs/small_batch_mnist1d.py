"""Small-batch study of the MNIST-1D CNN (Masters & Luschi 2018, arXiv 1804.07612).

    python experiments/small_batch.py              # this grid without and with BatchNorm
    mbx sweep --config configs/small_batch_mnist1d.py   # the no-BN half alone

Plain SGD (no momentum, as in their main experiments), B = 2, 4, ..., 2048, 4000 (the
whole training set), 10 learning rates a factor ~2.4 apart from 1e-3 to 3 at every batch
size (the same raw grid everywhere, so the stable range can move freely with B), 2 seeds.
Every trial trains for the same 30 epochs (equal computation, their protocol) with a
cosine decay of the LR to 0, so its final accuracy is a converged value, and is evaluated
on the validation split every 5 epochs and on test once at the end. A training loss above
10 (it starts at 2.3) counts as divergence.
"""
import mbx
from mbx.sweep import SearchSpace, SweepConfig

BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4000)
EPOCHS = 30


def get_sweep() -> SweepConfig:
  base = mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='sgd', schedule='cosine'),
      train=mbx.TrainConfig(log_every='1 epochs', eval_every='5 epochs',
                            checkpoint_every=None, keep_checkpoints=1, max_loss=10.0),
      name='small_batch_mnist1d')
  search = (SearchSpace('sgd', learning_rate=(1e-3, 3.0), num_learning_rates=10,
                        sampling='grid'),)
  return SweepConfig(
      base=base, search=search, batch_sizes=BATCH_SIZES, seeds=(0, 1),
      budget=f'{EPOCHS} epochs', target_metric='eval_accuracy', target_value=0.9,
      stop_at_target=False, eval_growth=None, pack=True, pack_max_batch_size=64,
      name='small_batch_mnist1d')
