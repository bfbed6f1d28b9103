"""Orbax checkpoints of the train state.

Items: 'params' and 'model_state' (restorable on their own, without knowing the
optimizer, for analysis), 'train_state' (everything else needed to resume
bit-exactly) and 'meta' (JSON). Orbax writes each checkpoint into a temporary
directory and renames it when complete, so an interrupted write never becomes
the latest step; leftover temporary directories are removed on the next start.

A checkpoint damaged afterwards (a truncated array file, missing metadata, an empty or garbled
step directory) is never trusted: `restore_latest` warns in one line, moves it aside into
`checkpoints/corrupt/` (nothing is deleted) and falls back to the newest one that restores.
A checkpoint whose state has another layout than the run's (written by an earlier mbx, e.g.
before optimizer states held their injected hyperparameters) is intact, not damaged: it stays
where it is and the run stops in one line (`LayoutMismatch`).
"""
from __future__ import annotations

import logging
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from mbx.config import ConfigError
from mbx.training.step import TrainState

LAYOUT_MISMATCH = 'tree structures do not match'  # orbax's words for another layout


class LayoutMismatch(ConfigError):
  """A checkpoint that is whole but holds a train state of another layout than the run's."""


def is_layout_mismatch(error: BaseException) -> bool:
  return isinstance(error, ValueError) and LAYOUT_MISMATCH in str(error)


def _rest(state: TrainState) -> dict[str, Any]:
  """The train state except params and model state (saved as items of their own)."""
  rest = {'counters': state.counters, 'opt_state': state.opt_state,
          'metric_sums': state.metric_sums}
  if state.probes:
    rest['probes'] = state.probes
  return rest


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


CORRUPT_DIR = 'corrupt'


class _QuietReadOnly(logging.Filter):
  """Drops Orbax's two warnings that a read-only manager is read-only (asked for here)."""
  NOTICES = ('CheckpointManagerOptions.read_only=True', 'Given directory is read only')

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOTICES)


logging.getLogger('absl').addFilter(_QuietReadOnly())


class Checkpoints:
  """A CheckpointManager over `<run>/checkpoints`, keeping the last `keep`."""

  def __init__(self, directory: str | pathlib.Path, keep: int | None = None,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def quarantine(self, step: int, error: BaseException) -> pathlib.Path:
    """Moves step `step` aside into checkpoints/corrupt/ and says so in one line."""
    corrupt = self.directory / CORRUPT_DIR
    corrupt.mkdir(exist_ok=True)
    target = corrupt / f'{step}-{time.strftime("%Y%m%dT%H%M%S")}'
    shutil.move(str(self.directory / str(step)), str(target))
    cause = (str(error).strip().splitlines() or [''])[0][:200]
    print(f'warning: checkpoint step {step} of {self.directory.parent} cannot be restored '
          f'({type(error).__name__}: {cause}); moved to {target}', file=sys.stderr)
    self.manager.reload()
    return target

  def _restore_newest(self, restore):
    """restore(step) for the newest step that restores, quarantining the ones that do not."""
    listed = set(self.steps())
    unlisted = [p for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit() and
                int(p.name) not in listed] if self.directory.exists() else []
    for path in unlisted:  # e.g. an empty step directory: Orbax does not count it as a step
      self.quarantine(int(path.name), ValueError('not a complete checkpoint (no metadata)'))
    for step in reversed(self.steps()):
      try:
        return step, restore(step)
      except Exception as error:  # pylint: disable=broad-except  (any damage: try the previous)
        if is_layout_mismatch(error):
          raise LayoutMismatch(
              f'{self.directory.parent}: checkpoint step {step} holds a train state of another '
              'layout (written by an earlier mbx; optimizer states now hold their injected '
              'hyperparameters), so this version cannot resume it; train in a new directory, '
              f'or start from its parameters with train.init_from={self.directory.parent}@'
              f'{step}') from None
        self.quarantine(step, error)
    return None, None

  def restore_latest(self, like: TrainState):
    """(step, (state, meta)) of the newest checkpoint that restores, or (None, None)."""
    return self._restore_newest(lambda step: self.restore(step, like))

  def restore_latest_params(self):
    """(step, (params, model_state, meta)) of the newest checkpoint that restores."""
    return self._restore_newest(self.restore_params)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    self.wait()  # the previous save is checked before this one is written
    step = int(meta['step'])
    rest = _rest(state)
    items = {'params': ocp.args.StandardSave(state.params),
             'train_state': ocp.args.StandardSave(rest),
             'meta': ocp.args.JsonSave(meta)}
    if state.model_state:
      items['model_state'] = ocp.args.StandardSave(state.model_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def check_complete(self, step: int) -> None:
    """Raises ValueError unless every item of step `step` has its metadata and Orbax's commit
    marker: the cheap check a checkpoint must pass before it is trusted."""
    step_dir = self.directory / str(step)
    items = [p for p in step_dir.iterdir() if p.is_dir()] if step_dir.is_dir() else []
    if not any(p.name == 'params' for p in items):
      raise ValueError(f'{step_dir}: no params item')
    for item in items:
      if item.name == 'meta':
        continue
      for marker in ('_METADATA', 'commit_success.txt'):
        if not (item / marker).is_file():
          raise ValueError(f'{item}: no {marker}')

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores the full state onto the shardings and structure of `like`."""
    self.check_complete(step)
    rest = _rest(like)
    items = {'params': ocp.args.StandardRestore(_abstract(like.params)),
             'train_state': ocp.args.StandardRestore(_abstract(rest)),
             'meta': ocp.args.JsonRestore()}
    if like.model_state:
      items['model_state'] = ocp.args.StandardRestore(_abstract(like.model_state))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    rest = restored['train_state']
    state = TrainState(params=restored['params'],
                       model_state=restored['model_state'] if like.model_state else {},
                       probes=rest.get('probes', {}),
                       **{k: rest[k] for k in ('counters', 'opt_state', 'metric_sums')})
    return state, restored['meta']

  def restore_params(self, step: int) -> tuple[Any, Any, dict[str, Any]]:
    """(params, model_state, meta) at `step` as host-local arrays, no optimizer needed."""
    self.check_complete(step)
    names = [n for n in ('params', 'model_state', 'meta')
             if (self.directory / str(step) / n).exists()]
    args = {n: ocp.args.JsonRestore() if n == 'meta' else
            ocp.args.StandardRestore(self._on_this_host(step, n)) for n in names}
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored['params'], restored.get('model_state', None) or {}, restored['meta']

  def _on_this_host(self, step: int, item: str):
    """The item's arrays as targets on this process's first device: a checkpoint written by
    any mesh or number of processes restores here (without a target Orbax insists on the
    saved topology)."""
    metadata = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / item)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                        metadata)

  def wait(self) -> None:
    """Waits for the pending save, then checks it; a save that fails the check is moved aside
    at once, so it never becomes the step a resume starts from."""
    self.manager.wait_until_finished()
    latest = self.manager.latest_step()
    if latest is not None and not self.read_only:
      try:
        self.check_complete(latest)
      except ValueError as error:
        self.quarantine(latest, error)

  def close(self) -> None:
    self.manager.close()
