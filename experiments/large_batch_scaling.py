"""How far do LR scaling rules, warmup and layer-wise optimizers carry a fixed epoch budget
towards full batch, on MNIST-1D?

Goyal et al. 2017 (arXiv 1706.02677) Fig. 1 / Table 2 style: the CNN of
configs/mnist1d_cnn_momentum.py, 60 epochs at every batch size B = 125 … 4000 (full batch),
step decay ×0.1 at epochs 20, 40 and 53.3 (Goyal's 30/60/80 of 90). Each optimizer's base LR
is the best of a grid at B0 = 125 on validation, then scaled to B by each method's rule:
linear (Goyal), linear + 5 epochs of warmup from the base LR (Goyal), the same from a quarter
of the tuned LR, sqrt + warmup (Hoffer et al. 2017, arXiv 1705.08741), LARS linear + warmup
(You et al. 2017, arXiv 1708.03888), LAMB and Adam sqrt + warmup (You et al. 2020, arXiv
1904.00962). No weight decay; one seed per point. The protocol is mbx/study/scaling_rules.py;
on your own config:

    mbx study scaling-rules --config my_config.py --out studies/scaling

    python experiments/large_batch_scaling.py           # ~21 min on a loaded 2-core CPU
    python experiments/large_batch_scaling.py --quick   # 10 epochs, B in {125, 1000, 4000}

Outputs: results/large_batch_scaling/ (README.md; accuracy, peak_lr, holds, base_lr,
parameter_norms and runs as .csv and .md; accuracy_vs_batch_size.png; summary.json); the runs
under its trials/, reused on re-runs. --quick writes results/large_batch_scaling_quick/.
"""
import argparse

import mbx
import mbx.study

CONFIG = 'configs/mnist1d_cnn_momentum.py'
# Base-LR grids at B0, around values found by hand (LARS: trust coefficient 0.001).
LEARNING_RATES = {'momentum': (0.05, 0.1, 0.2, 0.3), 'lars': (1.0, 3.0, 10.0),
                  'lamb': (3e-3, 1e-2, 2e-2, 4e-2), 'adam': (3e-3, 1e-2, 2e-2, 4e-2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--workers', type=int, default=1)
  args = parser.parse_args()
  grids = {k: v[1:2] for k, v in LEARNING_RATES.items()} if args.quick else LEARNING_RATES
  options = mbx.study.options_of('scaling-rules', quick=args.quick, base_batch=125,
                                 epochs=10 if args.quick else 60, warmup_epochs=5,
                                 learning_rates=grids, seeds=(0,))
  out = 'results/large_batch_scaling' + ('_quick' if args.quick else '')
  summary = mbx.study.run('scaling-rules', mbx.load_config(CONFIG), out, options=options,
                          quick=args.quick, workers=args.workers,
                          command='python experiments/large_batch_scaling.py'
                          + ' --quick' * args.quick)
  print('\n'.join(summary['findings']))


if __name__ == '__main__':
  main()
