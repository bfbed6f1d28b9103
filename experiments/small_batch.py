"""Are the best results at small batch sizes, with and without BatchNorm?

Masters & Luschi 2018 ("Revisiting Small Batch Training for Deep Neural Networks", arXiv
1804.07612) tune the learning rate per batch size and find the best test performance at
B = 2-32, and the range of learning rates that train well narrowing as B grows, with and
without BatchNorm. This runs their protocol on the MNIST-1D CNN: plain SGD, B = 2 ... 4000
(the whole training set), a 10-point log grid of learning rates from 1e-3 to 3 at every B,
the same 30 epochs for every trial (cosine decay), 2 seeds, once without and once with
BatchNorm after each convolution (`model.options.norm=batch`). The LR per B is chosen on
validation accuracy (the mean over seeds); test accuracy of that LR is reported beside it.

"Stable" learning rates at a B are those whose every seed trained without diverging and
ended within STABLE_POINTS of the best validation accuracy at that B (Masters & Luschi's
"range of learning rates that give good results"); the range is also given in their units,
the base LR η/B.

    python experiments/small_batch.py            # ~15 min on a 2-core CPU, 2 workers
    python experiments/small_batch.py --quick    # 4 batch sizes, 5 LRs, 1 seed (~2 min)

Outputs: results/small_batch/ (README.md, summary.csv, trials_<model>.csv,
accuracy_vs_batch_size.png, stable_learning_rates.png); runs under sweeps/small_batch_*/.
Re-running resumes: finished trials are skipped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pandas as pd  # pylint: disable=wrong-import-position
import scipy.stats  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbx.figures import readme as readme_text  # pylint: disable=wrong-import-position
from mbx.sweep import grid, runner  # pylint: disable=wrong-import-position

CONFIG = REPO / 'configs' / 'small_batch_mnist1d.py'
MODELS = {'no BN': 'none', 'BN': 'batch'}  # label -> model.options.norm
STABLE_POINTS = 0.02     # within 2 points of the best validation accuracy at that B
SMALL = 32               # Masters & Luschi's "best at B = 2-32"
QUICK_BATCH_SIZES = (2, 32, 512, 4000)


def study_sweeps(quick: bool) -> dict[str, grid.SweepConfig]:
  base = grid.load_sweep(CONFIG)
  sweeps = {}
  for label, norm in MODELS.items():
    config = base.base
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, options={**config.model.options, 'norm': norm}))
    name = f'small_batch_mnist1d_{"bn" if norm != "none" else "plain"}'
    sweep = dataclasses.replace(base, base=config, name=name)
    if quick:
      search = tuple(dataclasses.replace(s, learning_rate=(1e-2, 1.0), num_learning_rates=5)
                     for s in sweep.search)
      sweep = dataclasses.replace(sweep, search=search, batch_sizes=QUICK_BATCH_SIZES,
                                  seeds=(0,), name=f'{name}_quick')
    sweeps[label] = sweep
  return sweeps


def per_setting(table: pd.DataFrame) -> pd.DataFrame:
  """One row per (B, LR): seed means of final validation and test accuracy, divergences."""
  rows = []
  for (b, lr), group in table.groupby(['batch_size', 'learning_rate']):
    diverged = int((group['outcome'] == 'infeasible').sum())
    done = group[group['status'] == 'done']
    rows.append({'batch_size': int(b), 'learning_rate': float(lr), 'seeds': len(group),
                 'diverged': diverged, 'finished': len(done),
                 'validation_accuracy': float(done['final_metric'].mean()) if len(done) == len(
                     group) else float('nan'),
                 'validation_std': float(done['final_metric'].std(ddof=1)) if len(done) > 1
                 else float('nan'),
                 'test_accuracy': float(done['test_metric'].mean()) if len(done) == len(group)
                 else float('nan'),
                 'test_std': float(done['test_metric'].std(ddof=1)) if len(done) > 1
                 else float('nan'),
                 'test_per_seed': list(done.sort_values('seed')['test_metric'])})
  return pd.DataFrame(rows)


def summarize(settings: pd.DataFrame, num_lrs: int) -> pd.DataFrame:
  """Per B: the LR with the best mean validation accuracy, its accuracies, and the stable
  LR range (no seed diverged, within STABLE_POINTS of the best)."""
  rows = []
  for b, group in settings.groupby('batch_size'):
    ok = group[np.isfinite(group['validation_accuracy'])]
    if ok.empty:
      rows.append({'batch_size': int(b), 'best_learning_rate': float('nan')})
      continue
    best = ok.loc[ok['validation_accuracy'].idxmax()]
    stable = ok[(ok['diverged'] == 0) &
                (ok['validation_accuracy'] >= best['validation_accuracy'] - STABLE_POINTS)]
    lrs = np.sort(group['learning_rate'].to_numpy())
    rows.append({
        'batch_size': int(b), 'best_learning_rate': float(best['learning_rate']),
        'best_at_grid_edge': bool(best['learning_rate'] in (lrs[0], lrs[-1])),
        'validation_accuracy': float(best['validation_accuracy']),
        'validation_std': float(best['validation_std']),
        'test_accuracy': float(best['test_accuracy']), 'test_std': float(best['test_std']),
        'test_per_seed': best['test_per_seed'],
        'stable_lr_min': float(stable['learning_rate'].min()),
        'stable_lr_max': float(stable['learning_rate'].max()),
        'stable_lr_count': int(len(stable)), 'grid_points': num_lrs,
        'stable_base_lr_min': float(stable['learning_rate'].min()) / b,
        'stable_base_lr_max': float(stable['learning_rate'].max()) / b,
        'diverged_lrs': int((group['diverged'] > 0).sum())})
  return pd.DataFrame(rows)


def figures(summaries: dict[str, pd.DataFrame], out: pathlib.Path) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for label, s in summaries.items():
    s = s[np.isfinite(s['test_accuracy'])]
    for column, style in (('validation_accuracy', '--'), ('test_accuracy', '-')):
      std = s[column.replace('accuracy', 'std')].fillna(0)
      ax.errorbar(s['batch_size'], 100 * s[column], yerr=100 * std, fmt=style + 'o',
                  capsize=3, ms=4, label=f'{label}, {column.split("_")[0]}')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('batch size B')
  ax.set_ylabel('accuracy at the best LR per B (%)')
  ax.axvspan(2, SMALL, color='0.92', zorder=0, label=f'B = 2–{SMALL}')
  ax.legend(fontsize=8, loc='lower left')
  ax.set_title('MNIST-1D CNN, SGD, LR tuned per B, 30 epochs')
  fig.tight_layout()
  fig.savefig(out / 'accuracy_vs_batch_size.png', dpi=120)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for label, s in summaries.items():
    s = s[np.isfinite(s['stable_lr_min'])]
    for ax, (lo, hi), unit in ((axes[0], ('stable_lr_min', 'stable_lr_max'), 'LR η'),
                               (axes[1], ('stable_base_lr_min', 'stable_base_lr_max'),
                                'base LR η / B')):
      line, = ax.plot(s['batch_size'], s[lo], 'o-', ms=3, label=f'{label}: stable range')
      ax.plot(s['batch_size'], s[hi], 'o-', ms=3, color=line.get_color())
      ax.fill_between(s['batch_size'], s[lo], s[hi], color=line.get_color(), alpha=0.2)
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_xlabel('batch size B')
      ax.set_ylabel(unit)
  axes[0].legend(fontsize=8)
  fig.suptitle(f'Learning rates within {STABLE_POINTS:.0%} points of the best validation '
               'accuracy, no divergence')
  fig.tight_layout()
  fig.savefig(out / 'stable_learning_rates.png', dpi=120)
  plt.close(fig)


def small_vs_rest(table: pd.DataFrame, summary: pd.DataFrame) -> dict:
  """Best B, and the best small-B (<= SMALL) LR against the best larger-B one: per-seed test
  accuracies at each side's best setting, Welch t-test."""
  ok = summary[np.isfinite(summary['validation_accuracy'])]
  best = ok.loc[ok['validation_accuracy'].idxmax()]
  small, large = ok[ok['batch_size'] <= SMALL], ok[ok['batch_size'] > SMALL]
  result = {'best_batch_size': int(best['batch_size'])}
  if small.empty or large.empty:
    return result
  sides = {}
  for name, side in (('small', small), ('large', large)):
    row = side.loc[side['validation_accuracy'].idxmax()]
    sides[name] = row
  a, b = (np.asarray(sides[k]['test_per_seed'], float) for k in ('small', 'large'))
  result.update(best_small_batch=int(sides['small']['batch_size']),
                best_large_batch=int(sides['large']['batch_size']),
                small_test=float(a.mean()), large_test=float(b.mean()),
                difference_points=100 * float(a.mean() - b.mean()))
  if len(a) > 1 and len(b) > 1:
    result['welch_p'] = float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)
  return result


def fmt_pct(value: float, std: float | None = None) -> str:
  if not np.isfinite(value):
    return '—'
  text = f'{100 * value:.1f}'
  return text + (f' ± {100 * std:.1f}' if std is not None and np.isfinite(std) else '')


def readme(summaries, comparisons, sweeps, command, timings, counts) -> str:
  first = next(iter(sweeps.values()))
  lines = ['# Small-batch training on MNIST-1D (Masters & Luschi 2018)', '',
           f'Command: `{command}` (grid: `configs/small_batch_mnist1d.py`, without and with '
           'BatchNorm).', '',
           f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, '
           f'{timings["workers"]} worker processes. **Wall time: {timings["total"] / 60:.1f} '
           'min** (' + ', '.join(f'{k} {v / 60:.1f} min' for k, v in timings['sweeps'].items())
           + (')' if not timings['resumed'] else '; finished trials were reused)') + '.', '',
           f'Grid per model: B = {", ".join(map(str, first.batch_sizes))}; SGD learning '
           f'rates {first.search[0].learning_rate[0]:g} … {first.search[0].learning_rate[1]:g} '
           f'({first.search[0].num_learning_rates} log-spaced points, the same at every B); '
           f'seeds {", ".join(map(str, first.seeds))}; {first.budget} per trial with a cosine '
           'decay to 0; validation every 5 epochs, test once at the end. No run stops early; '
           'the outcomes below only label whether a run passed 90% validation accuracy: '
           + '; '.join(f'{label}: ' + ', '.join(f'{v} {k}' for k, v in c.items())
                       for label, c in counts.items()) + '.', '',
           'The LR of each B is the one with the best final validation accuracy (mean over '
           'seeds); the table gives that LR\'s validation and test accuracy (mean ± std over '
           f'seeds) and the stable range (every seed finite, final validation accuracy within '
           f'{STABLE_POINTS * 100:.0f} points of the best at that B).', '']
  for label, s in summaries.items():
    lines += [f'## {label}', '',
              '| B | best LR | validation acc (%) | test acc (%) | test per seed (%) | stable '
              'LR range | stable LRs / grid | stable base LR η/B | LRs with a divergence |',
              '|---:|---:|---:|---:|---|---|---:|---|---:|']
    for _, r in s.iterrows():
      if not np.isfinite(r.get('best_learning_rate', np.nan)):
        lines.append(f'| {r["batch_size"]} | — | — | — | — | — | 0 | — | — |')
        continue
      edge = ' (edge)' if r['best_at_grid_edge'] else ''
      lines.append(
          f'| {r["batch_size"]} | {r["best_learning_rate"]:.3g}{edge} | '
          f'{fmt_pct(r["validation_accuracy"], r["validation_std"])} | '
          f'{fmt_pct(r["test_accuracy"], r["test_std"])} | '
          f'{", ".join(f"{100 * v:.1f}" for v in r["test_per_seed"])} | '
          f'{r["stable_lr_min"]:.3g} – {r["stable_lr_max"]:.3g} | '
          f'{r["stable_lr_count"]} / {r["grid_points"]} | '
          f'{r["stable_base_lr_min"]:.2g} – {r["stable_base_lr_max"]:.2g} | '
          f'{r["diverged_lrs"]} |')
    c = comparisons[label]
    lines += ['', f'Best B by validation accuracy: **{c["best_batch_size"]}**.']
    if 'difference_points' in c:
      lines.append(
          f'Best setting with B ≤ {SMALL} (B = {c["best_small_batch"]}) against the best with '
          f'B > {SMALL} (B = {c["best_large_batch"]}): test accuracy {100 * c["small_test"]:.1f}'
          f'% vs {100 * c["large_test"]:.1f}%, difference {c["difference_points"]:+.1f} points'
          + (f' (Welch t-test over seeds, p = {c["welch_p"]:.2g})' if 'welch_p' in c else '')
          + '.')
    lines.append('')
  lines += ['![accuracy vs batch size](accuracy_vs_batch_size.png)', '',
            '![stable learning rates](stable_learning_rates.png)', '',
            '## Interpretation', '', readme_text.PLACEHOLDER, '',
            '## Files', '',
            '`summary.csv` (one row per model and B), `trials_<model>.csv` (one row per '
            'trial: batch_size, learning_rate, seed, status, outcome, final_metric = final '
            'validation accuracy, test_metric = test accuracy at the end, ...), `study.json` '
            '(timings, spec hashes).']
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = runner.study_parser(__doc__.splitlines()[0])
  args = parser.parse_args()
  sweeps = study_sweeps(args.quick)
  out = pathlib.Path(args.out or REPO / 'results' /
                     ('small_batch_quick' if args.quick else 'small_batch'))
  out.mkdir(parents=True, exist_ok=True)
  command = 'python experiments/small_batch.py' + (' --quick' if args.quick else '')
  start = time.perf_counter()
  summaries, comparisons, counts, sweep_times, resumed = {}, {}, {}, {}, False
  for label, sweep in sweeps.items():
    sweep_dir = pathlib.Path(args.sweep_dir or REPO / 'sweeps') / sweep.name
    resumed |= (sweep_dir / runner.TABLE_FILE).exists()
    tic = time.perf_counter()
    runner.run_parallel(sweep, sweep_dir, args.workers)
    sweep_times[label] = time.perf_counter() - tic
    table = runner.load_table(sweep_dir)
    tag = 'bn' if label == 'BN' else 'plain'
    table.to_csv(out / f'trials_{tag}.csv', index=False)
    summary = summarize(per_setting(table), sweep.search[0].num_learning_rates)
    summaries[label] = summary
    comparisons[label] = small_vs_rest(table, summary)
    counts[label] = runner.outcome_counts(table)
  total = time.perf_counter() - start
  figures(summaries, out)
  pd.concat([s.assign(model=label) for label, s in summaries.items()],
            ignore_index=True).to_csv(out / 'summary.csv', index=False)
  timings = {'total': total, 'sweeps': sweep_times, 'workers': args.workers,
             'resumed': resumed}
  (out / 'study.json').write_text(json.dumps({
      **timings, 'spec_hashes': {k: grid.spec_hash(s) for k, s in sweeps.items()},
      'comparisons': comparisons, 'outcomes': counts}, indent=2) + '\n')
  readme_text.write_keeping_interpretation(
      out / 'README.md', readme(summaries, comparisons, sweeps, command, timings, counts))
  for label, c in comparisons.items():
    print(f'{label}: {c}')
  print(f'wall time {total / 60:.1f} min; results in {out}')


if __name__ == '__main__':
  main()
