"""Where is the critical batch size of a small character-level language model?

The sweep is configs/cbs_lm_kjv.py: a 2-layer Transformer on the King James Bible
(windows of 32 characters), AdamW at a constant LR, trained at each batch size B (in
windows) with a grid of learning rates and 2 seeds, each trial stopped when the
*validation* loss reaches the target. From its trial table (Shallue et al. 2019:
steps-to-target at the best LR per B), this reports

- McCandlish et al. 2018's fit S = S_min (1 + B_crit / B) with a bootstrap CI, refitted
  with each batch size left out and with the two smallest / largest left out;
- the run-averaged gradient noise scale B_simple measured in the same trials;
- Zhang et al. 2024's CBS (steps 20% above perfect scaling);
- Merrill et al. 2025's local CBS, by branching one run at 4 points of its training
  (1/8, 1/4, 1/2 and all of its steps to the target) with k x B for a fixed number of
  tokens, to see whether the CBS grows as the loss falls.

    python experiments/critical_batch_size_lm.py            # the study, 2 worker processes
    python experiments/critical_batch_size_lm.py --quick    # 3 batch sizes, 1 seed (checking)

Re-running resumes (finished trials and branches are reused). Outputs:
results/critical_batch_size_lm/ (with --quick: results/critical_batch_size_lm_quick/):
trials.csv, per_batch_size.csv, cbs_summary.csv, fit_sensitivity.csv, local_cbs.csv,
steps_vs_batch_size.png, pareto.png, best_learning_rate.png, lr_heatmap.png,
local_cbs_along_training.png, local_cbs_step<N>.png, study.json and README.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import platform
import shutil
import sys
import time

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mbx  # pylint: disable=wrong-import-position
from mbx.figures import readme as readme_text  # pylint: disable=wrong-import-position
from mbx.figures.readme import fmt  # pylint: disable=wrong-import-position
from mbx.sweep import critical_batch, grid, runner  # pylint: disable=wrong-import-position

CONFIG = REPO / 'configs' / 'cbs_lm_kjv.py'
SOURCE_BATCH_SIZE = 16            # the branched run: the best trial at this B, seed 0
BRANCH_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1)  # of its steps to the target
BRANCH_FACTORS = (1, 2, 4, 8, 16, 32, 64)
BRANCH_TOLERANCE = 0.02           # validation loss (nats per character) above k = 1
DISAGREEMENT = 2.0                # B_crit vs B_simple: flag beyond this factor


def study_sweep(quick: bool) -> grid.SweepConfig:
  sweep = grid.load_sweep(CONFIG)
  if not quick:
    return sweep
  sizes = tuple(sweep.batch_sizes[i] for i in (0, len(sweep.batch_sizes) // 2, -1))
  search = tuple(dataclasses.replace(
      s, learning_rate=(s.learning_rate[0] * 2, s.learning_rate[1] / 2),
      num_learning_rates=max(3, s.num_learning_rates - 2)) for s in sweep.search)
  return dataclasses.replace(sweep, search=search, batch_sizes=sizes, seeds=(0,),
                             budgets={b: sweep.budgets[b] for b in sizes},
                             name=f'{sweep.name}_quick')


# ------------------------------------------------------------------- local CBS
def source_run(analysis, sweep_dir: pathlib.Path) -> tuple[pathlib.Path, list[int]] | None:
  """Re-trains the best seed-0 trial at SOURCE_BATCH_SIZE with checkpoints at the branch
  points; returns its directory and the branch steps (None if that B never reached it)."""
  per_b = analysis.per_batch_size
  best = per_b[per_b['batch_size'] == SOURCE_BATCH_SIZE]
  if best.empty or not np.isfinite(best['steps_to_target'].iloc[0]):
    return None
  trials = analysis.trials
  trial = trials[(trials['batch_size'] == SOURCE_BATCH_SIZE) &
                 (trials['learning_rate'] == best['learning_rate'].iloc[0]) &
                 (trials['outcome'] == 'reached')].sort_values('seed').iloc[0]
  config = mbx.load_run(sweep_dir / trial['run_dir']).config
  unit = max(1, int(trial['steps_to_target']) // 8)
  steps = sorted({max(unit, int(round(f * 8)) * unit) for f in BRANCH_FRACTIONS})
  train = dataclasses.replace(
      config.train, duration=f'{steps[-1]} steps', stop_at_target=False,
      checkpoint_every=f'{unit} steps', keep_checkpoints=len(steps) * 2 + 2,
      eval_growth=None, eval_every=f'{unit} steps', log_every=f'{max(1, unit // 4)} steps')
  config = dataclasses.replace(config, train=train, name=f'{config.name}-source')
  workdir = sweep_dir / 'local_cbs' / 'source'
  mbx.train(config, workdir, quiet=True)
  return workdir, steps


def _branch_point(args) -> tuple[pd.DataFrame, dict]:
  source, step, factors, window, seeds = args
  return critical_batch.local_cbs(source, step, factors=factors, window=window,
                                  tolerance=BRANCH_TOLERANCE, metric='eval_loss', seeds=seeds,
                                  workdir=pathlib.Path(source).parent / f'step{step}')


def local_cbs_points(source: pathlib.Path, steps: list[int], window: str, quick: bool,
                     workers: int, out: pathlib.Path) -> pd.DataFrame:
  """Merrill's local CBS at every branch step (the points in parallel processes)."""
  from mbx.figures import critical_batch as figures  # pylint: disable=import-outside-toplevel
  factors = BRANCH_FACTORS[::2] if quick else BRANCH_FACTORS
  jobs = [(str(source), step, factors, window, (0,)) for step in steps]
  if workers > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      results = pool.map(_branch_point, jobs, chunksize=1)
  else:
    results = [_branch_point(job) for job in jobs]
  rows = []
  for per_factor, summary in results:
    figures.local_cbs(per_factor, summary, out / f'local_cbs_step{summary["step"]}.png')
    per_factor.insert(0, 'branch_step', summary['step'])
    per_factor['local_cbs'] = summary['local_cbs']
    per_factor['capped'] = summary['capped']
    per_factor['lr_scaling'] = summary['lr_scaling']
    per_factor['window'] = window
    rows.append(per_factor)
  return pd.concat(rows, ignore_index=True)


def along_training(local: pd.DataFrame, source: pathlib.Path) -> pd.DataFrame:
  """One row per branch point: its step, the source's validation loss and B_simple there."""
  run = mbx.load_run(source)
  evals = run.eval_metrics.set_index('step')
  train = run.train_metrics
  rows = []
  for step, group in local.groupby('branch_step'):
    # B_simple over the log intervals that end in the eighth of training before the branch.
    window = train[(train['step'] <= step) & (train['step'] > step - max(1, step // 4))]
    noise = window['b_simple'] if 'b_simple' in window else pd.Series(dtype=float)
    rows.append({'step': int(step), 'source_eval_loss': float(evals.loc[step, 'eval_loss']),
                 'source_eval_bits_per_character':
                     float(evals.loc[step, 'eval_bits_per_character']),
                 # None: noise-limited (the k = 1 branch's seed spread exceeds the tolerance)
                 'local_cbs': None if pd.isna(cbs := group['local_cbs'].iloc[0]) else int(cbs),
                 'capped': bool(group['capped'].iloc[0]),
                 # Only k = 1 within tolerance: the local CBS is at most the source's batch.
                 'upper_bound': not pd.isna(cbs) and int(cbs) == int(
                     group.loc[group['factor'] == 1, 'batch_size'].iloc[0]),
                 'b_simple_before': float(noise.mean()) if noise.notna().any() else np.nan})
  return pd.DataFrame(rows)


# ------------------------------------------------------------------- README
def _wall_time(timings: dict) -> str:
  """The wall time of the run that trained everything, and of this one if it reused it."""
  first = timings.get('first_run') or timings
  text = (f'**Wall time: {first["total"] / 60:.1f} min** (sweep {first["sweep"] / 60:.1f}, '
          f'local CBS {first["local_cbs"] / 60:.1f}, analysis {first["analysis"] / 60:.1f}), '
          'for the run that trained every trial and branch')
  if timings['resumed']:
    text += (f'; this write-up re-ran the script, which reused them '
             f'({timings["total"] / 60:.1f} min)')
  return text + '.'


def _bound(point) -> str:
  return '≥ ' if point.capped else '≤ ' if point.upper_bound else ''


def readme(analysis, sensitivity: pd.DataFrame, points: pd.DataFrame, sweep: grid.SweepConfig,
           command: str, timings: dict, counts: dict, quick: bool, window: str) -> str:
  row = analysis.summary.iloc[0]
  per_b = analysis.per_batch_size
  base = sweep.base
  fit = 'b_crit' in row and math.isfinite(row.get('b_crit', float('nan')))
  seq_len = base.data.options['seq_len']
  lines = [
      f'# Critical batch size of a small character-level language model'
      f'{" (quick run)" if quick else ""}', '',
      f'Command: `{command}` (sweep: `configs/cbs_lm_kjv.py`; analysis alone: '
      f'`mbx analyze cbs {timings["sweep_dir"]}`).', '',
      f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, '
      f'{timings["workers"]} worker process(es). {_wall_time(timings)}', '',
      f'Workload: `kjv` characters, windows of {seq_len}; {base.model.name} '
      f'{json.dumps(base.model.options)}; AdamW (b2 {base.optim.b2}, weight decay '
      f'{base.optim.weight_decay}), constant LR. Batch sizes are in windows '
      f'(× {seq_len} = tokens). Target: **{sweep.target_metric} ≤ {sweep.target_value}** '
      f'nats per character ({sweep.target_value / math.log(2):.3f} bits) on the validation '
      f'block, evaluated at steps ceil({sweep.eval_growth}^i) (steps-to-target at most '
      f'{(sweep.eval_growth - 1) * 100:.0f}% high).', '',
      f'Grid: {len(analysis.trials)} trials — B = {", ".join(map(str, sweep.batch_sizes))}; '
      f'{sweep.search[0].num_learning_rates} learning rates per B; seeds '
      f'{", ".join(map(str, sweep.seeds))}. Outcomes: '
      + ', '.join(f'{v} {k}' for k, v in counts.items()) + '.', '',
      '## Critical batch size, four ways', '',
      '| quantity | value | how |', '|---|---|---|']
  if fit:
    lines.append(f'| B_crit (McCandlish fit) | **{fmt(row["b_crit"])}** windows '
                 f'[90% CI {fmt(row["b_crit_lo"])}, {fmt(row["b_crit_hi"])}] = '
                 f'{fmt(row["b_crit"] * seq_len)} tokens | S = S_min (1 + B_crit/B) fitted to '
                 f'S(B) on log S; S_min = {fmt(row["s_min"])} steps, E_min = '
                 f'{fmt(row["e_min"])} windows; residual bootstrap; RMS log residual '
                 f'{fmt(row["rms_log_residual"], 2)} |')
  lines += [
      f'| run-averaged B_simple | **{fmt(row["b_simple_median"])}** windows (median over B; '
      f'range {fmt(row["b_simple_min"])}–{fmt(row["b_simple_max"])}) | tr Σ / |G|² from the '
      'two-group estimates of each step, averaged over each best trial up to its target |',
      f'| Zhang et al. 20% CBS | **{fmt(row["zhang_cbs"])}** measured; '
      f'{fmt(row.get("zhang_cbs_fit"))} from the fit | S(B)·B / (S(B₀)·B₀) = 1.2 |']
  if not points.empty:
    text = ', '.join(f'{_bound(p)}{p.local_cbs} at step {p.step}' for p in points.itertuples())
    lines.append(f'| Merrill et al. local CBS | {text} | branches of the best B = '
                 f'{SOURCE_BATCH_SIZE} run with k·B, LR × √k, {window} each; the largest k·B '
                 f'within {BRANCH_TOLERANCE} nats of k = 1 (≤: no k > 1 was; one seed per '
                 'branch) |')
  ratio = row.get('b_crit_over_b_simple', float('nan'))
  if fit and math.isfinite(ratio):
    agree = 1 / DISAGREEMENT <= ratio <= DISAGREEMENT
    lines += ['', f'B_crit / B_simple = {ratio:.2f}: '
              + (f'they agree within {DISAGREEMENT:g}×.' if agree else
                 f'**they disagree by more than {DISAGREEMENT:g}×.** B_simple equals the noise '
                 'scale that predicts B_crit only when the Hessian is isotropic (McCandlish '
                 'eq. 2.8 vs 2.10), and it is measured on the raw gradient while Adam '
                 'preconditions the step.')]
  if fit and not sensitivity.empty:
    values = sensitivity['b_crit'].to_numpy()
    lines += ['', '### How much the fit depends on the batch sizes included', '',
              f'Refitting with subsets of the batch sizes gives B_crit from {fmt(values.min())} '
              f'to {fmt(values.max())} (all: {fmt(values[0])}); `fit_sensitivity.csv`. '
              'Lack-of-fit F test of the curve against the seeds\' scatter: F = '
              f'{fmt(row.get("lack_of_fit_f"))}, p = {fmt(row.get("lack_of_fit_p"), 2)} '
              '(a small p would mean the curve misses S(B) by more than seed noise).', '',
              '| batch sizes used | n | S_min | E_min | B_crit |', '|---|---:|---:|---:|---:|']
    for r in sensitivity.itertuples():
      lines.append(f'| {r.subset} | {r.num_batch_sizes} | {fmt(r.s_min)} | {fmt(r.e_min)} | '
                   f'{fmt(r.b_crit)} |')
  if not points.empty:
    lines += ['', '### Does the local CBS grow as the loss falls?', '',
              '| branch step | source validation loss (nats) | bits/char | local CBS (windows) '
              '| B_simple of the source over the quarter before it (windows) |',
              '|---:|---:|---:|---:|---:|']
    for p in points.itertuples():
      lines.append(f'| {p.step} | {p.source_eval_loss:.4f} | '
                   f'{p.source_eval_bits_per_character:.3f} | '
                   f'{_bound(p)}{p.local_cbs} | {fmt(p.b_simple_before)} |')
  lines += ['', '## Steps to target per batch size (Shallue: best LR per B)', '',
            '| B (windows) | tokens per step | steps S [per seed] | tokens to target | best LR | '
            'best LR at the edge of its search? | reached / not / diverged | B_simple |',
            '|---:|---:|---:|---:|---:|---|---|---:|']
  for r in per_b.itertuples():
    seeds = ', '.join(f'{s:g}' for s in r.seed_steps)
    lines.append(f'| {r.batch_size} | {r.batch_size * seq_len} | {fmt(r.steps_to_target, 4)} '
                 f'[{seeds}] | {fmt(r.examples_to_target * seq_len, 3)} | '
                 f'{fmt(r.learning_rate)} | {"**yes**" if r.best_lr_at_edge else "no"} | '
                 f'{r.num_reached} / {r.num_not_reached} / {r.num_infeasible} | '
                 f'{fmt(r.b_simple)} |')
  lines += ['', 'Warnings of the analysis (`mbx analyze cbs`): '
            + ('; '.join(analysis.warnings) if analysis.warnings else 'none') + '.']
  lines += [
      '', 'S is the mean over seeds of the best learning rate\'s steps-to-target; an LR counts '
      'only if every seed reached the target.', '',
      '## Figures', '',
      '- `steps_vs_batch_size.png` — S(B) with the perfect-scaling line, the fit and its band, '
      'B_crit and B_simple, and the three regimes the fit implies.',
      '- `pareto.png` — steps vs examples (windows) to target with the fitted hyperbola.',
      '- `best_learning_rate.png` — the best LR per B against linear and square-root scaling, '
      'with the searched range behind.',
      '- `lr_heatmap.png` — steps to target over LR × B.',
      '- `local_cbs_along_training.png` — the local CBS at each branch step beside the source '
      'run\'s B_simple, and the source\'s validation loss; `local_cbs_step<N>.png` — the '
      'branches of each point.', '',
      '## Interpretation', '', readme_text.PLACEHOLDER, '',
      '## Files', '',
      '`trials.csv` (one row per trial), `per_batch_size.csv`, `cbs_summary.csv`, '
      '`fit_sensitivity.csv`, `local_cbs.csv` (every branch), `local_cbs_points.csv`, '
      '`study.json` (timings, the sweep spec hash). Run directories: `'
      + timings['sweep_dir'] + '/`.']
  return '\n'.join(lines) + '\n'


def main() -> None:
  args = runner.study_parser(__doc__.splitlines()[0]).parse_args()
  sweep = study_sweep(args.quick)
  sweep_dir = pathlib.Path(args.sweep_dir or REPO / 'sweeps' / sweep.name)
  out = pathlib.Path(args.out or REPO / 'results' / ('critical_batch_size_lm_quick' if args.quick
                                                      else 'critical_batch_size_lm'))
  out.mkdir(parents=True, exist_ok=True)
  command = 'python experiments/critical_batch_size_lm.py' + (' --quick' if args.quick else '')

  start = time.perf_counter()
  resumed = (sweep_dir / runner.TABLE_FILE).exists()
  runner.run_parallel(sweep, sweep_dir, args.workers)
  sweep_time = time.perf_counter() - start

  tic = time.perf_counter()
  table = runner.load_table(sweep_dir)
  analysis = critical_batch.analyze(table, num_samples=args.bootstrap)
  from mbx.figures import critical_batch as figures  # pylint: disable=import-outside-toplevel
  figures.save_all(analysis, out)
  per_b = analysis.per_batch_size
  sensitivity = next(iter(analysis.sensitivity.values()), pd.DataFrame())
  analysis_time = time.perf_counter() - tic

  tic = time.perf_counter()
  local, points = pd.DataFrame(), pd.DataFrame()
  window = None  # the branches' data, once there is a source run
  if not args.no_local_cbs:
    found = source_run(analysis, sweep_dir)
    if found is not None:
      source, steps = found
      # Every branch trains on the tokens the source saw in its first quarter.
      seq_len = sweep.base.data.options['seq_len']
      window = f'{steps[-1] // 4 * SOURCE_BATCH_SIZE * seq_len} tokens'
      local = local_cbs_points(source, steps, window, args.quick, args.workers, out)
      points = along_training(local, source)
      run = mbx.load_run(source)
      figures.local_cbs_along_training(points, run.train_metrics, run.eval_metrics,
                                       out / 'local_cbs_along_training.png')
  local_time = time.perf_counter() - tic
  total = time.perf_counter() - start

  shutil.copyfile(sweep_dir / runner.TABLE_FILE, out / 'trials.csv')
  per_b.to_csv(out / 'per_batch_size.csv', index=False)
  analysis.summary.to_csv(out / 'cbs_summary.csv', index=False)
  sensitivity.to_csv(out / 'fit_sensitivity.csv', index=False)
  if not local.empty:
    local.to_csv(out / 'local_cbs.csv', index=False)
    points.to_csv(out / 'local_cbs_points.csv', index=False)
  timings = {'total': total, 'sweep': sweep_time, 'analysis': analysis_time,
             'local_cbs': local_time, 'workers': args.workers, 'resumed': resumed,
             'sweep_dir': os.path.relpath(sweep_dir, REPO)}
  # The first run that trained everything keeps its timings across re-runs that reuse it.
  previous = json.loads((out / 'study.json').read_text()) if (out / 'study.json').exists() else {}
  timings['first_run'] = (previous.get('first_run') if resumed else None) or {
      k: timings[k] for k in ('total', 'sweep', 'analysis', 'local_cbs')}
  counts = runner.outcome_counts(table)
  (out / 'study.json').write_text(json.dumps({
      **timings, 'spec_hash': grid.spec_hash(sweep), 'trials': len(table),
      'outcomes': counts, 'branch_window': window}, indent=2) + '\n')
  text = readme(analysis, sensitivity, points, sweep, command, timings, counts, args.quick,
                window)
  readme_text.write_keeping_interpretation(out / 'README.md', text)
  print(text)


if __name__ == '__main__':
  main()
