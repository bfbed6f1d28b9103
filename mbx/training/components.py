"""The model, optimizer, LR schedule and augmentation a config trains with.

One place builds them, for the training loop, AutoBatch and dry runs alike.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from mbx import config as config_lib
from mbx import data as data_lib
from mbx import models as models_lib
from mbx.optim import Optimizer, build_optimizer, learning_rate_schedule
from mbx.training.plan import Plan
from mbx.training.step import batch_norm_axis_name


@dataclasses.dataclass(frozen=True)
class Components:
  model: Any
  optimizer: Optimizer
  lr_schedule: Callable
  augment: Callable | None


def build_components(config: config_lib.Config, plan: Plan, *, num_classes: int,
                     mesh) -> Components:
  """Everything the train step closes over, for `plan` (its batch sizes and budget)."""
  model = models_lib.build_model(
      config.model.name, num_classes=num_classes, options=config.model.options,
      dtype=jnp.dtype(config.model.dtype), batch_norm_axis_name=batch_norm_axis_name(mesh))
  lr_schedule = learning_rate_schedule(
      config.optim, batch_size=plan.initial_batch_size,
      examples_per_epoch=plan.num_train_examples, total_examples=plan.total_examples,
      extra_decays=plan.lr_extra_decays)
  augment = data_lib.augment_fn(config.data.name) if config.data.augment else None
  return Components(model=model, optimizer=build_optimizer(config.optim),
                    lr_schedule=lr_schedule, augment=augment)
