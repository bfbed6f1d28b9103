"""Adapting the batch size during training: the decision rules, pure and host-side.

Four policies (config `train.batch_policy`, docs/adaptive_batch.md):

* warmup: start at train.batch_size and multiply B by train.batch_policy_factor at fixed points
  (train.batch_policy_milestones) or whenever the running B_simple allows it (Merrill et al.
  2025, batch-size warmup).
* adascale: keep B and scale the LR by the AdaScale gain r, advancing the LR schedule by r
  base steps per step (Johnson et al. 2020).
* noise_scale: B = multiple x B_simple, clipped to the ladder (McCandlish et al. 2018).
* goodput: the B of the ladder with the largest measured throughput x statistical efficiency
  (Pollux, Qiao et al. 2021).

Every batch a policy may choose is on a fixed geometric ladder, so each shape compiles once.
The statistics are the noise-scale probe's bias-corrected EMAs: |G|^2 and tr(Sigma), Sigma the
covariance of one example's gradient. The gradient of a base batch of B0 examples then has
variance sigma^2 = tr(Sigma) / B0, and the pre-conditioning-free Pollux noise scale
phi = B0 sigma^2 / |G|^2 is B_simple.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mbx.config import ADAM_FAMILY


def batch_ladder(min_batch: int, max_batch: int, factor: int) -> tuple[int, ...]:
  """min_batch * factor^k for k = 0, 1, ... up to max_batch: the batches a policy may pick."""
  ladder, batch = [], min_batch
  while batch <= max_batch:
    ladder.append(batch)
    batch *= factor
  return tuple(ladder)


def adascale_gain(variance: float, grad_sq: float, scale: float) -> float:
  """The AdaScale gain r = (sigma^2 + mu^2) / (sigma^2 / S + mu^2), clipped to [1, S].

  Johnson, Agrawal, Gu & Guestrin 2020 (arXiv 2007.05105), eq. (2). `variance` is sigma^2,
  the trace of the covariance of a base-batch gradient; `grad_sq` is mu^2 = |G|^2; `scale`
  is S = B / B0. A missing or negative estimate counts as zero (adaptdl's rule); with no
  signal at all the gain is 1 (the step is the base step).
  """
  if scale <= 1:
    return 1.0
  variance = max(variance, 0.0) if math.isfinite(variance) else 0.0
  grad_sq = max(grad_sq, 0.0) if math.isfinite(grad_sq) else 0.0
  denominator = variance / scale + grad_sq
  if denominator <= 0:
    return 1.0
  return min(max((variance + grad_sq) / denominator, 1.0), float(scale))


def statistical_efficiency(noise_scale: float, batch: float, base_batch: float) -> float:
  """Pollux's efficiency (phi + B0) / (phi + B) of a step of `batch` examples, relative to one
  of `base_batch` (Qiao et al. 2021, eq. 6); phi is B_simple. Equals adascale_gain / S."""
  phi = max(noise_scale, 0.0) if math.isfinite(noise_scale) else 0.0
  return (phi + base_batch) / (phi + batch)


def nearest_on_ladder(batch: float, ladder: Sequence[int]) -> int:
  """The ladder value nearest to `batch` in log scale (clipped to its ends)."""
  if not math.isfinite(batch) or batch <= 0:
    return ladder[0]
  return min(ladder, key=lambda b: (abs(math.log(b / batch)), b))


def noise_scale_batch(b_simple: float, multiple: float, ladder: Sequence[int],
                      current: int) -> int:
  """McCandlish's recipe: B = multiple x B_simple, clipped to [B_min, B_max] and rounded to the
  ladder; the current batch while B_simple is not yet measured (NaN, or not positive)."""
  if not math.isfinite(b_simple) or b_simple <= 0:
    return current
  return nearest_on_ladder(multiple * b_simple, ladder)


def warmup_batch(current: int, ladder: Sequence[int], *, milestones_passed: int | None = None,
                 b_simple: float = math.nan, multiple: float = 1.0) -> int:
  """Batch-size warmup: climbs the ladder from its current rung, never down.

  With fixed milestones, the rung is `milestones_passed` above the first (the initial batch).
  Otherwise one rung up whenever the next rung is at most multiple x B_simple: the running
  critical-batch estimate allows it.
  """
  index = ladder.index(current)
  if milestones_passed is not None:
    return ladder[min(max(milestones_passed, index), len(ladder) - 1)]
  if (index + 1 < len(ladder) and math.isfinite(b_simple)
      and ladder[index + 1] <= multiple * b_simple):
    return ladder[index + 1]
  return current


def goodput_choice(seconds_per_step: Mapping[int, float], b_simple: float, base_batch: int,
                   current: int, min_gain: float = 0.05) -> tuple[int, float]:
  """(batch, predicted gain) of Pollux's rule: maximise throughput x efficiency over the timed
  batches; switch only when the best beats the current batch's goodput by min_gain or more.

  seconds_per_step: the measured time of a step of each candidate batch on this machine.
  The gain is goodput(best) / goodput(current) - 1 (0 when staying).
  """
  def goodput(batch):
    return batch / seconds_per_step[batch] * statistical_efficiency(b_simple, batch, base_batch)
  if not math.isfinite(b_simple) or b_simple <= 0:
    return current, 0.0
  best = max(sorted(seconds_per_step), key=goodput)
  gain = goodput(best) / goodput(current) - 1.0
  if best != current and gain >= min_gain:
    return best, gain
  return current, 0.0


def lr_rule(rule: str, policy: str, optimizer: str) -> str:
  """The LR rule a policy applies when B changes: 'auto' is AdaScale for adascale and goodput
  (as Pollux does), else sqrt for the Adam family and linear for SGD and its kin."""
  if rule != 'auto':
    return rule
  if policy in ('adascale', 'goodput'):
    return 'adascale'
  return 'sqrt' if optimizer in ADAM_FAMILY else 'linear'


def lr_factor(rule: str, ratio: float, gain: float, optimizer: str) -> float:
  """The LR multiplier for a batch `ratio` times the initial one (gain: AdaScale's r).

  AdaScale multiplies SGD's LR by r as published; for Adam-family optimizers by sqrt(r),
  as adaptdl's AdamScale does (Adam's step is normalised, so a gain in the signal-to-noise
  ratio of the gradient is worth its square root in step size).
  """
  if rule == 'adascale':
    return math.sqrt(gain) if optimizer in ADAM_FAMILY else gain
  return {'none': 1.0, 'linear': ratio, 'sqrt': math.sqrt(ratio)}[rule]
