"""Tasks: what a model's outputs are scored by — the training loss and the evaluation metrics.

A task is a small object with four methods (see `Task`); the train step, the evaluation, the
sharpness and Hessian losses and AutoBatch all go through it, so a new kind of problem is one
file. Built in: `classification` (softmax cross-entropy; accuracy, error) and `regression`
(mean squared error). `task.name` also takes an import path 'package.module:Name' of a class
(instantiated with `task.options`) or of an instance.

Batches are dicts: 'inputs', 'targets' and, optionally, 'weights' — per example or per token,
with the shape of the per-example losses. Weight 0 means "does not count" (padding).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mbx import registry
from mbx.tasks.base import Task, weighted_sum
from mbx.tasks.classification import Classification
from mbx.tasks.regression import Regression

TASKS: dict[str, type] = {'classification': Classification, 'regression': Regression}

__all__ = ['TASKS', 'Classification', 'Regression', 'Task', 'resolve_task', 'weighted_sum']


def resolve_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
  """The task `task.name` names, built with `task.options`; ValueError naming the field."""
  target = registry.resolve(name, TASKS, 'task.name', 'TaskClass')
  options = dict(options or {})
  if isinstance(target, type):
    try:
      task = target(**options)
    except TypeError as error:
      raise ValueError(f'task.options={options!r}: {error}') from None
  elif options:
    raise ValueError(f'task.options={options!r}: {name} is an instance, it takes no options')
  else:
    task = target
  missing = [m for m in ('losses', 'sums', 'finalize', 'metrics') if not hasattr(task, m)]
  if missing:
    raise ValueError(f'task.name={name!r}: not a task (no {", ".join(missing)}); '
                     'see mbx.tasks.Task')
  return task
