"""Do mbx's MNIST-1D baselines match the paper, and have they converged?

Greydanus & Kobak (arXiv 2011.14439) report test accuracy CNN 94%, MLP 68% with
Adam, lr 1e-2, batch 100, 8000 steps, constant LR. This trains configs/mnist1d_cnn.py
(AdamW, weight decay 0.05, LR / 10 for the last quarter) and configs/mnist1d_mlp.py (Adam,
the same decay), each beside the paper's constant-LR recipe and (CNN) the decays the
config's was chosen against on validation, for 3 seeds (seed sets both initialisation
and data order). Runs evaluate on the validation split every 500 steps and on test once
at the end. The table gives final test and validation accuracy (mean ± std), the
spread of validation accuracy over the last 4 evaluations (a converged run barely
moves), training time (the loop alone) and whole-run wall time.

    python experiments/baselines.py        # ~4 min on a 2-core CPU
    -> results/baselines.md, runs under runs/baselines/
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import statistics

import jax

import mbx

NO_STEP = ['optim.schedule=constant', 'optim.milestones=()']  # the configs' step decay off
# (name, config, overrides, paper's test accuracy)
CONFIGS = [('cnn1d', 'configs/mnist1d_cnn.py', [], 0.94),
           ('cnn1d, cosine decay', 'configs/mnist1d_cnn.py', ['optim.milestones=()', 'optim.schedule=cosine'],
            0.94),
           ('cnn1d, cosine decay, weight decay 0.2', 'configs/mnist1d_cnn.py',
            ['optim.milestones=()', 'optim.schedule=cosine', 'optim.weight_decay=0.2'], 0.94),
           ('cnn1d, constant LR', 'configs/mnist1d_cnn.py', NO_STEP, 0.94),
           ('cnn1d, paper recipe (Adam, constant LR, no weight decay)',
            'configs/mnist1d_cnn.py', [*NO_STEP, 'optim.name=adam', 'optim.weight_decay=0.0'],
            0.94),
           ('mlp', 'configs/mnist1d_mlp.py', [], 0.68),
           ('mlp, paper recipe (constant LR)', 'configs/mnist1d_mlp.py', NO_STEP, 0.68)]
LAST_EVALS = 4


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
           f'| model | config | paper (test) | test accuracy (mean ± std, n = {len(args.seeds)}) '
           '| per seed | validation accuracy | swing over the last 4 evaluations '
           '(validation, max − min, mean over seeds) | training time (s) | '
           'wall time per run (s) |',
           '|---|---|---:|---:|---|---:|---:|---:|---:|']
  for index, (model, path, overrides, paper) in enumerate(CONFIGS):
    accuracies, validation, swings, train_times, walls = [], [], [], [], []
    for seed in args.seeds:
      config = mbx.load_config(path, [*overrides, f'train.seed={seed}'])
      workdir = pathlib.Path(args.runs) / f'{index}_{config.name}_seed{seed}'
      run = mbx.train(config, workdir, quiet=True)
      walls.append(run.status['wall_time'])  # the run's own, also when it is reused
      accuracies.append(run.status['test_accuracy'])
      validation.append(run.status['eval_accuracy'])
      last = list(run.eval_metrics['eval_accuracy'])[-LAST_EVALS:]
      swings.append(max(last) - min(last))
      train_times.append(run.status['train_time'])
      print(f'{model} seed {seed}: test accuracy {accuracies[-1]:.4f}, validation '
            f'{validation[-1]:.4f}, train {train_times[-1]:.1f}s, wall {walls[-1]:.1f}s',
            flush=True)
    mean, std = statistics.mean(accuracies), statistics.stdev(accuracies)
    command = ' '.join([f'`{path}`', *overrides])
    lines.append(f'| {model} | {command} | {paper:.0%} | {mean:.2%} ± {std:.2%} | '
                 f'{", ".join(f"{a:.1%}" for a in accuracies)} | '
                 f'{statistics.mean(validation):.2%} ± {statistics.stdev(validation):.2%} | '
                 f'{statistics.mean(swings):.1%} | '
                 f'{statistics.mean(train_times):.1f} | {statistics.mean(walls):.1f} |')
  lines += ['', 'Splits: runs evaluate on MNIST-1D\'s validation split (1000 examples drawn '
            'with another seed, disjoint from train and test) and report test (the paper\'s '
            '1000) once, at the end. The paper\'s numbers are test accuracy.', '',
            'Training time is the loop alone (status.json `train_time`); wall time adds '
            'data loading, compilation, evaluation every 500 steps and checkpoints.']
  pathlib.Path(args.out).write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
