"""The training loop: config -> data -> model -> sharded state -> jitted steps -> records.

Side effects (logging, evaluation, checkpoints, progress) live here; the step
itself is pure. Re-running the same config in the same directory resumes from
the latest checkpoint and finishes with the same parameters as an
uninterrupted run.
"""
from __future__ import annotations

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
from mbx import models as models_lib
from mbx.optim import build_optimizer, learning_rate_schedule
from mbx.training import feed as feed_lib
from mbx.training import noise_scale as noise_scale_lib
from mbx.training.checkpoints import Checkpoints
from mbx.training.plan import Plan, make_plan
from mbx.training.records import Run, RunWriter, load_run
from mbx.training.step import (TrainState, batch_norm_axis_name, init_train_state, make_eval_step, make_mesh,
                            make_train_step, metric_names, replicated, zero_metric_sums)

DEVICE_DATA_LIMIT_BYTES = 2 * 2**30  # 'auto' placement keeps smaller splits on device
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

  def __init__(self, model, config, mesh, data_dir, placement_on_device: bool):
    self.eval_step = make_eval_step(model)
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
    row = {}
    for prefix in self.splits:
      batches = self.cached.get(prefix) or feed_lib.streamed_eval_batches(
          self.sources[prefix], self.batch_size, self.mesh)
      totals = None
      for x, y, mask in batches:
        sums = self.eval_step(params, model_state, x, y, mask)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      totals = jax.device_get(totals)
      count = float(totals['count'])
      row[f'{prefix}_loss'] = float(totals['loss_sum']) / count
      row[f'{prefix}_accuracy'] = float(totals['correct']) / count
      row[f'{prefix}_error'] = 1.0 - row[f'{prefix}_accuracy']
      row[f'{prefix}_examples'] = int(count)
    return row


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
  restored, _ = Checkpoints(pathlib.Path(source_dir) / 'checkpoints', read_only=True).restore(
      step, state) if source.config.optim.name == config.optim.name else (None, None)
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


def train(config: config_lib.Config, workdir: str | pathlib.Path | None = None, *,
          quiet: bool = False) -> Run:
  """Trains (or resumes) the configured run in `workdir`; returns the loaded Run."""
  config_lib.validate(config)
  maybe_initialize_distributed()
  workdir = pathlib.Path(workdir) if workdir is not None else default_workdir(config)
  is_writer = jax.process_index() == 0
  writer = RunWriter(workdir, enabled=False)  # enabled once the plan checks out
  writer.check_config(config)
  status = writer.status()
  if status and status.get('status') in ('done', 'diverged'):
    if not quiet:
      print(f'{workdir}: already {status["status"]} at step {status.get("step")}; '
            'nothing to do', file=sys.stderr)
    return load_run(workdir)

  d, t = config.data, config.train
  mesh = make_mesh()
  info = data_lib.dataset_info(d.name, d.data_dir)
  # A sliced split ('train[:90%]') is at most as large as the split it slices.
  num_train = info.num_examples.get(d.train_split.split('[')[0].split('+')[0])
  on_device = d.placement == 'device' or (
      d.placement == 'auto' and
      4 * math.prod(info.input_shape) * (num_train or 10**9) <= DEVICE_DATA_LIMIT_BYTES)
  if on_device:
    train_x, train_y = data_lib.load_arrays(d.name, d.train_split, d.data_dir, d.download)
    num_train = len(train_x)
  else:
    source = data_lib.random_access_source(d.name, d.train_split, d.data_dir, d.download)
    num_train = len(source)
  plan = make_plan(config, mesh.devices.size, num_train, jax.default_backend())
  writer = RunWriter(workdir, enabled=is_writer)
  writer.write_config(config)
  data_seed = t.seed if t.data_seed is None else t.data_seed

  model = models_lib.build_model(
      config.model.name, num_classes=info.num_classes, options=config.model.options,
      dtype=jnp.dtype(config.model.dtype), batch_norm_axis_name=batch_norm_axis_name(mesh))
  optimizer = build_optimizer(config.optim)
  lr_schedule = learning_rate_schedule(
      config.optim, batch_size=plan.initial_batch_size, examples_per_epoch=num_train,
      total_examples=plan.total_examples, extra_decays=plan.lr_extra_decays)
  sample_x = jnp.zeros((1, *info.input_shape), jnp.float32)
  state = init_train_state(model, optimizer, sample_x, seed=t.seed, mesh=mesh,
                           noise_scale=t.noise_scale)

  checkpoints = Checkpoints(workdir / 'checkpoints', keep=t.keep_checkpoints)
  meta: dict[str, Any] = {'wall_time': 0.0, 'train_time': 0.0}
  latest = checkpoints.latest_step()
  if latest is not None:
    state, meta = checkpoints.restore(latest, state)
  elif t.init_from is not None:
    state = _branch_from(t.init_from, state, config)
  # Rows logged after the last checkpoint by a run that died are redone.
  writer.truncate_after(latest if latest is not None else -1)
  start_step, start_examples = (int(v) for v in jax.device_get(state.counters))

  augment = data_lib.augment_fn(d.name) if d.augment else None
  step_options = dict(noise_scale=t.noise_scale, noise_scale_ema=t.noise_scale_ema,
                      data_seed=data_seed, augment=augment)
  evaluator = _Evaluator(model, config, mesh, d.data_dir, on_device)
  if on_device:
    device_feed = feed_lib.DeviceFeed(train_x, train_y, mesh, seed=data_seed,
                                      max_batch_size=plan.max_batch_size)
  else:
    host_feed = feed_lib.HostFeed(source, info.input_shape, plan, mesh, seed=data_seed,
                                  start_step=start_step, prefetch=d.prefetch)
  sync_every_step = t.sync_every_step
  if sync_every_step is None:
    # Multi-device XLA:CPU can deadlock in all-reduce rendezvous when many sharded
    # steps are in flight (MEASURED.md, jax-ml/jax#25861).
    sync_every_step = jax.default_backend() == 'cpu' and mesh.devices.size > 1

  writer.set_status('running', step=start_step, examples_seen=start_examples)
  events = sorted(s for s in plan.log_steps | plan.eval_steps | plan.checkpoint_steps
                  if s > start_step)
  progress = _progress_bar(plan, start_step, quiet)
  progress_every = max(1, plan.total_steps // 400)
  summary: dict[str, Any] = dict(meta.get('summary', {}))
  outcome, reason, stopped_early = 'done', 'budget reached', False
  session_start = time.perf_counter()
  wall_time_before = float(meta['wall_time'])
  train_time = float(meta['train_time'])
  compile_time = 0.0

  def elapsed():
    return wall_time_before + time.perf_counter() - session_start

  def record_eval(step: int, state: TrainState) -> bool:
    row = {'step': step, 'examples_seen': int(plan.examples_after_step[step]),
           'epoch': plan.examples_after_step[step] / num_train,
           **evaluator(state.params, state.model_state), 'wall_time': elapsed()}
    writer.append('eval', row)
    summary.update({k: v for k, v in row.items() if k.startswith(('eval_', 'train_'))})
    if 'steps_to_target' not in summary and _reached(config, row):
      summary.update(steps_to_target=step, examples_to_target=row['examples_seen'],
                     epochs_to_target=row['epoch'], wall_time_to_target=row['wall_time'])
      return t.stop_at_target
    return False

  step = start_step
  try:
    if step == 0 and 0 in plan.eval_steps:
      record_eval(0, state)
    interval_steps, interval_examples, time_since_log = 0, 0, 0.0
    event_index = 0
    while step < plan.total_steps:
      shape = plan.shape_at(step)
      step_fn = make_train_step(model, optimizer, lr_schedule, shape, mesh,
                                on_device_data=on_device, **step_options)
      phase_end = plan.next_phase_step(step)
      batch = shape.batch_size
      position = int(plan.examples_after_step[step])
      # The first step of a shape compiles it: time it apart from throughput.
      tic = time.perf_counter()
      args = device_feed.step_args(position, batch) if on_device else host_feed.next()
      state, _ = step_fn(state, *args)
      state.counters.block_until_ready()
      compile_time += time.perf_counter() - tic
      step, position = step + 1, position + batch
      interval_start = time.perf_counter()
      stop = False
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
            train_time += interval_time
            time_since_log += interval_time
            if step in plan.log_steps or step in plan.checkpoint_steps:
              sums = dict(zip(metric_names(t.noise_scale),
                              jax.device_get(state.metric_sums).tolist()))
              count = max(sums['steps'], 1.0)
              mean_loss = sums['loss'] / count
              diverged = not math.isfinite(mean_loss) or (
                  t.max_loss is not None and mean_loss > t.max_loss)
              if step in plan.log_steps or diverged:
                row = {'step': step, 'examples_seen': position, 'epoch': position / num_train,
                       'batch_size': batch,
                       **{k: v / count for k, v in sums.items() if k != 'steps'}}
                row['sgd_noise_scale'] = _sgd_noise_scale(config, row['learning_rate'],
                                                          batch, num_train)
                if t.noise_scale:
                  noise = jax.device_get(noise_scale_lib.summarize(state.noise_scale,
                                                                   t.noise_scale_ema))
                  row.update({k: float(v) for k, v in noise.items()})
                row['examples_per_second'] = interval_examples / max(time_since_log, 1e-9)
                row['steps_per_second'] = interval_steps / max(time_since_log, 1e-9)
                row['wall_time'] = elapsed()
                writer.append('train', row)
                state = state.replace(metric_sums=jax.device_put(
                    zero_metric_sums(t.noise_scale), replicated(mesh)))
                if progress is not None:
                  progress.set_postfix(loss=f'{mean_loss:.4f}',
                                       ex_s=f'{row["examples_per_second"]:.0f}', refresh=False)
                interval_steps, interval_examples, time_since_log = 0, 0, 0.0
              if diverged:
                outcome = 'diverged'
                reason = (f'training loss {mean_loss} at step {step} is not finite'
                          if not math.isfinite(mean_loss) else
                          f'training loss {mean_loss:.4g} > train.max_loss={t.max_loss}')
                stop = True
            if not stop and step in plan.eval_steps:
              stop = stopped_early = record_eval(step, state)
              if stop:
                reason = f'target {t.target_metric} reached'
            if not stop and (step in plan.checkpoint_steps or step == plan.total_steps):
              meta = {'step': step, 'examples_seen': position, 'wall_time': elapsed(),
                      'train_time': train_time, 'summary': summary}
              checkpoints.save(state, meta)
              writer.set_status('running', step=step, examples_seen=position,
                                wall_time=elapsed())
            interval_start = time.perf_counter()
        if stop or step >= phase_end:
          break
        # ----- the hot loop: nothing here may wait on the device
        if on_device:
          args = device_feed.step_args(position, batch)
        else:
          args = host_feed.next()
        state, _ = step_fn(state, *args)
        if sync_every_step:
          state.counters.block_until_ready()
        step, position = step + 1, position + batch
        interval_steps, interval_examples = interval_steps + 1, interval_examples + batch
      if stop:
        break
  except BaseException as error:
    checkpoints.wait()
    writer.set_status('failed', step=step, reason=f'{type(error).__name__}: {error}',
                      wall_time=elapsed())
    raise
  finally:
    if progress is not None:
      progress.close()
    if not on_device:
      host_feed.close()

  if stopped_early:
    meta = {'step': step, 'examples_seen': position, 'wall_time': elapsed(),
            'train_time': train_time, 'summary': summary}
    checkpoints.save(state, meta)
  checkpoints.wait()
  checkpoints.close()
  writer.set_status(outcome, reason=reason, step=step,
                    examples_seen=int(plan.examples_after_step[step]),
                    epoch=float(plan.examples_after_step[step] / num_train),
                    wall_time=elapsed(), train_time=train_time, compile_time=compile_time,
                    num_devices=mesh.devices.size, backend=jax.default_backend(),
                    total_steps=plan.total_steps, **summary)
  run = load_run(workdir)
  if not quiet and is_writer:
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
