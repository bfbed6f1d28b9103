"""The run directory: resolved config, metric logs, status and checkpoints.

    <run>/config.json          fully resolved config
    <run>/status.json          running | done | diverged | failed, with reason and last step
    <run>/train_metrics.jsonl  one row per log step (means over the interval), and one where
                               the run stopped if that was not a log step
    <run>/eval_metrics.jsonl   one row per evaluation
    <run>/checkpoints/<step>/  Orbax checkpoints
    <run>/tensorboard/         TensorBoard event files derived from the JSONL (tracking.py)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

from mbx import config as config_lib
from mbx import models as models_lib
from mbx import registry
from mbx.training.checkpoints import Checkpoints
from mbx.training.evaluation import evaluate_split
from mbx.training.run_files import read_jsonl, write_json_atomic
from mbx.training.tracking import make_writers
from mbx.training.workload import config_error, resolve

STATUSES = ('running', 'done', 'diverged', 'failed', 'interrupted')


NON_FINITE = ('nan', 'inf', '-inf')  # how `_clean` writes non-finite floats


def _clean(value):
  """NaN/Inf are not JSON: store them as strings pandas reads back as floats."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def read_status(path: pathlib.Path) -> dict[str, Any] | None:
  """status.json, None if absent; ConfigError if it is not JSON (a run rewrites it)."""
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise config_lib.ConfigError(f'{path}: not valid JSON ({error.msg} at line {error.lineno}); '
                                 're-run the training command to rewrite it') from None


class RunWriter:
  """Appends metric rows and rewrites the status; used by the training loop."""

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True,
               trackers: tuple[str, ...] = ()):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self.trackers = make_writers(trackers, self.workdir) if enabled else []
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)

  def check_config(self, config: config_lib.Config) -> None:
    """Refuses to resume a directory that holds a run of a different config."""
    path = self.workdir / 'config.json'
    if not path.exists():
      return
    try:
      existing = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      existing = None
    if not isinstance(existing, dict):
      raise config_lib.ConfigError(f'{path}: not a run\'s config (a JSON object of sections); '
                                   'choose another --workdir')
    try:  # fields added to mbx after the run was recorded take their defaults
      existing = json.loads(json.dumps(config_lib.to_dict(config_lib.from_dict(existing))))
    except config_lib.ConfigError:
      pass
    resolved = json.loads(json.dumps(config_lib.to_dict(config)))
    if existing != resolved:
      section_of = lambda name: s if isinstance(s := existing.get(name), dict) else {}
      changed = sorted(f'{section}.{key}' for section in resolved if isinstance(
          resolved[section], dict) for key in resolved[section]
          if section_of(section).get(key) != resolved[section][key])
      raise config_lib.ConfigError(
          f'{self.workdir} holds a run with a different config (differs in '
          f'{", ".join(changed) or "name"}); choose another --workdir')

  def write_config(self, config: config_lib.Config) -> None:
    self.check_config(config)
    path = self.workdir / 'config.json'
    if self.enabled and not path.exists():
      write_json_atomic(path, config_lib.to_dict(config))

  def status(self) -> dict[str, Any] | None:
    """The recorded status; None when absent or unreadable (training then rewrites it)."""
    try:
      return read_status(self.workdir / 'status.json')
    except config_lib.ConfigError as error:
      warnings.warn(f'{error}', stacklevel=2)
      return None

  def set_status(self, status: str, **fields) -> None:
    assert status in STATUSES, status
    if self.enabled:
      write_json_atomic(self.workdir / 'status.json', {'status': status, **fields})
    if status != 'running':
      for tracker in self.trackers:  # the session ended: flush its events
        tracker.close()

  def append(self, log: str, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.workdir / f'{log}_metrics.jsonl', 'a') as f:
      f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + '\n')
      f.flush()
    for tracker in self.trackers:
      tracker.add(log, row)

  def start_session(self, step: int) -> dict[str, list[dict[str, Any]]]:
    """A session of the run begins at checkpoint `step` (-1: none): drops the rows logged after
    it (by a run that died after its last checkpoint), starts the trackers from the rows kept,
    and returns them ({'train': [...], 'eval': [...]}; empty where this process writes nothing)."""
    if not self.enabled:
      return {'train': [], 'eval': []}
    kept = {}
    for log in ('train', 'eval'):
      path = self.workdir / f'{log}_metrics.jsonl'
      kept[log] = [r for r in read_jsonl(path) if r['step'] <= step]
      if path.exists():
        tmp = path.with_name(f'.{path.name}.tmp')
        tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept[log]))
        os.replace(tmp, path)
    if self.trackers:
      config_path = self.workdir / 'config.json'
      config = json.loads(config_path.read_text()) if config_path.exists() else {}
      for tracker in self.trackers:
        tracker.start(kept, config)
    return kept


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
  frame = pd.DataFrame(rows)
  if frame.empty:
    return pd.DataFrame({'step': pd.Series(dtype=int)})
  for column in frame.columns:
    if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
      # A column of numbers, with NaN/Inf stored as the strings 'nan'/'inf' (`_clean`).
      values = frame[column]
      converted = pd.to_numeric(values, errors='coerce')
      if (converted.notna() | values.isna() | values.isin(NON_FINITE)).all():
        frame[column] = converted
  return frame


@dataclasses.dataclass
class Run:
  """A finished or running run, loaded for analysis (`mbx.load_run`)."""
  workdir: pathlib.Path
  config: config_lib.Config
  status: dict[str, Any]
  train_metrics: pd.DataFrame
  eval_metrics: pd.DataFrame

  @property
  def metrics(self) -> pd.DataFrame:
    """Train and eval rows merged on step (eval columns prefixed 'eval_'/'train_')."""
    if self.eval_metrics.empty:
      return self.train_metrics
    merged = self.eval_metrics.merge(self.train_metrics, on='step', how='outer',
                                     suffixes=('', '_train_log'))
    # Both logs record where in the stream a step is: one column each, filled from either
    # (wall_time keeps the evaluation's, which is later, where both logged the step).
    for column in ('examples_seen', 'epoch', 'wall_time', 'tokens_seen'):
      if f'{column}_train_log' in merged:
        merged[column] = merged[column].fillna(merged.pop(f'{column}_train_log'))
    return merged.sort_values('step').reset_index(drop=True)

  @property
  def checkpoint_steps(self) -> list[int]:
    """The steps of the checkpoints on disk, ascending (read on each access: a running run
    adds and drops them)."""
    return Checkpoints(self.workdir / 'checkpoints', read_only=True).steps()

  def restore(self, step: int | None = None):
    """(params, model_state, meta) at `step`; by default the newest checkpoint that restores
    (a damaged newer one is moved aside into checkpoints/corrupt/ with a warning)."""
    checkpoints = Checkpoints(self.workdir / 'checkpoints', read_only=True)
    steps = checkpoints.steps()
    if not steps:
      raise FileNotFoundError(f'{self.workdir}: no checkpoints')
    if step is None:
      step, restored = checkpoints.restore_latest_params()
      if step is None:
        raise FileNotFoundError(f'{self.workdir}: no checkpoint restores; the damaged ones are '
                                'in checkpoints/corrupt/')
      return restored
    if step not in steps:
      raise ValueError(f'step={step}: no checkpoint there; saved steps: {steps}')
    try:
      return checkpoints.restore_params(step)
    except Exception as error:  # pylint: disable=broad-except
      raise config_lib.ConfigError(f'{self.workdir}: checkpoint step {step} cannot be restored '
                                   f'({type(error).__name__}: {str(error).splitlines()[0]})'
                                   ) from None

  def params(self, step: int | None = None):
    return self.restore(step)[0]

  def dataset(self, split: str, *, data=None) -> dict[str, np.ndarray]:
    """Every example of `split` as the run read it: its data config resolved again (the same
    preprocessing), before augmentation; a dict of numpy arrays ('inputs', 'targets' and
    'weights' if any). data: the dataset again, for a run whose data were given from Python."""
    workload = resolve(self.config, data=data)
    try:
      workload.dataset.check_split(split, 'split')
    except ValueError as error:
      raise config_error(error) from None
    return workload.dataset.arrays(split)

  def evaluate(self, split: str, step: int | None = None, *, data=None) -> dict[str, float]:
    """The task's metrics over every example of `split` (and 'examples', their number) at
    checkpoint `step` (default: the latest), computed by the training loop's evaluation code:
    for the run's eval split, the eval row it recorded at that step. data: as for `dataset`."""
    workload = resolve(self.config, data=data)
    params, model_state, _ = self.restore(step)
    return evaluate_split(workload, params, model_state, split)

  def build_model(self, dtype=None):
    """The run's model, rebuilt from config.json alone, in model.dtype. Runs recorded before
    config.json held `num_classes` take it from the dataset's metadata."""
    m = self.config.model
    options = dict(m.options)
    try:
      if 'num_classes' in models_lib.model_fields(m.name) and 'num_classes' not in options:
        options = resolve(self.config).config.model.options
      return models_lib.build_model(m.name, options=options, dtype=jnp.dtype(dtype or m.dtype))
    except ValueError as error:
      raise config_lib.ConfigError(f'{self.workdir}/config.json: {error}') from None


def load_run(workdir: str | pathlib.Path) -> Run:
  """The run in `workdir`. Its config.json gets the checks of a new config (and a zoo model's
  options are checked against the model); ConfigError names the file and the field. Nothing
  it names by import path is imported."""
  workdir = pathlib.Path(workdir)
  config_path = workdir / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'{workdir}: not a run directory (no config.json)')
  config = config_lib.read_config_json(config_path)
  try:
    config_lib.validate(config)
    if not registry.is_import_path(config.model.name):
      models_lib.validate_model(config.model.name, config.model.options)
  except ValueError as error:  # a ConfigError, or the model's own check
    raise config_lib.ConfigError(f'{config_path}: {error}') from None
  status = read_status(workdir / 'status.json') or {}
  return Run(workdir=workdir, config=config, status=status,
             train_metrics=_frame(read_jsonl(workdir / 'train_metrics.jsonl')),
             eval_metrics=_frame(read_jsonl(workdir / 'eval_metrics.jsonl')))
