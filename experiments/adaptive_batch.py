"""Does adapting the batch size during training beat the best fixed batch?

Compares, on the same target and the same budget, a fixed small batch B0, the best fixed
batch B* (the power of two nearest the critical batch size measured by the CBS study, at its
best LR there), and four policies that start from B0 at B0's best LR (train.batch_policy,
docs/adaptive_batch.md): batch-size warmup (Merrill et al. 2025; one rung up whenever the next
rung is at most the running B_simple), AdaScale (Johnson et al. 2020; B = B*, the LR scaled by
the gain r and the schedule advanced by r, Adam's √r variant), the noise-scale policy
(McCandlish et al. 2018; B = B_simple rounded to the ladder) and goodput (Pollux; B maximising
measured throughput × statistical efficiency). Every run stops at the target, on the
validation split; test is evaluated once at the end. 3 seeds each.

Workloads: the MNIST-1D CNN with Adam to validation accuracy 0.85 (the critical-batch-size
study's target; B0 and B* from results/critical_batch_size/per_batch_size.csv), and the
KJV character Transformer with AdamW to validation loss 1.75 nats (the LM study's target;
from results/critical_batch_size_lm/per_batch_size.csv).

    python experiments/adaptive_batch.py                      # both workloads, ~25 min
    python experiments/adaptive_batch.py --workloads mnist1d  # ~8 min
    python experiments/adaptive_batch.py --quick              # 1 seed, MNIST-1D only

Outputs: results/adaptive_batch/ (README.md, runs.csv, summary.csv, decisions_<workload>.png,
metric_<workload>.png); runs under runs/adaptive_batch/. Finished runs are reused.
"""
from __future__ import annotations

import argparse
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

import mbx  # pylint: disable=wrong-import-position
from mbx.figures import adaptive_batch as decision_figures  # pylint: disable=wrong-import-position
from mbx.figures import readme as readme_text  # pylint: disable=wrong-import-position
from mbx.sweep import grid  # pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  sweep_config: str          # the CBS study's sweep (its base config and target)
  per_batch_size: str        # that study's per_batch_size.csv
  base_batch_size: int       # B0
  max_batch_size: int        # the ladder's top
  budget: str                # per run; every run stops at the target first
  log_every: str             # also the policies' decision interval
  metric_label: str


WORKLOADS = {
    'mnist1d': Workload('mnist1d', 'configs/cbs_mnist1d_cnn.py',
                        'results/critical_batch_size/per_batch_size.csv', 32, 2048,
                        '60 epochs', '2048 examples', 'validation accuracy'),
    'kjv': Workload('kjv', 'configs/cbs_lm_kjv.py',
                    'results/critical_batch_size_lm/per_batch_size.csv', 16, 256,
                    '40000 examples', '2048 examples', 'validation loss (nats/char)'),
}
SEEDS = (0, 1, 2)
OPTIMIZER = {'mnist1d': 'adam', 'kjv': 'adamw'}


def best_settings(workload: Workload) -> tuple[dict, int]:
  """{B: best LR} from the CBS study's table, and B*: the power of two nearest B_crit."""
  table = pd.read_csv(REPO / workload.per_batch_size)
  table = table[table['optimizer'] == OPTIMIZER[workload.name]]
  lrs = {int(r.batch_size): float(r.learning_rate) for r in table.itertuples()
         if np.isfinite(r.steps_to_target)}
  summary = pd.read_csv(REPO / pathlib.Path(workload.per_batch_size).parent / 'cbs_summary.csv')
  b_crit = float(summary[summary['optimizer'] == OPTIMIZER[workload.name]]['b_crit'].iloc[0])
  best = min(lrs, key=lambda b: abs(np.log2(b) - np.log2(b_crit)) if b & (b - 1) == 0
             else np.inf)
  return lrs, best


def configs(workload: Workload, seed: int) -> dict[str, mbx.Config]:
  """Label -> config for each fixed batch and policy of the comparison."""
  sweep = grid.load_sweep(REPO / workload.sweep_config)
  lrs, best = best_settings(workload)
  b0 = workload.base_batch_size
  base = dataclasses.replace(
      sweep.base,
      optim=dataclasses.replace(sweep.base.optim, name=OPTIMIZER[workload.name],
                                learning_rate=lrs[b0], base_batch_size=b0),
      train=dataclasses.replace(
          sweep.base.train, batch_size=b0, seed=seed, duration=workload.budget,
          log_every=workload.log_every, eval_growth=1.05, noise_scale=True,
          target_metric=sweep.target_metric, target_value=sweep.target_value,
          stop_at_target=True, checkpoint_every=None),
      name=f'adaptive_{workload.name}')
  ladder = dict(min_batch_size=b0, max_batch_size=workload.max_batch_size)

  def with_train(**fields):
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **fields))

  fixed_best = dataclasses.replace(
      with_train(batch_size=best),
      optim=dataclasses.replace(base.optim, learning_rate=lrs[best], base_batch_size=best))
  return {
      f'fixed B0 = {b0}': base,
      f'fixed B* = {best}': fixed_best,
      'warmup': with_train(batch_policy='warmup', **ladder),
      'adascale': with_train(batch_policy='adascale', batch_size=best),
      'noise_scale': with_train(batch_policy='noise_scale', **ladder),
      'goodput': with_train(batch_policy='goodput', **ladder),
  }


def run_row(label: str, run: mbx.Run, workload: Workload) -> dict:
  s = run.status
  metric = mbx.load_run(run.workdir).config.train.target_metric.partition('_')[2]
  return {'workload': workload.name, 'policy': label, 'seed': run.config.train.seed,
          'status': s['status'], 'reached': 'steps_to_target' in s,
          'steps_to_target': s.get('steps_to_target'),
          'examples_to_target': s.get('examples_to_target'),
          'tokens_to_target': s.get('tokens_to_target', s.get('examples_to_target')),
          # The wall clock to the target less compile_time (compilation and a policy's
          # decisions): compiled steps are shared by the runs of this process, so only the
          # first run of a shape would pay for them.
          'wall_time_to_target': (s['wall_time_to_target'] - s.get('compile_time', 0.0)
                                  if 'wall_time_to_target' in s else None),
          'compile_time': s.get('compile_time'),
          'validation': s.get(f'eval_{metric}'), 'test': s.get(f'test_{metric}'),
          'final_batch_size': int(run.train_metrics['batch_size'].iloc[-1]),
          'max_batch_size': int(run.train_metrics['batch_size'].max()),
          'wall_time': s.get('wall_time'), 'workdir': str(run.workdir)}


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
  out = []
  for (workload, policy), g in rows.groupby(['workload', 'policy'], sort=False):
    reached = g[g['reached']]
    entry = {'workload': workload, 'policy': policy, 'n': len(g), 'reached': len(reached)}
    for column in ('steps_to_target', 'examples_to_target', 'wall_time_to_target',
                   'validation', 'test', 'max_batch_size'):
      values = reached[column].astype(float) if column.endswith('target') else g[column].astype(
          float)
      entry[f'{column}_mean'] = float(values.mean()) if len(values) else float('nan')
      entry[f'{column}_std'] = float(values.std(ddof=1)) if len(values) > 1 else float('nan')
    out.append(entry)
  return pd.DataFrame(out)


def metric_figure(runs: dict[str, list[mbx.Run]], path: pathlib.Path, label: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for name, group in runs.items():
    run = group[0]
    evals = run.eval_metrics
    metric = run.config.train.target_metric
    for ax, x in zip(axes, ('step', 'examples_seen')):
      ax.plot(evals[x], evals[metric], label=name, lw=1.2)
  for ax, x in zip(axes, ('steps', 'examples seen')):
    ax.set_xscale('log')
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    ax.axhline(next(iter(runs.values()))[0].config.train.target_value, color='0.5', ls=':')
  axes[0].legend(fontsize=8)
  fig.suptitle('seed 0; dotted: the target')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def pm(mean: float, std: float, digits: int = 3) -> str:
  if not np.isfinite(mean):
    return '—'
  return f'{mean:.{digits}g}' + (f' ± {std:.2g}' if np.isfinite(std) else '')


def comparison_lines(summary: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
  """Per workload and axis: the best policy, and each policy against the best fixed batch."""
  lines = []
  for workload, g in summary.groupby('workload', sort=False):
    g = g.set_index('policy')
    fixed = next(p for p in g.index if p.startswith('fixed B*'))
    lines.append(f'**{workload}** (against {fixed}):')
    for axis, label in (('steps_to_target', 'steps'), ('examples_to_target', 'examples'),
                        ('wall_time_to_target', 'wall time')):
      ok = g[g['reached'] == g['n']]
      if ok.empty:
        continue
      winner = ok[f'{axis}_mean'].idxmin()
      ratio = g.loc[winner, f'{axis}_mean'] / g.loc[fixed, f'{axis}_mean']
      values = {p: rows[(rows['workload'] == workload) & (rows['policy'] == p)][axis].astype(
          float).dropna().to_numpy() for p in (winner, fixed)}
      test = ''
      if winner != fixed and min(len(v) for v in values.values()) > 1:
        p_value = scipy.stats.ttest_ind(values[winner], values[fixed], equal_var=False).pvalue
        test = f'; Welch t-test against {fixed} over seeds p = {p_value:.2g}'
      lines.append(f'- fewest {label} to the target: **{winner}** '
                   f'({pm(g.loc[winner, f"{axis}_mean"], g.loc[winner, f"{axis}_std"])}, '
                   f'{ratio:.2f}× {fixed}{test}).')
    failed = g[g['reached'] < g['n']]
    for policy, r in failed.iterrows():
      lines.append(f'- {policy} missed the target in {int(r["n"] - r["reached"])} of '
                   f'{int(r["n"])} seeds within the budget.')
    lines.append('')
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workloads', nargs='*', default=list(WORKLOADS))
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default=None)
  parser.add_argument('--runs', default=None)
  args = parser.parse_args()
  seeds = (0,) if args.quick else SEEDS
  workloads = ['mnist1d'] if args.quick else args.workloads
  name = 'adaptive_batch_quick' if args.quick else 'adaptive_batch'
  out = pathlib.Path(args.out or REPO / 'results' / name)
  runs_dir = pathlib.Path(args.runs or REPO / 'runs' / name)
  out.mkdir(parents=True, exist_ok=True)
  start, load = time.perf_counter(), os.getloadavg()[0]
  study_path = out / 'study.json'
  earlier = json.loads(study_path.read_text()) if study_path.exists() else {}
  rows, times, trained = [], {}, {}
  for key in workloads:
    workload = WORKLOADS[key]
    tic = time.perf_counter()
    runs: dict[str, list[mbx.Run]] = {}
    for seed in seeds:
      for label, config in configs(workload, seed).items():
        workdir = runs_dir / key / f'{label.split(" =")[0].replace(" ", "_")}_seed{seed}'
        trained[key] = trained.get(key, 0) + (not (workdir / 'status.json').exists())
        run = mbx.train(config, workdir, quiet=True)
        runs.setdefault(label, []).append(run)
        rows.append(run_row(label, run, workload))
        r = rows[-1]
        print(f'{key} {label:14s} seed {seed}: steps {r["steps_to_target"]}, examples '
              f'{r["examples_to_target"]}, wall {r["wall_time_to_target"]}, test {r["test"]}',
              flush=True)
    times[key] = time.perf_counter() - tic
    if not trained[key] and key in earlier.get('training_invocation', {}):
      times[key] = earlier['training_invocation'][key]['wall_time_s']
    decision_figures.decisions({k: v[0] for k, v in runs.items()},
                               out / f'decisions_{key}.png')
    metric_figure(runs, out / f'metric_{key}.png', workload.metric_label)
  table = pd.DataFrame(rows)
  table.to_csv(out / 'runs.csv', index=False)
  summary = summarize(table)
  summary.to_csv(out / 'summary.csv', index=False)
  wall = time.perf_counter() - start
  # Per workload, the invocation that trained its runs (a re-run that reuses them keeps it).
  invocations = dict(earlier.get('training_invocation', {}))
  for key in workloads:
    if trained[key] or key not in invocations:
      invocations[key] = {'wall_time_s': times[key], 'runs_trained': trained[key],
                          'load_average_at_start': round(load, 1),
                          'date': time.strftime('%Y-%m-%d %H:%M')}
  study_path.write_text(json.dumps(
      {'wall_time_s': wall, 'per_workload_s': times, 'seeds': list(seeds),
       'training_invocation': invocations,
       'load_average': [round(load, 1), round(os.getloadavg()[0], 1)]}, indent=1) + '\n')
  command = 'python experiments/adaptive_batch.py' + (' --quick' if args.quick else '') + (
      '' if args.quick or workloads == list(WORKLOADS) else ' --workloads ' + ' '.join(workloads))
  lines = ['# Adaptive batch size: warmup, AdaScale, noise scale, goodput', '',
           f'Command: `{command}` — wall time of the invocations that trained the runs: '
           + ', '.join(f'{k} **{v["wall_time_s"] / 60:.1f} min** ({v["runs_trained"]} runs, '
                       f'{v["date"]}, 1-minute load average {v["load_average_at_start"]} at '
                       'the start)' for k, v in invocations.items() if k in workloads)
           + f'; this README was written by one of {wall / 60:.1f} min, on '
           f'{platform.machine()} with {len(os.sched_getaffinity(0))} CPU cores. '
           f'Seeds {list(seeds)}; mean ± std '
           'over seeds that reached the target (steps, examples, wall time) or over all seeds '
           '(validation and test at the end).', '',
           'Each run stops at the target on the validation split; "validation" and "test" are '
           'the metric at that stop (test evaluated once, at the end). Wall time to the target '
           'is the loop\'s: it excludes compilation (the runs of one process share compiled '
           'steps, so only the first run of a shape pays for it; `compile_time` in runs.csv) '
           'and, because the loop counts it with compilation, the time a policy spends '
           'deciding (goodput timing every rung, the branch test); it includes the '
           'evaluations and the probe. The machine was shared with other jobs, so wall times '
           'carry that noise too.', '']
  for key in workloads:
    workload = WORKLOADS[key]
    lrs, best = best_settings(workload)
    sweep = grid.load_sweep(REPO / workload.sweep_config)
    lines += [f'## {key}: {sweep.target_metric} target {sweep.target_value}', '',
              f'B0 = {workload.base_batch_size} (LR {lrs[workload.base_batch_size]:.3g}), '
              f'B* = {best} (LR {lrs[best]:.3g}), both from `{workload.per_batch_size}`; the '
              f'ladder {workload.base_batch_size} … {workload.max_batch_size} (×2); decisions '
              f'every {workload.log_every}; budget {workload.budget}.', '',
              '| policy | reached | steps | examples | wall time (s) | largest B | validation | '
              'test |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in summary[summary['workload'] == key].itertuples():
      lines.append(
          f'| {r.policy} | {r.reached}/{r.n} | {pm(r.steps_to_target_mean, r.steps_to_target_std)} '
          f'| {pm(r.examples_to_target_mean, r.examples_to_target_std)} | '
          f'{pm(r.wall_time_to_target_mean, r.wall_time_to_target_std)} | '
          f'{pm(r.max_batch_size_mean, r.max_batch_size_std)} | '
          f'{pm(r.validation_mean, r.validation_std, 4)} | {pm(r.test_mean, r.test_std, 4)} |')
    lines += ['', f'![decisions](decisions_{key}.png)', '', f'![metric](metric_{key}.png)', '']
  lines += ['## Which policy wins on which axis (computed from the tables)', '',
            *comparison_lines(summary, table),
            '## Interpretation', '', readme_text.PLACEHOLDER, '',
            '## Files', '', '`runs.csv` (one row per run), `summary.csv`, `study.json`; run '
            f'directories under `runs/{name}/`.']
  readme_text.write_keeping_interpretation(out / 'README.md', '\n'.join(lines) + '\n')
  print(summary.to_string())
  print(f'wall time {wall / 60:.1f} min; wrote {out}')


if __name__ == '__main__':
  main()
