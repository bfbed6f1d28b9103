"""Does the optimizer move the critical batch size? The MNIST-1D CNN with six optimizers.

    python experiments/optimizer_cbs.py                      # the whole study (mbx study cbs)
    mbx sweep --config configs/optimizer_cbs_mnist1d_cnn.py  # the sweep alone

The protocol of configs/cbs_mnist1d_cnn.py (the same base config, target validation accuracy
0.85, constant LR, each trial stopped at the target, evaluations at ceil(1.05^i) steps, 2
seeds, the same budgets), on 9 batch sizes B = 8 ... 2048 that bracket its B_crit of ~190,
for plain SGD, heavy-ball momentum, Nesterov momentum, Adam, Lion, Muon and schedule-free AdamW.
Momentum and Adam keep that study's LR grids, so their trials are the same trials (the same
ids); each new optimizer gets 6 learning rates a factor of 2 apart, centred on a guess
that the study's edge check then tests (an edge is flagged, and the grid grows by adding
points beyond it without changing the others):
  * sgd: momentum's effective LR lr/(1 − m) (1.5e-2 at B = 1), linear rule to B = 128;
  * nesterov: momentum's grid (momentum 0.9);
  * lion: Adam's tenth (3e-4 at B = 1; sign updates are larger), square-root rule to B = 256;
  * muon: 2e-3 at B = 1, square-root rule to B = 256 (0.03 at B = 256; Muon's usual 0.02),
    grown by one point above after the first run put the best LR at the top edge at B >= 1024;
  * schedule_free_adamw: twice Adam's (6e-3 at B = 1; it runs at higher LRs), square-root
    rule to B = 256; evaluated at its averaged iterate.
"""
import dataclasses
import pathlib

from mbx.sweep import SearchSpace, load_sweep

BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SPREAD = 2**2.5  # 6 points a factor of 2 apart: centre / SPREAD ... centre * SPREAD


def _space(optimizer: str, centre: float, power: float, top: int, above: int = 0,
           **extra) -> SearchSpace:
  """6 LRs a factor of 2 apart around `centre`, and `above` more beyond the top (a grown
  grid: the first 6 points stay where they were)."""
  return SearchSpace(optimizer, learning_rate=(centre / SPREAD, centre * SPREAD * 2**above),
                     num_learning_rates=6 + above, sampling='grid', lr_scaling_power=power,
                     max_scaled_batch_size=top, **extra)


def get_sweep():
  sweep = load_sweep(pathlib.Path(__file__).with_name('cbs_mnist1d_cnn.py'))
  search = (
      _space('sgd', 1.5e-2, 1.0, 128),
      _space('momentum', 1.5e-3, 1.0, 128),
      _space('nesterov', 1.5e-3, 1.0, 128),
      _space('adam', 3e-3, 0.5, 256),
      _space('lion', 3e-4, 0.5, 256),
      _space('muon', 2e-3, 0.5, 256, above=1),  # best LR at the top edge at B >= 1024
      _space('schedule_free_adamw', 6e-3, 0.5, 256),
  )
  return dataclasses.replace(sweep, search=search, batch_sizes=BATCH_SIZES,
                             budgets={b: sweep.budgets[b] for b in BATCH_SIZES})
