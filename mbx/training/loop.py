"""The training loop: config -> data -> model -> sharded state -> jitted steps -> records.

Side effects (logging, evaluation, checkpoints, progress) live here; the step
itself is pure. Re-running the same config in the same directory resumes from
the latest checkpoint and finishes with the same parameters as an
uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbx import config as config_lib
from mbx import data as data_lib
from mbx.optim import scaled_learning_rate
from mbx.training import feed as feed_lib
from mbx.training.autobatch import resolve_auto_micro_batch
from mbx.training.components import build_components
from mbx.training import noise_scale as noise_scale_lib
from mbx.training.checkpoints import Checkpoints
from mbx.training.plan import Plan, make_plan
from mbx.training.records import Run, RunWriter, load_run
from mbx.data.example_order import window_length
from mbx.training.step import (TrainState, batch_sharded, sliced,
                               init_train_state, make_eval_step, make_mesh, make_trial_update,
                               metric_names, replicated, trial_hyperparameters, zero_metric_sums)

MOMENTUM_OF = {'sgd': lambda o: 0.0, 'momentum': lambda o: o.momentum,
               'nesterov': lambda o: o.momentum, 'lars': lambda o: o.momentum}


def default_workdir(config: config_lib.Config) -> pathlib.Path:
  return pathlib.Path('runs') / config.name


def maybe_initialize_distributed() -> None:
  """Multi-host: `jax.distributed` reads the cluster from SLURM/TPU/env variables."""
  if os.environ.get('MBX_DISTRIBUTED') == '1' and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def _eval_split(config: config_lib.Config) -> str:
  return config.data.eval_split or data_lib.default_eval_split(config.data.name)


def _sgd_noise_scale(config: config_lib.Config, learning_rate: float, batch_size: int,
                     num_train_examples: int) -> float:
  """Smith & Le's g = lr * N / (B (1 - m)) (Smith et al. 2018, eq. 7)."""
  momentum = MOMENTUM_OF.get(config.optim.name, lambda o: o.b1)(config.optim)
  return learning_rate * num_train_examples / (batch_size * (1 - momentum))


class _Evaluator:
  """Loss and accuracy over every example of a split, once each."""

  _eval_steps: dict = {}  # compiled once per model config, shared by a sweep's trials
  _vmapped: dict = {}     # their vmapped versions, for packed trials

  def __init__(self, model, config, mesh, data_dir, placement_on_device: bool):
    key = (json.dumps(config_lib.to_dict(config)['model'], sort_keys=True), config.data.name,
           tuple(d.id for d in mesh.devices.flat))
    if key not in self._eval_steps:
      self._eval_steps[key] = make_eval_step(model)
    self.eval_step = self._eval_steps[key]
    self.mesh = mesh
    self.splits = {'eval': _eval_split(config)}
    if config.train.eval_on_train:
      self.splits['train'] = config.data.train_split
    self.cached = {}
    self.sources = {}
    for prefix, split in self.splits.items():
      if placement_on_device:
        x, y = data_lib.load_arrays(config.data.name, split, data_dir, config.data.download)
        self.cached[prefix] = feed_lib.eval_batches(x, y, config.train.eval_batch_size, mesh)
      else:
        self.sources[prefix] = data_lib.random_access_source(
            config.data.name, split, data_dir, config.data.download)
    self.batch_size = config.train.eval_batch_size

  def __call__(self, params, model_state) -> dict[str, float]:
    return self._rows(self.eval_step, params, model_state)[0]

  def stacked(self, params, model_state) -> list[dict[str, float]]:
    """One row per trial of a stack (packed.py), from one vmapped pass over the data."""
    if self.eval_step not in self._vmapped:
      self._vmapped[self.eval_step] = jax.jit(
          jax.vmap(self.eval_step, in_axes=(0, 0, None, None, None)))
    return self._rows(self._vmapped[self.eval_step], params, model_state)

  def _rows(self, eval_step, params, model_state) -> list[dict[str, float]]:
    rows = None
    for prefix in self.splits:
      batches = self.cached.get(prefix) or feed_lib.streamed_eval_batches(
          self.sources[prefix], self.batch_size, self.mesh)
      totals = None
      for x, y, mask in batches:
        sums = eval_step(params, model_state, x, y, mask)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      totals = {k: np.atleast_1d(v) for k, v in jax.device_get(totals).items()}
      rows = rows or [{} for _ in totals['count']]
      for row, count, loss_sum, correct in zip(rows, totals['count'], totals['loss_sum'],
                                               totals['correct']):
        row[f'{prefix}_loss'] = float(loss_sum) / float(count)
        row[f'{prefix}_accuracy'] = float(correct) / float(count)
        row[f'{prefix}_error'] = 1.0 - row[f'{prefix}_accuracy']
        row[f'{prefix}_examples'] = int(count)
    return rows


def _branch_from(init_from: str, state: TrainState, config: config_lib.Config) -> TrainState:
  """Params, model state and (same optimizer only) optimizer state of another run's checkpoint;
  step, examples and metric sums start from zero (Merrill et al. 2025's branched runs)."""
  source_dir, step = config_lib.parse_init_from(init_from)
  source = load_run(source_dir)
  steps = source.checkpoint_steps()
  step = steps[-1] if step is None and steps else step
  if step not in steps:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: no checkpoint at step {step}; '
                                 f'saved steps: {steps}')
  if (source.config.model != config.model):
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: that run trains a different '
                                 'model; branching needs the same model config')
  # The checkpoint holds the source's noise-scale state and metric sums, whose structure
  # follows the source's train.noise_scale; restore onto that structure (both are reset below).
  source_noise = source.config.train.noise_scale
  like = state.replace(
      noise_scale=noise_scale_lib.NoiseScaleState.zeros() if source_noise else None,
      metric_sums=jnp.asarray(zero_metric_sums(source_noise)))
  restored, _ = Checkpoints(pathlib.Path(source_dir) / 'checkpoints', read_only=True).restore(
      step, like) if source.config.optim.name == config.optim.name else (None, None)
  if restored is None:
    params, model_state, _ = source.restore(step)
    put = lambda tree, like: jax.tree.map(lambda a, b: jax.device_put(a, b.sharding), tree, like)
    return state.replace(params=put(params, state.params),
                         model_state=put(model_state, state.model_state))
  return restored.replace(counters=state.counters, noise_scale=state.noise_scale,
                          metric_sums=state.metric_sums)


def _reached(config: config_lib.Config, row: dict[str, float]) -> bool:
  metric, target = config.train.target_metric, config.train.target_value
  if metric is None or metric not in row:
    return False
  return row[metric] >= target if metric.endswith('accuracy') else row[metric] <= target


def _progress_bar(plan: Plan, start_step: int, quiet: bool):
  if quiet:
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=plan.total_steps, initial=start_step, unit='step', dynamic_ncols=True,
              mininterval=0.5 if sys.stderr.isatty() else 30.0, file=sys.stderr,
              disable=jax.process_index() != 0)


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
  """What every trial of a config shares: mesh, data, plan, model, optimizer, schedule."""
  config: config_lib.Config
  mesh: Any
  info: data_lib.DatasetInfo
  num_train: int
  on_device: bool
  train_arrays: tuple[np.ndarray, np.ndarray] | None
  source: Any
  plan: Plan
  model: Any
  optimizer: Any
  lr_schedule: Any
  evaluator: '_Evaluator'
  augment: Any


def setup(config: config_lib.Config) -> Setup:
  """Loads the data and resolves the plan; raises ConfigError before any compilation."""
  config_lib.validate(config)
  maybe_initialize_distributed()
  d = config.data
  mesh = make_mesh()
  info = data_lib.dataset_info(d.name, d.data_dir)
  # A sliced split ('train[:90%]') is at most as large as the split it slices.
  num_train = info.num_examples.get(d.train_split.split('[')[0].split('+')[0])
  on_device = feed_lib.keeps_data_on_device(d.placement, info.input_shape, num_train)
  train_arrays = source = None
  if on_device:
    train_arrays = data_lib.load_arrays(d.name, d.train_split, d.data_dir, d.download)
    num_train = len(train_arrays[0])
  else:
    source = data_lib.random_access_source(d.name, d.train_split, d.data_dir, d.download)
    num_train = len(source)
  # train.micro_batch_size='auto' is resolved from the compiled step's memory analysis;
  # config.json keeps 'auto' so that resuming sees the same config.
  plan_config = resolve_auto_micro_batch(config, mesh.devices.size, info.input_shape,
                                         info.num_classes, num_train_examples=num_train,
                                         on_device=on_device)
  plan = make_plan(plan_config, mesh.devices.size, num_train, jax.default_backend())
  c = build_components(config, plan, num_classes=info.num_classes, mesh=mesh)
  return Setup(config=config, mesh=mesh, info=info, num_train=num_train, on_device=on_device,
               train_arrays=train_arrays, source=source, plan=plan, model=c.model,
               optimizer=c.optimizer, lr_schedule=c.lr_schedule,
               evaluator=_Evaluator(c.model, config, mesh, d.data_dir, on_device),
               augment=c.augment)


class TrialRecorder:
  """One trial's records: logs, evaluations, checkpoints, outcome and final status.

  Shared by the solo loop and the packed (many trials in one program) loop; the
  caller hands it host copies of the trial's metric sums and its slice of the state.
  """

  def __init__(self, config: config_lib.Config, workdir: pathlib.Path, s: Setup):
    self.config, self.workdir, self.setup = config, workdir, s
    self.writer = RunWriter(workdir, enabled=jax.process_index() == 0)
    self.writer.write_config(config)
    self.checkpoints = Checkpoints(workdir / 'checkpoints', keep=config.train.keep_checkpoints)
    self.meta: dict[str, Any] = {'wall_time': 0.0, 'train_time': 0.0}
    self.summary: dict[str, Any] = {}
    self.outcome, self.reason, self.stopped = 'done', 'budget reached', False
    self.last_loss = math.nan
    self.session_start = time.perf_counter()

  def resume(self, state: TrainState) -> TrainState:
    """The latest checkpoint if any, else `state` (or the init_from branch)."""
    latest = self.checkpoints.latest_step()
    if latest is not None:
      state, self.meta = self.checkpoints.restore(latest, state)
    elif self.config.train.init_from is not None:
      state = _branch_from(self.config.train.init_from, state, self.config)
    # Rows logged after the last checkpoint by a run that died are redone.
    self.writer.truncate_after(latest if latest is not None else -1)
    self.summary = dict(self.meta.get('summary', {}))
    self.session_start = time.perf_counter()
    return state

  @property
  def train_time(self) -> float:
    return float(self.meta['train_time'])

  def add_train_time(self, seconds: float) -> None:
    self.meta['train_time'] = self.train_time + seconds

  def elapsed(self) -> float:
    return float(self.meta['wall_time']) + time.perf_counter() - self.session_start

  def log(self, step: int, sums: np.ndarray, noise_scale_state, *, examples_per_second: float,
          steps_per_second: float, write: bool) -> bool:
    """Checks divergence from the interval's metric sums; writes the row if asked or if
    diverged. Returns True when the trial diverged (and records why)."""
    t, plan = self.config.train, self.setup.plan
    sums = dict(zip(metric_names(t.noise_scale), sums.tolist()))
    count = max(sums.pop('steps'), 1.0)
    noise_count = sums.pop('noise_steps', 0.0)
    mean_loss = self.last_loss = sums['loss'] / count
    diverged = not math.isfinite(mean_loss) or (t.max_loss is not None and mean_loss > t.max_loss)
    if write or diverged:
      position, batch = int(plan.examples_after_step[step]), plan.shape_at(step - 1).batch_size
      row = {'step': step, 'examples_seen': position, 'epoch': position / self.setup.num_train,
             'batch_size': batch, **{k: v / count for k, v in sums.items()}}
      if noise_scale_state is not None:  # means over the steps that measured it
        for name in ('grad_sq_estimate', 'trace_estimate'):
          row[name] = sums[name] / noise_count if noise_count else math.nan
      row['sgd_noise_scale'] = _sgd_noise_scale(self.config, row['learning_rate'], batch,
                                                self.setup.num_train)
      if noise_scale_state is not None:
        noise = jax.device_get(noise_scale_lib.summarize(noise_scale_state, t.noise_scale_ema))
        row.update({k: float(v) for k, v in noise.items()})
      row.update(examples_per_second=examples_per_second, steps_per_second=steps_per_second,
                 wall_time=self.elapsed())
      self.writer.append('train', row)
    if diverged:
      self.outcome = 'diverged'
      self.reason = (f'training loss {mean_loss} at step {step} is not finite'
                     if not math.isfinite(mean_loss) else
                     f'training loss {mean_loss:.4g} > train.max_loss={t.max_loss}')
    return diverged

  def evaluate(self, step: int, params, model_state, metrics: dict | None = None) -> bool:
    """Evaluates (or takes `metrics`, the evaluator's row for these parameters) and records;
    True when the target is reached and the run should stop."""
    plan, t = self.setup.plan, self.config.train
    if metrics is None:
      metrics = self.setup.evaluator(params, model_state)
    row = {'step': step, 'examples_seen': int(plan.examples_after_step[step]),
           'epoch': plan.examples_after_step[step] / self.setup.num_train,
           **metrics, 'wall_time': self.elapsed()}
    self.writer.append('eval', row)
    self.summary.update({k: v for k, v in row.items() if k.startswith(('eval_', 'train_'))})
    if 'steps_to_target' not in self.summary and _reached(self.config, row):
      self.summary.update(steps_to_target=step, examples_to_target=row['examples_seen'],
                          epochs_to_target=row['epoch'], wall_time_to_target=row['wall_time'])
      if t.stop_at_target:
        self.stopped = True
        self.reason = f'target {t.target_metric} reached'
        return True
    return False

  def checkpoint(self, step: int, state: TrainState) -> None:
    position = int(self.setup.plan.examples_after_step[step])
    self.meta.update(step=step, examples_seen=position, wall_time=self.elapsed(),
                     summary=self.summary)
    self.session_start = time.perf_counter()
    self.checkpoints.save(state, dict(self.meta))
    self.writer.set_status('running', step=step, examples_seen=position,
                           wall_time=self.meta['wall_time'])

  def fail(self, step: int, error: BaseException) -> None:
    self.checkpoints.wait()
    self.writer.set_status('failed', step=step, reason=f'{type(error).__name__}: {error}',
                           wall_time=self.elapsed())

  def finish(self, step: int, **extra) -> Run:
    plan = self.setup.plan
    self.checkpoints.wait()
    self.checkpoints.close()
    self.writer.set_status(
        self.outcome, reason=self.reason, step=step,
        examples_seen=int(plan.examples_after_step[step]),
        epoch=float(plan.examples_after_step[step] / self.setup.num_train),
        wall_time=self.elapsed(), train_time=self.train_time,
        num_devices=self.setup.mesh.devices.size, backend=jax.default_backend(),
        total_steps=plan.total_steps, **extra, **self.summary)
    return load_run(self.workdir)


_TRIAL_STEPS: dict = {}  # steps shared by the trials of a sweep in this process


def trial_step(s: Setup, shape, packed: bool = False):
  """(jitted step(state, hyper, ...), reference peak LR, compiled cache) for the trial key.

  Trials that differ only in config.TRIAL_FIELDS reuse one compiled program; `hyper`
  carries their learning-rate scale (relative to the reference peak), momentum and
  data seed. With packed=True the step is vmapped over stacked trial states.
  """
  key = (config_lib.trial_key(s.config), shape, s.on_device, packed,
         tuple(d.id for d in s.mesh.devices.flat))
  if key not in _TRIAL_STEPS:
    if len(_TRIAL_STEPS) >= 32:
      _TRIAL_STEPS.pop(next(iter(_TRIAL_STEPS)))
    t = s.config.train
    update, arrangement = make_trial_update(
        s.model, s.config.optim, s.lr_schedule, shape, s.mesh, noise_scale=t.noise_scale,
        noise_scale_ema=t.noise_scale_ema, augment=s.augment, packed=packed)
    if packed:  # over stacked states, hyperparameters and batches
      update = jax.vmap(update)
    if s.on_device:
      update = sliced(update, arrangement, s.mesh, packed=packed)
    # (jitted step, reference peak LR, its compiled executables by argument signature)
    _TRIAL_STEPS[key] = (jax.jit(update, donate_argnums=0),
                         scaled_learning_rate(s.config.optim, s.plan.initial_batch_size), {})
  return _TRIAL_STEPS[key]


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      tree)


def compiled_trial_steps(s: Setup, shapes, state, config: config_lib.Config, *,
                         packed_configs=None):
  """[(compiled step, hyper)] for the shapes of a phase, compiled ahead of time.

  hyper is the trial's (or, packed, the stacked trials') input to the shared step.
  """
  plan, mesh = s.plan, s.mesh
  results = []
  for shape in shapes:
    step_fn, reference_peak, compiled = trial_step(s, shape, packed=packed_configs is not None)
    if packed_configs is None:
      hyper = hyperparameters(config, reference_peak, plan.initial_batch_size)
    else:
      hyper = np.stack([hyperparameters(c, reference_peak, plan.initial_batch_size)
                        for c in packed_configs])
    hyper = jax.device_put(hyper, replicated(mesh))
    if s.on_device:
      window = (window_length(s.num_train, plan.max_batch_size),)
      if packed_configs is not None:
        window = (len(packed_configs), *window)
      batch_args = (jax.ShapeDtypeStruct((*window, *s.info.input_shape), jnp.float32,
                                         sharding=replicated(mesh)),
                    jax.ShapeDtypeStruct(window, jnp.int32, sharding=replicated(mesh)),
                    jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)))
    else:
      batch_args = (jax.ShapeDtypeStruct((shape.batch_size, *s.info.input_shape), jnp.float32,
                                         sharding=batch_sharded(mesh)),
                    jax.ShapeDtypeStruct((shape.batch_size,), jnp.int32,
                                         sharding=batch_sharded(mesh)))
    abstract = (_abstract(state), _abstract(hyper), *batch_args)
    signature = (str(jax.tree.structure(abstract)),
                 tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(abstract)))
    if signature not in compiled:
      compiled[signature] = step_fn.lower(*abstract).compile()
    results.append((compiled[signature], hyper))
  return results


def initial_state(s: Setup, seed: int) -> TrainState:
  """The freshly initialised state of a trial of `s.config` (compiled once per sweep)."""
  sample_x = jnp.zeros((1, *s.info.input_shape), jnp.float32)
  key = (config_lib.trial_key(s.config), tuple(d.id for d in s.mesh.devices.flat))
  return init_train_state(s.model, s.optimizer, sample_x, seed=seed, mesh=s.mesh,
                          noise_scale=s.config.train.noise_scale, cache_key=key)


def hyperparameters(config: config_lib.Config, reference_peak: float, batch_size: int):
  t = config.train
  return trial_hyperparameters(scaled_learning_rate(config.optim, batch_size) / reference_peak,
                               config.optim.momentum,
                               t.seed if t.data_seed is None else t.data_seed)


def _sync_every_step(config: config_lib.Config, mesh) -> bool:
  if config.train.sync_every_step is not None:
    return config.train.sync_every_step
  # Multi-device XLA:CPU can deadlock in all-reduce rendezvous when many sharded
  # steps are in flight (MEASURED.md, jax-ml/jax#25861).
  return jax.default_backend() == 'cpu' and mesh.devices.size > 1


def train(config: config_lib.Config, workdir: str | pathlib.Path | None = None, *,
          quiet: bool = False) -> Run:
  """Trains (or resumes) the configured run in `workdir`; returns the loaded Run."""
  workdir = pathlib.Path(workdir) if workdir is not None else default_workdir(config)
  config_lib.validate(config)
  done = finished_run(config, workdir, quiet)
  if done is not None:
    return done
  s = setup(config)
  t, plan, mesh = config.train, s.plan, s.mesh
  data_seed = t.seed if t.data_seed is None else t.data_seed
  trial = TrialRecorder(config, workdir, s)
  state = trial.resume(initial_state(s, t.seed))
  start_step, start_examples = (int(v) for v in jax.device_get(state.counters))
  if s.on_device:
    device_feed = feed_lib.DeviceFeed(*s.train_arrays, mesh, seed=data_seed,
                                      max_batch_size=plan.max_batch_size)
  else:
    host_feed = feed_lib.HostFeed(s.source, s.info.input_shape, plan, mesh, seed=data_seed,
                                  start_step=start_step, prefetch=config.data.prefetch)
  sync_every_step = _sync_every_step(config, mesh)

  trial.writer.set_status('running', step=start_step, examples_seen=start_examples)
  events = sorted(e for e in plan.log_steps | plan.eval_steps | plan.checkpoint_steps
                  if e > start_step)
  progress = _progress_bar(plan, start_step, quiet)
  progress_every = max(1, plan.total_steps // 400)
  compile_time = 0.0
  step = start_step
  try:
    if step == 0 and 0 in plan.eval_steps:
      trial.evaluate(0, state.params, state.model_state)
    interval_steps, interval_examples, time_since_log = 0, 0, 0.0
    event_index = 0
    stop = False
    while step < plan.total_steps and not stop:
      # Each shape of the phase compiles ahead of time, timed apart from throughput.
      batch = plan.shape_at(step).batch_size
      position = int(plan.examples_after_step[step])
      tic = time.perf_counter()
      step_fns = compiled_trial_steps(s, plan.shapes_of_phase(step), state, config)
      if s.on_device:  # the first window's gather compiles too
        jax.block_until_ready(device_feed.step_args(position, batch))
      compile_time += time.perf_counter() - tic
      measuring_fn, plain_fn = step_fns[0][0], step_fns[-1][0]
      hyper = step_fns[0][1]
      noise_every = plan.noise_scale_every
      phase_end = plan.next_phase_step(step)
      interval_start = time.perf_counter()
      while True:
        next_event = events[event_index] if event_index < len(events) else plan.total_steps
        if step == next_event or step == phase_end or step % progress_every == 0:
          # ----- events: everything below syncs with the device
          if progress is not None:
            progress.update(step - progress.n)
          if step == next_event:
            event_index += 1
            state.counters.block_until_ready()
            interval_time = time.perf_counter() - interval_start
            trial.add_train_time(interval_time)
            time_since_log += interval_time
            if step in plan.log_steps or step in plan.checkpoint_steps:
              logged = step in plan.log_steps
              stop = trial.log(step, jax.device_get(state.metric_sums), state.noise_scale,
                               examples_per_second=interval_examples / max(time_since_log, 1e-9),
                               steps_per_second=interval_steps / max(time_since_log, 1e-9),
                               write=logged)
              if logged:
                state = state.replace(metric_sums=jax.device_put(
                    zero_metric_sums(t.noise_scale), replicated(mesh)))
                if progress is not None:
                  progress.set_postfix(
                      loss=f'{trial.last_loss:.4f}',
                      ex_s=f'{interval_examples / max(time_since_log, 1e-9):.0f}', refresh=False)
                interval_steps, interval_examples, time_since_log = 0, 0, 0.0
            if not stop and step in plan.eval_steps:
              stop = trial.evaluate(step, state.params, state.model_state)
            if not stop and step in plan.checkpoint_steps:
              trial.checkpoint(step, state)
            interval_start = time.perf_counter()
        if stop or step >= phase_end:
          break
        # ----- the hot loop: nothing here may wait on the device
        if s.on_device:
          args = device_feed.step_args(position, batch)
        else:
          args = host_feed.next()
        state, _ = (plain_fn if step % noise_every else measuring_fn)(state, hyper, *args)
        if sync_every_step:
          state.counters.block_until_ready()
        step, position = step + 1, position + batch
        interval_steps, interval_examples = interval_steps + 1, interval_examples + batch
  except BaseException as error:
    trial.fail(step, error)
    raise
  finally:
    if progress is not None:
      progress.close()
    if not s.on_device:
      host_feed.close()

  if trial.stopped:
    trial.checkpoint(step, state)
  run = trial.finish(step, compile_time=compile_time)
  if not quiet and jax.process_index() == 0:
    _print_summary(run)
  return run


def _print_summary(run: Run) -> None:
  s = run.status
  parts = [f'status={s["status"]} ({s.get("reason")})', f'steps={s["step"]}',
           f'epochs={s["epoch"]:.2f}', f'wall={s["wall_time"]:.1f}s']
  if 'eval_accuracy' in s:
    parts.insert(1, f'test_accuracy={s["eval_accuracy"]:.4f}')
    parts.insert(2, f'test_loss={s["eval_loss"]:.4f}')
  if 'steps_to_target' in s:
    parts.append(f'steps_to_target={s["steps_to_target"]}')
  print(' '.join(parts))
  print(f'run written to {run.workdir}')
