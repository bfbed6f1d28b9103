"""What is the critical batch size of the MNIST-1D CNN, and does the noise scale predict it?

Reproduces, on a 2-core CPU, Shallue et al. 2019 (arXiv 1811.03600) Fig. 1-style
steps-to-result vs batch size, with its three regimes (perfect scaling,
diminishing returns, maximal data parallelism), and McCandlish et al. 2018
(arXiv 1812.06162) Fig. 5-style steps-examples Pareto fit (S/S_min - 1)(E/E_min - 1) = 1,
whose B_crit = E_min / S_min is set beside the gradient noise scale B_simple
measured during the same runs. Also reported on the same runs: Zhang et al.
2024's CBS (steps 20% above perfect scaling) and Merrill et al. 2025's local CBS,
branching at the target from the best B = 16 trial of each optimizer.

The sweep is configs/cbs_mnist1d_cnn.py: momentum SGD and Adam, B = 1, 2, 4, ...,
2048, 4000 (full batch), 6 learning rates per B, 2 seeds (312 trials), each stopped
at validation accuracy 0.85 (MNIST-1D's validation split; test is evaluated once per
trial, at its end), evaluated at steps ceil(1.05^i) (steps-to-target within 5%). The
same evaluations give steps to a second, easier target (SECOND_TARGET).

    python experiments/critical_batch_size.py            # full study, 2 worker processes
    python experiments/critical_batch_size.py --quick    # 5 batch sizes, 3 LRs, 1 seed (~3 min)

Runtime on a quiet 2-core CPU: estimated 10-15 min for the full study (the README
written by the run states the measured wall time). Re-running resumes (finished
trials are skipped), so an interrupted study loses at most the trials in flight.

Outputs: runs under sweeps/cbs_mnist1d_cnn/ (one run directory per trial);
results/critical_batch_size/ (with --quick: results/critical_batch_size_quick/):
trials.csv (one row per trial), per_batch_size.csv, cbs_summary.csv, local_cbs.csv,
steps_vs_batch_size.png, pareto.png, best_learning_rate.png, lr_heatmap.png,
local_cbs_<optimizer>.png, study.json and README.md (numbers filled in from the run).
"""
from __future__ import annotations

import dataclasses
import json
import math
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

from mbx.figures import readme as readme_text  # pylint: disable=wrong-import-position
from mbx.figures.readme import fmt  # pylint: disable=wrong-import-position
from mbx.sweep import critical_batch, grid, runner  # pylint: disable=wrong-import-position

CONFIG = REPO / 'configs' / 'cbs_mnist1d_cnn.py'
QUICK_BATCH_SIZES = (2, 16, 128, 1024, 4000)
LOCAL_CBS_BATCH_SIZE = 16        # branch from the best trial at this B (it ends at the target)
LOCAL_CBS_WINDOW = '2 epochs'    # data per branch
LOCAL_CBS_TOLERANCE = 0.02       # validation loss (nats) above the k = 1 branch
SECOND_TARGET = 0.80             # Shallue et al. report >= 2 targets; the trials stop at 0.85
DISAGREEMENT = 2.0               # B_crit vs B_simple: flag beyond this factor


def study_sweep(quick: bool) -> grid.SweepConfig:
  sweep = grid.load_sweep(CONFIG)
  if not quick:
    return sweep
  # The middle three of each LR grid (c/2, c, 2c), one seed, five batch sizes.
  search = tuple(dataclasses.replace(
      s, learning_rate=(s.learning_rate[0] * 2**1.5, s.learning_rate[1] / 2**1.5),
      num_learning_rates=3) for s in sweep.search)
  return dataclasses.replace(sweep, search=search, batch_sizes=QUICK_BATCH_SIZES, seeds=(0,),
                             budgets={b: sweep.budgets[b] for b in QUICK_BATCH_SIZES},
                             name=f'{sweep.name}_quick')


def local_cbs_rows(analysis, sweep_dir: pathlib.Path, out: pathlib.Path, quick: bool,
                   num_train: int) -> pd.DataFrame:
  """Merrill et al.'s local CBS at the target, from the best trial at B = 16 per optimizer."""
  from mbx.figures import critical_batch as figures  # pylint: disable=import-outside-toplevel
  rows = []
  per_b = analysis.per_batch_size
  for optimizer in analysis.summary['optimizer']:
    best = per_b[(per_b['optimizer'] == optimizer) &
                 (per_b['batch_size'] == LOCAL_CBS_BATCH_SIZE)]
    if best.empty or not np.isfinite(best['steps_to_target'].iloc[0]):
      continue
    trials = analysis.trials
    trial = trials[(trials['optimizer'] == optimizer) &
                   (trials['batch_size'] == LOCAL_CBS_BATCH_SIZE) &
                   (trials['learning_rate'] == best['learning_rate'].iloc[0]) &
                   (trials['outcome'] == 'reached')].sort_values('seed').iloc[0]
    factors = [2**i for i in range(int(math.log2(num_train / LOCAL_CBS_BATCH_SIZE)) + 1)]
    if quick:
      factors = factors[::2]
    per_factor, summary = critical_batch.local_cbs(
        sweep_dir / trial['run_dir'], int(trial['steps_to_target']), factors=factors,
        window=LOCAL_CBS_WINDOW, tolerance=LOCAL_CBS_TOLERANCE, metric='eval_loss',
        seeds=(0,) if quick else (0, 1), workdir=sweep_dir / 'local_cbs' / optimizer)
    figures.local_cbs(per_factor, summary, out / f'local_cbs_{optimizer}.png')
    per_factor.insert(0, 'optimizer', optimizer)
    per_factor['local_cbs'] = summary['local_cbs']
    per_factor['branched_from'] = trial['trial_id']
    per_factor['branch_step'] = summary['step']
    per_factor['lr_scaling'] = summary['lr_scaling']
    per_factor['capped'] = summary['capped']
    rows.append(per_factor)
  return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


# ------------------------------------------------------------------- README
def fragility_lines(analysis) -> list[str]:
  """How much each fit depends on which batch sizes were measured, its lack of fit, and the
  analysis' warnings."""
  lines = ['## How fragile the fits are', '',
           'The bracketed intervals above are a bootstrap of the log residuals: they cover '
           'scatter under the assumed curve S = S_min (1 + B_crit / B), not doubt about the '
           'curve. Refitting on subsets of the batch sizes (`fit_sensitivity.csv`) and the '
           'lack-of-fit F test (per-B seed means against the seeds\' own scatter) show the '
           'rest:', '',
           '| optimizer | B_crit, all | leave one B out: range | without the 2 largest | '
           'without the 2 smallest | lack of fit F (p) |', '|---|---:|---|---:|---:|---|']
  summary = analysis.summary.set_index('optimizer')
  for optimizer, table in sorted(analysis.sensitivity.items()):
    by_subset = table.set_index('subset')['b_crit']
    leave_one = table[table['subset'].str.startswith('without B=')]['b_crit']
    row = summary.loc[optimizer]
    lines.append(
        f'| {optimizer} | {fmt(by_subset.get("all"))} | {fmt(leave_one.min())} – '
        f'{fmt(leave_one.max())} | {fmt(by_subset.get("without the 2 largest"))} | '
        f'{fmt(by_subset.get("without the 2 smallest"))} | '
        f'{fmt(row.get("lack_of_fit_f"))} ({fmt(row.get("lack_of_fit_p"), 2)}) |')
  lines += ['', 'Warnings from the analysis (also in `warnings.txt`):', '']
  lines += [f'- {w}' for w in analysis.warnings] or ['- none']
  return lines


def second_target_lines(analysis, second, sweep: grid.SweepConfig) -> list[str]:
  """The fits at the sweep's target and at SECOND_TARGET, side by side."""
  lines = [f'## Two targets: validation accuracy {sweep.target_value} and {SECOND_TARGET}', '',
           f'Steps to {SECOND_TARGET} come from the same evaluations (every trial passed it '
           f'on the way to {sweep.target_value} or stopped at its budget); tables in '
           f'`target_{SECOND_TARGET:g}/`.', '',
           '| optimizer | target | B_crit [90% CI] | S_min | E_min | leave one B out | '
           'batch sizes reaching it | best-LR exponent p [90% CI] |',
           '|---|---:|---|---:|---:|---|---:|---|']
  for target, result in ((sweep.target_value, analysis), (SECOND_TARGET, second)):
    summary = result.summary.set_index('optimizer')
    for optimizer, row in summary.iterrows():
      leave_one = result.sensitivity.get(optimizer)
      spread = '—'
      if leave_one is not None:
        values = leave_one[leave_one['subset'].str.startswith('without B=')]['b_crit']
        spread = f'{fmt(values.min())} – {fmt(values.max())}'
      fit = math.isfinite(row.get('b_crit', float('nan')))
      lines.append(
          f'| {optimizer} | {target} | '
          + (f'{fmt(row["b_crit"])} [{fmt(row["b_crit_lo"])}, {fmt(row["b_crit_hi"])}] | '
             f'{fmt(row["s_min"])} | {fmt(row["e_min"])} | ' if fit else '— | — | — | ')
          + f'{spread} | {int(row["num_batch_sizes"])} | {fmt(row.get("lr_exponent"), 2)} '
          f'[{fmt(row.get("lr_exponent_lo"), 2)}, {fmt(row.get("lr_exponent_hi"), 2)}] |')
  return lines


def readme(analysis, second, local: pd.DataFrame, sweep: grid.SweepConfig, command: str,
           timings: dict, counts: dict, quick: bool) -> str:
  summary = analysis.summary.set_index('optimizer')
  target = f'{sweep.target_metric} ≥ {sweep.target_value}'
  lines = [f'# Critical batch size of the MNIST-1D CNN{" (quick run)" if quick else ""}', '',
           f'Command: `{command}` (sweep: `configs/cbs_mnist1d_cnn.py`; analysis: '
           f'`mbx analyze cbs {timings["sweep_dir"]}`).', '',
           f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, '
           f'{timings["workers"]} worker process(es). **Wall time: {timings["total"] / 60:.1f} '
           f'min** (sweep {timings["sweep"] / 60:.1f} min, local CBS '
           f'{timings["local_cbs"] / 60:.1f} min, analysis and figures '
           f'{timings["analysis"] / 60:.1f} min){"; trials already finished were reused" if timings["resumed"] else ""}.',
           '', f'Grid: {len(analysis.trials)} trials — optimizers '
           f'{", ".join(s.optimizer for s in sweep.search)}; B = '
           f'{", ".join(str(b) for b in sweep.batch_sizes)}; '
           f'{sweep.search[0].num_learning_rates} learning rates per B; seeds '
           f'{", ".join(map(str, sweep.seeds))}; target {target}, stopped when reached; '
           f'evaluations at ceil(1.05^i) steps (steps-to-target ≤ 5% high). Outcomes: '
           + ', '.join(f'{v} {k}' for k, v in counts.items()) + '.', '',
           '## Critical batch size, three ways, beside the noise scale', '',
           '| optimizer | B_crit (McCandlish fit) [90% CI] | S_min [90% CI] | E_min [90% CI] '
           '| Zhang 20% CBS: measured / from fit | local CBS (Merrill) at the target | '
           'run-averaged B_simple: median [min, max] over B | B_crit / B_simple |',
           '|---|---|---|---|---|---|---|---|']
  notes = []
  for optimizer, row in summary.iterrows():
    local_text = '—'
    if not local.empty and optimizer in set(local['optimizer']):
      first = local[local['optimizer'] == optimizer].iloc[0]
      value = ('noise-limited' if pd.isna(first['local_cbs']) else
               f'{"≥ " if first["capped"] else ""}{int(first["local_cbs"])}')
      local_text = f'{value} (from B = {LOCAL_CBS_BATCH_SIZE} at step {first["branch_step"]})'
    fit = 'b_crit' in row and math.isfinite(row.get('b_crit', float('nan')))
    ratio = row.get('b_crit_over_b_simple', float('nan'))
    lines.append(
        f'| {optimizer} | '
        + (f'**{fmt(row["b_crit"])}** [{fmt(row["b_crit_lo"])}, {fmt(row["b_crit_hi"])}] | '
           f'{fmt(row["s_min"])} [{fmt(row["s_min_lo"])}, {fmt(row["s_min_hi"])}] | '
           f'{fmt(row["e_min"])} [{fmt(row["e_min_lo"])}, {fmt(row["e_min_hi"])}] | '
           if fit else '— | — | — | ')
        + f'{fmt(row["zhang_cbs"])} / {fmt(row.get("zhang_cbs_fit"))} | {local_text} | '
        f'**{fmt(row["b_simple_median"])}** [{fmt(row["b_simple_min"])}, '
        f'{fmt(row["b_simple_max"])}] | {fmt(ratio, 2)} |')
    if fit and math.isfinite(ratio) and not 1 / DISAGREEMENT <= ratio <= DISAGREEMENT:
      notes.append(
          f'- **{optimizer}: the fitted B_crit and the measured B_simple disagree by more than '
          f'{DISAGREEMENT:g}× (B_crit / B_simple = {ratio:.2f}).** McCandlish et al. predict '
          'B_crit ≈ B_noise, and B_simple equals B_noise only when the Hessian is a multiple of '
          'the identity (their eq. 2.8 vs 2.10); B_simple also changes along training (it grows as '
          'the loss falls) and with the optimizer (Adam preconditions the update, B_simple is '
          'measured on the raw gradient). Merrill et al. 2025 found directly that the noise scale '
          'is not a reliable proxy for the CBS; the local CBS column is their direct measurement.')
    elif fit and math.isfinite(ratio):
      notes.append(f'- {optimizer}: B_crit and B_simple agree within {DISAGREEMENT:g}× '
                   f'(ratio {ratio:.2f}).')
  lines += [''] + notes + [
      '', 'B_simple of a trial is tr(Σ)/|G|² from the unbiased two-batch estimates averaged '
      'over the run up to the target (numerator and denominator separately, McCandlish App. '
      'A.1), logged for free from the 2 micro-batches of each step (B ≥ 2); the table gives '
      'the median over batch sizes of the best trial at each B. Local CBS: the best trial at '
      f'B = {LOCAL_CBS_BATCH_SIZE} is branched at the step it reached the target with k·B, the '
      'LR scaled linearly (momentum) or by √k (Adam), each branch trained on '
      f'{LOCAL_CBS_WINDOW} of data; the local CBS is the largest k·B whose test loss stays '
      f'within {LOCAL_CBS_TOLERANCE} nats of k = 1 in validation loss (local_cbs.csv).', '',
      *fragility_lines(analysis), '',
      *second_target_lines(analysis, second, sweep), '',
      '## Steps to target per batch size (Shallue: minimum over the LR search)', '',
      '| optimizer | B | steps S | examples E = B·S | best LR | lr / (1 − m) | reached / '
      'not reached / diverged | B_simple |', '|---|---:|---:|---:|---:|---:|---|---:|']
  for _, row in analysis.per_batch_size.iterrows():
    lines.append(f'| {row["optimizer"]} | {row["batch_size"]} | {fmt(row["steps_to_target"], 4)}'
                 f' | {fmt(row["examples_to_target"], 4)} | {fmt(row["learning_rate"])} | '
                 f'{fmt(row["effective_learning_rate"])} | {row["num_reached"]} / '
                 f'{row["num_not_reached"]} / {row["num_infeasible"]} | '
                 f'{fmt(row["b_simple"])} |')
  lines += [
      '', 'S is the mean over seeds of the best learning rate\'s steps-to-target; a learning '
      'rate counts only if every seed reached the target.', '',
      '## Figures', '',
      '- `steps_vs_batch_size.png` — steps to target vs B (log2–log2), all optimizers, then '
      'one panel each: measured S(B) (vertical bars: the seeds), the perfect-scaling line '
      'S(B0)·B0/B, the fit S_min(1 + B_crit/B) with its 90% bootstrap band, the fitted B_crit '
      '(solid vertical line) and the run-averaged B_simple (dash-dot), and the regimes the fit '
      'implies shaded: perfect scaling (B < B_crit/5, within 20% of linear scaling), '
      'diminishing returns, maximal data parallelism (B > 5·B_crit, within 20% of S_min).',
      '- `pareto.png` — steps vs examples to target with the fitted hyperbola '
      '(S/S_min − 1)(E/E_min − 1) = 1 and its asymptotes S_min, E_min (McCandlish Fig. 5 style).',
      '- `best_learning_rate.png` — the best LR and lr/(1 − momentum) per B against linear and '
      'square-root scaling from the smallest B; pale bars show the searched range, so a best '
      'LR at the edge of its bar means the search range was too narrow there.',
      '- `lr_heatmap.png` — steps to target over LR × B (colour), infeasible (diverged, red ×) '
      'and not-reached (open circles) trials, the best per B outlined.',
      '- `local_cbs_<optimizer>.png` — the local-CBS branches: test loss after the window vs '
      'k·B, the tolerance band and the local CBS.', '',
      '## Interpretation', '', readme_text.PLACEHOLDER, '',
      '## Files', '',
      '`trials.csv` (one row per trial: optimizer, batch_size, learning_rate, momentum, seed, '
      'status, outcome, steps_to_target, examples_to_target, best_metric (validation), '
      'test_metric (test accuracy at the trial\'s end), wall_time, b_simple, ...), '
      '`per_batch_size.csv`, `cbs_summary.csv`, `fit_sensitivity.csv`, `warnings.txt`, '
      f'`local_cbs.csv`, `target_{SECOND_TARGET:g}/` (the same for the second target), '
      '`study.json` (timings, the sweep spec hash). Run directories: `'
      + timings['sweep_dir'] + '/trials/`.']
  return '\n'.join(lines) + '\n'


def main() -> None:
  args = runner.study_parser(__doc__.splitlines()[0]).parse_args()
  sweep = study_sweep(args.quick)
  sweep_dir = pathlib.Path(args.sweep_dir or REPO / 'sweeps' / sweep.name)
  out = pathlib.Path(args.out or REPO / 'results' /
                     ('critical_batch_size_quick' if args.quick else 'critical_batch_size'))
  out.mkdir(parents=True, exist_ok=True)
  command = 'python experiments/critical_batch_size.py' + (' --quick' if args.quick else '') + (
      f' --workers {args.workers}' if args.workers != 2 else '')

  start = time.perf_counter()
  resumed = (sweep_dir / runner.TABLE_FILE).exists()
  runner.run_parallel(sweep, sweep_dir, args.workers)
  sweep_time = time.perf_counter() - start

  tic = time.perf_counter()
  table = runner.load_table(sweep_dir)
  analysis = critical_batch.analyze(table, num_samples=args.bootstrap)
  second = critical_batch.analyze(runner.trial_table(sweep_dir, SECOND_TARGET),
                                  num_samples=args.bootstrap)
  from mbx.figures import critical_batch as figures  # pylint: disable=import-outside-toplevel
  figures.save_all(analysis, out)
  second_out = out / f'target_{SECOND_TARGET:g}'
  second_out.mkdir(exist_ok=True)
  figures.save_all(second, second_out)
  second.per_batch_size.to_csv(second_out / 'per_batch_size.csv', index=False)
  second.summary.to_csv(second_out / 'cbs_summary.csv', index=False)
  analysis_time = time.perf_counter() - tic

  tic = time.perf_counter()
  local = pd.DataFrame()
  if not args.no_local_cbs:
    from mbx import data  # pylint: disable=import-outside-toplevel
    info = data.dataset_info(sweep.base.data.name, sweep.base.data.data_dir)
    local = local_cbs_rows(analysis, sweep_dir, out, args.quick,
                           num_train=info.num_examples[sweep.base.data.train_split])
  local_time = time.perf_counter() - tic
  total = time.perf_counter() - start

  shutil.copyfile(sweep_dir / runner.TABLE_FILE, out / 'trials.csv')
  analysis.per_batch_size.to_csv(out / 'per_batch_size.csv', index=False)
  analysis.summary.to_csv(out / 'cbs_summary.csv', index=False)
  if analysis.sensitivity:
    pd.concat([t.assign(optimizer=o) for o, t in analysis.sensitivity.items()],
              ignore_index=True).to_csv(out / 'fit_sensitivity.csv', index=False)
  (out / 'warnings.txt').write_text(''.join(f'{w}\n' for w in analysis.warnings))
  if not local.empty:
    local.to_csv(out / 'local_cbs.csv', index=False)
  timings = {'total': total, 'sweep': sweep_time, 'analysis': analysis_time,
             'local_cbs': local_time, 'workers': args.workers, 'resumed': resumed,
             'sweep_dir': os.path.relpath(sweep_dir, REPO)}
  (out / 'study.json').write_text(json.dumps({
      **timings, 'spec_hash': grid.spec_hash(sweep), 'trials': len(table),
      'outcomes': runner.outcome_counts(table)}, indent=2) + '\n')
  text = readme(analysis, second, local, sweep, command, timings, runner.outcome_counts(table),
                args.quick)
  readme_text.write_keeping_interpretation(out / 'README.md', text)
  for _, row in analysis.summary.iterrows():
    print(f'{row["optimizer"]}: B_crit = {row.get("b_crit", float("nan")):.1f} '
          f'[{row.get("b_crit_lo", float("nan")):.1f}, {row.get("b_crit_hi", float("nan")):.1f}], '
          f'Zhang CBS = {row["zhang_cbs"]:.1f}, run-averaged B_simple = '
          f'{row["b_simple_median"]:.1f}')
  if not local.empty:
    for optimizer, group in local.groupby('optimizer'):
      print(f'{optimizer}: local CBS = {group["local_cbs"].iloc[0]}')
  print(f'wall time {total / 60:.1f} min; results in {out}')


if __name__ == '__main__':
  main()
