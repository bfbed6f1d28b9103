"""Which cheap noise-scale estimate finds the measured critical batch size?

Every committed CBS sweep (MNIST-1D CNN with Adam and with momentum, results/critical_batch_size;
the KJV character Transformer with AdamW, results/critical_batch_size_lm) and the noisy
quadratic model (SGD, whose B_crit is known exactly: mbx.measure.nqm): per workload the
measured B_crit [90% CI] beside each estimator of mbx.training.estimators (docs/science.md §20)

  * run-averaged up to the target, from in-step probes on a re-run of the sweep's best-LR
    trial at two batch sizes (seed 0, the sweep's own config and budget);
  * along training (the probes' moving averages, a figure);
  * from checkpoints: `mbx analyze noise-scale` on 4 checkpoints of the same runs (8 draws of
    512 examples, 256 windows on KJV, in 8 groups; bootstrap intervals);

their ratio to B_crit, and each estimator's overhead as a step-time ratio measured side by
side (the same config with and without the estimator, 2 alternating rounds). Then the KJV
adaptive-batch comparison (configs/adaptive_lm_kjv.py, `mbx study adaptive`) again, with the
policies reading the best estimator, 3 seeds.

    python experiments/noise_scale_estimators.py                 # ~40 min on 2 CPU cores
    python experiments/noise_scale_estimators.py --part estimators
    python experiments/noise_scale_estimators.py --part adaptive --estimator b_simple_preconditioned

Outputs: results/noise_scale_estimators/ (README.md, estimators.csv/.md, checkpoints.csv/.md,
overhead.csv/.md, ratio_to_b_crit.png, along_training.png, summary.json; adaptive_lm/ from the
adaptive study); runs under studies/noise_scale_estimators/ (reused when re-run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import time

import numpy as np
import pandas as pd

import mbx
import mbx.study
from mbx.study.context import machine, machine_text
from mbx.sweep import grid, load_sweep
from mbx.training import estimators as estimators_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / 'results' / 'noise_scale_estimators'
RUNS = REPO / 'studies' / 'noise_scale_estimators'
GOAL_RATIO, GOAL_OVERHEAD = 1.5, 0.10


@dataclasses.dataclass(frozen=True)
class Workload:
  label: str
  sweep: str                     # the CBS sweep config
  optimizer: str
  results: str | None            # the committed CBS study (None: B_crit is exact)
  batch_sizes: tuple[int, ...]   # re-run at these
  examples: int                  # per draw, post hoc


WORKLOADS = {
    'mnist1d_adam': Workload('MNIST-1D CNN, Adam', 'cbs_mnist1d_cnn.py', 'adam',
                             'critical_batch_size', (32, 128), 512),
    'mnist1d_momentum': Workload('MNIST-1D CNN, momentum', 'cbs_mnist1d_cnn.py', 'momentum',
                                 'critical_batch_size', (32, 128), 512),
    'kjv_adamw': Workload('KJV Transformer, AdamW', 'cbs_lm_kjv.py', 'adamw',
                          'critical_batch_size_lm', (16, 64), 256),
    'nqm_sgd': Workload('noisy quadratic model, SGD', 'cbs_nqm.py', 'sgd', None, (16, 64), 1024),
}
ESTIMATORS = estimators_lib.NAMES
PLAIN_FORM = {'b_simple_preconditioned': 'b_simple', 'b_noise_preconditioned': 'b_noise'}


def measured_b_crit(workload: Workload, sweep) -> dict:
  """B_crit [CI] and the best LR per B: the committed study's, or the NQM's exact ones."""
  if workload.results is None:
    from mbx.data import nqm as nqm_data  # pylint: disable=import-outside-toplevel
    from mbx.measure import nqm  # pylint: disable=import-outside-toplevel
    problem = nqm_data.problem_of(sweep.base.data.options)
    curve = nqm.exact_curve(problem, sweep.batch_sizes, sweep.target_value,
                            optimizers=(workload.optimizer,))[workload.optimizer]
    return {'b_crit': curve.b_crit, 'b_crit_lo': curve.b_crit, 'b_crit_hi': curve.b_crit,
            'source': 'exact (expected-loss recursion, mbx.measure.nqm)',
            'best_lr': dict(zip(map(int, curve.batch_sizes), map(float, curve.learning_rates))),
            'steps': dict(zip(map(int, curve.batch_sizes), map(float, curve.steps)))}
  tables = json.loads((REPO / 'results' / workload.results / 'summary.json').read_text())['tables']
  row = next(r for r in tables['cbs_summary'] if r['optimizer'] == workload.optimizer)
  per_b = [r for r in tables['per_batch_size'] if r['optimizer'] == workload.optimizer]
  return {'b_crit': row['b_crit'], 'b_crit_lo': row['b_crit_lo'], 'b_crit_hi': row['b_crit_hi'],
          'source': f'McCandlish fit, results/{workload.results} (90% bootstrap CI)',
          'best_lr': {r['batch_size']: r['learning_rate'] for r in per_b},
          'steps': {r['batch_size']: r['steps_to_target'] for r in per_b}}


def estimators_for(config) -> tuple[str, ...]:
  from mbx.optim.declared import of_name  # pylint: disable=import-outside-toplevel
  # With P = I (SGD, momentum) the preconditioned estimators are the plain ones: left out.
  has_p = of_name(config.optim.name).preconditioner not in (None, 'identity')
  return tuple(e for e in ESTIMATORS
               if has_p or not estimators_lib.ESTIMATORS[e].needs_preconditioner)


def probed_config(sweep, workload: Workload, batch_size: int, learning_rate: float,
                  expected_steps: float):
  """The sweep's trial at (B, best LR, seed 0) with every estimator on and 4 checkpoints."""
  momentum = grid.momentum_of(dataclasses.replace(sweep.base.optim, name=workload.optimizer))
  config = grid.trial_config(sweep, workload.optimizer, batch_size, learning_rate, momentum,
                             0, sweep.budgets.get(batch_size, sweep.budget))
  every = max(1, math.ceil(expected_steps / 4))
  names = estimators_for(config)
  train = dataclasses.replace(
      config.train, noise_scale=True, checkpoint_every=f'{every} steps', keep_checkpoints=8,
      noise_scale_estimators=tuple(n for n in names if n != 'b_simple')
      + (estimators_lib.PER_EXAMPLE,), curvature_every=1, per_example_count=64)
  return dataclasses.replace(config, train=train,
                             name=f'nse-{workload.optimizer}-b{batch_size}')


def train_once(config, workdir: pathlib.Path):
  """The run in `workdir`, trained unless already finished."""
  status = workdir / 'status.json'
  if status.exists() and json.loads(status.read_text()).get('status') == 'done':
    return mbx.load_run(workdir)
  return mbx.train(config, workdir, quiet=True)  # resumes an interrupted one


def overhead(sweep, workload: Workload, batch_size: int, learning_rate: float,
             rounds: int = 3, steps: int = 500) -> list[dict]:
  """Seconds per step of the same trial without probes and with each estimator (b_simple
  alone, then b_simple plus one more), alternating over `rounds`; compile time excluded."""
  momentum = grid.momentum_of(dataclasses.replace(sweep.base.optim, name=workload.optimizer))
  base = grid.trial_config(sweep, workload.optimizer, batch_size, learning_rate, momentum, 0,
                           f'{steps} steps')
  train = dataclasses.replace(base.train, stop_at_target=False, target_metric=None,
                              target_value=None, eval_every=f'{10 * steps} steps',
                              eval_growth=None, checkpoint_every=None, noise_scale=False,
                              curvature_every=1)
  settings = {'none': dict()}
  settings['b_simple'] = dict(noise_scale=True)
  for name in estimators_for(base)[1:] + (estimators_lib.PER_EXAMPLE,):
    settings[name] = dict(noise_scale=True, noise_scale_estimators=(name,))
  rows = []
  for round_ in range(rounds):
    for name, fields in settings.items():
      config = dataclasses.replace(base, train=dataclasses.replace(train, **fields),
                                   name=f'overhead-{name}')
      workdir = RUNS / 'overhead' / f'{workload.optimizer}-{name}-r{round_}-{time.time_ns()}'
      run = mbx.train(config, workdir, quiet=True)
      rows.append({'estimator': name, 'round': round_,
                   'seconds_per_step': run.status['train_time'] / run.status['step']})
  return rows


def runs_minutes(directory: pathlib.Path) -> tuple[float, int]:
  """(the summed wall time of every run under `directory`, in minutes, and their number): what
  training cost, whichever invocation trained them (a re-run reuses them)."""
  times = [json.loads(f.read_text()).get('wall_time') or 0.0
           for f in directory.glob('**/status.json')]
  return sum(times) / 60, len(times)


def ratio_text(value, b_crit, low=math.nan, high=math.nan) -> str:
  if not math.isfinite(value):
    return '—'
  interval = f' [{low:.3g}, {high:.3g}]' if math.isfinite(low) else ''
  return f'{value:.3g}{interval} ({value / b_crit:.2f}×)'


def run_estimators(parts: list[str]) -> dict:
  from mbx.measure import noise_scale  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  table, checkpoints, costs, curves = [], [], [], {}
  for key in parts:
    workload = WORKLOADS[key]
    sweep = load_sweep(REPO / 'configs' / workload.sweep)
    measured = measured_b_crit(workload, sweep)
    b_crit = measured['b_crit']
    for b in workload.batch_sizes:
      lr = measured['best_lr'][b]
      config = probed_config(sweep, workload, b, lr, measured['steps'][b])
      run = train_once(config, RUNS / key / f'b{b}')
      rows = run.train_metrics.to_dict('records')
      target_step = run.status.get('steps_to_target')
      curves[(key, b)] = run.train_metrics
      for name in estimators_for(config):
        result = estimators_lib.run_average(name, rows, until_step=target_step)
        low, high = estimators_lib.run_average_interval(name, rows, until_step=target_step)
        table.append({'workload': key, 'batch_size': b, 'learning_rate': lr,
                      'steps_to_target': target_step, 'estimator': name,
                      'b_crit': b_crit, 'b_crit_lo': measured['b_crit_lo'],
                      'b_crit_hi': measured['b_crit_hi'], 'run_average': result['value'],
                      'run_average_lo': low, 'run_average_hi': high,
                      'ratio': result['value'] / b_crit, 'reason': result['reason']})
      summary = noise_scale.noise_scale_analysis(
          run, run.checkpoint_steps, examples=workload.examples, groups=8, draws=8,
          estimators=estimators_for(config) + (estimators_lib.PER_EXAMPLE,),
          per_example=workload.examples)
      for r in summary['results']:
        checkpoints.append({'workload': key, 'batch_size': b, 'b_crit': b_crit, **r})
    cache = RUNS / key / 'overhead.json'  # timings are measured once; delete it to redo them
    if not cache.exists():
      b = workload.batch_sizes[-1]
      cache.write_text(json.dumps([{'workload': key, 'batch_size': b, **r} for r in
                                   overhead(sweep, workload, b, measured['best_lr'][b])]))
    costs += json.loads(cache.read_text())
  return {'table': table, 'checkpoints': checkpoints, 'costs': costs, 'curves': curves,
          'minutes': (time.perf_counter() - start) / 60}


def early_facts(result: dict) -> list[str]:
  """What the first log interval did to each run average that missed B_crit by more than
  1.5×: its numerator against the run's, or a denominator <= 0 there."""
  facts = []
  for (key, b), frame in result['curves'].items():
    rows = frame.to_dict('records')
    for name in ESTIMATORS:
      e = estimators_lib.ESTIMATORS[name]
      weight = lambda r: 1.0 if e.weight_column is None else float(r[e.weight_column])
      logged = [r for r in rows if math.isfinite(float(r.get(e.trace_column, math.nan)))
                and weight(r) > 0]  # intervals it was measured in
      if len(logged) < 2:
        continue
      first = logged[0]
      grad, trace = (float(first[c]) / weight(first) for c in (e.grad_column, e.trace_column))
      later = [float(r[e.trace_column]) / weight(r) for r in logged[1:]]
      where = f'{WORKLOADS[key].label} at B = {b}'
      if grad <= 0 and e.needs_hessian:
        facts.append(f'{name} on {where}: the first log interval\'s {e.denominator} estimate '
                     f'is {grad:.3g} (≤ 0: the loss curves down along the gradient there, or '
                     'the estimate is noise-dominated), which pulls the run average down or '
                     'makes it not measurable.')
      elif later and trace > 10 * max(np.median(later), 1e-12):
        numerator = e.label.split(' = ')[1].split('/')[0]
        facts.append(f'{name} on {where}: the first log interval\'s {numerator} estimate is '
                     f'{trace / np.median(later):.0f}× its later median, and it dominates '
                     'the run average (consistent with P = 1/(√v̂ + ε) being largest while '
                     'Adam\'s v̂ is still small).')
  return facts


def _markdown(frame: pd.DataFrame) -> str:
  from mbx.study.context import markdown_table  # pylint: disable=import-outside-toplevel
  return '\n'.join(markdown_table(frame))


def write(result: dict, parts: list[str]) -> dict:
  """Tables, figures and the README's answer; returns the per-estimator verdict."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  OUT.mkdir(parents=True, exist_ok=True)
  table = pd.DataFrame(result['table'])
  points = pd.DataFrame(result['checkpoints'])
  costs = pd.DataFrame(result['costs'])
  table.to_csv(OUT / 'estimators.csv', index=False)
  points.to_csv(OUT / 'checkpoints.csv', index=False)
  costs.to_csv(OUT / 'overhead.csv', index=False)
  # Overhead: median over rounds of each estimator's seconds per step / the probe-free one's.
  overhead_rows = []
  for key, group in costs.groupby('workload', sort=False):
    base = group[group['estimator'] == 'none'].groupby('round')['seconds_per_step'].first()
    for name, g in group[group['estimator'] != 'none'].groupby('estimator', sort=False):
      ratios = [s / base[r] for r, s in zip(g['round'], g['seconds_per_step'])]
      overhead_rows.append({'workload': key, 'estimator': name,
                            'step_time_ratio': float(np.median(ratios)),
                            'min': float(np.min(ratios)), 'max': float(np.max(ratios)),
                            'rounds': len(ratios)})
  overhead_table = pd.DataFrame(overhead_rows)
  # Per estimator and workload: the run averages (one per B) and the checkpoint estimates.
  verdict_rows = []
  for name in ESTIMATORS:
    per_workload = {}
    for key in parts:
      # With P = I (SGD, momentum) a preconditioned estimator is its plain form, measured as such.
      measured_as = name
      if table[(table['workload'] == key) & (table['estimator'] == name)].empty:
        measured_as = PLAIN_FORM.get(name, name)
      runs = table[(table['workload'] == key) & (table['estimator'] == measured_as)]
      ckpt = points[(points['workload'] == key) & (points['estimator'] == measured_as)]
      if runs.empty:
        continue
      ratios = [r for r in runs['ratio'] if math.isfinite(r)]
      ckpt_ratios = [v / b for v, b in zip(ckpt['value'], ckpt['b_crit']) if math.isfinite(v)]
      cost = overhead_table[(overhead_table['workload'] == key)
                            & (overhead_table['estimator'] == measured_as)]
      per_workload[key] = {
          'run_average_ratios': ratios, 'checkpoint_ratios': ckpt_ratios,
          'not_measurable': [r for r in runs['reason'] if isinstance(r, str)],
          'overhead': float(cost['step_time_ratio'].iloc[0]) - 1 if len(cost) else math.nan}
    if not per_workload:
      continue
    all_ratios = [r for w in per_workload.values() for r in w['run_average_ratios']]
    worst = max((max(r, 1 / r) for r in all_ratios), default=math.inf)
    complete = all(w['run_average_ratios'] for w in per_workload.values())
    verdict_rows.append({
        'estimator': name, 'workloads': len(per_workload),
        'worst_factor_from_b_crit': worst if complete else math.inf,
        'geometric_mean_ratio': float(np.exp(np.mean(np.log(all_ratios)))) if all_ratios
        else math.nan,
        'max_overhead': max((w['overhead'] for w in per_workload.values()
                             if math.isfinite(w['overhead'])), default=math.nan),
        'meets_goal': complete and worst <= GOAL_RATIO and max(
            w['overhead'] for w in per_workload.values()) <= GOAL_OVERHEAD,
        'per_workload': per_workload})
  verdict = pd.DataFrame([{k: v for k, v in r.items() if k != 'per_workload'}
                          for r in verdict_rows])
  verdict.to_csv(OUT / 'verdict.csv', index=False)
  overhead_table.to_csv(OUT / 'overhead_summary.csv', index=False)

  # Figure 1: estimator / B_crit per workload (run averages filled, checkpoints open).
  fig, ax = plt.subplots(figsize=(8.5, 4.2))
  markers = dict(zip(ESTIMATORS, 'osD^'))
  for i, key in enumerate(parts):
    for j, name in enumerate(ESTIMATORS):
      x = i + (j - 1.5) * 0.17
      runs = table[(table['workload'] == key) & (table['estimator'] == name)]
      ckpt = points[(points['workload'] == key) & (points['estimator'] == name)]
      ys = [r for r in runs['ratio'] if math.isfinite(r)]
      ax.scatter([x] * len(ys), ys, marker=markers[name], color=f'C{j}',
                 label=name if i == 0 else None, zorder=3)
      ys = [v / b for v, b in zip(ckpt['value'], ckpt['b_crit']) if math.isfinite(v)]
      ax.scatter([x + 0.06] * len(ys), ys, marker=markers[name], facecolors='none',
                 edgecolors=f'C{j}', s=18, zorder=2)
  ax.axhspan(1 / GOAL_RATIO, GOAL_RATIO, color='0.9', zorder=0, label='within 1.5× of B_crit')
  ax.axhline(1, color='k', lw=0.8)
  ax.set_yscale('log')
  ax.set_xticks(range(len(parts)), [WORKLOADS[k].label for k in parts], fontsize=8)
  ax.set_ylabel('estimator / measured B_crit')
  ax.set_title('filled: run-averaged to the target (one per B); open: from checkpoints',
               fontsize=9)
  ax.legend(fontsize=7, loc='lower right')
  ax.grid(alpha=0.3, axis='y')
  fig.tight_layout()
  fig.savefig(OUT / 'ratio_to_b_crit.png', dpi=120)
  plt.close(fig)

  # Figure 2: the moving averages along training, per workload (its larger B).
  fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.4), squeeze=False)
  for ax, key in zip(axes[0], parts):
    b = WORKLOADS[key].batch_sizes[-1]
    frame = result['curves'][(key, b)]
    b_crit = table[table['workload'] == key]['b_crit'].iloc[0]
    for j, name in enumerate(ESTIMATORS):
      if name in frame:
        values = frame[['step', name]].dropna()
        values = values[values[name] > 0]
        ax.plot(values['step'], values[name], color=f'C{j}', label=name, lw=1.2)
    ax.axhline(b_crit, color='k', ls='--', lw=1, label='measured B_crit')
    ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_title(f'{WORKLOADS[key].label}, B = {b}', fontsize=9)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('moving average (EMA 0.99)')
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(OUT / 'along_training.png', dpi=120)
  plt.close(fig)
  return {'verdict': verdict_rows, 'overhead': overhead_table, 'table': table, 'points': points}


def readme(result: dict, written: dict, parts: list[str], adaptive: dict | None) -> None:
  table, points, overhead_table = written['table'], written['points'], written['overhead']
  trained = {k: runs_minutes(RUNS / k) for k in parts}
  lines = ['# Which cheap estimate finds the critical batch size?', '',
           'Command: `python experiments/noise_scale_estimators.py`', '',
           f'Wall time: {result["minutes"]:.1f} min for the estimators in this invocation'
           + (f', {adaptive["minutes"]:.1f} min for the adaptive comparison' if adaptive else '')
           + ' (runs trained by earlier invocations are reused); the runs\' own wall times: '
           + ', '.join(f'{k} {m:.1f} min ({n} runs)' for k, (m, n) in trained.items())
           + (', the adaptive comparison {:.1f} min ({} runs)'.format(
               *runs_minutes(RUNS / 'adaptive_lm')) if adaptive else '')
           + f'; {machine_text(machine())}, shared with other studies while they trained.', '']
  verdict = sorted(written['verdict'], key=lambda r: r['worst_factor_from_b_crit'])
  lines += ['## Answer (computed from the tables below)', '']
  meeting = [r for r in verdict if r['meets_goal']]
  if meeting:
    lines.append(f'- {", ".join(r["estimator"] for r in meeting)} came within '
                 f'{GOAL_RATIO}× of the measured B_crit on every workload at ≤ '
                 f'{GOAL_OVERHEAD:.0%} overhead.')
  else:
    best = verdict[0]
    lines.append(
        f'- No estimator came within {GOAL_RATIO}× of the measured B_crit on every workload. '
        f'Closest: `{best["estimator"]}`, at worst {best["worst_factor_from_b_crit"]:.3g}× '
        f'off (geometric mean of its ratios {best["geometric_mean_ratio"]:.3g}); its '
        f'overhead at most {best["max_overhead"]:+.0%} of a step.')
  for r in verdict:
    per = '; '.join(
        f'{WORKLOADS[k].label}: '
        + (', '.join(f'{x:.2f}' for x in w['run_average_ratios']) or 'not measurable')
        + (f' (checkpoints {min(w["checkpoint_ratios"]):.2f}–{max(w["checkpoint_ratios"]):.2f})'
           if w['checkpoint_ratios'] else '')
        for k, w in r['per_workload'].items())
    lines.append(f'- `{r["estimator"]}` / B_crit, run-averaged at each B: {per}.'
                 + (' (With P = I, SGD and momentum, it is its plain form.)'
                    if r['estimator'] in PLAIN_FORM else ''))
  lines += ['- Why (from the data): every estimate is a property of the current point in '
            'training and changes along it (along_training.png), while B_crit summarises a '
            'whole run to the target; a run average weights the start, where the gradient is '
            'large and the noise scale small, so most ratios are below 1. '
            + ' '.join(early_facts(result)), '']
  if adaptive:
    lines += adaptive['lines']
  lines += ['## Per workload: measured B_crit beside each estimator', '',
            'Each estimator run-averaged up to the target on a re-run of the sweep\'s best-LR '
            'trial (seed 0) at two batch sizes [90% bootstrap interval over its log intervals], '
            'with the ratio to B_crit; "not measurable here" where the |G|²-type estimate '
            'averaged to ≤ 0.', '']
  cells = []
  for (key, b), group in table.groupby(['workload', 'batch_size'], sort=False):
    first = group.iloc[0]
    cell = {'workload': WORKLOADS[key].label, 'B': b, 'LR': f'{first["learning_rate"]:.3g}',
            'steps to target': first['steps_to_target'],
            'measured B_crit [90% CI]': f'{first["b_crit"]:.0f} [{first["b_crit_lo"]:.0f}, '
                                         f'{first["b_crit_hi"]:.0f}]'}
    for _, r in group.iterrows():
      cell[r['estimator']] = (f'not measurable here ({r["reason"]})' if isinstance(r['reason'], str)
                              else ratio_text(r['run_average'], r['b_crit'],
                                              r['run_average_lo'], r['run_average_hi']))
    cells.append(cell)
  lines += [_markdown(pd.DataFrame(cells)), '', '![ratios](ratio_to_b_crit.png)', '',
            '![along training](along_training.png)', '']
  lines += ['## From checkpoints (`mbx analyze noise-scale`)', '',
            'Each checkpoint of the same runs: 8 draws of the examples below in 8 groups; value '
            '[90% bootstrap CI over draws]. `trace_per_example` compares the two-group tr(Σ) '
            'with the exact per-example one on the same examples (mean ± std over draws).', '']
  rows = []
  for _, r in points.iterrows():
    if r['estimator'] == estimators_lib.PER_EXAMPLE:
      text = (f'two-group {r["trace_two_group"]:.4g} ± {r["two_group_std"]:.2g}, exact '
              f'{r["trace_exact"]:.4g} ± {r["exact_std"]:.2g}')
    elif isinstance(r['reason'], str):
      text = f'not measurable here ({r["reason"]})'
    else:
      text = f'{r["value"]:.3g} [{r["ci_low"]:.3g}, {r["ci_high"]:.3g}] ({r["value"] / r["b_crit"]:.2f}×)'
    rows.append({'workload': WORKLOADS[r['workload']].label, 'B': r['batch_size'],
                 'step': r['step'], 'estimator': r['estimator'], 'estimate': text})
  lines += [_markdown(pd.DataFrame(rows)), '']
  lines += ['## Overhead', '',
            'Seconds per step with the estimator (b_simple plus it) over seconds per step with no '
            'probe, the same trial for 500 steps (compile time excluded), median of 3 '
            'alternating rounds [min, max]. On one device a step has one gradient group, so '
            'the probes measure every 10th step (train.probe_every), splitting it in two; the '
            'HVPs and per-example gradients run on every measuring step '
            '(train.curvature_every = 1), as in the runs above. Timed on a machine shared with '
            'other jobs: the spread over rounds says how much to trust each ratio.', '']
  lines += [_markdown(overhead_table.assign(
      step_time_ratio=lambda f: [f'{v:.3f} [{lo:.3f}, {hi:.3f}]' for v, lo, hi in
                                 zip(f['step_time_ratio'], f['min'], f['max'])]
  ).drop(columns=['min', 'max'])), '']
  (OUT / 'README.md').write_text('\n'.join(lines))


def run_adaptive(estimator: str) -> dict:
  """The KJV adaptive comparison with the policies reading `estimator` (3 seeds)."""
  start = time.perf_counter()
  config = mbx.load_config(REPO / 'configs' / 'adaptive_lm_kjv.py')
  extra = () if estimator == 'b_simple' else (estimator,)
  config = dataclasses.replace(config, train=dataclasses.replace(
      config.train, noise_scale=True, noise_scale_estimators=extra,
      batch_policy_estimator=estimator))
  out = OUT / 'adaptive_lm'
  summary = mbx.study.run(
      'adaptive', config, out, runs=RUNS / 'adaptive_lm',
      options=mbx.study.options_of('adaptive', lr_scaling_power=0.25, fixed_grid_seeds=False),
      command=f'python experiments/noise_scale_estimators.py --part adaptive --estimator '
              f'{estimator}')
  lines = [f'## The KJV adaptive-batch comparison with `{estimator}`', '',
           f'`mbx study adaptive` on configs/adaptive_lm_kjv.py with '
           f'train.batch_policy_estimator = {estimator} (3 seeds; B0 and B* as fixed '
           'references), chosen as the new estimator measurable on KJV closest to B_crit at '
           'worst (the comparison with b_simple is results/adaptive_batch_lm); the full '
           'tables: [adaptive_lm/README.md](adaptive_lm/README.md). Its findings:', '']
  lines += [f'- {f}' for f in summary['findings']] + ['']
  return {'lines': lines, 'minutes': (time.perf_counter() - start) / 60}


def adaptive_choice(written: dict) -> str:
  """The estimator the KJV adaptive comparison is re-run with: of the new ones (b_simple's is
  results/adaptive_batch_lm already), the one measurable on KJV with the smallest worst-case
  factor from B_crit over all workloads."""
  candidates = [r for r in written['verdict'] if r['estimator'] != 'b_simple'
                and r['per_workload'].get('kjv_adamw', {}).get('run_average_ratios')]
  return min(candidates, key=lambda r: r['worst_factor_from_b_crit'])['estimator']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=('all', 'estimators', 'adaptive'), default='all')
  parser.add_argument('--workloads', nargs='+', choices=list(WORKLOADS), default=list(WORKLOADS))
  parser.add_argument('--estimator', choices=ESTIMATORS, default=None,
                      help='for the adaptive part (default: the best of the estimators part)')
  args = parser.parse_args()
  if args.part == 'adaptive':  # only the adaptive runs (the full command then reuses them)
    if args.estimator is None:
      parser.error('--part adaptive needs --estimator')
    run_adaptive(args.estimator)
    return
  parts = list(args.workloads)
  result = run_estimators(parts)
  written = write(result, parts)
  adaptive = None
  if args.part == 'all':
    adaptive = run_adaptive(args.estimator or adaptive_choice(written))
  readme(result, written, parts, adaptive)
  (OUT / 'summary.json').write_text(json.dumps(
      {'minutes': result['minutes'], 'verdict': [
          {k: v for k, v in r.items()} for r in written['verdict']]}, indent=1,
      default=float) + '\n')
  print((OUT / 'README.md').read_text())


if __name__ == '__main__':
  main()
