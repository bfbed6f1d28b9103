"""What the train step closes over and the arguments it is compiled for, built in one place.

The loop, AutoBatch and the dry run all compile `step.make_step(step_parts(...), shape, ...)`
on `step_arguments(...)`, so AutoBatch measures the very program that trains.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mbx.data.example_order import window_length
from mbx.config import uses_adascale
from mbx.optim import learning_rate_schedule
from mbx.training.plan import Plan, StepShape
from mbx.training.step import (HYPER_SIZE, StepParts, TrainState, batch_sharded, init_train_state,
                               replicated)
from mbx.training.workload import Workload


def step_parts(workload: Workload, plan: Plan, mesh) -> StepParts:
  """Model, task, probes, optimizer, LR schedule, augmentation and update rule for
  `plan`."""
  config = workload.config
  lr_schedule = learning_rate_schedule(
      config.optim, batch_size=plan.initial_batch_size,
      examples_per_epoch=plan.num_train_examples, total_examples=plan.schedule_examples,
      extra_decays=plan.lr_extra_decays, tokens_per_example=plan.tokens_per_example)
  return StepParts(model=workload.model(mesh), task=workload.task, optimizer=workload.optimizer,
                   lr_schedule=lr_schedule, augment=workload.augment(), probes=workload.probes,
                   schedule_progress=uses_adascale(config), update_rule=workload.update_rule)


def abstract_state(workload: Workload, parts: StepParts, mesh) -> TrainState:
  """The train state's shapes, replicated over `mesh`; nothing is initialised."""
  t = workload.config.train
  state = jax.eval_shape(lambda: init_train_state(
      parts.model, parts.optimizer.transform(), workload.sample_inputs(), seed=t.seed,
      mesh=mesh, task=parts.task, probes=parts.probes))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)),
                      state)


def step_arguments(workload: Workload, shape: StepShape, mesh, *, on_device: bool,
                   num_train_examples: int, max_batch_size: int, num_trials: int = 1):
  """Abstract (hyper, *batch arguments) of the step: the order window and its start when the
  split lives on device (feed.DeviceFeed), else one arranged, batch-sharded batch."""
  stacked = (num_trials,) if num_trials > 1 else ()
  hyper = jax.ShapeDtypeStruct((*stacked, HYPER_SIZE), jnp.float32, sharding=replicated(mesh))
  if on_device:
    row_spec = workload.batch_spec(1)
    row_bytes = num_trials * sum(s.size * s.dtype.itemsize for s in row_spec.values())
    window = (*stacked, window_length(num_train_examples, max_batch_size, row_bytes))
    rows = {k: jax.ShapeDtypeStruct((*window, *s.shape[1:]), s.dtype, sharding=replicated(mesh))
            for k, s in row_spec.items()}
    return hyper, rows, jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))
  return hyper, workload.batch_spec(shape.batch_size, batch_sharded(mesh))
