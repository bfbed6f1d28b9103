"""The gradient noise-scale estimators by name, and their run averages (plain Python: no JAX).

Each estimator is a ratio of two unbiased estimates that the in-step probes of
mbx.training.noise_scale log on their measuring steps (docs/science.md §20 derives them):

  b_simple                 tr(Σ) / |G|²            McCandlish et al. 2018, App. A.1
  b_simple_preconditioned  tr(PΣ) / GᵀPG           P: the optimizer's diagonal preconditioner
  b_noise                  tr(HΣ) / GᵀHG           H: the loss Hessian (Hessian-vector products)
  b_noise_preconditioned   tr(PHPΣ) / GᵀPHPG       the same for the update Δθ = −ηPG

The two estimates are averaged separately and only then divided (a ratio of noisy estimates
is biased). A ratio whose denominator averages to ≤ 0, or with nothing measured, is not a
number: `run_average` says why instead.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from mbx.config import NOISE_SCALE_ESTIMATORS, PER_EXAMPLE_TRACE


@dataclasses.dataclass(frozen=True)
class Estimator:
  name: str
  grad_column: str             # the logged unbiased estimate of the denominator
  trace_column: str            # ... and of the numerator
  weight_column: str | None    # the fraction of measuring steps it was computed on (None: all)
  label: str
  summary_grad: str            # the probe's bias-corrected moving averages in each log row
  summary_trace: str
  needs_preconditioner: bool = False
  needs_hessian: bool = False

  @property
  def denominator(self) -> str:
    return self.label.rpartition('/')[2]  # |G|², GᵀPG, GᵀHG or GᵀPHPG


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator('b_simple', 'grad_sq_estimate', 'trace_estimate', None, 'B_simple = tr(Σ)/|G|²',
              'grad_sq', 'trace_sigma'),
    Estimator('b_simple_preconditioned', 'grad_sq_p_estimate', 'trace_p_estimate',
              'preconditioned_steps',
              'B_simple,P = tr(PΣ)/GᵀPG', 'grad_sq_p', 'trace_p', needs_preconditioner=True),
    Estimator('b_noise', 'curvature_grad_estimate', 'curvature_trace_estimate',
              'curvature_steps', 'B_noise = tr(HΣ)/GᵀHG', 'grad_h', 'trace_h',
              needs_hessian=True),
    Estimator('b_noise_preconditioned', 'curvature_grad_p_estimate',
              'curvature_trace_p_estimate', 'curvature_p_steps',
              'B_noise,P = tr(PHPΣ)/GᵀPHPG', 'grad_php', 'trace_php',
              needs_preconditioner=True, needs_hessian=True),
)}
NAMES = tuple(ESTIMATORS)
assert NAMES == NOISE_SCALE_ESTIMATORS
# Exact per-example tr(Σ) (vmap), logged beside the two-group estimate of the same steps.
PER_EXAMPLE = PER_EXAMPLE_TRACE
PER_EXAMPLE_COLUMNS = ('trace_per_example_estimate', 'trace_two_group_estimate',
                       'per_example_steps')


def check_name(name: str, field: str) -> Estimator:
  if name not in ESTIMATORS:
    from mbx import registry  # pylint: disable=import-outside-toplevel
    raise ValueError(f'{field}={name!r}: not an estimator; {registry.suggest(name, NAMES)} '
                     f'(allowed: {", ".join(NAMES)})')
  return ESTIMATORS[name]


def ratio(grad_sq: float, trace: float, what: str = '|G|²') -> tuple[float, str | None]:
  """(trace / grad_sq, None), or (nan, why it is not measurable here). `what`: the
  denominator's name (a curvature-weighted one, GᵀHG, can also be negative because the loss
  curves down along the gradient)."""
  if not (math.isfinite(grad_sq) and math.isfinite(trace)):
    return math.nan, 'nothing measured'
  if grad_sq <= 0:
    why = ('negative curvature along the gradient, or the signal below the noise of the '
           'estimate' if 'H' in what else 'the gradient is below the noise at this batch (too '
           'few groups or steps to resolve it)')
    return math.nan, f'the {what} estimate averages to {grad_sq:.3g} ≤ 0: {why}'
  if trace <= 0:
    return math.nan, f'the noise estimate averages to {trace:.3g} ≤ 0'
  return trace / grad_sq, None


def run_average(estimator: str | Estimator, rows: Sequence[dict], until_step: int | None = None
                ) -> dict[str, float | str | None]:
  """The estimator over a run (or up to `until_step`) from its logged train rows: each
  estimate averaged over the steps it was computed on (rows weighted by their interval's
  length, and by the fraction of it the estimator ran), then the ratio. Returns {'value',
  'grad_sq', 'trace', 'reason'}; reason is None when value is a number."""
  e = ESTIMATORS[estimator] if isinstance(estimator, str) else estimator
  logged = sorted((r for r in rows if e.trace_column in r and 'step' in r),
                  key=lambda r: r['step'])
  previous, grad_total, trace_total, weight_total = 0.0, 0.0, 0.0, 0.0
  for r in logged:
    length = float(r['step']) - previous
    previous = float(r['step'])
    if length <= 0 or (until_step is not None and r['step'] > until_step):
      continue
    grad, trace = _number(r[e.grad_column]), _number(r[e.trace_column])
    weight = 1.0 if e.weight_column is None else _number(r.get(e.weight_column))
    if not (math.isfinite(grad) and math.isfinite(trace) and math.isfinite(weight)):
      continue
    grad_total += length * grad
    trace_total += length * trace
    weight_total += length * weight
  if weight_total <= 0:
    return {'value': math.nan, 'grad_sq': math.nan, 'trace': math.nan,
            'reason': f'{e.name} was not measured' + (
                f' up to step {until_step}' if until_step is not None else '')}
  grad_sq, trace = grad_total / weight_total, trace_total / weight_total
  value, reason = ratio(grad_sq, trace, e.denominator)
  return {'value': value, 'grad_sq': grad_sq, 'trace': trace, 'reason': reason}


def run_average_interval(estimator: str | Estimator, rows: Sequence[dict],
                         until_step: int | None = None, confidence: float = 0.9,
                         samples: int = 1000, seed: int = 0) -> tuple[float, float]:
  """A percentile bootstrap interval of `run_average` over the log intervals (each a row, with
  its length and weight): how much the run average depends on which intervals it saw. (nan,
  nan) when the run average is not measurable; an upper end of inf when some resamples'
  denominators are <= 0."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  e = ESTIMATORS[estimator] if isinstance(estimator, str) else estimator
  logged = sorted((r for r in rows if e.trace_column in r and 'step' in r),
                  key=lambda r: r['step'])
  parts, previous = [], 0.0
  for r in logged:
    length = float(r['step']) - previous
    previous = float(r['step'])
    if length <= 0 or (until_step is not None and r['step'] > until_step):
      continue
    weight = 1.0 if e.weight_column is None else _number(r.get(e.weight_column))
    grad, trace = _number(r[e.grad_column]), _number(r[e.trace_column])
    if math.isfinite(grad) and math.isfinite(trace) and math.isfinite(weight):
      parts.append((length * grad, length * trace, length * weight))
  if not parts or not math.isfinite(run_average(e, rows, until_step)['value']):
    return math.nan, math.nan
  values = np.asarray(parts)
  picks = np.random.default_rng(seed).integers(0, len(values), size=(samples, len(values)))
  grad, trace, weight = (values[picks].sum(1)).T
  ratios = np.where(grad > 0, trace / np.where(grad > 0, grad, 1.0), np.inf)
  q = (1 - confidence) / 2
  return (float(np.quantile(ratios, q, method='inverted_cdf')),
          float(np.quantile(ratios, 1 - q, method='inverted_cdf')))


def _number(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan
