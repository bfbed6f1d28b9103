"""Experiment trackers beside a run's JSONL metrics: TensorBoard (on by default), and
Weights & Biases and MLflow behind extras (`pip install 'mbx[wandb]'`, `'mbx[mlflow]'`).

The JSONL files are the record; a tracker is told three things (the MetricWriter protocol):
`start(rows, config)` when a session of the run begins, with the rows the run kept; `add(log,
row)` for each row logged (log is 'train' or 'eval'); `close()` when the session ends. Scalars
are named `train/<column>` and `eval/<column>` at the row's step.

- tensorboard: `<run>/tensorboard/`, rebuilt from the kept rows at every start (a resumed run
  drops the rows logged after its last checkpoint, and TensorBoard's purge is not honoured by
  every reader), so it holds exactly the JSONL's values. tensorboardX needs no TensorFlow, and
  its writer thread keeps the file I/O off the training loop.
- wandb: one W&B run per mbx run (its id kept in `<run>/trackers.json`, resumed with it);
  offline unless WANDB_MODE says otherwise (`wandb sync <run>/wandb/offline-run-*` uploads).
  Rows are sent as they are logged; W&B ignores the redone steps of a resumed run.
- mlflow: one MLflow run per mbx run, in MLFLOW_TRACKING_URI or else a local file store
  `<run>/mlruns`; experiment = the config's name; the config flattened into params. Rows are
  sent as they are logged, so a resumed run's redone interval appears twice in its history.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import numbers
import os
import pathlib
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from mbx import config as config_lib
from mbx import registry

TRACKERS = ('tensorboard', 'wandb', 'mlflow')
DEFAULT_TRACKERS = ('tensorboard',)
_PACKAGES = {'tensorboard': ('tensorboardX', 'tensorboardX'), 'wandb': ('wandb', 'wandb'),
             'mlflow': ('mlflow', 'mlflow-skinny')}
IDS_FILE = 'trackers.json'


class MetricWriter(Protocol):
  def start(self, rows: Mapping[str, Sequence[Mapping[str, Any]]], config: Mapping) -> None: ...
  def add(self, log: str, row: Mapping[str, Any]) -> None: ...
  def close(self) -> None: ...


def check_trackers(names: Iterable[str]) -> tuple[str, ...]:
  """The names, checked (known, installed) before anything is written; ConfigError if not."""
  names = tuple(names)
  for name in names:
    if name not in TRACKERS:
      raise config_lib.ConfigError(f'trackers: unknown {name!r}; '
                                   f'{registry.suggest(name, TRACKERS)}')
    module, package = _PACKAGES[name]
    if importlib.util.find_spec(module) is None:
      raise config_lib.ConfigError(f'trackers: {name} needs {package}, which is not installed: '
                                   f"pip install 'mbx[{name}]'")
  return names


def scalars(row: Mapping[str, Any]):
  """(column, float) of a row's numbers (NaN and Inf, stored as strings, included)."""
  for key, value in row.items():
    if key == 'step' or isinstance(value, bool):
      continue
    if isinstance(value, str):
      try:
        value = float(value)
      except ValueError:
        continue
      if math.isfinite(value):
        continue
    if isinstance(value, numbers.Real):
      yield key, float(value)


def _ids(run_dir: pathlib.Path) -> dict[str, str]:
  path = run_dir / IDS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def _keep_id(run_dir: pathlib.Path, key: str, value: str) -> None:
  ids = {**_ids(run_dir), key: value}
  tmp = run_dir / f'.{IDS_FILE}.tmp'
  tmp.write_text(json.dumps(ids, indent=2) + '\n')
  os.replace(tmp, run_dir / IDS_FILE)


def _flat(values: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in values.items():
    if isinstance(value, Mapping) and value:
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


class TensorBoardLog:
  DIRECTORY = 'tensorboard'

  def __init__(self, run_dir: pathlib.Path):
    self.directory = run_dir / self.DIRECTORY
    self.writer = None
    self.sessions = 0
    self.queue: queue.Queue | None = None
    self.thread: threading.Thread | None = None

  def start(self, rows, config) -> None:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

    # A diverged run logs NaN on purpose (it is in the JSONL too); tensorboardX would warn
    # once per value.
    logging.getLogger('tensorboardX.x2num').setLevel(logging.ERROR)
    self.close()
    if self.directory.exists():
      shutil.rmtree(self.directory)
    self.sessions += 1
    # A session's own suffix: tensorboardX names files by the second, and a rebuilt log must
    # not land in (and append to) the file it replaces.
    self.writer = SummaryWriter(str(self.directory), flush_secs=10,
                                filename_suffix=f'.{os.getpid()}.{self.sessions}')
    self.writer.add_text('config', '```\n' + json.dumps(config, indent=2, sort_keys=True)
                         + '\n```', 0)
    for log, log_rows in rows.items():
      for row in log_rows:
        self._write(log, row)
    # Live rows are written on a thread of their own: building the summaries costs ~1 ms a
    # row, which the training loop should not wait for.
    self.queue = queue.Queue()
    self.thread = threading.Thread(target=self._drain, daemon=True, name='mbx-tensorboard')
    self.thread.start()

  def _write(self, log, row) -> None:
    for key, value in scalars(row):
      self.writer.add_scalar(f'{log}/{key}', value, int(row['step']))

  def _drain(self) -> None:
    while (item := self.queue.get()) is not None:
      self._write(*item)

  def add(self, log, row) -> None:
    if self.queue is not None:
      self.queue.put((log, dict(row)))

  def close(self) -> None:
    if self.thread is not None:
      self.queue.put(None)
      self.thread.join()
      self.thread = self.queue = None
    if self.writer is not None:
      self.writer.close()
      self.writer = None


class WandbLog:
  def __init__(self, run_dir: pathlib.Path):
    self.run_dir, self.run = run_dir, None

  def start(self, rows, config) -> None:
    import wandb  # pylint: disable=import-outside-toplevel

    self.close()
    run_id = _ids(self.run_dir).get('wandb') or uuid.uuid4().hex[:12]
    self.run = wandb.init(project=os.environ.get('WANDB_PROJECT', 'mbx'), id=run_id,
                          resume='allow', name=self.run_dir.name, dir=str(self.run_dir),
                          config=dict(config), mode=os.environ.get('WANDB_MODE', 'offline'),
                          settings=wandb.Settings(silent=True, console='off'))
    _keep_id(self.run_dir, 'wandb', run_id)

  def add(self, log, row) -> None:
    if self.run is not None:
      self.run.log({f'{log}/{key}': value for key, value in scalars(row)},
                   step=int(row['step']))

  def close(self) -> None:
    if self.run is not None:
      self.run.finish()
      self.run = None


class MlflowLog:
  def __init__(self, run_dir: pathlib.Path):
    self.run_dir, self.client, self.run_id = run_dir, None, None

  def start(self, rows, config) -> None:
    os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')  # a local store, as asked for
    from mlflow.tracking import MlflowClient  # pylint: disable=import-outside-toplevel

    uri = os.environ.get('MLFLOW_TRACKING_URI') or (self.run_dir / 'mlruns').absolute().as_uri()
    self.client = MlflowClient(tracking_uri=uri)
    self.run_id = _ids(self.run_dir).get('mlflow')
    if self.run_id is None:
      name = str(config.get('name') or 'mbx')
      experiment = self.client.get_experiment_by_name(name)
      experiment_id = (experiment.experiment_id if experiment is not None
                       else self.client.create_experiment(name))
      self.run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
      for key, value in _flat(config).items():
        self.client.log_param(self.run_id, key, str(value)[:6000])
      _keep_id(self.run_dir, 'mlflow', self.run_id)
    else:
      self.client.update_run(self.run_id, status='RUNNING')

  def add(self, log, row) -> None:
    if self.client is not None:
      from mlflow.entities import Metric  # pylint: disable=import-outside-toplevel
      now = int(time.time() * 1000)
      metrics = [Metric(f'{log}/{key}', value, now, int(row['step']))
                 for key, value in scalars(row) if math.isfinite(value)]
      if metrics:
        self.client.log_batch(self.run_id, metrics=metrics)

  def close(self) -> None:
    if self.client is not None:
      self.client.set_terminated(self.run_id)
      self.client = None


_WRITERS = {'tensorboard': TensorBoardLog, 'wandb': WandbLog, 'mlflow': MlflowLog}


def make_writers(names: Iterable[str], run_dir: str | pathlib.Path) -> list[MetricWriter]:
  return [_WRITERS[name](pathlib.Path(run_dir)) for name in check_trackers(names)]
