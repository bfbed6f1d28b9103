"""The simple gradient noise scale B_simple = tr(Sigma) / |G|^2, online and for free.

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
Training" (arXiv 1812.06162), Appendix A.1. A gradient estimated from B
examples has E|G_B|^2 = |G|^2 + tr(Sigma) / B. Two batch sizes give unbiased
estimates of both terms; the train step already has k small-batch gradients
(one per device and micro-batch) and their mean (the big batch), so no extra
backward pass is needed. The two estimates are averaged separately (EMA,
bias-corrected) and only then divided, since the ratio of noisy estimates is
biased.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
  return {'grad_sq': grad_sq, 'trace_sigma': trace, 'b_simple': trace / grad_sq}


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
  """B_simple over a whole run (or up to `until_step`) from its logged interval means.

  `log_steps` and the two estimates are the `step`, `grad_sq_estimate` and
  `trace_estimate` columns of train_metrics.jsonl (means over each log interval).
  Each estimate is averaged over all steps, then the ratio is taken (McCandlish
  et al. 2018, App. A.1). Rows after `until_step` are left out.
  """
  steps = np.asarray(log_steps, dtype=float)
  grad_sq = np.asarray(grad_sq_estimates, dtype=float)
  trace = np.asarray(trace_estimates, dtype=float)
  order = np.argsort(steps)
  steps, grad_sq, trace = steps[order], grad_sq[order], trace[order]
  lengths = np.diff(np.concatenate([[0.0], steps]))
  keep = np.isfinite(grad_sq) & np.isfinite(trace) & (lengths > 0)
  if until_step is not None:
    keep &= steps <= until_step
  if not keep.any():
    return {'grad_sq': float('nan'), 'trace_sigma': float('nan'), 'b_simple': float('nan')}
  weights = lengths[keep] / lengths[keep].sum()
  mean_grad_sq, mean_trace = float(weights @ grad_sq[keep]), float(weights @ trace[keep])
  return {'grad_sq': mean_grad_sq, 'trace_sigma': mean_trace,
          'b_simple': mean_trace / mean_grad_sq}
