"""Several trials that share model and batch size, trained as one vmapped program.

Batch-size studies are thousands of small trainings. At small batch a step is
mostly fixed per-step cost (dispatch, kernel launches, buffers), so K trials that
differ only in learning rate, momentum or seed can share one jitted step over
stacked states (`jax.vmap`) for nearly the price of one. Each packed trial follows
exactly the computation of the same trial run alone (its own initialisation,
example order, learning rate and momentum) and writes the same run directory;
a trial that diverges or reaches its target leaves the pack without disturbing
the others.

Packing needs the training split on device and one batch size for the whole run;
otherwise, and when the trials' checkpoints disagree on resume, the trials are
run one after the other with `mbx.train`.
"""
from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbx import config as config_lib
from mbx.training import loop
from mbx.training.feed import DeviceFeed
from mbx.training.records import Run
from mbx.training.step import replicated, zero_metric_sums

PACKABLE_FIELDS = tuple(f for f in config_lib.TRIAL_FIELDS if f[1] is not None)


def pack_key(config: config_lib.Config) -> str:
  """Trials with equal keys can share one packed program."""
  return config_lib.trial_key(config)


def _data_seed(config: config_lib.Config) -> int:
  return config.train.seed if config.train.data_seed is None else config.train.data_seed


# Jitted: op by op, every leaf's stack or slice would compile on its own (0.8 s a pack).
@jax.jit
def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@jax.jit
def _slice(tree, index):
  return jax.tree.map(lambda leaf: leaf[index], tree)


def _sequential(configs, workdirs, quiet) -> list[Run]:
  return [loop.train(c, w, quiet=quiet) for c, w in zip(configs, workdirs, strict=True)]


def train_packed(configs: Sequence[config_lib.Config], workdirs: Sequence[str | pathlib.Path],
                 *, quiet: bool = False) -> list[Run]:
  """Trains each config in its workdir, as one vmapped program where possible.

  The configs must share `pack_key` (differ only in PACKABLE_FIELDS). Finished trials
  are skipped and interrupted ones resume, as with `mbx.train`.
  """
  workdirs = [pathlib.Path(w) for w in workdirs]
  for config in configs:
    config_lib.validate(config)
  if len({pack_key(c) for c in configs}) > 1:
    raise config_lib.ConfigError('packed trials must differ only in '
                                 + ', '.join(f'{s}.{f}' for s, f in PACKABLE_FIELDS))
  runs: list[Run | None] = [loop.finished_run(c, w, quiet=True) for c, w in zip(configs, workdirs)]
  pending = [i for i, run in enumerate(runs) if run is None]
  if len(pending) > 1:
    packed = _train_pack([configs[i] for i in pending], [workdirs[i] for i in pending], quiet)
    for i, run in zip(pending, packed):
      runs[i] = run
  elif pending:
    runs[pending[0]] = loop.train(configs[pending[0]], workdirs[pending[0]], quiet=quiet)
  return runs


def _train_pack(configs, workdirs, quiet) -> list[Run]:
  s = loop.setup(configs[0])
  if not s.on_device or len(s.plan.phases) > 1:
    return _sequential(configs, workdirs, quiet)
  t, plan, mesh = configs[0].train, s.plan, s.mesh
  trials = [loop.TrialRecorder(c, w, s) for c, w in zip(configs, workdirs)]
  states = [trial.resume(loop.initial_state(s, c.train.seed))
            for trial, c in zip(trials, configs)]
  counters = {tuple(int(v) for v in jax.device_get(state.counters)) for state in states}
  if len(counters) > 1 or any(trial.config.train.init_from for trial in trials):
    for trial in trials:  # interrupted at different steps: resume each on its own
      trial.checkpoints.close()
    return _sequential(configs, workdirs, quiet)
  start_step, position = counters.pop()
  stacked = _stack(states)
  del states
  batch = plan.initial_batch_size
  tic = time.perf_counter()
  step_fns = loop.compiled_trial_steps(s, plan.shapes_of_phase(0), stacked, configs[0],
                                       packed_configs=configs)
  feed = DeviceFeed(*s.train_arrays, mesh, seed=[_data_seed(c) for c in configs],
                    max_batch_size=batch)
  jax.block_until_ready(feed.step_args(position, batch))  # the first window's gather compiles
  compile_time = time.perf_counter() - tic
  measuring_fn, plain_fn, hyper = step_fns[0][0], step_fns[-1][0], step_fns[0][1]
  noise_every = plan.noise_scale_every

  active = list(range(len(configs)))
  for trial in trials:
    trial.writer.set_status('running', step=start_step, examples_seen=position)
  events = sorted(e for e in plan.log_steps | plan.eval_steps | plan.checkpoint_steps
                  if e > start_step)
  sync_every_step = loop._sync_every_step(configs[0], mesh)  # pylint: disable=protected-access
  step = start_step
  interval_steps, interval_examples, time_since_log = 0, 0, 0.0
  try:
    if step == 0 and 0 in plan.eval_steps:
      rows = s.evaluator.stacked(stacked.params, stacked.model_state)
      for k in active:
        trials[k].evaluate(0, None, None, metrics=rows[k])
    interval_start = time.perf_counter()
    for next_event in events:
      while step < next_event:
        step_fn = plain_fn if step % noise_every else measuring_fn
        stacked, _ = step_fn(stacked, hyper, *feed.step_args(position, batch))
        if sync_every_step:
          stacked.counters.block_until_ready()
        step, position = step + 1, position + batch
        interval_steps, interval_examples = interval_steps + 1, interval_examples + batch
      # ----- events: everything below syncs with the device
      stacked.counters.block_until_ready()
      interval_time = time.perf_counter() - interval_start
      time_since_log += interval_time
      leaving = []
      logged = step in plan.log_steps
      sums = jax.device_get(stacked.metric_sums) if logged or step in plan.checkpoint_steps else None
      rows = (s.evaluator.stacked(stacked.params, stacked.model_state)
              if step in plan.eval_steps else None)
      for k in active:
        trial = trials[k]
        trial.add_train_time(interval_time)
        if sums is not None and trial.log(
            step, sums[k], None if stacked.noise_scale is None else _slice(stacked.noise_scale, k),
            examples_per_second=interval_examples / max(time_since_log, 1e-9),
            steps_per_second=interval_steps / max(time_since_log, 1e-9), write=logged):
          leaving.append(k)  # diverged
          continue
        if rows is not None and trial.evaluate(step, None, None, metrics=rows[k]):
          leaving.append(k)  # reached its target
          trial.checkpoint(step, _slice(stacked, k))
          continue
        if step in plan.checkpoint_steps:
          trial.checkpoint(step, _slice(stacked, k))
      if logged:
        stacked = stacked.replace(metric_sums=jax.device_put(
            np.tile(zero_metric_sums(t.noise_scale), (len(configs), 1)), replicated(mesh)))
        interval_steps, interval_examples, time_since_log = 0, 0, 0.0
      for k in leaving:
        active.remove(k)
        trials[k].finish(step, compile_time=compile_time, packed_trials=len(configs))
      if not active:
        break
      interval_start = time.perf_counter()
  except BaseException as error:
    for k in active:
      trials[k].fail(step, error)
    raise
  for k in active:
    trials[k].finish(step, compile_time=compile_time, packed_trials=len(configs))
  runs = [loop.load_run(w) for w in workdirs]
  if not quiet:
    for run in runs:
      print(f'{run.workdir}: {run.status["status"]} at step {run.status["step"]}, '
            f'eval accuracy {run.status.get("eval_accuracy", float("nan")):.4f}', file=sys.stderr)
  return runs
