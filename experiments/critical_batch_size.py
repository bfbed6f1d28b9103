"""What is the critical batch size of the MNIST-1D CNN, and does the noise scale predict it?

Runs `mbx study cbs` (mbx/study/cbs.py, the protocol) on the sweep configs/cbs_mnist1d_cnn.py:
momentum SGD and Adam, B = 1, 2, 4, ..., 2048, 4000 (full batch), 6 learning rates per B,
2 seeds (312 trials), each stopped at validation accuracy 0.85, evaluated at steps
ceil(1.05^i). It reproduces Shallue et al. 2019's steps-to-result vs batch size (Fig. 1) and
McCandlish et al. 2018's Pareto fit (Fig. 5), beside the run-averaged B_simple of the same
runs, Zhang et al. 2024's 20% CBS, a second target (0.80) from the same evaluations, and
Merrill et al. 2025's local CBS branched at the target from the best B = 16 trial.
The same command on your own config derives the grid from it:

    mbx study cbs --config my_config.py --workers 2
    python experiments/critical_batch_size.py            # ~10 min on an idle 2-core CPU
    python experiments/critical_batch_size.py --quick    # 5 batch sizes, 3 LRs, 1 seed

Outputs: results/critical_batch_size/ (README.md, trials, per_batch_size, cbs_summary,
fit_sensitivity, local_cbs as CSV and Markdown, steps_vs_batch_size.png, pareto.png,
best_learning_rate.png, lr_heatmap.png, local_cbs_<optimizer>.png, summary.json); run
directories under studies/critical_batch_size/ (re-running reuses finished trials).
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
  name = 'critical_batch_size_quick' if args.quick else 'critical_batch_size'
  sweep = load_sweep(REPO / 'configs' / 'cbs_mnist1d_cnn.py')
  options = mbx.study.options_of(
      'cbs', quick=args.quick, grid=sweep, second_target=0.80, local_cbs_batch_size=16,
      local_cbs_window='2 epochs', local_cbs_tolerance=0.02, local_cbs_metric='eval_loss')
  summary = mbx.study.run('cbs', sweep.base, REPO / 'results' / name, options=options,
                          runs=REPO / 'studies' / name, quick=args.quick, workers=args.workers)
  print('\n'.join(summary['findings']))


if __name__ == '__main__':
  main()
