"""How far do LR scaling rules, warmup and layer-wise optimizers carry a fixed-epoch budget
towards full batch?

Goyal et al. 2017 (arXiv 1706.02677) Fig. 1 / Table 2 style, at MNIST-1D scale: the CNN of
configs/mnist1d_cnn_momentum.py, 60 epochs for every batch size B = 125 ... 4000 (full
batch), step decay x0.1 at epochs 20, 40 and 53.3 (Goyal's 30/60/80 of 90). For each
optimizer the base LR is the best of a small grid at B0 = 125 (final validation accuracy), then
scaled to B:
  SGD, linear                 momentum SGD (0.9), LR x B/B0, no warmup
  SGD, linear + warmup        Goyal et al.: 5 epochs of linear warmup from the base LR
  SGD, linear + warmup, ¼ LR  the same from a quarter of the tuned base LR (headroom)
  SGD, sqrt + warmup          Hoffer et al. 2017 (arXiv 1705.08741): LR x sqrt(B/B0)
  LARS, linear + warmup       You, Gitman & Ginsburg 2017 (arXiv 1708.03888), trust 0.001
  LAMB, sqrt + warmup         You et al. 2020 (arXiv 1904.00962)
  Adam, sqrt + warmup
Warmup always starts from the base LR, as Goyal's. No weight decay; one seed per point.

    python experiments/large_batch_scaling.py           # ~2 min on a 2-core CPU
    python experiments/large_batch_scaling.py --quick   # 10 epochs, B in {125, 1000, 4000}
    -> results/large_batch_scaling/{README.md, results.csv, base_lr_sweep.csv,
       accuracy_vs_batch_size.png, study_time.json}; runs under runs/large_batch_scaling/
       (one directory per distinct config, reused on re-runs)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import time

import jax
import numpy as np
import pandas as pd

import mbx
import mbx.optim
from mbx.figures import schedules as figures

CONFIG = 'configs/mnist1d_cnn_momentum.py'
BASE_BATCH = 125
BATCH_SIZES = (125, 250, 500, 1000, 2000, 4000)
WARMUP_EPOCHS = 5
DEAD_LOSS = 2.0  # final training loss above this: the network stopped learning (ln 10 = 2.30)
# Base-LR grids at B0, around values found by hand (LARS: trust coefficient 0.001).
BASE_LR_GRID = {'momentum': (0.05, 0.1, 0.2, 0.3), 'lars': (1.0, 3.0, 10.0),
                'lamb': (3e-3, 1e-2, 2e-2, 4e-2), 'adam': (3e-3, 1e-2, 2e-2, 4e-2)}
METHODS = {  # name -> (optimizer, scaling rule, warmup, fraction of the tuned base LR)
    'SGD, linear': ('momentum', 'linear', False, 1.0),
    'SGD, linear + warmup': ('momentum', 'linear', True, 1.0),
    'SGD, linear + warmup, ¼ LR': ('momentum', 'linear', True, 0.25),
    'SGD, sqrt + warmup': ('momentum', 'sqrt', True, 1.0),
    'LARS, linear + warmup': ('lars', 'linear', True, 1.0),
    'LAMB, sqrt + warmup': ('lamb', 'sqrt', True, 1.0),
    'Adam, sqrt + warmup': ('adam', 'sqrt', True, 1.0),
}


def overrides(optimizer: str, base_lr: float, rule: str, warmup: bool, batch_size: int,
              epochs: int, seed: int) -> list[str]:
  """The `mbx train` overrides of one point; at B0 every rule gives the same run."""
  milestones = ', '.join(f'{epochs * f:.4g}' for f in (1 / 3, 2 / 3, 8 / 9))
  ratio = batch_size / BASE_BATCH
  peak_factor = {'linear': ratio, 'sqrt': math.sqrt(ratio)}[rule]
  items = [f'optim.name={optimizer}', f'optim.learning_rate={base_lr:g}', 'optim.momentum=0.9',
           'optim.weight_decay=0', 'optim.schedule=step', f'optim.milestones=({milestones})',
           'optim.decay_factor=0.1',
           f'train.batch_size={batch_size}', f'train.duration={epochs} epochs',
           f'train.seed={seed}', 'train.log_every=1 epochs',
           f'train.eval_every={max(epochs // 10, 1)} epochs', 'train.checkpoint_every=none']
  if batch_size != BASE_BATCH:
    items += [f'optim.lr_scaling={rule}', f'optim.base_batch_size={BASE_BATCH}']
    if warmup:
      items += [f'optim.warmup={WARMUP_EPOCHS} epochs',
                f'optim.warmup_start_factor={1 / peak_factor:.6g}']
  return items


def train(items: list[str], runs_dir: pathlib.Path, record: dict) -> dict:
  """Trains (or reuses) the run of these overrides; returns its row."""
  config = mbx.load_config(CONFIG, items)
  workdir = runs_dir / mbx.config.config_hash(config)
  if not (workdir / 'status.json').exists():
    record['trained'] += 1
  run = mbx.train(config, workdir, quiet=True)
  s = run.status
  return {'status': s['status'],
          'validation_accuracy': (s.get('eval_accuracy') if s['status'] == 'done'
                                  else float('nan')),
          'test_accuracy': s.get('test_accuracy') if s['status'] == 'done' else float('nan'),
          'final_train_loss': float(run.train_metrics['loss'].iloc[-1]),
          'peak_lr': mbx.optim.scaled_learning_rate(config.optim, config.train.batch_size),
          'updates': s['step'], 'train_time_s': s.get('train_time'),
          'wall_time_s': s.get('wall_time'), 'workdir': str(workdir)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--epochs', type=int, default=60)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default='results/large_batch_scaling')
  parser.add_argument('--runs', default='runs/large_batch_scaling')
  args = parser.parse_args()
  batch_sizes, grid = BATCH_SIZES, BASE_LR_GRID
  if args.quick:
    args.epochs, batch_sizes = 10, (125, 1000, 4000)
    grid = {k: v[1:2] for k, v in grid.items()}
    args.out, args.runs = args.out + '_quick', args.runs + '_quick'
  out, runs_dir = pathlib.Path(args.out), pathlib.Path(args.runs)
  out.mkdir(parents=True, exist_ok=True)
  start, record = time.perf_counter(), {'trained': 0}
  load = os.getloadavg()[0]  # other jobs on a shared machine slow every run

  sweep = []
  for optimizer, lrs in grid.items():
    for lr in lrs:
      row = train(overrides(optimizer, lr, 'linear', False, BASE_BATCH, args.epochs, args.seed),
                  runs_dir, record)
      sweep.append({'optimizer': optimizer, 'base_lr': lr, **row})
      print(f'B0 sweep {optimizer:8s} lr {lr:<6g} validation accuracy '
            f'{row["validation_accuracy"]:.4f} '
            f'({row["status"]})', flush=True)
  sweep = pd.DataFrame(sweep)
  sweep.to_csv(out / 'base_lr_sweep.csv', index=False)
  best = sweep.fillna({'validation_accuracy': -1}).sort_values(
      'validation_accuracy', kind='stable').groupby(
      'optimizer').tail(1).set_index('optimizer')['base_lr'].to_dict()

  rows = []
  for method, (optimizer, rule, warmup, fraction) in METHODS.items():
    base_lr = best[optimizer] * fraction
    for batch_size in batch_sizes:
      row = train(overrides(optimizer, base_lr, rule, warmup, batch_size, args.epochs,
                            args.seed), runs_dir, record)
      rows.append({'method': method, 'batch_size': batch_size, 'base_lr': base_lr, **row})
      print(f'{method:26s} B={batch_size:5d} peak lr {row["peak_lr"]:<8.4g} test accuracy '
            f'{row["test_accuracy"]:.4f} ({row["status"]})', flush=True)
  table = pd.DataFrame(rows)
  table.to_csv(out / 'results.csv', index=False)
  figures.accuracy_vs_batch_size(
      table, out / 'accuracy_vs_batch_size.png',
      title=f'MNIST-1D CNN, {args.epochs} epochs at every batch size (seed {args.seed})')
  timing = study_timing(out, time.perf_counter() - start, record['trained'],
                        len(sweep) + len(table), load)
  (out / 'README.md').write_text(readme(table, sweep, best, args, batch_sizes, timing))
  print((out / 'README.md').read_text())


def study_timing(out: pathlib.Path, seconds: float, trained: int, points: int,
                 load: float) -> dict:
  """The wall time of the last invocation that trained runs (a re-run that only reuses
  finished runs, e.g. to redraw the figure, keeps it)."""
  path = out / 'study_time.json'
  if trained or not path.exists():
    path.write_text(json.dumps({'wall_time_s': round(seconds, 1), 'runs_trained': trained,
                                'points': points, 'date': time.strftime('%Y-%m-%d %H:%M'),
                                'load_average': [round(x, 1) for x in (load, os.getloadavg()[0])]
                                }) + '\n')
  return json.loads(path.read_text())


def _cell(row, column: str = 'test_accuracy') -> str:
  if row.status == 'diverged':
    return 'NaN'
  dead = row.final_train_loss > DEAD_LOSS
  return f'{100 * getattr(row, column):.1f}' + ('†' if dead else '')


def readme(table, sweep, best, args, batch_sizes, timing) -> str:
  width = sweep.groupby('optimizer').size().max()
  distinct = pd.concat([sweep, table]).drop_duplicates('workdir')
  by = {(r.method, r.batch_size): r for r in table.itertuples()}
  header = '| method | ' + ' | '.join(f'B={b}' for b in batch_sizes) + ' |'
  rule = '|---|' + '---:|' * len(batch_sizes)
  lines = [
      '# Large-batch scaling: LR scaling rules, warmup, LARS, LAMB and Adam',
      '',
      f'MNIST-1D CNN (`{CONFIG}` with overrides), {args.epochs} epochs at every batch size '
      f'from B0 = {BASE_BATCH} to the full training set (4000), so '
      f'{args.epochs * 4000 // BASE_BATCH} updates at B0 and {args.epochs} at full batch; step '
      'decay ×0.1 at 1/3, 2/3 and 8/9 of training (Goyal et al.\'s 30/60/80 of 90 epochs). '
      'Base LR per optimizer: the best of a grid at B0, then scaled to B by the method\'s '
      'rule; warmup: '
      f'{WARMUP_EPOCHS} epochs, linear from the base LR (Goyal et al.). No weight decay, one '
      f'seed ({args.seed}) per point. Methods and papers: the docstring of '
      '`experiments/large_batch_scaling.py`. Every point is a plain `mbx train`, e.g. Goyal\'s '
      'rule at B = 1000:',
      '',
      f'    mbx train --config {CONFIG} ' + ' '.join(
          f"'{o}'" if ' ' in o or '(' in o else o for o in overrides(
              'momentum', best['momentum'], 'linear', True, 1000, args.epochs, args.seed)),
      '',
      f'Command: `python experiments/large_batch_scaling.py{" --quick" if args.quick else ""}`'
      f' — **{timing["wall_time_s"] / 60:.1f} min** of wall time ({timing["date"]}; '
      f'{timing["runs_trained"]} runs trained for {timing["points"]} points, as points with the '
      f'same config, e.g. every SGD method at B0, share a run) on {platform.machine()} with '
      f'{len(os.sched_getaffinity(0))} CPU cores (1-minute load average '
      f'{timing["load_average"][0]:g} at the start, {timing["load_average"][1]:g} at the end), '
      f'{jax.device_count()} '
      f'{jax.default_backend()} device, jax {jax.__version__}. Over the {len(distinct)} runs: '
      f'training loops {distinct["train_time_s"].sum():.0f} s, whole runs (with compiles, '
      f'evaluations, startup) {distinct["wall_time_s"].sum():.0f} s.',
      '',
      '![final test accuracy against batch size](accuracy_vs_batch_size.png)',
      '',
      '## Final test accuracy (%)',
      '',
      f'† the network stopped learning (final training loss > {DEAD_LOSS}; ln 10 = 2.30 is a '
      'constant prediction); NaN: the loss became NaN (status `diverged`).',
      '',
      header, rule,
      *[f'| {m} | ' + ' | '.join(_cell(by[m, b]) for b in batch_sizes) + ' |' for m in METHODS],
      '',
      '## Peak learning rate',
      '',
      header, rule,
      *[f'| {m} | ' + ' | '.join(f'{by[m, b].peak_lr:.3g}' for b in batch_sizes) + ' |'
        for m in METHODS],
      '',
      f'## Base LR at B0 = {BASE_BATCH}: validation accuracy (%), which picks it',
      '',
      '| optimizer | ' + ' | '.join(['LR: accuracy'] * width) + ' | chosen |',
      '|---|' + '---:|' * (width + 1),
      *[f'| {o} | ' + ' | '.join(
          [f'{r.base_lr:g}: {_cell(r, "validation_accuracy")}' for r in rows.itertuples()] +
          [''] * (width - len(rows))) + f' | {best[o]:g} |'
        for o, rows in sweep.groupby('optimizer', sort=False)],
      '',
      'Per-run CSVs: `results.csv` (status, test accuracy, final training loss, peak LR, '
      'updates, times, run directory) and `base_lr_sweep.csv`.',
      '',
      *interpretation(table, sweep, best, batch_sizes),
  ]
  return '\n'.join(lines) + '\n'


def _holds_to(table: pd.DataFrame, method: str, tolerance: float = 1.0) -> int:
  """The largest B up to which the method stays within `tolerance` points of its B0."""
  rows = table[table.method == method].sort_values('batch_size')
  reference, largest = rows['test_accuracy'].iloc[0] * 100, rows['batch_size'].iloc[0]
  for r in rows.itertuples():
    if not r.test_accuracy * 100 >= reference - tolerance:
      break
    largest = r.batch_size
  return int(largest)


def _largest_1d_norm(workdir: str) -> tuple[float, float]:
  """(largest L2 norm of a 1-D parameter (biases), largest of a kernel) in a run's params."""
  params = jax.tree.leaves(mbx.load_run(workdir).params())
  norm = lambda p: float(np.linalg.norm(np.asarray(p)))
  return (max(norm(p) for p in params if np.ndim(p) == 1),
          max(norm(p) for p in params if np.ndim(p) > 1))


def interpretation(table, sweep, best, batch_sizes) -> list[str]:
  """What the numbers say (computed from the tables above)."""
  if len(batch_sizes) < 4:
    return []
  acc = table.pivot(index='method', columns='batch_size', values='test_accuracy') * 100
  holds = {m: _holds_to(table, m) for m in METHODS}
  row = lambda m, b: table[(table.method == m) & (table.batch_size == b)].iloc[0]
  sgd_peak_ok = max((row(m, b).peak_lr for m in METHODS if m.startswith('SGD')
                     for b in batch_sizes if row(m, b).test_accuracy * 100 >=
                     acc.loc[m, BASE_BATCH] - 1.0), default=float('nan'))
  sgd = [row(m, b) for m in METHODS if m.startswith('SGD') for b in batch_sizes]
  failed = lambda r: not r.final_train_loss <= DEAD_LOSS  # dead, or NaN
  sgd_peak_bad = min((r.peak_lr for r in sgd if failed(r)), default=float('nan'))
  all_above_fail = all(failed(r) for r in sgd if r.peak_lr >= sgd_peak_bad)
  mid = 1000 if 1000 in batch_sizes else batch_sizes[len(batch_sizes) // 2]
  top_lr = max(BASE_LR_GRID['momentum'])
  top = sweep[(sweep.optimizer == 'momentum') & (sweep.base_lr == top_lr)].iloc[0]
  quarter = 'SGD, linear + warmup, ¼ LR'
  above_90 = max((b for b in batch_sizes if acc.loc[quarter, b] >= 90), default=BASE_BATCH)
  ceiling = max(row(quarter, b).peak_lr for b in batch_sizes if b <= above_90)
  epochs = int(table[table.batch_size == BASE_BATCH].updates.max() * BASE_BATCH / 4000)
  lars_bias, lars_kernel = _largest_1d_norm(row('LARS, linear + warmup', mid).workdir)
  lamb_bias, lamb_kernel = _largest_1d_norm(row('LAMB, sqrt + warmup', mid).workdir)
  full = max(batch_sizes)
  best_full = acc[full].idxmax()
  return [
      '## What it shows',
      '',
      '- **How far each method holds** (largest B within 1 point of its own B0 accuracy): ' +
      '; '.join(f'{m}: {holds[m]}' for m in METHODS) + '.',
      f'- **Linear scaling is capped by the largest stable LR, and warmup does not lift the '
      f'cap.** The tuned SGD base LR ({best["momentum"]:g}) is close to the largest that '
      f'trains well at B0 (the grid\'s {top_lr:g} gives {_cell(top)}%). '
      f'No SGD run within 1 point of its B0 accuracy had a peak LR above {sgd_peak_ok:.3g}; '
      + (f'every SGD run with peak LR {sgd_peak_bad:.3g} or more stopped learning (†: dead '
         'ReLUs, constant output) or diverged, whatever the rule. ' if all_above_fail else
         f'from a peak LR of {sgd_peak_bad:.3g} on, SGD runs start to stop learning (†: dead '
         'ReLUs, constant output) or diverge, whatever the rule. ') +
      'Goyal et al.\'s ResNet-50 tolerates LR 3.2 in part '
      'because BatchNorm makes its loss insensitive to the scale of the weights; this CNN has '
      'no normalisation. Starting from a quarter of the tuned LR leaves headroom at the cost '
      f'of {acc.loc["SGD, linear + warmup", BASE_BATCH] - acc.loc[quarter, BASE_BATCH]:.1f} '
      f'points at B0: linear scaling with warmup then stays at or above 90% up to B = '
      f'{above_90} (peak LR {row(quarter, above_90).peak_lr:.3g}) and breaks down once its '
      f'LR passes {ceiling:.3g}. Square-root scaling raises the LR more slowly but from the '
      f'tuned base; it holds to B = {holds["SGD, sqrt + warmup"]}.',
      f'- **LAMB and Adam go furthest**, with square-root scaling: at B = {mid} LAMB keeps '
      f'{acc.loc["LAMB, sqrt + warmup", mid]:.1f}% and Adam '
      f'{acc.loc["Adam, sqrt + warmup", mid]:.1f}% '
      f'against {acc.loc["SGD, linear + warmup", mid]:.1f}% for Goyal\'s rule on SGD; at full '
      f'batch the best is {best_full} ({acc.loc[best_full, full]:.1f}%), far below B0: '
      f'{full // BASE_BATCH}× fewer updates ({epochs * 4000 // full}) than at B0 are too few '
      'for any rule at a fixed epoch budget: the regime beyond the critical batch size, where '
      'steps, not epochs, limit training (Shallue et al. 2019; McCandlish et al. 2018).',
      f'- **LARS fails here for a reason specific to this network.** mbx, like the reference '
      'implementations and docs/science.md §13, exempts biases and norm parameters from the LARS '
      'trust ratio, so they are updated with the raw global LR, which linear scaling makes '
      f'large ({row("LARS, linear + warmup", mid).peak_lr:.3g} at B = {mid}). In a ResNet every '
      'bias-free convolution is followed by BatchNorm and that is harmless; this CNN has a '
      f'bias on every layer, and at B = {mid} its largest bias norm grew to {lars_bias:.0f} '
      f'(largest kernel norm {lars_kernel:.0f}). Adam and LAMB bound every coordinate\'s '
      'step by about the LR whatever the gradient; mbx\'s LAMB exempts biases from its trust '
      'ratio too, but their Adam-normalised steps stay of the order of the LR '
      f'(largest bias norm {lamb_bias:.1f}, kernel {lamb_kernel:.1f} at B = {mid}).',
      '- One seed per point: near the edge of stability single runs are erratic (e.g. SGD at '
      'B = 250 with and without warmup; changes that only alter floating-point rounding move '
      'such runs by more than a point), '
      'so read the table for where each method breaks down, not for differences of a point '
      'or two.',
  ]


if __name__ == '__main__':
  main()
