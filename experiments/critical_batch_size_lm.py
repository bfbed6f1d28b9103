"""Where is the critical batch size of a small character-level language model?

Runs `mbx study cbs` (mbx/study/cbs.py) on the sweep configs/cbs_lm_kjv.py: a 2-layer
Transformer (~110 k parameters) on the King James Bible in windows of 32 characters, AdamW at
a constant LR, B = 4 ... 256 windows x 4 learning rates x 2 seeds (56 trials), each stopped
when the validation loss reaches 1.75 nats per character. It reports McCandlish et al. 2018's
fit with its fragility, Zhang et al. 2024's CBS, the run-averaged B_simple, and Merrill et al.
2025's local CBS at 1/8, 1/4, 1/2 and all of the best B = 16 run's steps to the target (k·B
for k up to 64, each branch on the data the source saw in its first quarter), to see whether
the CBS grows as the loss falls.

    python experiments/critical_batch_size_lm.py            # ~25 min on an idle 2-core CPU
    python experiments/critical_batch_size_lm.py --quick    # 5 batch sizes, 3 LRs, 1 seed

Outputs: results/critical_batch_size_lm/ (README.md, tables as CSV and Markdown, figures,
summary.json); run directories under studies/critical_batch_size_lm/ (reused when re-run).
"""
import argparse
import pathlib

import mbx.study
from mbx.sweep import load_sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--workers', type=int, default=2)
  args = parser.parse_args()
  name = 'critical_batch_size_lm_quick' if args.quick else 'critical_batch_size_lm'
  sweep = load_sweep(REPO / 'configs' / 'cbs_lm_kjv.py')
  options = mbx.study.options_of(
      'cbs', quick=args.quick, grid=sweep, local_cbs_batch_size=16,
      local_cbs_fractions=(1 / 8, 1 / 4, 1 / 2, 1), local_cbs_max_factor=64,
      local_cbs_window='first quarter', local_cbs_tolerance=0.02, local_cbs_seeds=(0,))
  summary = mbx.study.run('cbs', sweep.base, REPO / 'results' / name, options=options,
                          runs=REPO / 'studies' / name, quick=args.quick, workers=args.workers)
  print('\n'.join(summary['findings']))


if __name__ == '__main__':
  main()
