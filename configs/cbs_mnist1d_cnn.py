"""Critical batch size of the MNIST-1D CNN: momentum SGD and Adam, B = 1 ... 4000 (full batch).

    mbx sweep --config configs/cbs_mnist1d_cnn.py            # -> sweeps/cbs_mnist1d_cnn/
    mbx analyze cbs sweeps/cbs_mnist1d_cnn                   # tables + figures
    python experiments/critical_batch_size.py                # the whole study (mbx study cbs)

Shallue et al. 2019-style study (arXiv 1811.03600): 13 batch sizes (powers of two
to 2048, then 4000 = the whole training set) x 6 learning rates x 2 seeds x 2
optimizers = 312 trials, each stopped at the target. Constant LR, no warmup or
decay, so the search is over the learning rate alone (momentum fixed at 0.9).

Target: validation accuracy >= 0.85 (MNIST-1D's validation split; each trial's test
accuracy is evaluated once, at its end). In a pilot every batch size reached it, full
batch included (full-batch Adam peaked near 0.89 within 400 steps, so 0.90 would leave
the top of the B range without a result; the CNN ends at ~0.94 with small batches).

Learning rates: 6 points a factor of 2 apart, centred where the pilot found the
best LR at B = 1 (momentum 1.5e-3, Adam 3e-3); the range follows the linear rule
(momentum) or the square-root rule (Adam) up to B = 128 / 256 and then stays,
as the best LR stopped growing there in the pilot.

Budgets: steps(B) = 2.5 (S_MIN + E_MIN / B), from the pilot's momentum run
(S_MIN ~ 70 steps, E_MIN ~ 20k examples): 50k steps at B = 1, 188 at B = 4000.

Expected: S(B) falls with slope -1 to B ~ 64, bends and flattens near 50-100 steps
past B ~ 1000; B_crit of a few hundred for both optimizers.
"""
import math

import mbx
from mbx.sweep import SearchSpace, SweepConfig

S_MIN, E_MIN = 70, 20_000
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4000)


def budget(batch_size: int) -> str:
  return f'{math.ceil(2.5 * (S_MIN + E_MIN / batch_size))} steps'


def get_sweep() -> SweepConfig:
  base = mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='momentum', momentum=0.9),
      train=mbx.TrainConfig(
          log_every='1000 examples',     # divergence checks; B_simple rows
          eval_every='1000 epochs',      # i.e. never: geometric evaluations only (+ final)
          checkpoint_every=None,         # trials last seconds: only the final step is saved
          keep_checkpoints=1,
          max_loss=10.0),                # cross-entropy starts at 2.3: a blow-up is divergence
      name='cbs_mnist1d_cnn')
  lr_points = dict(num_learning_rates=6, sampling='grid')
  search = (
      SearchSpace('momentum', learning_rate=(1.5e-3 / 2**2.5, 1.5e-3 * 2**2.5),
                  lr_scaling_power=1.0, max_scaled_batch_size=128, **lr_points),
      SearchSpace('adam', learning_rate=(3e-3 / 2**2.5, 3e-3 * 2**2.5),
                  lr_scaling_power=0.5, max_scaled_batch_size=256, **lr_points),
  )
  return SweepConfig(
      base=base, search=search, batch_sizes=BATCH_SIZES, seeds=(0, 1),
      budget=budget(1), budgets={b: budget(b) for b in BATCH_SIZES},
      target_metric='eval_accuracy', target_value=0.85, stop_at_target=True,
      eval_growth=1.05, noise_scale=True, name='cbs_mnist1d_cnn')
