"""Steps to reach a target metric, and how precisely the evaluations pin it down.

Shallue et al. 2019 (arXiv 1811.03600, Sec. 3.1): a trial's steps-to-result is
the first step at which the validation metric reaches the target. A run only
knows the metric where it evaluates, so the true first step S* lies in
(S_lo, S_hi], S_lo the last evaluation that missed, S_hi the first that reached.
We report S_hi (Shallue's convention, never optimistic) and S_lo + 1.

Method: mbx evaluates at every step ceil(g^i) (train.eval_growth = g) besides
train.eval_every. Consecutive geometric points satisfy S_hi <= ceil(g S_lo) <
g S_lo + 1, so (S_hi - S*) / S* <= (S_hi - S_lo - 1) / (S_lo + 1) < g - 1:
with g = 1.05 the reported steps-to-target is at most 5% above the truth, and
exact below 1/(g - 1) steps (20 for g = 1.05), where ceil(g^i) visits every integer.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def higher_is_better(metric: str, directions: dict[str, str] | None = None) -> bool:
  """From the task's metric directions ({'accuracy': 'max', 'loss': 'min', ...}) when given;
  else by name (accuracies are maximised, losses and errors minimised)."""
  name = metric.partition('_')[2] if metric.startswith(('eval_', 'train_')) else metric
  if directions is not None and name in directions:
    return directions[name] == 'max'
  return metric.endswith('accuracy')


def max_relative_error(eval_growth: float) -> float:
  """Bound on (reported - true) / true steps-to-target with geometric evaluations."""
  return eval_growth - 1


def reached(value: float, target: float, metric: str, directions=None) -> bool:
  if not math.isfinite(value):
    return False
  return value >= target if higher_is_better(metric, directions) else value <= target


def first_crossing(steps: Sequence[int], values: Sequence[float], target: float,
                   metric: str, directions=None) -> tuple[int, int] | None:
  """(S_lo + 1, S_hi) around the first evaluation meeting the target, or None."""
  order = np.argsort(np.asarray(steps), kind='stable')
  previous = -1
  for i in order:
    if reached(float(values[i]), target, metric, directions):
      return previous + 1, int(steps[i])
    previous = int(steps[i])
  return None


def summarize(steps: Sequence[int], examples: Sequence[int], values: Sequence[float],
              target: float, metric: str, directions=None) -> dict[str, Any]:
  """Steps/examples to target (None if never reached) and the best and final value;
  `directions` are the task's (Task.metrics)."""
  values = np.asarray(values, dtype=float)
  finite = values[np.isfinite(values)]
  best = float('nan') if not finite.size else float(
      finite.max() if higher_is_better(metric, directions) else finite.min())
  row = {'steps_to_target': None, 'steps_to_target_lower': None, 'examples_to_target': None,
         'best_metric': best, 'final_metric': float(values[np.argmax(steps)]) if len(steps)
         else float('nan')}
  crossing = first_crossing(steps, values, target, metric, directions)
  if crossing is not None:
    lower, upper = crossing
    row.update(steps_to_target=upper, steps_to_target_lower=lower,
               examples_to_target=int(examples[list(steps).index(upper)]))
  return row
