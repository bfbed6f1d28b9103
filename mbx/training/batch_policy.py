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

Every batch a policy may choose is on a fixed geometric ladder (config.batch_ladder), so each
shape compiles once.
The statistics are the noise-scale probe's bias-corrected EMAs: |G|^2 and tr(Sigma), Sigma the
covariance of one example's gradient. The gradient of a base batch of B0 examples then has
variance sigma^2 = tr(Sigma) / B0, and the pre-conditioning-free Pollux noise scale
phi = B0 sigma^2 / |G|^2 is B_simple.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mbx.config import Config, Duration, uses_adascale
from mbx.optim import batch_rules
from mbx.training.estimators import ESTIMATORS
from mbx.training.plan import Plan, Segment, initial_segment


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
                 initial: int | None = None, b_simple: float = math.nan,
                 multiple: float = 1.0) -> int:
  """Batch-size warmup: climbs the ladder from its current rung, never down.

  With fixed milestones, the rung is `milestones_passed` above the initial batch's (`initial`,
  by default the current batch). Otherwise one rung up whenever the next rung is at most
  multiple x B_simple: the running critical-batch estimate allows it.
  """
  index = ladder.index(current)
  if milestones_passed is not None:
    rung = ladder.index(current if initial is None else initial) + milestones_passed
    return ladder[min(max(rung, index), len(ladder) - 1)]
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


def shortfall(value, baseline, *, higher_is_better: bool = False):
  """How much worse a branch's metric `value` is than the baseline branch's (< 0: better)."""
  sign = -1.0 if higher_is_better else 1.0
  return sign * (value - baseline)


def keeps_up(value, baseline, tolerance: float, *, relative: bool = False,
             higher_is_better: bool = False):
  """Whether a branch's metric `value` is at most `tolerance` worse than the baseline branch's:
  by an absolute amount, or (relative) by a fraction of the baseline. NaN never keeps up;
  elementwise on arrays and Series. Shared by the warmup's branch test and the local CBS."""
  if relative:
    return (value >= baseline * (1 - tolerance) if higher_is_better
            else value <= baseline * (1 + tolerance))
  return shortfall(value, baseline, higher_is_better=higher_is_better) <= tolerance


def lr_factor(rule: str, ratio: float, gain: float, declared_rule: str | None) -> float:
  """The LR multiplier for a batch `ratio` times the initial one (gain: AdaScale's r).

  AdaScale multiplies SGD's LR by r as published; for optimizers that declare the sqrt rule
  (Adam-type) by sqrt(r), as adaptdl's AdamScale does: the gain is an effective batch ratio,
  and it enters the LR as the optimizer's own batch rule says.
  """
  if rule == 'adascale':
    return batch_rules.lr_factor(declared_rule, gain, 'the AdaScale gain')
  return batch_rules.lr_factor(rule, ratio, 'train.batch_policy_lr')


def policy_rule(config: Config, declared_rule: str | None) -> str:
  """'adascale' or the batch rule of train.batch_policy_lr, 'auto' resolved."""
  if uses_adascale(config):
    return 'adascale'
  t = config.train
  return declared_rule if t.batch_policy_lr == 'auto' else t.batch_policy_lr


class BatchPolicy:
  """A run's policy on the host: decides at the plan's decision steps and keeps its decisions,
  from which the plan is rebuilt (`replan(segments)`, i.e. plan.make_plan), so the steps before
  a decision never change and the example stream stays exact.

  Decisions read only the checkpointed train state (the noise-scale probe's EMAs) and what
  `to_meta` records in the checkpoint (the decisions and goodput's timings), so a resumed run
  decides as an uninterrupted one does.
  """

  def __init__(self, config: Config, replan: Callable[..., Plan], meta: Mapping[str, Any],
               optimizer):
    self.config, self.replan, self.optimizer = config, replan, optimizer
    self.declared_rule = optimizer.declared.batch_rule  # resolve_optimizer checked it is there
    self.rule = policy_rule(config, self.declared_rule)
    self.base_batch = config.optim.base_batch_size or config.train.batch_size
    recorded = meta.get('batch_policy', {})
    self.segments = tuple(Segment.from_meta(s) for s in recorded.get('segments', ())) or (
        initial_segment(config),)
    self.seconds_per_step = {int(b): float(t)
                             for b, t in recorded.get('seconds_per_step', {}).items()}

  def plan(self) -> Plan:
    return self.replan(segments=self.segments)

  def to_meta(self) -> dict[str, Any]:
    return {'segments': [dataclasses.asdict(s) for s in self.segments],
            'seconds_per_step': {str(b): t for b, t in self.seconds_per_step.items()}}

  def lr_factor(self, batch: int, gain: float = 1.0) -> float:
    """The LR multiplier of a step of `batch` under the policy's LR rule (gain: AdaScale's)."""
    return lr_factor(self.rule, batch / self.config.train.batch_size, gain, self.declared_rule)

  def hyperparameters(self, batch: int) -> tuple[tuple[str, float], ...]:
    """The optimizer hyperparameters besides the LR that the batch rule sets at `batch`."""
    if self.rule == 'adascale':
      return ()
    return tuple(sorted(self.optimizer.changed_by(
        self.rule, batch / self.config.train.batch_size, 'train.batch_policy_lr').items()))

  def _target(self, plan: Plan, step: int, batch: int, b_simple: float,
              measure: Mapping[str, Callable]) -> tuple[int, dict]:
    t = self.config.train
    if t.batch_policy == 'warmup':
      if t.batch_policy_milestones:
        marks = [Duration(m, t.batch_size_milestone_unit).to_examples(
            t.batch_size, plan.num_train_examples, plan.tokens_per_example)
            for m in t.batch_policy_milestones]
        passed = sum(m <= plan.examples_after_step[step] for m in marks)
        return warmup_batch(batch, plan.batch_ladder, milestones_passed=passed,
                            initial=t.batch_size), {}
      if t.batch_policy_criterion == 'branch':
        return self._branch_test(plan, batch, measure['branch_losses'])
      return warmup_batch(batch, plan.batch_ladder, b_simple=b_simple,
                          multiple=t.batch_policy_multiple), {}
    if t.batch_policy == 'noise_scale':
      return noise_scale_batch(b_simple, t.batch_policy_multiple, plan.batch_ladder, batch), {}
    if t.batch_policy == 'goodput':
      if not self.seconds_per_step:  # measured once, here, and kept in the checkpoints
        self.seconds_per_step = dict(measure['time_steps'](plan.batch_ladder))
      best, gain = goodput_choice(self.seconds_per_step, b_simple, self.base_batch, batch,
                                  t.goodput_min_gain)
      return best, {'goodput_gain': gain}
    return batch, {}  # adascale: the batch stays

  def _branch_test(self, plan: Plan, batch: int,
                   branch_losses: Callable[[Sequence[int]], list[float]]) -> tuple[int, dict]:
    """Merrill et al. 2025's local-CBS test: one rung up if, trained from here on the same
    examples, the next rung's eval loss is within the tolerance of the current rung's."""
    ladder = plan.batch_ladder
    index = ladder.index(batch)
    if index + 1 == len(ladder):
      return batch, {}
    current, larger = branch_losses((batch, ladder[index + 1]))
    grows = keeps_up(larger, current, self.config.train.batch_policy_tolerance, relative=True)
    columns = {'branch_loss': current, 'branch_loss_next_rung': larger}
    return (ladder[index + 1] if grows else batch), columns

  def decide(self, plan: Plan, step: int, estimates: Mapping[str, float],
             measure: Mapping[str, Callable]) -> tuple[bool, dict]:
    """(whether the plan changed, the decision's log columns) at decision step `step`.

    estimates: the probes' summaries, merged (each estimator's value and its two averaged
    estimates; train.batch_policy_estimator names the one read; NaN when off or when its
    |G|² estimate is <= 0);
    measure: what the loop measures on request: 'time_steps'(batches) -> seconds per step of
    each (goodput), 'branch_losses'(batches) -> the eval loss after training a copy of the
    state at each batch for train.batch_policy_branch (warmup's branch criterion)."""
    current = plan.segment_at(step)
    estimator = ESTIMATORS[self.config.train.batch_policy_estimator]
    noise_scale = float(estimates.get(estimator.name, math.nan))
    batch, columns = self._target(plan, step, current.batch_size, noise_scale, measure)
    gain, rate = 1.0, None
    if self.rule == 'adascale':  # tr(AΣ) and GᵀAG of the chosen estimator's metric A
      variance = float(estimates.get(estimator.summary_trace, math.nan)) / self.base_batch
      gain = adascale_gain(variance, float(estimates.get(estimator.summary_grad, math.nan)),
                           batch / self.base_batch)
      rate = gain * self.base_batch
    factor = self.lr_factor(batch, gain)
    columns = {'policy_batch_size': batch, 'policy_lr_factor': factor, 'adascale_gain': gain,
               'policy_b_simple': noise_scale, **columns}  # the estimator read (its name
                                                              # kept for earlier runs' logs)
    if (batch, rate, factor) == (current.batch_size, current.progress_per_step,
                                 current.lr_factor):
      return False, columns
    self.segments += (Segment(step, batch, progress=plan.progress_at(step),
                              progress_per_step=rate, lr_factor=factor, gain=gain,
                              hyperparameters=self.hyperparameters(batch)),)
    return True, columns
