"""Learning-rate schedules as functions of the number of examples seen.

Counting examples rather than steps keeps milestones and warmup exact when the
batch size changes during training (Smith et al. 2018). Built from optax's
schedules; only the warmup splice and the examples unit are ours.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import optax

from mbx.config import Duration, OptimConfig, parse_duration
from mbx.optim import batch_rules


def scaled_learning_rate(config: OptimConfig, batch_size: int) -> float:
  """Peak LR for `batch_size`: optim.lr_scaling's batch rule from base_batch_size."""
  base = config.base_batch_size or batch_size
  return config.learning_rate * batch_rules.lr_factor(config.lr_scaling, batch_size / base,
                                                      'optim.lr_scaling')


def learning_rate_schedule(
    config: OptimConfig, *, batch_size: int, examples_per_epoch: int,
    total_examples: int, extra_decays: Sequence[tuple[int, float]] = (),
    tokens_per_example: int = 1,
) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """LR as a function of examples seen before the step.

  Args:
    config: the optimizer config (peak LR, schedule, milestones, warmup).
    batch_size: the initial global batch size (LR scaling and step units).
    examples_per_epoch: training-set size.
    total_examples: the training budget, where decaying schedules end.
    extra_decays: (examples, factor) pairs multiplied in at those points, used
      by the hybrid batch-size schedule once the batch size is capped.
    tokens_per_example: what warmup and milestones in 'tokens' are divided by.
  """
  peak = scaled_learning_rate(config, batch_size)
  to_examples = lambda amount, unit: Duration(amount, unit).to_examples(
      batch_size, examples_per_epoch, tokens_per_example)
  warmup = parse_duration(config.warmup, 'optim.warmup').to_examples(
      batch_size, examples_per_epoch, tokens_per_example)
  decay_span = max(total_examples - warmup, 1)
  end = peak * config.end_lr_factor
  if config.schedule == 'constant':
    main = optax.constant_schedule(peak)
  elif config.schedule == 'step':
    main = optax.piecewise_constant_schedule(peak, {
        to_examples(m, config.milestone_unit): config.decay_factor
        for m in config.milestones})
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, decay_span, alpha=config.end_lr_factor)
  elif config.schedule == 'linear':
    main = optax.linear_schedule(peak, end, decay_span)
  elif config.schedule == 'polynomial':
    main = optax.polynomial_schedule(peak, end, config.power, decay_span)
  else:
    raise ValueError(f'optim.schedule={config.schedule!r}: unknown schedule')
  absolute_milestones = config.schedule in ('constant', 'step')
  ramp = optax.linear_schedule(peak * config.warmup_start_factor, peak, max(warmup, 1))
  extra = optax.piecewise_constant_schedule(1.0, dict(extra_decays)) if extra_decays else None

  def schedule(examples_seen):
    x = jnp.asarray(examples_seen, jnp.float32)
    lr = main(x if absolute_milestones else jnp.maximum(x - warmup, 0.0))
    if warmup > 0:
      lr = jnp.where(x < warmup, ramp(x), lr)
    if extra is not None:
      lr = lr * extra(x)
    return lr

  return schedule
