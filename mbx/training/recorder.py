"""One trial's records: its log rows, evaluations, checkpoints, outcome and final status."""
from __future__ import annotations

import math
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

from mbx import config as config_lib
from mbx.training import distributed
from mbx.training.branching import branch_from
from mbx.training.checkpoints import Checkpoints
from mbx.training.probes import run_summary
from mbx.training.programs import Setup, rule_hyperparameters
from mbx.training.records import Run, RunWriter, load_run
from mbx.training.step import TrainState, metric_names
from mbx.training.tracking import DEFAULT_TRACKERS
from mbx.training.workload import Workload



SGD_NOISE_SCALE = 'the sgd_noise_scale column'


def _sgd_noise_scale(momentum: float, learning_rate: float, batch_size: int,
                     num_train_examples: int) -> float:
  """Smith & Le's g = lr * N / (B (1 - m)) (Smith et al. 2018, eq. 7)."""
  return learning_rate * num_train_examples / (batch_size * (1 - momentum))


def _reached(config: config_lib.Config, task, row: dict[str, float]) -> bool:
  metric, target = config.train.target_metric, config.train.target_value
  if metric is None or metric not in row:
    return False
  better = task.metrics[metric.partition('_')[2]]
  return row[metric] >= target if better == 'max' else row[metric] <= target


def finished_run(config: config_lib.Config, workdir: pathlib.Path, quiet: bool) -> Run | None:
  """The run in `workdir` if it already ended (done or diverged); refuses another config."""
  RunWriter(workdir, enabled=False).check_config(config)
  status = RunWriter(workdir, enabled=False).status()
  if status and status.get('status') in ('done', 'diverged'):
    if not quiet:
      print(f'{workdir}: already {status["status"]} at step {status.get("step")}; '
            'nothing to do', file=sys.stderr)
    return load_run(workdir)
  return None


class TrialRecorder:
  """One trial's records: logs, evaluations, checkpoints, outcome and final status."""

  def __init__(self, config: config_lib.Config, workdir: pathlib.Path, s: Setup, *,
               trackers: tuple[str, ...] = DEFAULT_TRACKERS):
    self.config, self.workdir, self.setup = config, workdir, s
    self.writer = RunWriter(workdir, enabled=distributed.is_writer(), trackers=trackers)
    self.writer.write_config(config)
    self.checkpoints = Checkpoints(workdir / 'checkpoints', keep=config.train.keep_checkpoints)
    self.meta: dict[str, Any] = {'wall_time': 0.0, 'train_time': 0.0}
    self.summary: dict[str, Any] = {}
    self.outcome, self.reason, self.stopped = 'done', 'budget reached', False
    # The train rows logged so far, for the probes' run summaries (kept only when one has one).
    self.train_rows: list[dict[str, Any]] = []
    self.keeps_rows = any(hasattr(p, 'run_summary') for p in s.workload.probes)
    self.last_loss = math.nan
    self.session_start = time.perf_counter()
    self.packed_with = 1  # the size of the pack it started in
    self.logs_momentum = True  # Smith's g needs it; an optimizer that declares none logs no g
    try:
      s.workload.optimizer.momentum(SGD_NOISE_SCALE, config.optim)
    except ValueError as error:
      self.logs_momentum = False
      if distributed.is_writer():
        print(f'{workdir}: {error}; its train rows have no sgd_noise_scale', file=sys.stderr)

  def pack_record(self) -> dict[str, int]:
    return {'packed_trials': self.packed_with} if self.packed_with > 1 else {}

  def resume(self, state: TrainState) -> TrainState:
    """The latest checkpoint if any, else `state` (or the init_from branch)."""
    latest, restored = self.checkpoints.restore_latest(state)
    if latest is not None:
      state, self.meta = restored
    elif self.config.train.init_from is not None:
      state = branch_from(state, self.config)
    # Rows logged after the last checkpoint by a run that died are redone.
    kept = self.writer.start_session(latest if latest is not None else -1)
    self.summary = dict(self.meta.get('summary', {}))
    self.train_rows = list(kept['train']) if self.keeps_rows else []
    self.session_start = time.perf_counter()
    return state

  @property
  def train_time(self) -> float:
    return float(self.meta['train_time'])

  def add_train_time(self, seconds: float) -> None:
    self.meta['train_time'] = self.train_time + seconds

  def elapsed(self) -> float:
    return float(self.meta['wall_time']) + time.perf_counter() - self.session_start

  def _position(self, step: int) -> tuple[int, float]:
    position = int(self.setup.plan.examples_after_step[step])
    return position, position / self.setup.num_train

  def _tokens(self, **examples: int) -> dict[str, int]:
    """{'tokens_seen': ...} beside 'examples_seen' (and so on) for sequence data."""
    per_example = self.setup.plan.tokens_per_example
    if per_example == 1:
      return {}
    return {name.replace('examples', 'tokens'): count * per_example
            for name, count in examples.items()}

  def log(self, step: int, sums: np.ndarray, probe_states, *, examples_per_second: float,
          steps_per_second: float, write: bool, extra: dict | None = None) -> bool:
    """Checks divergence from the interval's metric sums; writes the row if asked or if
    diverged (with `extra`: a batch policy's decision). Returns True when the trial diverged
    (and records why)."""
    t, plan, workload = self.config.train, self.setup.plan, self.setup.workload
    sums = dict(zip(metric_names(workload.task, workload.probes), sums.tolist()))
    count = max(sums.pop('steps'), 1.0)
    probe_count = sums.pop('probe_steps', 0.0)
    probe_metrics = {m for p in workload.probes for m in p.metrics}
    mean_loss = self.last_loss = sums['loss'] / count
    diverged = not math.isfinite(mean_loss) or (t.max_loss is not None and mean_loss > t.max_loss)
    if write or diverged:
      position, epoch = self._position(step)
      batch = plan.shape_at(step - 1).batch_size
      row = {'step': step, 'examples_seen': position, 'epoch': epoch, 'batch_size': batch,
             **self._tokens(examples_seen=position, batch_examples=batch)}
      for name, total in sums.items():  # probe values are means over the steps that measured
        divisor = probe_count if name in probe_metrics else count
        row[name] = total / divisor if divisor else math.nan
      if self.logs_momentum:  # this trial's, as a batch rule left it for the row's steps
        momentum = workload.optimizer.momentum(SGD_NOISE_SCALE, self.config.optim,
                                               rule_hyperparameters(self.setup, step - 1))
        row['sgd_noise_scale'] = _sgd_noise_scale(momentum, row['learning_rate'], batch,
                                                  self.setup.num_train)
      for probe in workload.probes:
        row.update(probe.summarize(probe_states[probe.name]))
      if self.keeps_rows:
        self.train_rows.append(row)
        for probe in workload.probes:
          row.update(run_summary(probe, self.train_rows))
      row.update(extra or {})
      row.update(examples_per_second=examples_per_second, steps_per_second=steps_per_second,
                 wall_time=self.elapsed())
      self.writer.append('train', row)
    if diverged:
      self.outcome = 'diverged'
      self.reason = (f'training loss {mean_loss} at step {step} is not finite'
                     if not math.isfinite(mean_loss) else
                     f'training loss {mean_loss:.4g} > train.max_loss={t.max_loss}')
    return diverged

  def final_log(self, step: int, sums: np.ndarray, probe_states, rates: dict) -> None:
    """The train row of a trial that stops at `step`, a step that is not a log step: the
    steps since the last log (none: nothing to write)."""
    names = metric_names(self.setup.workload.task, self.setup.workload.probes)
    if step > 0 and sums[names.index('steps')] > 0:
      self.log(step, sums, probe_states, write=True, **rates)

  def evaluate(self, step: int, metrics: dict) -> bool:
    """Records the evaluator's row at `step`; True when the target is reached and the run
    should stop."""
    t = self.config.train
    position, epoch = self._position(step)
    row = {'step': step, 'examples_seen': position, 'epoch': epoch,
           **self._tokens(examples_seen=position), **metrics, 'wall_time': self.elapsed()}
    self.writer.append('eval', row)
    self.summary.update({k: v for k, v in row.items() if k.startswith(('eval_', 'train_'))})
    if 'steps_to_target' not in self.summary and _reached(self.config, self.setup.workload.task,
                                                          row):
      self.summary.update(steps_to_target=step, examples_to_target=row['examples_seen'],
                          epochs_to_target=row['epoch'], wall_time_to_target=row['wall_time'])
      if t.stop_at_target:
        self.stopped = True
        self.reason = f'target {t.target_metric} reached'
        return True
    return False

  def checkpoint(self, step: int, state: TrainState) -> None:
    position, _ = self._position(step)
    self.meta.update(step=step, examples_seen=position, wall_time=self.elapsed(),
                     summary=self.summary)
    self.session_start = time.perf_counter()
    self.checkpoints.save(state, dict(self.meta))
    self.writer.set_status('running', step=step, examples_seen=position,
                           wall_time=self.meta['wall_time'])

  def fail(self, step: int, error: BaseException, final_row=None) -> None:
    """Records status 'failed' (or 'interrupted', for Ctrl-C) with the reason and the step a
    re-run resumes from. final_row: (sums, probe states, rates) of the steps since the last
    log, written as the run's last train row when they lie after the last checkpoint (a
    resume drops such rows and logs those steps again)."""
    try:
      self.checkpoints.wait()
    except Exception:  # pylint: disable=broad-except  (e.g. a full disk: record the failure)
      pass
    last_good = self.checkpoints.latest_step()
    if final_row is not None and step > (last_good if last_good is not None else -1):
      try:
        self.final_log(step, *final_row)
      except Exception:  # pylint: disable=broad-except  (the status below matters more)
        pass
    if isinstance(error, KeyboardInterrupt):
      status, reason = 'interrupted', (f'interrupted at step {step} (Ctrl-C); the same command '
                                       f'resumes from step {last_good or 0}')
    else:
      status, reason = 'failed', f'{type(error).__name__}: {error}'
    self.writer.set_status(status, step=step, reason=reason, last_good_step=last_good,
                           wall_time=self.elapsed())

  def finish(self, step: int, **extra) -> Run:
    plan = self.setup.plan
    self.checkpoints.wait()
    self.checkpoints.close()
    position, epoch = self._position(step)
    self.writer.set_status(
        self.outcome, reason=self.reason, step=step, examples_seen=position, epoch=float(epoch),
        **self._tokens(examples_seen=position),
        wall_time=self.elapsed(), train_time=self.train_time,
        num_devices=self.setup.mesh.devices.size, backend=jax.default_backend(),
        total_steps=plan.total_steps, **extra, **self.summary)
    return load_run(self.workdir)


def print_summary(run: Run, workload: Workload) -> None:
  """The finished run's status and final metrics, in two lines."""
  if not distributed.is_writer():
    return
  s = run.status
  parts = [f'status={s["status"]} ({s.get("reason")})', f'steps={s["step"]}',
           f'epochs={s["epoch"]:.2f}', f'wall={s["wall_time"]:.1f}s']
  split = workload.eval_split
  names = list(workload.task.metrics) + [k[len('eval_'):] for k in s
                                         if k.startswith('eval_bits_per_')]
  metrics = [f'{split}_{m}={s["eval_" + m]:.4f}' for m in names if f'eval_{m}' in s]
  if workload.test_split is not None:
    metrics += [f'{workload.test_split}_{m}={s["test_" + m]:.4f}' for m in names
                if f'test_{m}' in s]
  parts[1:1] = metrics
  if 'steps_to_target' in s:
    parts.append(f'steps_to_target={s["steps_to_target"]}')
  print(' '.join(parts))
  print(f'run written to {run.workdir}')
