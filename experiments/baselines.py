"""Do mbx's MNIST-1D baselines match the paper? (core issue, must-show 2)

Greydanus & Kobak (arXiv 2011.14439) report test accuracy CNN 94%, MLP 68% with
Adam, lr 1e-2, batch 100, 8000 steps. This trains configs/mnist1d_cnn.py (AdamW,
weight decay 0.05), the same CNN with the paper's plain Adam, and
configs/mnist1d_mlp.py for 3 seeds each (seed sets both initialisation and data
order) and writes a Markdown table of final test accuracy (mean ± std), training
time (the loop, excluding compilation and evaluation) and whole-run wall time.

    python experiments/baselines.py        # ~2 min on a 2-core CPU
    -> results/baselines.md, runs under runs/baselines/
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import time

import jax

import mbx

# (name, config, overrides, paper's test accuracy)
CONFIGS = [('cnn1d', 'configs/mnist1d_cnn.py', [], 0.94),
           ('cnn1d, paper recipe (Adam, no weight decay)', 'configs/mnist1d_cnn.py',
            ['optim.name=adam', 'optim.weight_decay=0.0'], 0.94),
           ('mlp', 'configs/mnist1d_mlp.py', [], 0.68)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', type=int, nargs='*', default=[0, 1, 2])
  parser.add_argument('--out', default='results/baselines.md')
  parser.add_argument('--runs', default='runs/baselines')
  args = parser.parse_args()
  lines = ['# MNIST-1D baselines', '',
           'Command: `python experiments/baselines.py` (each run is '
           '`mbx train --config <config> train.seed=<seed>`).', '',
           f'Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} '
           f'device(s), {len(__import__("os").sched_getaffinity(0))} CPU cores; '
           f'jax {jax.__version__}.', '',
           '| model | config | paper | test accuracy (mean ± std over seeds) | per seed | '
           'training time (s) | wall time per run (s) |',
           '|---|---|---:|---:|---|---:|---:|']
  for index, (model, path, overrides, paper) in enumerate(CONFIGS):
    accuracies, train_times, walls = [], [], []
    for seed in args.seeds:
      config = mbx.load_config(path, [*overrides, f'train.seed={seed}'])
      workdir = pathlib.Path(args.runs) / f'{index}_{config.name}_seed{seed}'
      start = time.perf_counter()
      run = mbx.train(config, workdir, quiet=True)
      walls.append(time.perf_counter() - start)
      accuracies.append(run.status['eval_accuracy'])
      train_times.append(run.status['train_time'])
      print(f'{model} seed {seed}: test accuracy {accuracies[-1]:.4f}, '
            f'train {train_times[-1]:.1f}s, wall {walls[-1]:.1f}s', flush=True)
    mean, std = statistics.mean(accuracies), statistics.stdev(accuracies)
    command = ' '.join([f'`{path}`', *overrides])
    lines.append(f'| {model} | {command} | {paper:.0%} | {mean:.2%} ± {std:.2%} | '
                 f'{", ".join(f"{a:.1%}" for a in accuracies)} | '
                 f'{statistics.mean(train_times):.1f} | {statistics.mean(walls):.1f} |')
  lines += ['', 'Training time is the loop alone (status.json `train_time`); wall time adds '
            'data loading, compilation, evaluation every 500 steps and checkpoints.']
  pathlib.Path(args.out).write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
