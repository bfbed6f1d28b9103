"""Critical batch size of the noisy quadratic model, measured by a sweep and known exactly.

    mbx sweep --config configs/cbs_nqm.py                    # -> sweeps/cbs_nqm/
    mbx analyze cbs sweeps/cbs_nqm                           # tables + figures

The NQM of configs/nqm_sgd.py (data.name='nqm' with its defaults, the `linear` model from
θ = 0, the regression task) under SGD and heavy-ball momentum 0.9: 13 batch sizes
(1 ... 4096) x 6 learning rates x 2 seeds x 2 optimizers = 312 trials, each stopped when the
validation loss reaches 0.30 (the noise floor σ² = 0.25 plus 0.05; it starts at 1.216).
Constant LR, 6 points a factor of 2 apart, moving linearly with B up to B = 32 (SGD) or 64
(momentum), where the exact best LR stops growing; SGD's grid is placed so that above B = 32
it holds 0.83, the exact best LR there, just below the stability limit 1/h_1 = 1.

Unlike any other workload, the answer is known: `mbx.measure.nqm.exact_curve` gives the
expected loss's steps-to-target S(B) with no sampling (docs/science.md §19). For these 13
batch sizes, on a fine LR grid (12 a decade), mbx's McCandlish fit of the exact curve gives
B_crit = 70 for SGD (S_min 26.7, E_min 1871), 108 for momentum and 212 for SGD
preconditioned by P = H^-1/2 (not an mbx optimizer, so not swept); on this sweep's own LR
grid, 77 for SGD and 108 for momentum. Expected: the sweep's S_min close to the exact one
and its B_crit 10-30% below it, because a single run's loss fluctuates around the expected
loss and at small B crosses the target early (tests/test_nqm.py measures both).

Budgets: steps(B) = 2.5 (S_MIN + E_MIN / B) from the exact SGD curve: 4745 steps at B = 1,
68 at B = 4096. Runs that stop at the target stay within the first epoch of the 65,536
training examples up to B = 2048 (fresh examples each step, as in the theory); at B = 4096
the second epoch starts at step 16 of the ~28 to the target.
"""
import math

import mbx
from mbx.sweep import SearchSpace, SweepConfig

S_MIN, E_MIN = 26.7, 1871
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TARGET = 0.30


def budget(batch_size: int) -> str:
  return f'{math.ceil(2.5 * (S_MIN + E_MIN / batch_size))} steps'


def get_sweep() -> SweepConfig:
  base = mbx.Config(
      data=mbx.DataConfig(name='nqm'),
      model=mbx.ModelConfig(name='linear'),
      task=mbx.TaskConfig(name='regression'),
      optim=mbx.OptimConfig(name='sgd'),
      train=mbx.TrainConfig(
          log_every='1000 examples',     # divergence checks
          eval_every='1000 epochs',      # i.e. never: geometric evaluations only (+ final)
          checkpoint_every=None,
          keep_checkpoints=1,
          max_loss=100.0),               # the loss starts at 1.2: a blow-up is divergence
      name='cbs_nqm')
  lr_points = dict(num_learning_rates=6, sampling='grid', lr_scaling_power=1.0)
  search = (
      SearchSpace('sgd', learning_rate=(0.83 / 32 / 4, 0.83 / 32 * 8),
                  max_scaled_batch_size=32, **lr_points),
      SearchSpace('momentum', learning_rate=(0.0022 / 2**2.5, 0.0022 * 2**2.5),
                  max_scaled_batch_size=64, momentum=0.9, **lr_points),
  )
  return SweepConfig(
      base=base, search=search, batch_sizes=BATCH_SIZES, seeds=(0, 1),
      budget=budget(1), budgets={b: budget(b) for b in BATCH_SIZES},
      target_metric='eval_loss', target_value=TARGET, stop_at_target=True,
      eval_growth=1.05, name='cbs_nqm')
