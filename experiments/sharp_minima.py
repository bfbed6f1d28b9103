"""Do large batches find sharper minima that generalise worse, on MNIST-1D?

Keskar et al. 2017 (arXiv 1609.04836): networks trained with a large batch (10% of the training
set) reach the training accuracy of small-batch (256) training but test worse, and sit in
sharper minima. This reproduces, on the MNIST-1D CNN (5,210 parameters), their Fig. 3
(the parametric plot θ(α) = α·θ_LB + (1−α)·θ_SB, α ∈ [−1, 2]) and their Tables 3-4
(ε-sharpness for ε ∈ {1e-3, 5e-4} in the full space and a random 100-dimensional subspace,
maximised with 10 L-BFGS-B iterations from 4 starts), adds λ_max, tr(H) and the Hessian
eigenvalue density, and repeats sharpness and generalisation gap across a batch-size grid.

Protocol: small batch (SB, 256), large batch (LB, 400 = 10% of 4000) and full batch (FB, 4000)
each get their own Adam learning rate, tuned on the validation split (LEARNING_RATES, tuning
seed TUNING_SEED, which no reported run uses). Then 5 seeds per regime, SB/LB/FB of a seed
sharing the initialisation and data order, each stopped at the same training loss (≤ 0.01 on
the full training set, checked every ~2048 examples: half an epoch, every step at full batch;
`configs/mnist1d_sharp_minima.py`). Test accuracy is measured once, at the end.
Differences are paired over seeds: mean with a 95% t-interval, a paired t-test and an exact
Wilcoxon signed-rank test. Every measure is on the full training set (4000 examples) in
float32; the CNN has no BatchNorm.

    python experiments/sharp_minima.py           # ~15 min on a 2-core CPU (5 seeds, 8 B)
    python experiments/sharp_minima.py --quick   # ~3 min: 2 seeds, 4 batch sizes, fewer HVPs
    python experiments/sharp_minima.py --sweep-dir sweeps/cbs_mnist1d_cnn  # also a sweep's runs

Outputs: results/sharp_minima/ (README.md, table.md/.csv, paired.md/.csv, tuning.csv,
batch_size_grid.md/.csv, parametric_sb_lb.png, parametric_sb_fb.png, hessian_density.png,
landscape_1d.png, sharpness_vs_batch_size.png, summaries.json, timings.json); runs under
runs/sharp_minima/. Finished runs, and analyses in an earlier summaries.json with the same
run, step, parameters and settings, are reused. `--sweep-dir` adds the best trial per
optimizer and batch size of the finished MNIST-1D CNN runs found below it (not branched ones),
e.g. the critical-batch-size sweep's, trained to their own target.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np
import scipy.stats

import mbx
from mbx.figures import sharpness as figures
from mbx.measure import analysis, hessian, loss_fn, sharpness

CONFIG = 'configs/mnist1d_sharp_minima.py'
REGIMES = {'SB': 256, 'LB': 400, 'FB': 4000}  # Keskar: SB = 256, LB = 10% of the training set
GRID = (32, 64, 128, 256, 512, 1024, 2000, 4000)
QUICK_GRID = (64, 256, 1024, 4000)
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # Adam; tuned per B on validation
TUNING_SEED = 100
SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1)
CHECK_EXAMPLES = 2048  # the training-loss target is checked about this often (half an epoch)
# Keskar et al. 2017 over their six networks (Table 2, as we read it): LB tests 0.2-5.3 points
# below SB; their ε-sharpness (Table 3) is tens to hundreds of times larger for LB.
KESKAR_TEST_DROP = (0.2, 5.3)
HAND_WRITTEN = ('<!-- Text below this line is written by hand after looking at the results; '
                'the script keeps it when it rewrites this file. -->')
SHARPNESS_COLUMNS = [('full', 1e-3), ('full', 5e-4), ('subspace', 1e-3), ('subspace', 5e-4)]


def sharpness_key(space: str, epsilon: float) -> str:
  return f'sharpness_{space}_{epsilon:g}'


def train(batch_size: int, seed: int, learning_rate: float, runs_dir: pathlib.Path):
  check_every = max(1, round(CHECK_EXAMPLES / batch_size))
  config = mbx.load_config(CONFIG, [f'train.batch_size={batch_size}', f'train.seed={seed}',
                                    f'optim.learning_rate={learning_rate}',
                                    f'train.eval_every={check_every} steps'])
  return mbx.train(config, runs_dir / f'b{batch_size}_lr{learning_rate:g}_seed{seed}',
                   quiet=True)


def tune(batch_sizes, runs_dir: pathlib.Path) -> tuple[dict[int, float], list[dict]]:
  """Per batch size, the LR whose TUNING_SEED run reaches the training-loss target with the
  best validation accuracy (ties: the smaller LR)."""
  chosen, rows = {}, []
  for b in batch_sizes:
    for lr in LEARNING_RATES:
      run = train(b, TUNING_SEED, lr, runs_dir)
      rows.append({'batch_size': b, 'learning_rate': lr, 'status': run.status['status'],
                   'reached_target': 'steps_to_target' in run.status,
                   'epochs': run.status.get('epoch'),
                   'validation_accuracy': run.status.get('eval_accuracy', float('nan')),
                   'train_loss': run.status.get('train_loss', float('nan'))})
    candidates = [r for r in rows if r['batch_size'] == b and r['reached_target']]
    if not candidates:
      raise SystemExit(f'B={b}: no learning rate of {LEARNING_RATES} reached the training-loss '
                       'target; widen LEARNING_RATES')
    best = max(candidates, key=lambda r: (r['validation_accuracy'], -r['learning_rate']))
    chosen[b] = best['learning_rate']
    if chosen[b] in (min(LEARNING_RATES), max(LEARNING_RATES)):
      print(f'  warning: B={b}: the best LR {chosen[b]:g} is at the edge of {LEARNING_RATES}',
            flush=True)
    for r in rows:
      if r['batch_size'] == b:
        r['chosen'] = r['learning_rate'] == chosen[b]
    print(f'  tuned B={b}: lr {chosen[b]:g} (validation accuracy '
          f'{best["validation_accuracy"]:.3f})', flush=True)
  return chosen, rows


def unit_column_sharpness(run, epsilon: float = 1e-3) -> float:
  """φ in a random 100-dim subspace whose A has unit-norm columns (N(0, 1/n) entries), to show
  how much the subspace variant depends on A's unstated scale."""
  loss, _ = loss_fn.from_run(run)
  theta = np.asarray(jax.device_get(loss.theta), np.float64)
  a = sharpness.random_subspace(loss.dim, 100, seed=0, std=1 / np.sqrt(loss.dim))
  return sharpness.epsilon_sharpness(loss.value_and_grad, theta, epsilon,
                                     projection=a)['sharpness']


class Analyses:
  """`analysis.sharpness_analysis`, reusing any analysis in an earlier summaries.json of the same
  run, checkpoint step, parameters and settings: re-running the script redoes only what changed."""

  def __init__(self, path: pathlib.Path):
    self.cached = (list(json.loads(path.read_text())['analyses'].values())
                   if path.exists() else [])
    self.reused = self.computed = 0

  def __call__(self, run, unit_columns: bool = False, **kwargs) -> dict:
    bound = inspect.signature(analysis.sharpness_analysis).bind(run, **kwargs)
    bound.apply_defaults()
    settings = json.loads(json.dumps({k: v for k, v in bound.arguments.items()
                                      if k not in ('run', 'step')}))
    step = run.checkpoint_steps()[-1]
    fingerprint = analysis.checkpoint_sha256(run, step)
    summary = next((c for c in self.cached if c['run']['workdir'] == str(run.workdir)
                    and c['run']['step'] == step and c.get('settings') == settings
                    and c['run'].get('parameters_sha256') == fingerprint), None)
    if summary is None:
      summary = analysis.sharpness_analysis(run, **kwargs)
      self.computed += 1
    else:
      self.reused += 1
    if unit_columns and 'sharpness_unit_columns' not in summary:
      summary['sharpness_unit_columns'] = unit_column_sharpness(run)
    return summary


def row_of(run, summary: dict, **labels) -> dict:
  """One flat table row from a run and its sharpness analysis."""
  status = run.status
  row = {**labels, 'batch_size': run.config.train.batch_size, 'seed': run.config.train.seed,
         'steps': status['step'], 'epochs': status['epoch'],
         'reached_target': 'steps_to_target' in status,
         'learning_rate': run.config.optim.learning_rate,
         'train_accuracy': summary['train']['accuracy'],
         'validation_accuracy': summary.get('validation', {}).get('accuracy', float('nan')),
         'test_accuracy': summary['test']['accuracy'],
         'gap': summary['generalization_gap']['accuracy'],
         'train_loss': summary['train']['loss'], 'test_loss': summary['test']['loss'],
         'grad_norm': summary['train']['grad_norm']}
  for result in summary['sharpness']['results']:
    row[sharpness_key(result['space'], result['epsilon'])] = result['sharpness']
  if 'sharpness_unit_columns' in summary:
    row['sharpness_subspace_unit_0.001'] = summary['sharpness_unit_columns']
  curvature = summary['hessian']
  if 'top_eigenvalues' in curvature:
    row['lambda_max'] = curvature['top_eigenvalues']['eigenvalues'][0]
  if 'trace' in curvature:
    row['trace'] = curvature['trace']['trace']
    row['trace_stderr'] = curvature['trace']['stderr']
  return row


def mean_std(values) -> tuple[float, float]:
  values = [float(v) for v in values]
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(value: float, digits: int = 3) -> str:
  return f'{value:.{digits}g}'


def pm(values, scale: float = 1.0, digits: int = 3) -> str:
  mean, std = mean_std([v * scale for v in values])
  return f'{fmt(mean, digits)} ± {fmt(std, 2)}' if len(values) > 1 else fmt(mean, digits)


TABLE_COLUMNS = [  # (key, header, scale)
    ('train_accuracy', 'train acc (%)', 100), ('validation_accuracy', 'val acc (%)', 100),
    ('test_accuracy', 'test acc (%)', 100),
    ('gap', 'gap (train − test, pts)', 100), ('train_loss', 'train loss', 1),
    ('test_loss', 'test loss', 1),
    (sharpness_key('full', 1e-3), 'φ full ε=1e-3', 1),
    (sharpness_key('full', 5e-4), 'φ full ε=5e-4', 1),
    (sharpness_key('subspace', 1e-3), 'φ sub ε=1e-3', 1),
    (sharpness_key('subspace', 5e-4), 'φ sub ε=5e-4', 1),
    ('lambda_max', 'λ_max', 1), ('trace', 'tr(H)', 1)]


def regime_table(rows: list[dict]) -> list[str]:
  lines = ['| regime | batch | LR | epochs | ' + ' | '.join(h for _, h, _ in TABLE_COLUMNS)
           + ' |', '|---|---:|---:|---:|' + '---:|' * len(TABLE_COLUMNS)]
  for regime, batch_size in REGIMES.items():
    group = [r for r in rows if r['regime'] == regime]
    if not group:
      continue
    cells = [pm([r[k] for r in group], scale) for k, _, scale in TABLE_COLUMNS]
    lines.append(f'| {regime} | {batch_size} | {group[0]["learning_rate"]:g} | '
                 f'{pm([r["epochs"] for r in group])} | ' + ' | '.join(cells) + ' |')
  return lines


PAIRED_METRICS = [  # (key, label, 'difference' in points or 'ratio')
    ('test_accuracy', 'test accuracy (points)', 'difference'),
    ('validation_accuracy', 'validation accuracy (points)', 'difference'),
    ('gap', 'generalisation gap, train − test (points)', 'difference'),
    ('train_loss', 'training loss at the stop', 'difference'),
    (sharpness_key('full', 1e-3), 'ε-sharpness, full space, ε = 1e-3', 'ratio'),
    (sharpness_key('full', 5e-4), 'ε-sharpness, full space, ε = 5e-4', 'ratio'),
    (sharpness_key('subspace', 1e-3), 'ε-sharpness, subspace, ε = 1e-3', 'ratio'),
    ('lambda_max', 'λ_max', 'ratio'), ('trace', 'tr(H)', 'ratio')]


def paired_statistics(rows: list[dict]) -> list[dict]:
  """LB and FB against SB, paired by seed: a difference (accuracies in points) or a ratio
  (sharpness and curvature, through log ratios), its mean with a 95% t-interval, a paired
  t-test and an exact Wilcoxon signed-rank test, and how many seeds point each way."""
  out = []
  for other in ('LB', 'FB'):
    for key, label, kind in PAIRED_METRICS:
      pairs = [(a, b) for a, b in paired(rows, key, 'SB', other)
               if np.isfinite(a) and np.isfinite(b) and (kind == 'difference' or a > 0 < b)]
      if len(pairs) < 2:
        continue
      a, b = np.array(pairs).T
      scale = 100.0 if 'points' in label else 1.0
      values = (b - a) * scale if kind == 'difference' else np.log(b / a)
      mean, sem = float(values.mean()), float(scipy.stats.sem(values))
      half = float(scipy.stats.t.ppf(0.975, len(values) - 1) * sem)
      t_p = float(scipy.stats.ttest_1samp(values, 0.0).pvalue) if sem > 0 else float('nan')
      w_p = (float(scipy.stats.wilcoxon(values, method='exact').pvalue)
             if np.any(values != 0) else float('nan'))
      lo, hi = mean - half, mean + half
      if kind == 'ratio':
        mean, lo, hi = (float(np.exp(v)) for v in (mean, lo, hi))
      out.append({'comparison': f'{other} vs SB', 'metric': label, 'kind': kind,
                  'n': len(values), 'estimate': mean, 'ci_low': lo, 'ci_high': hi,
                  'p_t': t_p, 'p_wilcoxon': w_p, 'larger_for_other': int((values > 0).sum()),
                  'smaller_for_other': int((values < 0).sum())})
  return out


def paired_table(stats: list[dict]) -> list[str]:
  lines = ['| comparison | measure | n | estimate [95% CI] | paired t p | Wilcoxon p | '
           'seeds higher / lower |', '|---|---|---:|---|---:|---:|---|']
  for r in stats:
    estimate = (f'{r["estimate"]:+.2f} [{r["ci_low"]:+.2f}, {r["ci_high"]:+.2f}]'
                if r['kind'] == 'difference' and 'points' in r['metric'] else
                f'{r["estimate"]:+.3g} [{r["ci_low"]:+.3g}, {r["ci_high"]:+.3g}]'
                if r['kind'] == 'difference' else
                f'{r["estimate"]:.2f}× [{r["ci_low"]:.2f}, {r["ci_high"]:.2f}]')
    lines.append(f'| {r["comparison"]} | {r["metric"]} | {r["n"]} | {estimate} | '
                 f'{r["p_t"]:.2g} | {r["p_wilcoxon"]:.2g} | {r["larger_for_other"]} / '
                 f'{r["smaller_for_other"]} |')
  return lines


def grid_table(rows: list[dict], extra: tuple[str, ...] = ()) -> list[str]:
  keys = [c for c in TABLE_COLUMNS if c[0] in rows[0]]
  lines = ['| batch | ' + ''.join(f'{e} | ' for e in extra) + 'seed | epochs | '
           + ' | '.join(h for _, h, _ in keys) + ' |',
           '|---:|' + '---|' * len(extra) + '---:|---:|' + '---:|' * len(keys)]
  for r in sorted(rows, key=lambda r: (tuple(str(r[e]) for e in extra), r['batch_size'])):
    lines.append(f'| {r["batch_size"]} | ' + ''.join(f'{r[e]} | ' for e in extra)
                 + f'{r["seed"]} | {fmt(r["epochs"])} | '
                 + ' | '.join(fmt(r[k] * scale) for k, _, scale in keys) + ' |')
  return lines


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def paired(rows: list[dict], key: str, a: str, b: str) -> list[tuple[float, float]]:
  """(value for regime a, value for regime b) per seed."""
  by_seed = {}
  for r in rows:
    by_seed.setdefault(r['seed'], {})[r['regime']] = r.get(key, float('nan'))
  return [(v[a], v[b]) for _, v in sorted(by_seed.items()) if a in v and b in v]


def findings(stats: list[dict], grid_rows: list[dict]) -> list[str]:
  """Sentences computed from the numbers (no judgement beyond the stated comparisons)."""
  lines = []
  for r in stats:
    if r['metric'] not in ('test accuracy (points)', 'ε-sharpness, full space, ε = 1e-3',
                           'λ_max', 'training loss at the stop'):
      continue
    estimate = (f'{r["estimate"]:.2f}× [{r["ci_low"]:.2f}, {r["ci_high"]:.2f}]'
                if r['kind'] == 'ratio' else
                f'{r["estimate"]:+.3g} [{r["ci_low"]:+.3g}, {r["ci_high"]:+.3g}]')
    lines.append(f'- **{r["comparison"]}, {r["metric"]}**: {estimate} (95% CI, n = {r["n"]} '
                 f'paired seeds; paired t p = {r["p_t"]:.2g}, Wilcoxon p = '
                 f'{r["p_wilcoxon"]:.2g}; higher in {r["larger_for_other"]} of {r["n"]}).')
  if len(grid_rows) >= 4:
    batch = [r['batch_size'] for r in grid_rows]
    for key, label in ((sharpness_key('full', 1e-3), 'ε-sharpness (full, 1e-3)'),
                       ('lambda_max', 'λ_max'), ('test_accuracy', 'test accuracy')):
      result = scipy.stats.spearmanr(batch, [r[key] for r in grid_rows])
      lines.append(f'- Across the batch-size grid (one run per B, {len(batch)} batch sizes), '
                   f'Spearman ρ(batch size, {label}) = {result.statistic:+.2f} '
                   f'(p = {result.pvalue:.2g}).')
  return lines


def sweep_runs(sweep_dir: pathlib.Path, like) -> dict[tuple[str, int], object]:
  """Finished MNIST-1D CNN runs trained from initialisation below `sweep_dir` (runs branched
  with train.init_from are skipped): the best final test accuracy per (optimizer, batch size)."""
  best = {}
  for path in sorted(sweep_dir.rglob('config.json')):
    try:
      run = mbx.load_run(path.parent)
    except Exception:  # pylint: disable=broad-except
      continue  # not a run directory of this mbx version
    c = run.config
    if (run.status.get('status') != 'done' or c.model != like.model or c.train.init_from
        or c.data.name != like.data.name or not run.checkpoint_steps()):
      continue
    key = (c.optim.name, c.train.batch_size)
    if key not in best or (run.status.get('eval_accuracy', 0)
                           > best[key].status.get('eval_accuracy', 0)):
      best[key] = run
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='1 seed, 4 batch sizes, fewer HVPs')
  parser.add_argument('--seeds', type=int, nargs='*', default=None)
  parser.add_argument('--out', default=None)
  parser.add_argument('--runs', default=None)
  parser.add_argument('--sweep-dir', default=None)
  args = parser.parse_args()
  start = time.perf_counter()
  quick = args.quick
  seeds = args.seeds if args.seeds is not None else list(QUICK_SEEDS if quick else SEEDS)
  grid = QUICK_GRID if quick else GRID
  name = 'sharp_minima_quick' if quick else 'sharp_minima'
  out = pathlib.Path(args.out or f'results/{name}')
  runs_dir = pathlib.Path(args.runs or f'runs/{name}')
  out.mkdir(parents=True, exist_ok=True)
  settings = dict(maxiter=10, subspace_dim=100, top_k=5, lanczos_steps=20 if quick else 40,
                  trace_samples=20 if quick else 100)
  density = dict(density_runs=1 if quick else 3, density_steps=40 if quick else 80)
  grid_settings = {**settings, 'trace_samples': 20 if quick else 50, 'density_runs': 0}
  phases = {}

  def phase(name, tic):
    phases[name] = time.perf_counter() - tic
    print(f'[{time.perf_counter() - start:6.0f}s] {name} done in {phases[name]:.0f}s', flush=True)

  # ---- the LR of every batch size, tuned on validation with a seed no reported run uses
  tic = time.perf_counter()
  learning_rates, tuning_rows = tune(sorted(set(REGIMES.values()) | set(grid)), runs_dir)
  write_csv(out / 'tuning.csv', tuning_rows)
  phase('LR tuning on validation', tic)

  # ---- SB / LB / FB from the same initialisation per seed
  tic = time.perf_counter()
  runs = {(regime, seed): train(b, seed, learning_rates[b], runs_dir) for seed in seeds
          for regime, b in REGIMES.items()}
  phase('training SB/LB/FB', tic)

  tic = time.perf_counter()
  analyze = Analyses(out / 'summaries.json')
  rows, summaries, densities = [], {}, {}
  for (regime, seed), run in runs.items():
    extra = density if seed == seeds[0] else {'density_runs': 0}
    summary = analyze(run, unit_columns=True, **settings, **extra)
    summaries[f'{regime}_seed{seed}'] = summary
    rows.append(row_of(run, summary, regime=regime))
    if 'density' in summary['hessian']:
      quadrature = summary['hessian']['density']
      densities[f'{regime} (B={REGIMES[regime]})'] = hessian.density_on_grid(
          quadrature['nodes'], quadrature['weights'])
    print(f'  {regime} seed {seed}: test acc {rows[-1]["test_accuracy"]:.3f}, '
          f'φ(full, 1e-3) {rows[-1][sharpness_key("full", 1e-3)]:.3g}, '
          f'λ_max {rows[-1]["lambda_max"]:.3g}', flush=True)
  phase('sharpness and curvature of SB/LB/FB', tic)

  tic = time.perf_counter()
  interpolations = {}
  for other in ('LB', 'FB'):
    curves = []
    for seed in seeds:
      result = analysis.interpolation_analysis(runs[('SB', seed)], runs[(other, seed)])
      interpolations[f'SB_{other}_seed{seed}'] = result
      curves.append(result['rows'])
    figures.parametric_plot(
        curves, out / f'parametric_sb_{other.lower()}.png', label_a='SB (B=256)',
        label_b=f'{other} (B={REGIMES[other]})',
        title=f'θ(α) = α·θ_{other} + (1−α)·θ_SB, MNIST-1D CNN, {len(seeds)} seed(s)')
  landscapes = {f'{regime} (B={b})': analysis.landscape_analysis(runs[(regime, seeds[0])])['rows']
                for regime, b in REGIMES.items()}
  figures.landscape_1d_plot(landscapes, out / 'landscape_1d.png',
                            title=f'1-D filter-normalised landscapes, seed {seeds[0]}')
  figures.density_plot(densities, out / 'hessian_density.png',
                       title=f'Hessian eigenvalue density (SLQ), seed {seeds[0]}')
  phase('interpolation, landscapes, density', tic)

  # ---- sharpness and generalisation gap across batch sizes (seed of the first run)
  tic = time.perf_counter()
  grid_rows = []
  for b in grid:
    regime = next((r for r, rb in REGIMES.items() if rb == b), None)
    run = runs.get((regime, seeds[0])) or train(b, seeds[0], learning_rates[b], runs_dir)
    summary = (summaries[f'{regime}_seed{seeds[0]}'] if regime else
               analyze(run, **grid_settings))
    summaries.setdefault(f'grid_b{b}_seed{seeds[0]}', summary)
    grid_rows.append(row_of(run, summary, regime=regime or 'grid'))
    print(f'  grid B={b}: epochs {grid_rows[-1]["epochs"]:.0f}, test acc '
          f'{grid_rows[-1]["test_accuracy"]:.3f}, '
          f'φ(full, 1e-3) {grid_rows[-1][sharpness_key("full", 1e-3)]:.3g}', flush=True)
  phase('batch-size grid', tic)

  tic = time.perf_counter()
  sweep_dir = pathlib.Path(args.sweep_dir) if args.sweep_dir else None
  sweep_rows = []
  if sweep_dir is not None and sweep_dir.is_dir():
    like = mbx.resolve(mbx.load_config(CONFIG)).config  # resolved, as run records are
    for (optimizer, b), run in sorted(sweep_runs(sweep_dir, like).items()):
      summary = analyze(run, **grid_settings)
      summaries[f'sweep_{optimizer}_b{b}'] = summary
      sweep_rows.append({**row_of(run, summary, regime='sweep'), 'workdir': str(run.workdir),
                         'optimizer': run.config.optim.name,
                         'learning_rate': run.config.optim.learning_rate})
    phase(f'sweep checkpoints in {sweep_dir}', tic)

  metrics = [(sharpness_key('full', 1e-3), 'ε-sharpness (full, ε=1e-3)'),
             ('lambda_max', 'λ_max'), ('gap', 'train − test accuracy'),
             ('test_accuracy', 'test accuracy')]
  figures.versus_batch_size(grid_rows, out / 'sharpness_vs_batch_size.png', metrics=metrics,
                            title=f'MNIST-1D CNN, Adam, LR tuned per B, stopped at train '
                                  f'loss 0.01, seed {seeds[0]}')
  if sweep_rows:
    figures.versus_batch_size(sweep_rows, out / 'sweep_sharpness_vs_batch_size.png',
                              metrics=metrics, series='optimizer',
                              title=f'best trial per optimizer and batch size in {sweep_dir}')

  write_csv(out / 'table.csv', rows)
  write_csv(out / 'batch_size_grid.csv', grid_rows)
  if sweep_rows:
    write_csv(out / 'sweep.csv', sweep_rows)
  table = regime_table(rows)
  (out / 'table.md').write_text('\n'.join(table) + '\n')
  stats = paired_statistics(rows)
  write_csv(out / 'paired.csv', stats)
  (out / 'paired.md').write_text('\n'.join(paired_table(stats)) + '\n')
  (out / 'batch_size_grid.md').write_text('\n'.join(grid_table(grid_rows)) + '\n')
  (out / 'summaries.json').write_text(json.dumps(
      {'analyses': summaries, 'interpolations': interpolations}, indent=1) + '\n')
  wall = time.perf_counter() - start
  write_readme(out, args, seeds, grid, settings, density, grid_settings, rows, grid_rows,
               sweep_rows, sweep_dir, table, phases, wall, summaries, analyze, stats,
               learning_rates, tuning_rows)
  print('\n'.join(table))
  print(f'wall time {wall:.0f}s; wrote {out}')


def write_readme(out, args, seeds, grid, settings, density, grid_settings, rows, grid_rows,
                 sweep_rows, sweep_dir, table, phases, wall, summaries, analyze, stats,
                 learning_rates, tuning_rows) -> None:
  command = 'python experiments/sharp_minima.py' + (' --quick' if args.quick else '')
  example = next(iter(summaries.values()))
  reached = sum(r['reached_target'] for r in rows + grid_rows)
  timing_path = out / 'timings.json'
  this_run = {'wall_time_s': wall, 'phases_s': phases, 'reused_analyses': analyze.reused,
              'computed_analyses': analyze.computed}
  if not analyze.reused or not timing_path.exists():
    timing_path.write_text(json.dumps(this_run, indent=1) + '\n')
  first = json.loads(timing_path.read_text())
  phase_text = lambda t: ', '.join(f'{k} {v:.0f} s' for k, v in t['phases_s'].items())
  lines = [
      '# Sharp minima on MNIST-1D: small, large and full batch (Keskar et al. 2017)', '',
      f'Command: `{command}` — wall time **{first["wall_time_s"] / 60:.1f} min** for the '
      f'invocation that trained and analysed everything ({phase_text(first)}), on '
      f'{os.cpu_count()} CPU cores ({platform.machine()}, jax {jax.__version__}, '
      f'{jax.device_count()} {jax.default_backend()} device).'
      + (f' This README was written by a later invocation ({wall:.0f} s: {phase_text(this_run)})'
         f' that reused {analyze.reused} of {analyze.reused + analyze.computed} checkpoint '
         'analyses from summaries.json (same run, step, parameters and settings) and every finished run.'
         if analyze.reused else ''), '',
      '## Setup', '',
      f'- Model and training: `{CONFIG}` — MNIST-1D CNN ({example["parameters"]:,} parameters), '
      'Adam at a constant LR tuned per batch size (below), stopped at the first check whose '
      f'full training loss is ≤ 0.01 (checked every round({CHECK_EXAMPLES}/B) steps, at least 1; cap 300 '
      f'epochs; {reached} of {len(rows) + len(grid_rows)} runs reached it). Equal training loss '
      'makes the minima comparable: for cross-entropy sharpness and curvature keep falling as '
      'the loss does.',
      f'- LR tuning: Adam LRs {", ".join(f"{lr:g}" for lr in LEARNING_RATES)} per batch size '
      f'with seed {TUNING_SEED} (no reported run uses it); the LR whose run reached the '
      'training-loss target with the best validation accuracy is kept (`tuning.csv`): '
      + ', '.join(f'B = {b}: {lr:g}' for b, lr in sorted(learning_rates.items())) + '.'
      + ''.join(f' At B = {b} the best LR is at the edge of the grid.'
                for b, lr in sorted(learning_rates.items())
                if lr in (min(LEARNING_RATES), max(LEARNING_RATES))),
      '- Splits: the stopping rule reads the training loss, tuning reads MNIST-1D\'s '
      'validation split (1000 examples drawn with another seed), and test accuracy (the '
      'paper\'s 1000 test examples) is reported once per run, at its end.',
      f'- SB = 256, LB = 400 (10% of the 4000 training examples), FB = 4000; seeds {seeds}: '
      'each seed sets the initialisation and the data order, shared by SB, LB and FB.',
      f'- Measured on: {example["data"]}; {example["mode"]}.',
      f'- ε-sharpness: Keskar et al. eq. (3), ε ∈ {{1e-3, 5e-4}}, full space (A = I, n = '
      f'{example["parameters"]}) and a random subspace ({example["sharpness"]["subspace"]}), '
      f'maximised with SciPy L-BFGS-B under the box bounds, {settings["maxiter"]} iterations '
      f'from each of {example["sharpness"]["num_starts"]} starts (y = 0, the sign-of-gradient '
      'vertex, random vertices; the best is kept: near a minimiser the start y = 0 alone '
      'stalls on a zero gradient).',
      f'- Curvature of the training loss from Hessian-vector products (jvp of grad): λ_max = '
      f'largest Lanczos Ritz value ({settings["lanczos_steps"]} steps, residuals in '
      f'summaries.json); tr(H) by Hutchinson with {settings["trace_samples"]} Rademacher '
      f'probes (standard errors in table.csv); eigenvalue density by SLQ '
      f'({density["density_runs"]} runs × {density["density_steps"]} Lanczos steps, Gaussian '
      'σ² = 1e-5 × spectrum width, PyHessian convention) for the first seed.',
      f'- Batch-size grid {list(grid)}: seed {seeds[0]}, same training recipe; tr(H) with '
      f'{grid_settings["trace_samples"]} probes.', '',
      f'## SB vs LB vs FB (mean ± std over {len(seeds)} seed(s); std with n − 1)', '',
      *table, '',
      'φ = ε-sharpness (×100 relative loss increase, Keskar et al. eq. 3); gap = train − test '
      'accuracy; per-seed rows in `table.csv`.', '',
      f'## Paired comparisons (n = {len(seeds)} seeds; `paired.csv`)', '',
      'Differences are other − SB per seed (accuracies in points); ratios are other / SB per '
      'seed, averaged as log ratios (a geometric mean). Each comparison is tested on its own; '
      'with 5 pairs the smallest possible two-sided Wilcoxon p is 0.0625.', '',
      *paired_table(stats), '',
      '**Beside Keskar et al.** Over their six networks, as we read their Tables 2 and 3, LB '
      f'tests {KESKAR_TEST_DROP[0]:g}–{KESKAR_TEST_DROP[1]:g} points below SB and its '
      'full-space ε-sharpness is tens to hundreds of times SB\'s. Here:', '',
      *[f'- {r["comparison"]}: test accuracy {r["estimate"]:+.2f} points, ε-sharpness '
        f'(full, 1e-3) {q["estimate"]:.2f}×.'
        for r, q in zip([r for r in stats if r['metric'] == 'test accuracy (points)'],
                        [q for q in stats if q['metric'] == 'ε-sharpness, full space, ε = 1e-3'])],
      '',
      '### How much the subspace variant depends on the scale of A', '',
      'Keskar et al. do not say how the random A is drawn. With i.i.d. N(0, 1) entries (the '
      'default here) the box allows perturbations ‖Ay‖ ≈ ε√(np), and the maximum is set by '
      'curvature; with unit-norm columns (N(0, 1/n)) ‖Ay‖ ≈ ε√p, so small that the first-order '
      'term, i.e. the gradient left at the stopping point, decides it. Same seeds, ε = 1e-3:', '',
      '| regime | ‖∇f‖ at the checkpoint | φ sub, A ~ N(0, 1) | φ sub, A ~ N(0, 1/n) |',
      '|---|---:|---:|---:|',
      *[f'| {regime} | {pm([r["grad_norm"] for r in rows if r["regime"] == regime])} | '
        f'{pm([r[sharpness_key("subspace", 1e-3)] for r in rows if r["regime"] == regime])} | '
        f'{pm([r["sharpness_subspace_unit_0.001"] for r in rows if r["regime"] == regime])} |'
        for regime in REGIMES], '',
      '![parametric SB-LB](parametric_sb_lb.png)', '',
      '![parametric SB-FB](parametric_sb_fb.png)', '',
      '![density](hessian_density.png)', '',
      '![landscape](landscape_1d.png)', '',
      f'## Across batch sizes (seed {seeds[0]}, one run per B, LR tuned per B)', '',
      *grid_table(grid_rows), '',
      '![versus batch size](sharpness_vs_batch_size.png)', '']
  if sweep_rows:
    lines += [f'## Checkpoints of the sweep in `{sweep_dir}` (best trial per optimizer and batch '
              'size, runs branched with train.init_from skipped)', '',
              'These runs were trained by the sweep to its own target and budget, not to equal '
              'training loss, so their sharpness is not directly comparable with the tables '
              'above.', '', *grid_table(sweep_rows, extra=('optimizer', 'learning_rate')), '',
              '![sweep](sweep_sharpness_vs_batch_size.png)', '']
  else:
    lines += [f'No sweep checkpoints were found (looked in `{sweep_dir}`); pass '
              '`--sweep-dir DIR` to analyse a critical-batch-size sweep\'s runs.', '']
  lines += ['## What was found (computed from the numbers above)', '',
            *findings(stats, grid_rows), '']
  readme = out / 'README.md'
  kept = ''
  if readme.exists() and HAND_WRITTEN in readme.read_text():
    kept = readme.read_text().split(HAND_WRITTEN, 1)[1]
  readme.write_text('\n'.join(lines) + '\n' + HAND_WRITTEN + (kept or '\n'))


if __name__ == '__main__':
  main()
