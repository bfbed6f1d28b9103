"""Are the best results at small batch sizes, with and without BatchNorm? (Masters & Luschi 2018)

Masters & Luschi ("Revisiting Small Batch Training for Deep Neural Networks", arXiv 1804.07612)
tune the learning rate at every batch size and find the best test performance at B = 2–32 and
the range of learning rates that give good results narrowing as B grows, with and without
BatchNorm (their plots of test performance against the base LR η/B per batch size). This runs
their protocol, the small-batch study (mbx/study/small_batch.py), on the MNIST-1D CNN of
configs/small_batch_mnist1d.py: plain SGD, B = 2, 4, …, 2048 and 4000 (the whole training set),
10 learning rates from 1e-3 to 3 at every B, the same 30 epochs each, 2 seeds, without and with
BatchNorm: 480 runs. The same study on your own config: `mbx study small-batch --config
my_config.py`.

    python experiments/small_batch.py            # ~9 min on an idle 2-core CPU, 2 workers
    python experiments/small_batch.py --quick    # B = 2, 32, 512, 4000; 5 LRs; 1 seed (40 runs)

Runtime: this grid, packed the same way (all LRs and seeds of a B ≤ 64 as one program), took
8.7 min on an idle 2-core CPU; --quick took 8 min on a 2-core CPU shared with a dozen other jobs.

Outputs: results/small_batch/ (--quick: results/small_batch_quick/): README.md, summary.json,
batch_sizes, best_batch_size, variants, settings and trials (.csv and .md),
accuracy_vs_batch_size.png, good_learning_rates.png; the runs in its trials/ (not committed).
Re-running trains only the runs that are not finished.
"""
import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mbx  # pylint: disable=wrong-import-position
import mbx.study  # pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='smoke-sized: 4 B, 5 LRs, 1 seed')
  parser.add_argument('--workers', type=int, default=2, help='local worker processes')
  args = parser.parse_args()
  config = mbx.load_config(REPO / 'configs' / 'small_batch_mnist1d.py')
  out = REPO / 'results' / ('small_batch_quick' if args.quick else 'small_batch')
  summary = mbx.study.run(
      'small-batch', config, out,
      options=mbx.study.options_of('small-batch', quick=args.quick), quick=args.quick,
      workers=args.workers,
      command='python experiments/small_batch.py' + (' --quick' if args.quick else ''))
  print('\n'.join(f'- {f}' for f in summary['findings']))
  print(f'wall time {summary["invocations"][-1]["wall_time_s"] / 60:.1f} min; results in {out}')


if __name__ == '__main__':
  main()
