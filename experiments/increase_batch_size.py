"""Can we increase the batch size instead of decaying the learning rate, on MNIST-1D?

Smith, Kindermans, Ying & Le 2018 (arXiv 1711.00489), Figs. 1-2: decaying LR vs increasing
batch vs the hybrid at equal epochs, on the CNN of configs/mnist1d_cnn_momentum.py (momentum SGD,
m = 0.9, LR 0.1, batch 100, the LR ÷ 5 at epochs 60, 120 and 160 of 200, which the study reads
as k = 5 at 30%, 60% and 80% of each budget). Increasing batch: 100 → 500 → 2500, then the
LR ÷ 5 (12500 > the 4000 training examples); hybrid: 100 → 500, then the LR ÷ 5. Two budgets:
Smith's 200 epochs, and 30, where the training loss still falls at every milestone; 5 seeds.
The protocol is the library's increase-batch study (mbx/study/increase_batch.py), the same as

    mbx study increase-batch --config configs/mnist1d_cnn_momentum.py 'study.budgets=200,30'

    python experiments/increase_batch_size.py           # ~11 min on a busy 2-core CPU
    python experiments/increase_batch_size.py --quick   # 20 and 3 epochs, 2 seeds (~4 min)
    -> results/increase_batch_size/ (README.md, schedules.md/.csv, paired.md/.csv,
       phases.md/.csv, runs.csv, schedules_<E>ep.png, accuracy_vs_epochs_<E>ep.png,
       accuracy_vs_updates_<E>ep.png, summary.json; runs under trials/, reused when re-run)
"""
from __future__ import annotations

import argparse

import mbx
import mbx.study

CONFIG = 'configs/mnist1d_cnn_momentum.py'
BUDGETS = (200, 30)  # epochs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='each budget x 0.1, 2 seeds')
  parser.add_argument('--workers', type=int, default=1)
  args = parser.parse_args()
  out = 'results/increase_batch_size' + ('_quick' if args.quick else '')
  options = mbx.study.options_of('increase-batch', quick=args.quick, budgets=BUDGETS)
  command = 'python experiments/increase_batch_size.py' + (' --quick' if args.quick else '')
  summary = mbx.study.run('increase-batch', mbx.load_config(CONFIG), out, options=options,
                          quick=args.quick, workers=args.workers, command=command)
  print('\n'.join(f'- {f}' for f in summary['findings']))


if __name__ == '__main__':
  main()
