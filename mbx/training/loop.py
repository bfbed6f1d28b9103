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

Beside it: what a trial records (recorder.py), the compiled programs trials share
(programs.py), packing (packing.py), and what a batch policy measures on request: step times
(timing.py) and branches (branching.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from mbx import config as config_lib
from mbx.training import batch_policy as batch_policy_lib
from mbx.training import distributed
from mbx.training import feed as feed_lib
from mbx.training.autobatch import resolve_auto_micro_batch, resolve_fastest_micro_batch
from mbx.training.branching import branch_losses, branch_source
from mbx.training.components import step_parts
from mbx.training.evaluation import Evaluator, trial_slice
from mbx.training.lock import RunLock, default_workdir
from mbx.training.packing import (PACKABLE_FIELDS, pack_groups, pack_key, restack,
                                  should_repack)
from mbx.training.plan import make_plan
from mbx.training.probes import summaries
from mbx.training.programs import (Setup, compiled_steps, data_seed, initial_state,
                                   sync_every_step, with_rule_hyperparameters)
from mbx.training.recorder import TrialRecorder, finished_run, print_summary
from mbx.training.records import Run, load_run
from mbx.training.step import TrainState, make_mesh, replicated, zero_metric_sums
from mbx.training.timing import time_batches
from mbx.training.tracking import DEFAULT_TRACKERS, check_trackers
from mbx.training.workload import Workload, config_error, resolve


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


_VIEWS: dict = {}  # (optimizer, packed) -> jitted view, shared by a sweep's trials


def eval_view(optimizer, packed: bool):
  """state -> the parameters evaluations use: the params, or the optimizer's declared view
  (a schedule-free method's averaged iterate), vmapped over a pack of trials."""
  if not optimizer.has_eval_params:
    return lambda state: state.params
  key = (optimizer.name, repr(sorted(optimizer.options.items())), packed)
  if key not in _VIEWS:
    view = optimizer.eval_params
    _VIEWS[key] = jax.jit(jax.vmap(view) if packed else view)
  compiled = _VIEWS[key]
  return lambda state: compiled(state.opt_state, state.params)


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


def _sums_at(state: TrainState, step: int) -> np.ndarray | None:
  """The metric sums of a state that stopped at `step`; None when an error left no such state
  (e.g. its buffers were donated to a step that failed)."""
  try:
    counters, sums = jax.device_get((state.counters, state.metric_sums))
  except Exception:  # pylint: disable=broad-except
    return None
  return sums if np.all(np.asarray(counters)[..., 0] == step) else None


def _run_trials(s: Setup, trials: list[TrialRecorder], state: TrainState, *,
                quiet: bool, compile_time: float = 0.0):
  """Trains `trials` from their common position to the end of the plan, or until each has
  diverged or reached its target; returns None. `state` is stacked when K > 1. When a pack is
  left at most half active (`should_repack`), returns (state, indices of the active trials,
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
  view = eval_view(s.workload.optimizer, packed)
  evaluate = ((lambda st: s.evaluator.stacked(view(st), st.model_state)) if packed else
              (lambda st: [s.evaluator(view(st), st.model_state)]))
  sync = sync_every_step(config, mesh)

  def final_tests(finishing: list[int]) -> dict[int, dict[str, float]]:
    """Each finishing trial's test row; of a whole pack at once, as one stacked evaluation."""
    tested = [k for k in finishing if trials[k].outcome != 'diverged']
    rows = {k: {} for k in finishing}
    if packed and len(tested) == len(trials):
      stacked_rows = s.evaluator.test(view(state), state.model_state, stacked=True)
      rows.update({k: stacked_rows[k] for k in tested})
    else:
      one = eval_view(s.workload.optimizer, packed=False)
      for k in tested:
        trial = trial_state(k)
        rows[k] = s.evaluator.test(one(trial), trial.model_state)
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
  pack_compile = loop_seconds = 0.0  # this call's, for `should_repack`
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
                          plain_fn, measuring_fn, probe_every, sync)
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
            decided, decision = policy.decide(plan, step, summaries(s.parts.probes, state.probes), {
                'time_steps': lambda batches: time_batches(s, step, state, trials[0].config,
                                                           feed, batches),
                'branch_losses': lambda batches: branch_losses(s, step, state, trials[0].config,
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
          repack = packed and should_repack(len(active), len(trials), plan.total_steps - step,
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
      print_summary(runs[i], s.workload)
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
  groups = pack_groups(s, trials, states)
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
      state = restack(state, active)
