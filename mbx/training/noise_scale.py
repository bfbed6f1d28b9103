"""The gradient noise scale, online: B_simple = tr(Sigma) / |G|^2 for free, and the
preconditioned and curvature-weighted estimators of mbx.training.estimators.

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
Training" (arXiv 1812.06162), Appendix A.1. A gradient estimated from B
examples has E|G_B|^2 = |G|^2 + tr(Sigma) / B. Two batch sizes give unbiased
estimates of both terms; the train step already has k small-batch gradients
(one per device and micro-batch) and their mean (the big batch), so no extra
backward pass is needed. The two estimates are averaged separately (EMA,
bias-corrected) and only then divided, since the ratio of noisy estimates is
biased.

The other estimators (docs/science.md §20) replace |x|^2 by a weighted norm xᵀAx: A = P, the
optimizer's diagonal preconditioner (b_simple_preconditioned, from the same group norms); A = H,
the loss Hessian, or PHP (b_noise, b_noise_preconditioned, from two Hessian-vector products of
the mean gradient and of a zero-mean contrast of the group gradients).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mbx.training import estimators
from mbx.training.probes import GroupGradients


def two_batch_estimates(sq_norm_small, sq_norm_big, batch_small, batch_big):
  """Unbiased (|G|^2, tr(Sigma)) from |G_small|^2 and |G_big|^2 (McCandlish eq. A.2)."""
  grad_sq = (batch_big * sq_norm_big - batch_small * sq_norm_small) / (batch_big - batch_small)
  trace = (sq_norm_small - sq_norm_big) / (1.0 / batch_small - 1.0 / batch_big)
  return grad_sq, trace


def group_estimates(mean_group_sq_norm, mean_grad_sq_norm, group_size, num_groups):
  """Estimates from k equal groups of b examples: small = one group, big = all k.

  mean_group_sq_norm is mean_i |g_i|^2 (an unbiased |G_b|^2), mean_grad_sq_norm is
  |mean_i g_i|^2 (= |G_kb|^2). Equals (k*total - local)/(k-1) and
  b*k*(local - total)/(k-1).
  """
  return two_batch_estimates(mean_group_sq_norm, mean_grad_sq_norm,
                             group_size, group_size * num_groups)


class NoiseScaleState(NamedTuple):
  """Exponential moving averages of the two unbiased estimates."""
  grad_sq_ema: jnp.ndarray
  trace_ema: jnp.ndarray
  count: jnp.ndarray  # updates so far, for bias correction

  @classmethod
  def zeros(cls) -> NoiseScaleState:
    return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
               jnp.zeros((), jnp.int32))


def update(state: NoiseScaleState, grad_sq, trace, decay: float) -> NoiseScaleState:
  return NoiseScaleState(decay * state.grad_sq_ema + (1 - decay) * grad_sq,
                         decay * state.trace_ema + (1 - decay) * trace,
                         state.count + 1)


def summarize(state: NoiseScaleState, decay: float) -> dict[str, jnp.ndarray]:
  """Bias-corrected |G|^2 and tr(Sigma), and their ratio B_simple."""
  correction = 1 - decay ** state.count.astype(jnp.float32)
  grad_sq = state.grad_sq_ema / correction
  trace = state.trace_ema / correction
  return {'grad_sq': grad_sq, 'trace_sigma': trace, 'b_simple': _ratio(trace, grad_sq)}


def _ratio(trace, grad_sq):
  """trace / grad_sq, NaN where the |G|^2 estimate is <= 0 (not measurable: never a number)."""
  return jnp.where(grad_sq > 0, trace / jnp.where(grad_sq > 0, grad_sq, 1.0), jnp.nan)


@dataclasses.dataclass(frozen=True)
class NoiseScaleProbe:
  """The in-step probe (mbx.training.probes) that estimates B_simple on every measuring step.

  Per step it logs the two unbiased estimates (their interval means give the run average, see
  `run_average`); each log row also gets the bias-corrected EMAs and their ratio b_simple, and
  b_simple_run_average (`run_summary`).
  """
  ema: float = 0.99
  name = 'noise_scale'
  metrics = ('grad_sq_estimate', 'trace_estimate')
  min_groups = 2

  def init(self, params) -> NoiseScaleState:
    del params
    return NoiseScaleState.zeros()

  def per_group(self, grads, sq_norm):
    return sq_norm(grads)

  def update(self, state: NoiseScaleState, gradients: GroupGradients):
    grad_sq, trace = group_estimates(gradients.group_means[self.name], gradients.grad_sq_norm,
                                     gradients.group_size, gradients.num_groups)
    return (update(state, grad_sq, trace, self.ema),
            {'grad_sq_estimate': grad_sq, 'trace_estimate': trace})

  def summarize(self, state: NoiseScaleState) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(summarize(state, self.ema)).items()}

  def run_summary(self, rows) -> dict[str, float]:
    """b_simple over the run so far, as the sweep table reports it (b_simple itself is an EMA
    over ~100 steps: the current value, noisy early on)."""
    logged = [(r['step'], r['grad_sq_estimate'], r['trace_estimate'])
              for r in rows if 'grad_sq_estimate' in r]
    return {'b_simple_run_average': run_average(*zip(*logged))['b_simple']}


def run_average(log_steps, grad_sq_estimates, trace_estimates, until_step=None
                ) -> dict[str, float]:
  """B_simple over a whole run (or up to `until_step`) from the `step`, `grad_sq_estimate` and
  `trace_estimate` columns of train_metrics.jsonl: `estimators.run_average` (each estimate
  averaged over the steps, then the ratio; NaN where |G|² averages to <= 0)."""
  rows = [{'step': s, 'grad_sq_estimate': g, 'trace_estimate': t}
          for s, g, t in zip(log_steps, grad_sq_estimates, trace_estimates)]
  result = estimators.run_average('b_simple', rows, until_step)
  return {'grad_sq': result['grad_sq'], 'trace_sigma': result['trace'],
          'b_simple': result['value']}


@dataclasses.dataclass(frozen=True)
class PreconditionedNoiseScaleProbe(NoiseScaleProbe):
  """B_simple,P = tr(PΣ) / GᵀPG: B_simple with every squared norm taken in the metric of the
  optimizer's diagonal preconditioner P (read, not changed, from its state before the
  update). With P = I it is B_simple, computed the same way."""
  name = 'noise_scale_preconditioned'
  metrics = ('grad_sq_p_estimate', 'trace_p_estimate', 'preconditioned_steps')
  group_norm = 'preconditioned'  # the step hands per_group the P-weighted squared norm

  def update(self, state: NoiseScaleState, gradients: GroupGradients):
    grad_sq, trace = group_estimates(gradients.group_means[self.name],
                                     gradients.p_sq_norm(gradients.grads),
                                     gradients.group_size, gradients.num_groups)
    # Before its first update an optimizer may have no P yet (Adam's v̂ is 0/0): not measured.
    measured = jnp.isfinite(grad_sq) & jnp.isfinite(trace)
    grad_sq, trace = jnp.where(measured, grad_sq, 0.0), jnp.where(measured, trace, 0.0)
    averages = jax.tree.map(lambda new, old: jnp.where(measured, new, old),
                            update(state, grad_sq, trace, self.ema), state)
    return (averages, {'grad_sq_p_estimate': grad_sq, 'trace_p_estimate': trace,
                       'preconditioned_steps': measured.astype(jnp.float32)})

  def summarize(self, state: NoiseScaleState) -> dict[str, float]:
    values = jax.device_get(summarize(state, self.ema))
    return {'grad_sq_p': float(values['grad_sq']), 'trace_p': float(values['trace_sigma']),
            'b_simple_preconditioned': float(values['b_simple'])}

  def run_summary(self, rows) -> dict[str, float]:
    return {'b_simple_preconditioned_run_average':
            estimators.run_average('b_simple_preconditioned', rows)['value']}


class CurvatureState(NamedTuple):
  averages: NoiseScaleState
  seen: jnp.ndarray  # measuring steps so far (the HVPs run on every `every`-th)


@dataclasses.dataclass(frozen=True)
class CurvatureNoiseScaleProbe:
  """B_noise = tr(HΣ) / GᵀHG (McCandlish et al. 2018, eq. 2.9), or with `preconditioned`
  tr(PHPΣ) / GᵀPHPG, the noise scale of the update Δθ = −ηPG (docs/science.md §20).

  From the mean gradient G_k of k groups of b examples and the contrast D = (1/k) Σ s_i g_i
  (signs s_i summing to 0, so E[D] = 0 and Cov(D) = c Σ / b with c = Σ s_i² / k²):
  E[DᵀAD] = c tr(AΣ) / b and E[G_kᵀAG_k] = GᵀAG + tr(AΣ) / (kb), two Hessian-vector
  products a measuring step, on every `every`-th one. H is the Hessian of the step's batch loss
  at the parameters before the update."""
  every: int = 10
  preconditioned: bool = False
  ema: float = 0.99
  min_groups = 2
  wants_contrast = True

  @property
  def reads_preconditioner(self) -> bool:
    return self.preconditioned

  @property
  def name(self) -> str:
    return 'noise_scale_curvature' + ('_preconditioned' if self.preconditioned else '')

  @property
  def estimator(self) -> estimators.Estimator:
    return estimators.ESTIMATORS['b_noise_preconditioned' if self.preconditioned else 'b_noise']

  @property
  def metrics(self) -> tuple[str, ...]:
    e = self.estimator
    return (e.grad_column, e.trace_column, e.weight_column)

  def init(self, params) -> CurvatureState:
    del params
    return CurvatureState(NoiseScaleState.zeros(), jnp.zeros((), jnp.int32))

  def per_group(self, grads, sq_norm):
    del grads, sq_norm
    return jnp.zeros((), jnp.float32)

  def update(self, state: CurvatureState, gradients: GroupGradients):
    measure = state.seen % self.every == 0

    def estimate(_):
      mean, contrast = gradients.grads, gradients.contrast
      if self.preconditioned and gradients.preconditioner is not None:
        scale = lambda tree: jax.tree.map(jnp.multiply, gradients.preconditioner, tree)
        mean, contrast = scale(mean), scale(contrast)
      quadratic = lambda v: _dot(v, gradients.hvp(v))
      mean_h, contrast_h = quadratic(mean), quadratic(contrast)
      c, k, b = gradients.contrast_scale, gradients.num_groups, gradients.group_size
      return (mean_h - contrast_h / (k * c)).astype(jnp.float32), \
          (b / c * contrast_h).astype(jnp.float32)

    zero = jnp.zeros((), jnp.float32)
    grad, trace = jax.lax.cond(measure, estimate, lambda _: (zero, zero), None)
    measure = measure & jnp.isfinite(grad) & jnp.isfinite(trace)  # no P yet: not measured
    grad, trace = jnp.where(measure, grad, 0.0), jnp.where(measure, trace, 0.0)
    averages = jax.tree.map(lambda new, old: jnp.where(measure, new, old),
                            update(state.averages, grad, trace, self.ema), state.averages)
    e = self.estimator
    return (CurvatureState(averages, state.seen + 1),
            {e.grad_column: grad, e.trace_column: trace,
             e.weight_column: measure.astype(jnp.float32)})

  def summarize(self, state: CurvatureState) -> dict[str, float]:
    values = jax.device_get(summarize(state.averages, self.ema))
    e = self.estimator
    return {e.summary_grad: float(values['grad_sq']), e.summary_trace: float(values['trace_sigma']),
            e.name: float(values['b_simple'])}

  def run_summary(self, rows) -> dict[str, float]:
    return {f'{self.estimator.name}_run_average':
            estimators.run_average(self.estimator, rows)['value']}


@dataclasses.dataclass(frozen=True)
class PerExampleTraceProbe:
  """tr(Σ) exactly, from `count` per-example gradients (vmap) on every `every`-th measuring
  step, logged beside the two-group estimate of the same step: how noisy the two-group
  estimator is (both are unbiased). For small models: it differentiates examples one by one."""
  every: int = 10
  count: int = 64
  name = 'trace_per_example'
  metrics = estimators.PER_EXAMPLE_COLUMNS
  min_groups = 2

  def init(self, params) -> jnp.ndarray:
    del params
    return jnp.zeros((), jnp.int32)

  def per_group(self, grads, sq_norm):
    return sq_norm(grads)

  def update(self, seen, gradients: GroupGradients):
    measure = seen % self.every == 0

    def estimate(_):
      per_example = gradients.example_gradients(self.count)  # leaves (n, ...)
      centred = jax.tree.map(lambda g: g - g.mean(0, keepdims=True), per_example)
      squares = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(centred))
      exact = squares / (self.count - 1)  # unbiased: E = tr(Σ)
      _, two_group = group_estimates(gradients.group_means[self.name], gradients.grad_sq_norm,
                                     gradients.group_size, gradients.num_groups)
      return exact.astype(jnp.float32), two_group.astype(jnp.float32)

    zero = jnp.zeros((), jnp.float32)
    exact, two_group = jax.lax.cond(measure, estimate, lambda _: (zero, zero), None)
    columns = estimators.PER_EXAMPLE_COLUMNS
    return seen + 1, dict(zip(columns, (exact, two_group, measure.astype(jnp.float32))))

  def summarize(self, state) -> dict[str, float]:
    del state
    return {}


def _dot(a, b):
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def estimator_probes(train) -> tuple:
  """The probes of config.train: B_simple (train.noise_scale), then each of
  train.noise_scale_estimators."""
  probes = [NoiseScaleProbe(train.noise_scale_ema)] if train.noise_scale else []
  for name in train.noise_scale_estimators:
    if name == 'b_simple_preconditioned':
      probes.append(PreconditionedNoiseScaleProbe(train.noise_scale_ema))
    elif name in ('b_noise', 'b_noise_preconditioned'):
      probes.append(CurvatureNoiseScaleProbe(train.curvature_every,
                                             name == 'b_noise_preconditioned',
                                             train.noise_scale_ema))
    else:
      probes.append(PerExampleTraceProbe(train.curvature_every, train.per_example_count))
  return tuple(probes)
