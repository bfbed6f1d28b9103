"""Does adapting the batch size during training beat the best fixed batch?

Batch-size warmup (Merrill et al. 2025: OLMo 1B to slightly better loss with 43% fewer steps),
AdaScale (Johnson et al. 2020: the large-batch LR without a search), the noise-scale recipe
(McCandlish et al. 2018) and Pollux's goodput (Qiao et al. 2021) against a fixed small batch
B0 and the fixed batch B* nearest the critical batch size, all stopped at one target: the
study `mbx study adaptive` (its protocol: mbx/study/adaptive.py, the policies:
docs/adaptive_batch.md), on two workloads:

- MNIST-1D CNN, Adam, to validation accuracy 0.85 (configs/adaptive_mnist1d_cnn.py),
  the same as `mbx study adaptive --config configs/adaptive_mnist1d_cnn.py`;
- the KJV character Transformer, AdamW, to validation loss 1.75 nats
  (configs/adaptive_lm_kjv.py); its LR grid moves as B^0.25, as the LM CBS study's did.

Its frontier.png is McCandlish et al.'s steps-examples Pareto plot of the fixed batches (as
mbx.figures.critical_batch.pareto draws it) with each policy placed on it.

    python experiments/adaptive_batch.py --workloads mnist1d  # 54 runs, 18 min
    python experiments/adaptive_batch.py                      # + KJV: 39 runs, 24 min
    python experiments/adaptive_batch.py --quick --workloads mnist1d  # 19 runs, 6 min

Times on a 2-core CPU shared with other jobs (load average ~15).

Outputs: results/adaptive_batch/ (MNIST-1D) and results/adaptive_batch_lm/ (KJV): README.md,
summary.json, fixed_batches, policies, paired, tuning and runs (.csv and .md), decisions.png,
metric.png, frontier.png; the runs under trials/ (not committed). `--quick` writes
results/adaptive_batch_quick/ (and _lm_quick/). Finished runs are reused.
"""
import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mbx  # pylint: disable=wrong-import-position
import mbx.study  # pylint: disable=wrong-import-position

WORKLOADS = {  # name: (config, results directory, options beyond those the config implies)
    'mnist1d': ('configs/adaptive_mnist1d_cnn.py', 'adaptive_batch', {}),
    'kjv': ('configs/adaptive_lm_kjv.py', 'adaptive_batch_lm', {'lr_scaling_power': 0.25}),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workloads', nargs='+', choices=list(WORKLOADS), default=list(WORKLOADS))
  parser.add_argument('--quick', action='store_true', help='a smoke-sized version')
  args = parser.parse_args()
  for key in args.workloads:
    config, name, values = WORKLOADS[key]
    out = REPO / 'results' / (name + ('_quick' if args.quick else ''))
    command = (f'python experiments/adaptive_batch.py --workloads {key}'
               + (' --quick' if args.quick else ''))
    mbx.study.run('adaptive', mbx.load_config(REPO / config), out, quick=args.quick,
                  options=mbx.study.options_of('adaptive', quick=args.quick, **values),
                  command=command)


if __name__ == '__main__':
  main()
