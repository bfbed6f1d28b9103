"""The training loop: config -> workload -> sharded state -> jitted steps -> records.

One loop trains K >= 1 trials: a solo run is a pack of one. K trials that differ only in
learning rate, momentum or seed (config.TRIAL_FIELDS) share one compiled step, vmapped over
their stacked states (`train_packed`): at small batch a step is mostly fixed per-step cost,
so K trials cost little more than one. Each packed trial follows exactly the computation of
the same trial run alone and writes the same run directory; a trial that diverges or reaches
its target leaves the pack without disturbing the others.

Side effects (logging, evaluation, checkpoints, progress) live here; the step itself is pure.
Re-running the same config in the same directory resumes from the latest checkpoint and
finishes with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mbx import config as config_lib
from mbx.optim import scaled_learning_rate
from mbx.optim.optimizers import place_hyperparameters
from mbx.training import batch_policy as batch_policy_lib
from mbx.training import distributed
from mbx.training import feed as feed_lib
from mbx.training import noise_scale as noise_scale_lib
from mbx.training.autobatch import (resolve_auto_micro_batch, resolve_fastest_micro_batch,
                                    zeros_like)
from mbx.training.checkpoints import Checkpoints
from mbx.training.evaluation import Evaluator, trial_slice
from mbx.training.components import step_arguments, step_parts
from mbx.training.plan import Plan, Segment, make_plan
from mbx.training.lock import RunLock, default_workdir
from mbx.training.records import Run, RunWriter, load_run
from mbx.training.step import (StepParts, TrainState, init_train_state, make_mesh, make_step,
                               metric_names, replicated, trial_hyperparameters,
                               zero_metric_sums)
from mbx.training.tracking import DEFAULT_TRACKERS, check_trackers
from mbx.training.workload import Workload, config_error, resolve

PACKABLE_FIELDS = tuple(f for f in config_lib.TRIAL_FIELDS if f[1] is not None)


def _sgd_noise_scale(momentum: float, learning_rate: float, batch_size: int,
                     num_train_examples: int) -> float:
  """Smith & Le's g = lr * N / (B (1 - m)) (Smith et al. 2018, eq. 7)."""
  return learning_rate * num_train_examples / (batch_size * (1 - momentum))


def data_seed(config: config_lib.Config) -> int:
  return config.train.seed if config.train.data_seed is None else config.train.data_seed


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


@dataclasses.dataclass
class Setup:
  """What every trial of a config shares: workload, mesh, data, plan and the step's parts."""
  workload: Workload
  mesh: Any
  num_train: int
  on_device: bool
  train_rows: dict[str, np.ndarray] | None
  source: Any
  plan: Plan
  parts: StepParts
  evaluator: Evaluator
  micro_batch_size: int | str | None = None  # as resolved ('fastest' -> 'fastest=<m>')
  replan: Any = None  # segments -> Plan: the plan after a batch policy's decisions

  @property
  def config(self) -> config_lib.Config:
    return self.workload.config


def setup(workload: Workload) -> Setup:
  """Loads the data and resolves the plan; raises ConfigError before any compilation."""
  distributed.initialize()
  config, mesh = workload.config, make_mesh()
  d = config.data
  try:  # a dataset that is not prepared is said in one line, before anything is written
    num_train = int(workload.dataset.num_examples(d.train_split))
    on_device = feed_lib.keeps_data_on_device(d.placement, workload.info.element_spec, num_train)
    train_rows = source = None
    if on_device:
      train_rows = workload.dataset.arrays(d.train_split)
    else:
      source = workload.dataset.source(d.train_split)
  except config_lib.ConfigError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (re-raised unless bad input)
    raise config_error(error) or error
  # train.micro_batch_size='auto' is resolved from the compiled step's memory analysis;
  # config.json keeps 'auto' so that resuming sees the same config.
  plan_config = resolve_auto_micro_batch(workload, mesh.devices.size,
                                         num_train_examples=num_train, on_device=on_device)
  # train.micro_batch_size='fastest' is timed here once and recorded as 'fastest=<m>' in the
  # trials' config.json (train_packed), so a resume and a re-run reuse the split.
  plan_config = resolve_fastest_micro_batch(
      dataclasses.replace(workload, config=plan_config), mesh.devices.size,
      num_train_examples=num_train, on_device=on_device)
  replan = functools.partial(make_plan, plan_config, mesh.devices.size, num_train,
                             jax.default_backend(), **workload.plan_options)
  plan = replan()
  parts = step_parts(workload, plan, mesh)
  return Setup(workload=workload, mesh=mesh, num_train=num_train, on_device=on_device,
               train_rows=train_rows, source=source, plan=plan, parts=parts,
               evaluator=Evaluator(workload, parts.model, mesh, on_device),
               micro_batch_size=plan_config.train.micro_batch_size, replan=replan)


def branch_source(config: config_lib.Config) -> tuple[Run, int]:
  """The run and checkpoint step that train.init_from names; ConfigError when it cannot be
  branched from (checked before a new run writes anything)."""
  init_from = config.train.init_from
  source_dir, step = config_lib.parse_init_from(init_from)
  try:
    source = load_run(source_dir)
  except FileNotFoundError as error:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: {error}') from None
  steps = source.checkpoint_steps
  step = steps[-1] if step is None and steps else step
  if step not in steps:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: no checkpoint at step {step}; '
                                 f'saved steps: {steps}')
  if source.config.model != config.model:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: that run trains a different '
                                 'model; branching needs the same model config')
  return source, step


def _branch_from(state: TrainState, config: config_lib.Config) -> TrainState:
  """Params, model state and (same optimizer only) optimizer state of another run's checkpoint;
  step, examples, probes and metric sums start from zero (Merrill et al. 2025's branched runs)."""
  source, step = branch_source(config)
  put = lambda tree, like: jax.tree.map(lambda a, b: jax.device_put(a, b.sharding), tree, like)
  if source.config.optim.name == config.optim.name:
    # The checkpoint's probe states and metric sums follow the source's probes: restore onto
    # that structure (both are reset below).
    source_workload = resolve(source.config)
    like = state.replace(
        probes={p.name: p.init(state.params) for p in source_workload.probes},
        metric_sums=jnp.asarray(zero_metric_sums(source_workload.task, source_workload.probes)))
    restored, _ = Checkpoints(source.workdir / 'checkpoints', read_only=True).restore(
        step, like)
    return restored.replace(counters=state.counters, probes=state.probes,
                            metric_sums=state.metric_sums)
  params, model_state, _ = source.restore(step)
  return state.replace(params=put(params, state.params),
                       model_state=put(model_state, state.model_state))


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
    self.noise_rows: list[tuple] = []
    self.last_loss = math.nan
    self.session_start = time.perf_counter()
    self.packed_with = 1  # the size of the pack it started in
    self.momentum = None  # Smith's g needs it; an optimizer that declares none logs no g
    try:
      self.momentum = s.workload.optimizer.momentum('the sgd_noise_scale column')
    except ValueError as error:
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
      state = _branch_from(state, self.config)
    # Rows logged after the last checkpoint by a run that died are redone.
    kept = self.writer.start_session(latest if latest is not None else -1)
    self.summary = dict(self.meta.get('summary', {}))
    # The noise scale's interval estimates logged so far, for the run-averaged B_simple.
    self.noise_rows = [(r['step'], r['grad_sq_estimate'], r['trace_estimate'])
                       for r in kept['train'] if 'grad_sq_estimate' in r]
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
      if self.momentum is not None:
        row['sgd_noise_scale'] = _sgd_noise_scale(self.momentum, row['learning_rate'], batch,
                                                  self.setup.num_train)
      for probe in workload.probes:
        row.update(probe.summarize(probe_states[probe.name]))
      if 'grad_sq_estimate' in row:
        # b_simple is an EMA over ~100 steps (the current value, noisy early on); this is the
        # whole run so far, as the sweep table reports it.
        self.noise_rows.append((step, row['grad_sq_estimate'], row['trace_estimate']))
        row['b_simple_run_average'] = noise_scale_lib.run_average(
            *zip(*self.noise_rows))['b_simple']
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


_STEPS: dict = {}  # steps shared by the trials of a sweep in this process


def _step_key(s: Setup, shape, packed: bool):
  return (config_lib.trial_key(s.config), shape, s.on_device, packed,
          tuple(d.id for d in s.mesh.devices.flat), id(s.workload.module))


def trial_step(s: Setup, shape, packed: bool = False):
  """(jitted step(state, hyper, ...), reference peak LR, compiled cache) for the trial key.

  Trials that differ only in config.TRIAL_FIELDS reuse one compiled program; `hyper`
  carries their learning-rate scale (relative to the reference peak), momentum and
  data seed. With packed=True the step is vmapped over stacked trial states.
  """
  key = _step_key(s, shape, packed)
  if key not in _STEPS:
    if len(_STEPS) >= 32:
      _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = (make_step(s.parts, shape, s.mesh, on_device_data=s.on_device, packed=packed),
                   scaled_learning_rate(s.config.optim, s.plan.initial_batch_size), {})
  return _STEPS[key]


def hyperparameters(config: config_lib.Config, reference_peak: float, batch_size: int,
                    segment: Segment | None = None):
  """The step's per-trial inputs; under a batch policy, with the current decision's LR factor
  and schedule progress."""
  scale = scaled_learning_rate(config.optim, batch_size) / reference_peak
  if segment is None:
    return trial_hyperparameters(scale, config.optim.momentum, data_seed(config))
  return trial_hyperparameters(scale * segment.lr_factor, config.optim.momentum,
                               data_seed(config),
                               (segment.progress, segment.rate, segment.first_step))


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      tree)


def compiled_steps(s: Setup, shapes, state, configs: Sequence[config_lib.Config],
                   segment: Segment | None = None):
  """[(compiled step, hyper)] for the shapes of a phase, compiled ahead of time; one trial
  runs the plain step, several the vmapped one over their stacked states (segment: a batch
  policy's current decision)."""
  plan, mesh, packed = s.plan, s.mesh, len(configs) > 1
  results = []
  for shape in shapes:
    step_fn, reference_peak, compiled = trial_step(s, shape, packed=packed)
    hyper = np.stack([hyperparameters(c, reference_peak, plan.initial_batch_size, segment)
                      for c in configs])
    hyper = jax.device_put(hyper if packed else hyper[0], replicated(mesh))
    _, *batch_args = step_arguments(s.workload, shape, mesh, on_device=s.on_device,
                                    num_train_examples=s.num_train,
                                    max_batch_size=plan.max_batch_size,
                                    num_trials=len(configs))
    abstract = (_abstract(state), _abstract(hyper), *batch_args)
    signature = (str(jax.tree.structure(abstract)),
                 tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(abstract)))
    if signature not in compiled:
      compiled[signature] = step_fn.lower(*abstract).compile()
    results.append((compiled[signature], hyper))
  return results


def initial_state(s: Setup, seed: int) -> TrainState:
  """The freshly initialised state of a trial of `s.config` (compiled once per sweep)."""
  key = (config_lib.trial_key(s.config), tuple(d.id for d in s.mesh.devices.flat),
         id(s.workload.module))
  return init_train_state(s.parts.model, s.parts.optimizer.transform(),
                          s.workload.sample_inputs(), seed=seed, mesh=s.mesh,
                          task=s.parts.task, probes=s.parts.probes, cache_key=key)


def with_rule_hyperparameters(s: Setup, state: TrainState, step: int, plan: Plan | None = None
                              ) -> TrainState:
  """`state` with the optimizer hyperparameters (besides the LR, which the schedule carries) that
  a batch rule sets for the steps from `step` on: a policy's decision, or
  train.batch_size_rule at a batch-size milestone. Idempotent, so a resumed run agrees."""
  plan, t = plan or s.plan, s.config.train
  segment = plan.segment_at(step)
  if segment is not None:
    values = dict(segment.hyperparameters)
  elif t.batch_size_milestones and t.batch_size_rule != 'none':
    ratio = plan.shape_at(step).batch_size / plan.initial_batch_size
    values = s.workload.optimizer.changed_by(t.batch_size_rule, ratio, 'train.batch_size_rule')
  else:
    return state
  if not values:
    return state
  return state.replace(opt_state=place_hyperparameters(state.opt_state, values))


def _sync_every_step(config: config_lib.Config, mesh) -> bool:
  if config.train.sync_every_step is not None:
    return config.train.sync_every_step
  # Multi-device XLA:CPU can deadlock in all-reduce rendezvous when many sharded
  # steps are in flight (docs/performance.md, jax-ml/jax#25861).
  return jax.default_backend() == 'cpu' and mesh.devices.size > 1


# Jitted: op by op, every leaf's stack or slice would compile on its own (0.8 s a pack).
@jax.jit
def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _hot_loop(state, hyper, step: int, until: int, position: int, batch: int, feed,
              on_device: bool, plain_fn, measuring_fn, probe_every: int, sync: bool):
  """Steps [step, until): nothing here may wait on the device. A function of its own, so that
  the names it touches are fast locals, not the closure cells of `_run_trials`."""
  while step < until:
    args = feed.step_args(position, batch) if on_device else feed.next()
    state, _ = (plain_fn if step % probe_every else measuring_fn)(state, hyper, *args)
    if sync:
      state.counters.block_until_ready()
    step, position = step + 1, position + batch
  return state


class _DeferredInterrupt:
  """Ctrl-C during training takes effect between chunks of steps, not inside a step, an
  evaluation or an (asynchronous) checkpoint save, so the run stops in a state it can record;
  a second Ctrl-C interrupts at once. Installed only from the main thread (signal's rule)."""

  def __init__(self):
    self.requested = False
    self.previous = (signal.signal(signal.SIGINT, self._handle)
                     if threading.current_thread() is threading.main_thread() else None)

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def check(self) -> None:
    if self.requested:
      raise KeyboardInterrupt

  def restore(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGINT, self.previous)


def _noise_estimates(s: Setup, state: TrainState) -> dict[str, float]:
  """The noise-scale probe's bias-corrected |G|^2, tr(Sigma) and B_simple ({} when off)."""
  for probe in s.parts.probes:
    if probe.name == 'noise_scale':
      return probe.summarize(state.probes[probe.name])
  return {}


POLICY_TIMED_STEPS = 3


@jax.jit
def _copy_state(state: TrainState) -> TrainState:
  """A scratch copy of the train state (same shardings), for timing and branching: the steps
  donate their input, so the run's own state must not enter them. Compiled once per state
  layout, not once per decision."""
  return jax.tree.map(jnp.copy, state)


def _time_batches(s: Setup, step: int, state: TrainState, config: config_lib.Config, feed,
                  batches: Sequence[int]) -> dict[int, float]:
  """Seconds per step of each batch's compiled steps on this machine (a measuring step every
  probe_every steps, plain ones between), run on a copy of `state` that is then dropped."""
  position, seconds = int(s.plan.examples_after_step[step]), {}
  for batch in batches:
    plan = s.replan(segments=s.plan.segments + (Segment(step, batch),))
    timed = []
    for fn, hyper in compiled_steps(s, plan.shapes_of_phase(step), state, [config]):
      if s.on_device:
        args = feed.step_args(position, batch)
      else:
        _, *abstract = step_arguments(s.workload, plan.shape_at(step), s.mesh, on_device=False,
                                      num_train_examples=s.num_train,
                                      max_batch_size=plan.max_batch_size)
        args = jax.tree.map(zeros_like, abstract)
      scratch, _ = fn(_copy_state(state), hyper, *args)  # warm-up
      jax.block_until_ready(scratch)
      tic = time.perf_counter()
      for _ in range(POLICY_TIMED_STEPS):
        scratch, _ = fn(scratch, hyper, *args)
      jax.block_until_ready(scratch)
      timed.append((time.perf_counter() - tic) / POLICY_TIMED_STEPS)
    every = plan.probe_every if len(timed) > 1 else 1
    seconds[batch] = (timed[0] + (every - 1) * timed[-1]) / every
  # Every process decides; they must agree on what was measured.
  agreed = distributed.from_writer(np.asarray([seconds[b] for b in batches], np.float64))
  return {b: float(t) for b, t in zip(batches, agreed)}


def _branch_losses(s: Setup, step: int, state: TrainState, config: config_lib.Config, feed,
                   policy, batches: Sequence[int]) -> list[float]:
  """The eval loss after training a copy of `state` from `step` for train.batch_policy_branch
  at each batch (on the examples the run itself reads next, at the policy's LR for that batch);
  the copies are then dropped (Merrill et al. 2025's branched runs)."""
  t = config.train
  examples = config_lib.parse_duration(t.batch_policy_branch, 'train.batch_policy_branch'
                                       ).to_examples(t.batch_size, s.num_train,
                                                     s.plan.tokens_per_example)
  sync, losses = _sync_every_step(config, s.mesh), []
  for batch in batches:
    segment = Segment(step, batch, progress=s.plan.progress_at(step),
                      lr_factor=policy.lr_factor(batch))
    plan = s.replan(segments=s.plan.segments + (segment,))
    count = max(1, min(examples // batch, plan.total_steps - step))
    fns = compiled_steps(s, plan.shapes_of_phase(step), state, [config], segment)
    (measuring, hyper), (plain, _) = fns[0], fns[-1]
    branch_feed = None if s.on_device else feed_lib.HostFeed(
        s.source, s.workload.info.element_spec, plan, s.mesh, seed=data_seed(config),
        start_step=step, prefetch=config.data.prefetch)
    position = int(plan.examples_after_step[step])
    scratch = with_rule_hyperparameters(s, _copy_state(state), step, plan)
    try:
      for i in range(count):
        args = feed.step_args(position + i * batch, batch) if s.on_device else branch_feed.next()
        scratch, _ = (plain if (step + i) % plan.probe_every else measuring)(scratch, hyper,
                                                                             *args)
        if sync:
          scratch.counters.block_until_ready()
    finally:
      if branch_feed is not None:
        branch_feed.close()
    losses.append(float(s.evaluator(scratch.params, scratch.model_state)['eval_loss']))
  return losses


def _sums_at(state: TrainState, step: int) -> np.ndarray | None:
  """The metric sums of a state that stopped at `step`; None when an error left no such state
  (e.g. its buffers were donated to a step that failed)."""
  try:
    counters, sums = jax.device_get((state.counters, state.metric_sums))
  except Exception:  # pylint: disable=broad-except
    return None
  return sums if np.all(np.asarray(counters)[..., 0] == step) else None


def _repack(num_active: int, num_trials: int, steps_left: int, step_seconds: float,
            compile_seconds: float) -> bool:
  """Whether the trials still training should leave a pack that is at least half finished.
  A packed step on XLA:CPU costs nearly K times one trial's share (results/bench_packed.md), so
  finished trials go on costing until the last one ends; a smaller pack costs a compile. Split
  when the steps left, at the pack's measured step time, would save twice what compiling this
  pack took, if the step's cost fell in proportion to the trials left."""
  if not 0 < num_active <= num_trials // 2:
    return False
  saving = steps_left * step_seconds * (1 - num_active / num_trials)
  return saving > 2 * compile_seconds


def _run_trials(s: Setup, trials: list[TrialRecorder], state: TrainState, *,
                quiet: bool, compile_time: float = 0.0):
  """Trains `trials` from their common position to the end of the plan, or until each has
  diverged or reached its target; returns None. `state` is stacked when K > 1. When a pack is
  left at most half active (`_repack`), returns (state, indices of the active trials,
  compile_time) instead, for the caller to go on with those trials alone."""
  mesh, config = s.mesh, s.config
  packed = len(trials) > 1
  policy = None
  if config.train.batch_policy != 'none':  # never packed (see _train_pending)
    policy = batch_policy_lib.BatchPolicy(config, s.replan, trials[0].meta,
                                          s.workload.optimizer)
    s.plan = policy.plan()  # with the decisions the checkpoint recorded
  plan = s.plan
  start_step, position = (int(v) for v in jax.device_get(
      state.counters[0] if packed else state.counters))
  trial_state = (lambda k: trial_slice(state, k)) if packed else (lambda k: state)
  seeds = [data_seed(trial.config) for trial in trials]
  host_feed = lambda first_step: feed_lib.HostFeed(
      s.source, s.workload.info.element_spec, s.plan, mesh, seed=seeds[0],
      start_step=first_step, prefetch=config.data.prefetch)
  if s.on_device:
    feed = feed_lib.DeviceFeed(s.train_rows, mesh, seed=seeds if packed else seeds[0],
                               max_batch_size=plan.max_batch_size)
  else:
    feed = host_feed(start_step)
  evaluate = ((lambda st: s.evaluator.stacked(st.params, st.model_state)) if packed else
              (lambda st: [s.evaluator(st.params, st.model_state)]))
  sync_every_step = _sync_every_step(config, mesh)

  def final_tests(finishing: list[int]) -> dict[int, dict[str, float]]:
    """Each finishing trial's test row; of a whole pack at once, as one stacked evaluation."""
    tested = [k for k in finishing if trials[k].outcome != 'diverged']
    rows = {k: {} for k in finishing}
    if packed and len(tested) == len(trials):
      stacked_rows = s.evaluator.test(state.params, state.model_state, stacked=True)
      rows.update({k: stacked_rows[k] for k in tested})
    else:
      for k in tested:
        trial = trial_state(k)
        rows[k] = s.evaluator.test(trial.params, trial.model_state)
    return rows

  for trial in trials:
    trial.writer.set_status('running', step=start_step, examples_seen=position)
  progress = None if quiet else tqdm(
      total=plan.total_steps, initial=start_step, unit='step', dynamic_ncols=True,
      mininterval=0.5 if sys.stderr.isatty() else 30.0, file=sys.stderr,
      disable=not distributed.is_writer())
  progress_every = max(1, plan.total_steps // 400)
  zero_sums = zero_metric_sums(s.parts.task, s.parts.probes)
  if packed:
    zero_sums = np.tile(zero_sums, (len(trials), 1))
  active = list(range(len(trials)))
  step, repack = start_step, False
  pack_compile = loop_seconds = 0.0  # this call's, for `_repack`
  interval_steps, interval_examples, time_since_log = 0, 0, 0.0
  interval_start = time.perf_counter()
  interrupt = _DeferredInterrupt()
  try:
    if step == 0 and 0 in plan.eval_steps:
      for k, row in enumerate(evaluate(state)):
        trials[k].evaluate(0, row)
    while step < plan.total_steps and active:
      # A batch policy's decision rebuilds the plan from the current step on.
      events = sorted(e for e in plan.log_steps | plan.eval_steps | plan.checkpoint_steps
                      if e > step)
      if progress is not None:
        progress.total = plan.total_steps
      # Each shape of the phase compiles ahead of time, timed apart from throughput.
      batch = plan.shape_at(step).batch_size
      position = int(plan.examples_after_step[step])
      tic = time.perf_counter()
      step_fns = compiled_steps(s, plan.shapes_of_phase(step), state,
                                [trial.config for trial in trials], plan.segment_at(step))
      state = with_rule_hyperparameters(s, state, step)
      if s.on_device:  # the first window's gather compiles too
        jax.block_until_ready(feed.step_args(position, batch))
      compile_time += time.perf_counter() - tic
      pack_compile += time.perf_counter() - tic
      measuring_fn, plain_fn, hyper = step_fns[0][0], step_fns[-1][0], step_fns[0][1]
      probe_every, phase_end = plan.probe_every, plan.next_phase_step(step)
      interval_start = time.perf_counter()
      while active:
        decided = False
        next_event = next((e for e in events if e > step), plan.total_steps)
        until = min(next_event, phase_end, (step // progress_every + 1) * progress_every)
        taken = until - step
        state = _hot_loop(state, hyper, step, until, position, batch, feed, s.on_device,
                          plain_fn, measuring_fn, probe_every, sync_every_step)
        step, position = until, position + taken * batch
        interrupt.check()
        interval_steps += taken
        interval_examples += taken * batch
        if progress is not None:
          progress.update(step - progress.n)
        if step == next_event:
          # ----- events: everything below syncs with the device
          state.counters.block_until_ready()
          interval_time = time.perf_counter() - interval_start
          time_since_log += interval_time
          loop_seconds += interval_time
          logged = step in plan.log_steps
          # At an evaluation too: a trial that reaches its target there writes a last row.
          host_sums = (jax.device_get(state.metric_sums) if logged or step in
                       plan.checkpoint_steps or step in plan.eval_steps else None)
          sums = host_sums if logged or step in plan.checkpoint_steps else None
          rates = dict(examples_per_second=interval_examples / max(time_since_log, 1e-9),
                       steps_per_second=interval_steps / max(time_since_log, 1e-9))
          rows = evaluate(state) if step in plan.eval_steps else None
          decision = None
          if policy is not None and step in plan.decision_steps and active:
            tic = time.perf_counter()
            decided, decision = policy.decide(plan, step, _noise_estimates(s, state), {
                'time_steps': lambda batches: _time_batches(s, step, state, trials[0].config,
                                                            feed, batches),
                'branch_losses': lambda batches: _branch_losses(s, step, state, trials[0].config,
                                                                feed, policy, batches)})
            trials[0].meta['batch_policy'] = policy.to_meta()  # before the checkpoint
            compile_time += time.perf_counter() - tic
          leaving = []
          if sums is not None:
            for k in active:
              if trials[k].log(
                  step, sums[k] if packed else sums,
                  trial_slice(state.probes, k) if packed else state.probes, **rates, write=logged,
                  extra=decision):
                leaving.append(k)  # diverged
          if logged:  # before checkpointing: a resumed run starts the next interval from zero
            if progress is not None and not packed:
              progress.set_postfix(loss=f'{trials[0].last_loss:.4f}', refresh=False)
            state = state.replace(metric_sums=jax.device_put(zero_sums, replicated(mesh)))
            interval_steps, interval_examples, time_since_log = 0, 0, 0.0
          for k in active:
            trial = trials[k]
            trial.add_train_time(interval_time)
            if k in leaving:
              continue
            if rows is not None and trial.evaluate(step, rows[k]):
              leaving.append(k)  # reached its target
              if not logged:
                trial.final_log(step, host_sums[k] if packed else host_sums,
                                trial_slice(state.probes, k) if packed else state.probes, rates)
              trial.checkpoint(step, trial_state(k))
            elif step in plan.checkpoint_steps:
              trial.checkpoint(step, trial_state(k))
          tests = final_tests(leaving)
          for k in leaving:
            active.remove(k)
            trials[k].finish(step, compile_time=compile_time, **tests[k],
                             **trials[k].pack_record())
          if decided:
            s.plan = plan = policy.plan()
            if not s.on_device:  # its prefetched batches follow the old plan
              feed.close()
              feed = host_feed(step)
          repack = packed and _repack(len(active), len(trials), plan.total_steps - step,
                                      loop_seconds / max(step - start_step, 1), pack_compile)
          interval_start = time.perf_counter()
        if step >= phase_end or decided or repack:
          break
      if repack:
        break
  except BaseException as error:
    seconds = time_since_log + time.perf_counter() - interval_start
    rates = dict(examples_per_second=interval_examples / max(seconds, 1e-9),
                 steps_per_second=interval_steps / max(seconds, 1e-9))
    sums = _sums_at(state, step)
    for k in active:
      final_row = None if sums is None else (
          sums[k] if packed else sums,
          trial_slice(state.probes, k) if packed else state.probes, rates)
      trials[k].fail(step, error, final_row)
    raise
  finally:
    interrupt.restore()
    if progress is not None:
      progress.close()
    if not s.on_device:
      feed.close()
  if repack:
    return state, active, compile_time
  tests = final_tests(active)
  for k in active:
    trials[k].finish(step, compile_time=compile_time, **tests[k],
                     **trials[k].pack_record())
  return None


def train(config: config_lib.Config, workdir: str | pathlib.Path | None = None, *,
          data=None, model=None, quiet: bool = False,
          trackers: Sequence[str] = DEFAULT_TRACKERS) -> Run:
  """Trains (or resumes) the configured run in `workdir`; returns the loaded Run.

  data: an mbx.data.ArrayDataset instead of `data.name`; model: a flax.linen.Module
  instance instead of `model.name` (see workload.resolve); trackers: where else the metrics
  go, of mbx.training.tracking.TRACKERS (TensorBoard event files in <workdir>/tensorboard by
  default; () for none).
  """
  workdir = pathlib.Path(workdir) if workdir is not None else default_workdir(config)
  return train_packed([config], [workdir], data=data, model=model, quiet=quiet,
                      trackers=trackers)[0]


def pack_key(config: config_lib.Config) -> str:
  """Trials with equal keys can share one packed program."""
  return config_lib.trial_key(config)


def train_packed(configs: Sequence[config_lib.Config], workdirs: Sequence[str | pathlib.Path],
                 *, data=None, model=None, quiet: bool = False,
                 trackers: Sequence[str] = DEFAULT_TRACKERS) -> list[Run]:
  """Trains each config in its workdir, as one vmapped program where possible.

  The configs must share `pack_key` (differ only in PACKABLE_FIELDS). Finished trials
  are skipped and interrupted ones resume, as with `train`. Packing needs the training
  split on device; otherwise, and when the trials resume from different steps, branch from
  other runs or have an update rule with packable=False, the trials train one after the other.
  """
  distributed.initialize()  # before anything asks JAX for its processes or devices
  trackers = check_trackers(trackers)
  workdirs = [pathlib.Path(w) for w in workdirs]
  workloads = [_recorded_split(resolve(c, data=data, model=model, needs_data=True), w)
               for c, w in zip(configs, workdirs)]
  configs = [w.config for w in workloads]
  if len({pack_key(c) for c in configs}) > 1:
    raise config_lib.ConfigError('packed trials must differ only in '
                                 + ', '.join(f'{s}.{f}' for s, f in PACKABLE_FIELDS))
  runs: list[Run | None] = [finished_run(c, w, quiet=quiet or len(configs) > 1)
                            for c, w in zip(configs, workdirs)]
  pending = [i for i, run in enumerate(runs) if run is None]
  if not pending:
    return runs
  for i in pending:  # before anything is written into a new run directory
    if configs[i].train.init_from is not None and not (workdirs[i] / 'checkpoints').exists():
      branch_source(configs[i])
  locks = []
  try:
    if distributed.is_writer():  # one writer per run (only process 0 writes records)
      for i in pending:
        locks.append(RunLock(workdirs[i]))
    s = setup(workloads[pending[0]])
  except BaseException:
    for lock in locks:
      lock.release(remove_if_new=True)
    raise
  if configs[pending[0]].train.micro_batch_size == config_lib.FASTEST:  # as measured in setup
    for i in pending:
      configs[i] = dataclasses.replace(configs[i], train=dataclasses.replace(
          configs[i].train, micro_batch_size=s.micro_batch_size))
  try:
    _train_pending(s, [configs[i] for i in pending], [workdirs[i] for i in pending], quiet,
                   trackers)
  finally:
    for lock in locks:
      lock.release()
  distributed.barrier('mbx-train-end')  # process 0 has written the records the others read
  for i in pending:
    runs[i] = load_run(workdirs[i])
    if not quiet:
      _print_summary(runs[i], s.workload)
  return runs


def _recorded_split(workload: Workload, workdir: pathlib.Path) -> Workload:
  """train.micro_batch_size='fastest' of a run that already chose: its recorded
  'fastest=<m>' from config.json, so the run resumes with the same split (never re-timed)."""
  path = workdir / 'config.json'
  if workload.config.train.micro_batch_size != config_lib.FASTEST or not path.exists():
    return workload
  recorded = json.loads(path.read_text()).get('train', {}).get('micro_batch_size')
  if config_lib.fastest_micro_batch_size(recorded) is None:
    return workload
  config = workload.config
  return dataclasses.replace(workload, config=dataclasses.replace(
      config, train=dataclasses.replace(config.train, micro_batch_size=recorded)))


def _train_pending(s: Setup, configs, workdirs, quiet: bool, trackers: tuple[str, ...]) -> None:
  """Trains the unfinished trials: as one pack when they can share the program."""
  trials = [TrialRecorder(c, w, s, trackers=trackers) for c, w in zip(configs, workdirs)]
  states = [trial.resume(initial_state(s, trial.config.train.seed)) for trial in trials]
  counters = {tuple(int(v) for v in jax.device_get(state.counters)) for state in states}
  # A batch policy decides from each trial's own statistics: its trials run one by one, as do
  # those of an update rule that cannot run vmapped (packable=False).
  if len(trials) > 1 and (not s.on_device or len(counters) > 1 or
                          s.config.train.batch_policy != 'none' or
                          not s.parts.update_rule.packable or
                          any(trial.config.train.init_from for trial in trials)):
    groups = [([trial], state) for trial, state in zip(trials, states)]  # one by one
  else:
    groups = [(trials, _stack(states) if len(trials) > 1 else states[0])]
  del states
  for group, state in groups:
    for trial in group:
      trial.packed_with = len(group)
    compile_time = 0.0
    while True:
      left = _run_trials(s, group, state, quiet=quiet or len(trials) > 1,
                         compile_time=compile_time)
      if left is None:
        break
      state, active, compile_time = left  # a smaller pack of the trials still training
      group = [group[k] for k in active]
      state = _stack([trial_slice(state, k) for k in active]) if len(active) > 1 else trial_slice(
          state, active[0])


def _print_summary(run: Run, workload: Workload) -> None:
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
