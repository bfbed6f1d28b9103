"""Running a sweep: one ordinary run directory per trial, resumable, split over workers.

    <sweep>/sweep.json          the grid spec (SweepConfig) and its trials, like Shallue
                                et al.'s study.json, and the earlier grids (`history`)
    <sweep>/trials/<trial_id>/  each trial's run directory (config, status, metrics, checkpoints)
    <sweep>/locks/<trial_id>    flock'ed by the process training that trial (locks/sweep.json:
                                by the one writing sweep.json)
    <sweep>/trials.csv          the tidy table: one row per trial of the grid

A trial's result is its run directory's status.json, which `mbx.train` replaces
atomically; the table is derived from those files, so neither re-running nor
concurrent workers can duplicate or lose a row. Trial ids come from the trial's
parameters and a hash of its resolved config. Trials are dealt to workers
round-robin in the grid's fixed order (`worker` of `num_workers`), so the split
is a partition; with packing, whole pack groups are dealt. A worker skips trials
whose status is done or diverged and resumes the rest from their last checkpoint.
The per-trial flock (released by the kernel when its process dies, even on
SIGKILL) stops two processes from ever training the same trial at once, should
splits overlap.

A sweep directory grows in place: run it again with more batch sizes, seeds, optimizers or
learning rates and only the new trials train; the finished ones keep their ids (a trial's
config does not depend on the rest of the grid) and are reused. sweep.json then holds the
new grid, its `history` the earlier ones, and the table covers the current grid: trials of
values taken out stay in trials/ and return when their values do. A change to what a trial
is (the base config, target, evaluations, a batch size's budget, how search points are
placed) is refused in one line naming the field.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
from tqdm import tqdm

from mbx import config as config_lib
from mbx.optim import declared as optim_declared
from mbx.sweep import grid as grid_lib
# The sweep directory's layout and its trial table live in mbx.sweep.trials (no JAX); their
# names stay reachable here.
from mbx.sweep.trials import (  # pylint: disable=unused-import
    OUTCOMES, SPEC_FILE, TABLE_COLUMNS, TABLE_FILE, TRIALS_DIR, load_spec, load_table,
    outcome_counts, read_status, trial_dir, trial_result, trial_table, write_table)
from mbx.tasks import resolve_task
from mbx.training.loop import train, train_packed
from mbx.training.packing import pack_key
from mbx.training.records import write_json_atomic
from mbx.training.workload import resolve

LOCKS_DIR = 'locks'
FINISHED = ('done', 'diverged')


def is_finished(sweep_dir, trial: grid_lib.Trial) -> bool:
  return read_status(trial_dir(sweep_dir, trial)).get('status') in FINISHED


# ---------------------------------------------------------------- the spec
def check_spec(sweep_dir: str | pathlib.Path, sweep: grid_lib.SweepConfig) -> dict | None:
  """The sweep.json in `sweep_dir` (None if there is none); a ConfigError naming the field
  when `sweep` differs from it in more than its grid (grid.trial_changing_field)."""
  path = pathlib.Path(sweep_dir) / SPEC_FILE
  if not path.exists():
    return None
  existing = json.loads(path.read_text())
  if existing.get('spec_hash') != grid_lib.spec_hash(sweep):
    try:
      there = grid_lib.from_dict(existing['sweep'])
    except (KeyError, TypeError, ValueError) as error:  # ConfigError is a ValueError
      raise config_lib.ConfigError(f'{path}: not a sweep this mbx can read ({error}); use '
                                   'another --sweep-dir') from None
    change = grid_lib.trial_changing_field(there, sweep)
    if change is not None:
      field, was, wanted = change
      raise config_lib.ConfigError(
          f'{path.parent} holds a sweep with a different {field} ({was!r} -> {wanted!r}); '
          'that changes its trials, so use another --sweep-dir or revert it (only the grid '
          'may change in place: batch sizes, seeds, optimizers, search points)')
  return existing


def write_spec(sweep_dir: pathlib.Path, sweep: grid_lib.SweepConfig,
               trials: Sequence[grid_lib.Trial]) -> dict[str, Any] | None:
  """Writes sweep.json; returns the spec it replaced when the grid changed, else None.

  A sweep directory grows in place: when `sweep` differs from the one there only in its grid,
  sweep.json takes the new grid and appends the old one to its `history`; trials of both
  keep their ids and run directories. Any other change is refused (check_spec).
  """
  path = pathlib.Path(sweep_dir) / SPEC_FILE
  spec = {'name': sweep.name, 'spec_hash': grid_lib.spec_hash(sweep),
          'command': ' '.join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]),
          'written': _now(), 'sweep': grid_lib.to_dict(sweep),
          'trials': [t.row() for t in trials], 'history': [],
          # Which way each metric is better: the trial table reads it without resolving the task.
          'metric_directions': dict(resolve_task(sweep.base.task.name,
                                                 sweep.base.task.options).metrics)}
  (path.parent / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
  with open(path.parent / LOCKS_DIR / SPEC_FILE, 'a') as lock:  # one writer at a time
    fcntl.flock(lock, fcntl.LOCK_EX)
    existing = check_spec(path.parent, sweep)
    if existing is not None and existing.get('spec_hash') == spec['spec_hash']:
      return None
    if existing is not None:
      spec['history'] = existing.get('history', []) + [{
          'spec_hash': existing.get('spec_hash'), 'written': existing.get('written'),
          'replaced': spec['written'], 'command': existing.get('command'),
          'num_trials': len(existing.get('trials', [])),
          'grid': grid_lib.grid_of(grid_lib.from_dict(existing['sweep']))}]
    write_json_atomic(path, spec)
    return existing


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


# ----------------------------------------------------------- worker split
def assign(trials: Sequence[grid_lib.Trial], worker: int, num_workers: int,
           pack: bool = False, pack_max_batch_size: int | None = None
           ) -> list[list[grid_lib.Trial]]:
  """This worker's share, as groups trained together (single trials unless packing, and
  above `pack_max_batch_size`).

  Units (trials, or pack groups in order of first appearance) are dealt round-robin:
  unit j goes to worker j mod num_workers, so the workers' shares partition the grid.
  """
  if not 0 <= worker < num_workers:
    raise config_lib.ConfigError(f'--worker {worker}: must be in [0, --num-workers '
                                 f'{num_workers})')
  if pack:
    groups: dict[str, list[grid_lib.Trial]] = {}
    for trial in trials:
      packs = pack_max_batch_size is None or trial.batch_size <= pack_max_batch_size
      groups.setdefault(pack_key(trial.config) if packs else trial.id, []).append(trial)
    units = list(groups.values())
  else:
    units = [[t] for t in trials]
  return [unit for j, unit in enumerate(units) if j % num_workers == worker]


@contextlib.contextmanager
def _locks(sweep_dir: pathlib.Path, trials: Sequence[grid_lib.Trial]):
  """Yields the trials whose lock this process could take (non-blocking flock)."""
  lock_dir = sweep_dir / LOCKS_DIR
  lock_dir.mkdir(parents=True, exist_ok=True)
  held, files = [], []
  try:
    for trial in trials:
      f = open(lock_dir / trial.id, 'a')  # pylint: disable=consider-using-with
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        f.close()
        continue
      files.append(f)
      held.append(trial)
    yield held
  finally:
    for f in files:
      f.close()  # closing releases the flock


def _enable_compilation_cache(sweep_dir: pathlib.Path) -> None:
  """Trials of one (optimizer, batch size, seed) share programs (init, eval); JAX's
  persistent cache then compiles them once per sweep rather than once per trial."""
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update('jax_compilation_cache_dir', str((sweep_dir / 'jax_cache').absolute()))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


# ------------------------------------------------------------------ running
@dataclasses.dataclass
class SweepProgress:
  """What one worker did: trial ids trained, skipped (finished or locked) and failed."""
  trained: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  locked: list[str] = dataclasses.field(default_factory=list)
  failed: list[str] = dataclasses.field(default_factory=list)


def _mark_failed(run_dir: pathlib.Path, error: BaseException) -> None:
  """mbx.train marks failures once running; errors before that (plan) are marked here."""
  if read_status(run_dir).get('status') != 'failed':
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / 'status.json',
                      {'status': 'failed', 'reason': f'{type(error).__name__}: {error}'})


def run_sweep(sweep: grid_lib.SweepConfig, sweep_dir: str | pathlib.Path, *, worker: int = 0,
              num_workers: int = 1, pack: bool | None = None, compilation_cache: bool = False,
              log: Callable[[str], None] | None = None) -> SweepProgress:
  """Trains this worker's unfinished trials, then rewrites trials.csv; returns what it did.

  Re-running resumes: finished trials are skipped, interrupted ones continue from
  their last checkpoint. A trial that raises is marked failed (retried next time)
  and the sweep goes on; diverged trials are recorded outcomes, not failures.
  """
  sweep_dir = pathlib.Path(sweep_dir)
  log = log or (lambda text: tqdm.write(text, file=sys.stderr))
  pack = sweep.pack if pack is None else pack
  trials = grid_lib.expand(sweep)
  for trial in trials:  # every config error before the first trial trains
    optim_declared.validate(trial.config)
  check_spec(sweep_dir, sweep)
  units = assign(trials, worker, num_workers, pack, sweep.pack_max_batch_size)
  if any(not is_finished(sweep_dir, t) for unit in units for t in unit):
    resolve(trials[0].config)  # data, splits, model and task: once, before anything is written
  previous = write_spec(sweep_dir, sweep, trials)
  if previous is not None:
    log(grid_change_line(sweep_dir, previous, trials))
  for warning in grid_lib.coarse_grid_warnings(sweep):
    log(f'warning: {warning}')
  return run_trials(trials, sweep_dir, worker=worker, num_workers=num_workers, pack=pack,
                    pack_max_batch_size=sweep.pack_max_batch_size, name=sweep.name,
                    compilation_cache=compilation_cache, log=log)


def run_trials(trials: Sequence[grid_lib.Trial], sweep_dir: str | pathlib.Path, *,
               worker: int = 0, num_workers: int = 1, pack: bool = False,
               pack_max_batch_size: int | None = None, name: str = 'trials',
               compilation_cache: bool = False, table: bool = True,
               log: Callable[[str], None] | None = None) -> SweepProgress:
  """Trains this worker's unfinished `trials` into SWEEP_DIR/trials/<id>; the engine under
  `run_sweep` and the studies (mbx/study), which build their trials from configs."""
  sweep_dir = pathlib.Path(sweep_dir)
  log = log or (lambda text: tqdm.write(text, file=sys.stderr))
  if compilation_cache:
    _enable_compilation_cache(sweep_dir)
  progress = SweepProgress()
  units = assign(trials, worker, num_workers, pack, pack_max_batch_size)
  total, position = sum(len(u) for u in units), 0
  bar = tqdm(total=total, desc=f'{name} [worker {worker}/{num_workers}]', unit='trial',
             file=sys.stderr, disable=not sys.stderr.isatty())
  for unit in units:
    position += len(unit)
    todo = [t for t in unit if not is_finished(sweep_dir, t)]
    progress.skipped += [t.id for t in unit if t not in todo]
    with _locks(sweep_dir, todo) as held:
      progress.locked += [t.id for t in todo if t not in held]
      held = [t for t in held if not is_finished(sweep_dir, t)]  # finished meanwhile?
      if held:
        _train_unit(held, sweep_dir, pack, progress)
    for trial in held:
      log(f'[worker {worker}/{num_workers}] {position}/{total} {trial.id}: '
          f'{_describe(read_status(trial_dir(sweep_dir, trial)))}')
    bar.update(len(unit))
  bar.close()
  if table:
    write_table(sweep_dir)
  return progress


def grid_change_line(sweep_dir: pathlib.Path, previous: dict[str, Any],
                     trials: Sequence[grid_lib.Trial]) -> str:
  """What a grown (or shrunk) grid reuses and leaves out of the table."""
  before = {row['trial_id'] for row in previous.get('trials', [])}
  finished = sum(1 for t in trials if is_finished(sweep_dir, t))
  text = (f'{sweep_dir}: the grid changed ({len(before)} -> {len(trials)} trials); '
          f'{finished} of them finished already and are not trained again')
  left_out = before - {t.id for t in trials}
  if left_out:
    text += (f'; {len(left_out)} of the earlier grid stay in {TRIALS_DIR}/ but leave '
             f'{TABLE_FILE} (add their values back to use them)')
  return text


def _parallel_worker(run: Callable[..., Any], args: tuple, worker: int,
                     num_workers: int) -> None:
  run(*args, worker=worker, num_workers=num_workers, compilation_cache=True)


def in_processes(run: Callable[..., Any], args: tuple, num_workers: int) -> None:
  """`run(*args, worker=i, num_workers=n)` for every i, as processes of this machine
  (`run` is `run_sweep` or `run_trials`).

  Spawned, not forked: each worker starts its own JAX. Raises SystemExit naming the
  workers that failed (re-running resumes)."""
  if num_workers == 1:
    _parallel_worker(run, args, 0, 1)
    return
  import multiprocessing  # pylint: disable=import-outside-toplevel
  context = multiprocessing.get_context('spawn')
  processes = [context.Process(target=_parallel_worker, args=(run, args, i, num_workers))
               for i in range(num_workers)]
  for process in processes:
    process.start()
  for process in processes:
    process.join()
  failed = [i for i, process in enumerate(processes) if process.exitcode != 0]
  if failed:
    raise SystemExit(f'workers {failed} failed; re-run to resume')


def _train_unit(trials: list[grid_lib.Trial], sweep_dir: pathlib.Path, pack: bool,
                progress: SweepProgress) -> None:
  dirs = [trial_dir(sweep_dir, t) for t in trials]
  try:
    if pack and len(trials) > 1:
      train_packed([t.config for t in trials], dirs, quiet=True)
    else:
      for trial, run_dir in zip(trials, dirs):
        train(trial.config, run_dir, quiet=True)
  except Exception as error:  # pylint: disable=broad-except
    for trial, run_dir in zip(trials, dirs):
      if not is_finished(sweep_dir, trial):
        _mark_failed(run_dir, error)
        progress.failed.append(trial.id)
  progress.trained += [t.id for t in trials if t.id not in progress.failed]


def _describe(status: dict[str, Any]) -> str:
  text = status.get('status', 'pending')
  if 'steps_to_target' in status:
    text += f', steps_to_target={status["steps_to_target"]}'
  elif text == 'done':
    text += f', target not reached in {status.get("step")} steps'
  elif text in ('failed', 'diverged', 'interrupted'):
    text += f' ({status.get("reason")})'
  return text
