"""Orbax checkpoints of the train state.

Items: 'params' and 'model_state' (restorable on their own, without knowing the
optimizer, for analysis), 'train_state' (everything else needed to resume
bit-exactly) and 'meta' (JSON). Orbax writes each checkpoint into a temporary
directory and renames it when complete, so an interrupted write never becomes
the latest step; leftover temporary directories are removed on the next start.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from mbx.training.step import TrainState


def _rest(state: TrainState) -> dict[str, Any]:
  """The train state except params and model state (saved as items of their own)."""
  rest = {'counters': state.counters, 'opt_state': state.opt_state,
          'metric_sums': state.metric_sums}
  if state.probes:
    rest['probes'] = state.probes
  return rest


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """A CheckpointManager over `<run>/checkpoints`, keeping the last `keep`."""

  def __init__(self, directory: str | pathlib.Path, keep: int | None = None,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any]) -> None:
    step = int(meta['step'])
    rest = _rest(state)
    items = {'params': ocp.args.StandardSave(state.params),
             'train_state': ocp.args.StandardSave(rest),
             'meta': ocp.args.JsonSave(meta)}
    if state.model_state:
      items['model_state'] = ocp.args.StandardSave(state.model_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores the full state onto the shardings and structure of `like`."""
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
    names = [n for n in ('params', 'model_state', 'meta')
             if (self.directory / str(step) / n).exists()]
    args = {n: ocp.args.JsonRestore() if n == 'meta' else ocp.args.StandardRestore()
            for n in names}
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored['params'], restored.get('model_state', None) or {}, restored['meta']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
