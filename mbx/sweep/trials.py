"""A sweep directory's layout and its tidy trial table, read from the trials' run directories
without JAX (a notebook, `mbx analyze cbs` and `mbx report` build it without the training
stack).

    <sweep>/sweep.json          the grid spec, its trials and the task's metric directions
    <sweep>/trials/<trial_id>/  each trial's run directory
    <sweep>/trials.csv          the table: one row per trial of the grid

The noise-scale columns: for every estimator of mbx.training.estimators that a trial logged,
`<name>` is its run average up to the steps to target and `<name>_reason` why it is not
measurable there (empty when it is); `b_simple` is always a column, as in tables written before
the other estimators, and the other columns appear only in sweeps whose trials logged them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import pandas as pd

from mbx import config as config_lib
from mbx.sweep import grid as grid_lib
from mbx.sweep import steps_to_target as stt
from mbx.training import estimators
from mbx.training.run_files import read_jsonl

SPEC_FILE = 'sweep.json'
TABLE_FILE = 'trials.csv'
TRIALS_DIR = 'trials'
# Shallue et al.'s trial statuses, refined: 'infeasible' = diverged.
OUTCOMES = ('reached', 'not_reached', 'infeasible', 'incomplete')
TABLE_COLUMNS = ('trial_id', 'optimizer', 'batch_size', 'learning_rate', 'momentum',
                 'effective_learning_rate', 'seed', 'budget', 'status', 'outcome',
                 'steps_to_target', 'steps_to_target_lower', 'examples_to_target',
                 'best_metric', 'final_metric', 'test_metric', 'steps', 'examples_seen',
                 'wall_time', 'train_time', 'compile_time', 'b_simple', 'b_simple_final', 'reason',
                 'run_dir')


def trial_dir(sweep_dir: str | pathlib.Path, trial: grid_lib.Trial | str) -> pathlib.Path:
  trial_id = trial if isinstance(trial, str) else trial.id
  return pathlib.Path(sweep_dir) / TRIALS_DIR / trial_id


def read_status(run_dir: pathlib.Path) -> dict[str, Any]:
  path = run_dir / 'status.json'
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def load_spec(sweep_dir: str | pathlib.Path) -> tuple[grid_lib.SweepConfig, list[dict]]:
  spec = _read_spec(sweep_dir)
  return grid_lib.from_dict(spec['sweep']), spec['trials']


def _read_spec(sweep_dir: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(sweep_dir) / SPEC_FILE
  if not path.exists():
    raise FileNotFoundError(f'{sweep_dir}: not a sweep directory (no {SPEC_FILE})')
  return json.loads(path.read_text())


def metric_directions(spec: dict[str, Any], sweep: grid_lib.SweepConfig) -> dict[str, str]:
  """The task's metrics and which way is better, as sweep.json records them; a sweep written
  before it did resolves its task (which loads JAX)."""
  if 'metric_directions' in spec:
    return dict(spec['metric_directions'])
  from mbx.tasks import resolve_task  # pylint: disable=import-outside-toplevel
  return dict(resolve_task(sweep.base.task.name, sweep.base.task.options).metrics)


# -------------------------------------------------------------------- table
def trial_result(run_dir: pathlib.Path, target_metric: str, target_value: float,
                 directions: dict[str, str] | None = None) -> dict[str, Any]:
  """Status, steps-to-target, best metric, wall time and noise-scale estimates of one trial."""
  status = read_status(run_dir)
  evals = read_jsonl(run_dir / 'eval_metrics.jsonl')
  logs = read_jsonl(run_dir / 'train_metrics.jsonl')
  state = status.get('status', 'pending')
  row: dict[str, Any] = {'status': state}
  row.update(stt.summarize([r['step'] for r in evals], [r['examples_seen'] for r in evals],
                           [_float(r.get(target_metric)) for r in evals], target_value,
                           target_metric, directions))
  if state == 'diverged':
    outcome = 'infeasible'
  elif row['steps_to_target'] is not None:
    outcome = 'reached'
  elif state == 'done':
    outcome = 'not_reached'
  else:
    outcome = 'incomplete'
  row['outcome'] = outcome
  name = target_metric.partition('_')[2] if target_metric.startswith('eval_') else None
  row['test_metric'] = _float(status.get(f'test_{name}')) if name else float('nan')
  row.update(steps=status.get('step'), examples_seen=status.get('examples_seen'),
             wall_time=status.get('wall_time'), train_time=status.get('train_time'),
             compile_time=status.get('compile_time'), reason=status.get('reason'))
  row['b_simple'] = row['b_simple_final'] = float('nan')
  row.update(estimator_columns(logs, row['steps_to_target']))
  noisy = [r for r in logs if 'trace_estimate' in r]
  if noisy:
    row['b_simple_final'] = _float(noisy[-1].get('b_simple'))
  return row


def estimator_columns(logs: list[dict[str, Any]], until_step: int | None) -> dict[str, Any]:
  """`<name>` and `<name>_reason` of every estimator whose columns appear in the train rows
  `logs`: its run average up to `until_step` (NaN when not measurable) and why not ('')."""
  columns: dict[str, Any] = {}
  for estimator in estimators.ESTIMATORS.values():
    if not any(estimator.trace_column in r for r in logs):
      continue
    average = estimators.run_average(estimator, logs, until_step)
    columns[estimator.name] = average['value']
    columns[f'{estimator.name}_reason'] = average['reason'] or ''
  return columns


def _float(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return float('nan')


def trial_table(sweep_dir: str | pathlib.Path, target_value: float | None = None) -> pd.DataFrame:
  """The tidy table, read fresh from the trials' run directories (one row per trial).

  `target_value`: steps to another target than the sweep's, from the same evaluations; with
  stop_at_target it must be no harder than the sweep's (the trials stopped there).
  test_metric is the run's final test_<metric> (the test split, evaluated once at the end).
  """
  sweep_dir = pathlib.Path(sweep_dir)
  spec = _read_spec(sweep_dir)
  sweep, trial_rows = grid_lib.from_dict(spec['sweep']), spec['trials']
  directions = metric_directions(spec, sweep)
  if target_value is not None and target_value != sweep.target_value:
    harder = not stt.reached(sweep.target_value, target_value, sweep.target_metric, directions)
    if sweep.stop_at_target and harder:
      raise config_lib.ConfigError(
          f'target {sweep.target_metric}={target_value}: harder than the sweep\'s '
          f'{sweep.target_value}, where its trials stopped; choose a value the trials passed')
    sweep = dataclasses.replace(sweep, target_value=float(target_value))
  rows = []
  for trial in trial_rows:
    run_dir = trial_dir(sweep_dir, trial['trial_id'])
    rows.append({**trial, **trial_result(run_dir, sweep.target_metric, sweep.target_value,
                                         directions),
                 'run_dir': str(run_dir.relative_to(sweep_dir))})
  table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *_estimator_columns_in(rows)])
  for column in ('steps_to_target', 'steps_to_target_lower', 'examples_to_target', 'steps',
                 'examples_seen'):
    table[column] = table[column].astype('Int64')
  _empty_reasons(table)
  table.attrs.update(target_metric=sweep.target_metric, target_value=sweep.target_value,
                     eval_growth=sweep.eval_growth, name=sweep.name)
  return table


def _estimator_columns_in(rows: list[dict[str, Any]]) -> list[str]:
  """The estimator columns beyond TABLE_COLUMNS that some trial logged, in estimator order."""
  columns = []
  for name in estimators.NAMES:
    if any(f'{name}_reason' in r for r in rows):
      columns += [f'{name}_reason'] if name == 'b_simple' else [name, f'{name}_reason']
  return columns


def write_table(sweep_dir: str | pathlib.Path, table: pd.DataFrame | None = None) -> pd.DataFrame:
  """Writes trials.csv atomically: `table`, else the table rebuilt from the run directories."""
  sweep_dir = pathlib.Path(sweep_dir)
  table = trial_table(sweep_dir) if table is None else table
  tmp = sweep_dir / f'.{TABLE_FILE}.{os.getpid()}.tmp'
  table.to_csv(tmp, index=False)
  os.replace(tmp, sweep_dir / TABLE_FILE)
  return table


def load_table(sweep_dir: str | pathlib.Path, refresh: bool = True) -> pd.DataFrame:
  """The trial table as a DataFrame; `refresh` rebuilds it from the run directories."""
  sweep_dir = pathlib.Path(sweep_dir)
  if refresh:
    return write_table(sweep_dir)
  table = pd.read_csv(sweep_dir / TABLE_FILE)
  _empty_reasons(table)
  sweep, _ = load_spec(sweep_dir)
  table.attrs.update(target_metric=sweep.target_metric, target_value=sweep.target_value,
                     eval_growth=sweep.eval_growth, name=sweep.name)
  return table


def _empty_reasons(table: pd.DataFrame) -> None:
  """A measurable estimate's reason is '' (a CSV reads it back as NaN)."""
  for column in table.columns:
    if column.endswith('_reason'):
      table[column] = table[column].astype(object).fillna('')


def outcome_counts(table: pd.DataFrame) -> dict[str, int]:
  counts = table['outcome'].value_counts()
  return {o: int(counts.get(o, 0)) for o in OUTCOMES}
