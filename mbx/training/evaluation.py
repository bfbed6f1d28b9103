"""Evaluation: the task's metrics over every example of a split, once each, summed exactly.

The training loop evaluates through `Evaluator` along training and at the end; `evaluate_split`
runs the same code for one split of a finished run's checkpoint (`Run.evaluate`), so its numbers
are the ones the run recorded.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from mbx import config as config_lib
from mbx.training import feed as feed_lib
from mbx.training.step import make_eval_step, make_mesh, replicated
from mbx.training.workload import Workload, config_error


@jax.jit
def trial_slice(tree, index):
  """Trial `index` of a stack. Jitted: op by op, every leaf's slice would compile on its own."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def training_splits(workload: Workload) -> dict[str, str]:
  """{row prefix: split} that training evaluates: 'eval' (and 'train' with
  train.eval_on_train) along training, 'test' once at the end."""
  splits = {'eval': workload.eval_split}
  if workload.config.train.eval_on_train:
    splits['train'] = workload.train_split
  if workload.test_split is not None:
    splits['test'] = workload.test_split
  return splits


class Evaluator:
  """The task's metrics over every example of a split, once each, summed exactly."""

  _eval_steps: dict = {}  # compiled once per model config, shared by a sweep's trials
  _vmapped: dict = {}     # their vmapped versions, for packed trials
  vmap_stacks: bool | None = None  # a stack in one vmapped pass; None: except on XLA:CPU

  def __init__(self, workload: Workload, model, mesh, on_device: bool,
               splits: dict[str, str] | None = None):
    """splits: {row prefix: split}; by default `training_splits`."""
    config = workload.config
    key = (json.dumps(config_lib.to_dict(config)['model'], sort_keys=True),
           config.task.name, json.dumps(config.task.options, sort_keys=True),
           tuple(d.id for d in mesh.devices.flat), id(workload.module))
    if key not in self._eval_steps:
      self._eval_steps[key] = make_eval_step(model, workload.task)
    self.eval_step = self._eval_steps[key]
    self.task, self.mesh = workload.task, mesh
    # Metrics only the data can derive, e.g. a text dataset's bits per character.
    self.split_metrics = getattr(workload.dataset, 'split_metrics', None)
    self.splits = dict(splits) if splits is not None else training_splits(workload)
    self.periodic = tuple(p for p in self.splits if p != 'test')  # test only at the end
    self.batch_size = config.train.eval_batch_size
    self.cached, self.sources = {}, {}
    for prefix, split in self.splits.items():
      if on_device:
        self.cached[prefix] = feed_lib.eval_batches(workload.dataset.arrays(split),
                                                    self.batch_size, mesh)
      else:
        self.sources[prefix] = workload.dataset.source(split)

  def __call__(self, params, model_state) -> dict[str, float]:
    return self._rows(self.eval_step, params, model_state, self.periodic)[0]

  def _stacked_rows(self, params, model_state, prefixes) -> list[dict[str, float]]:
    """One row per trial of a stack. On an accelerator from one vmapped pass over the data;
    on XLA:CPU trial by trial, which is faster there: the MNIST-1D CNN's 12 trials took 37 ms
    one by one and 66 ms vmapped (its convolutions become grouped ones), 1000 examples each."""
    vmapped = self.vmap_stacks if self.vmap_stacks is not None else (
        jax.default_backend() != 'cpu')
    if not vmapped:
      return [self._rows(self.eval_step, *trial_slice((params, model_state), k), prefixes)[0]
              for k in range(jax.tree.leaves(params)[0].shape[0])]
    if self.eval_step not in self._vmapped:
      self._vmapped[self.eval_step] = jax.jit(
          jax.vmap(self.eval_step, in_axes=(0, 0, None, None)))
    return self._rows(self._vmapped[self.eval_step], params, model_state, prefixes)

  def stacked(self, params, model_state) -> list[dict[str, float]]:
    """One row per trial of a stack."""
    return self._stacked_rows(params, model_state, self.periodic)

  def test(self, params, model_state, stacked: bool = False):
    """test_<metric> of one trial's final state ({} without a test split); stacked: a row per
    trial of a stack."""
    if 'test' not in self.splits:
      return [{}] * jax.tree.leaves(params)[0].shape[0] if stacked else {}
    if stacked:
      return self._stacked_rows(params, model_state, ('test',))
    return self._rows(self.eval_step, params, model_state, ('test',))[0]

  def _rows(self, eval_step, params, model_state, prefixes) -> list[dict[str, float]]:
    rows = None
    for prefix in prefixes:
      batches = self.cached.get(prefix) or feed_lib.streamed_eval_batches(
          self.sources[prefix], self.batch_size, self.mesh)
      totals = None
      for batch, mask in batches:
        sums = eval_step(params, model_state, batch, mask)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      totals = {k: np.atleast_1d(v) for k, v in jax.device_get(totals).items()}
      rows = rows or [{} for _ in totals['examples']]
      for k, row in enumerate(rows):
        values = self.task.finalize({name: float(v[k]) for name, v in totals.items()})
        if self.split_metrics is not None:
          values.update(self.split_metrics(values, self.splits[prefix]))
        row.update({f'{prefix}_{name}': float(v) for name, v in values.items()})
        row[f'{prefix}_examples'] = int(totals['examples'][k])
    return rows


def evaluate_split(workload: Workload, params, model_state, split: str) -> dict[str, float]:
  """The task's metrics (and 'examples') over every example of `split` at `params`, computed as
  the training loop computes its evaluations: the same model (in model.dtype), eval step,
  batches (train.eval_batch_size) and data placement, so a checkpoint's numbers are the ones
  its run recorded."""
  config = workload.config
  try:
    workload.dataset.check_split(split, 'split')
    num_train = int(workload.dataset.num_examples(config.data.train_split))
  except (ValueError, FileNotFoundError) as error:
    raise config_error(error) from None
  on_device = feed_lib.keeps_data_on_device(config.data.placement, workload.info.element_spec,
                                            num_train)
  mesh = make_mesh()
  evaluator = Evaluator(workload, workload.model(mesh), mesh, on_device, splits={'split': split})
  params, model_state = jax.device_put((params, model_state or {}), replicated(mesh))
  return {name.partition('_')[2]: value
          for name, value in evaluator(params, model_state).items()}
