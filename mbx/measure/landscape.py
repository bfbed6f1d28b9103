"""Loss along lines and planes in parameter space: the 1-D interpolation between two solutions
(Goodfellow et al. 2015; Keskar et al. 2017, Fig. 3) and filter-normalised random-direction
landscapes (Li et al. 2018, arXiv 1712.09913).

`evaluate(params, model_state) -> {'loss': ..., 'accuracy': ...}` is any evaluation, e.g.
`LossFunction.evaluate` over the training or the test split.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Evaluate = Callable[..., dict[str, float]]


def interpolate(tree_a, tree_b, alpha: float):
  """θ(α) = α·θ_B + (1 − α)·θ_A leaf by leaf (exactly θ_A at α = 0 and θ_B at α = 1)."""
  return jax.tree.map(lambda a, b: (alpha * jnp.asarray(b, jnp.float32)
                                    + (1.0 - alpha) * jnp.asarray(a, jnp.float32)),
                      tree_a, tree_b)


def interpolation(params_a, params_b, alphas: Sequence[float],
                  evaluators: dict[str, Evaluate], model_state_a=None,
                  model_state_b=None) -> list[dict[str, float]]:
  """Metrics of θ(α) for each α: one row per α with '<name>_loss', '<name>_accuracy' per
  evaluator (Keskar et al. 2017's parametric plot uses α ∈ [−1, 2] and train/test splits).

  BatchNorm running statistics, when present, are interpolated like the parameters.
  """
  rows = []
  for alpha in alphas:
    params = interpolate(params_a, params_b, alpha)
    state = (interpolate(model_state_a, model_state_b, alpha) if model_state_a else
             model_state_a)
    row = {'alpha': float(alpha)}
    for name, evaluate in evaluators.items():
      row.update({f'{name}_{k}': v for k, v in evaluate(params, state).items()})
    rows.append(row)
  return rows


@jax.jit
def filter_normalized_direction(key: jax.Array, params):
  """A Gaussian random direction with each filter rescaled to the norm of the same filter of θ
  (Li et al. 2018, §4). A filter is a slice along a kernel's last (output) axis, i.e. one output
  channel of a convolution or one output unit of a dense layer. Parameters with fewer than two
  dimensions (biases, BatchNorm scales and offsets) get direction 0, as Li et al.'s
  `--xignore biasbn`."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, theta in zip(keys, leaves):
    theta = jnp.asarray(theta, jnp.float32)
    if theta.ndim < 2:
      out.append(jnp.zeros_like(theta))
      continue
    d = jax.random.normal(k, theta.shape, jnp.float32)
    axes = tuple(range(theta.ndim - 1))
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
    theta_norm = jnp.sqrt(jnp.sum(theta * theta, axis=axes, keepdims=True))
    out.append(d * theta_norm / (d_norm + 1e-10))
  return jax.tree.unflatten(treedef, out)


def _shift(params, directions, coefficients):
  return jax.tree.map(
      lambda p, *ds: jnp.asarray(p, jnp.float32) + sum(c * d for c, d in zip(coefficients, ds)),
      params, *directions)


def landscape_1d(params, direction, coordinates: Sequence[float], evaluate: Evaluate,
                 model_state=None) -> list[dict[str, float]]:
  """f(θ + t·d) for each t (Li et al. 2018, eq. 1); model state kept at θ's."""
  return [{'t': float(t), **evaluate(_shift(params, [direction], [t]), model_state)}
          for t in coordinates]


def landscape_2d(params, directions, coordinates: Sequence[float], evaluate: Evaluate,
                 model_state=None) -> dict[str, np.ndarray]:
  """f(θ + a·d₁ + b·d₂) on the grid coordinates × coordinates (Li et al. 2018, eq. 2):
  arrays indexed [i, j] for a = coordinates[i], b = coordinates[j]."""
  n = len(coordinates)
  grids: dict[str, np.ndarray] = {}
  for i, a in enumerate(coordinates):
    for j, b in enumerate(coordinates):
      metrics = evaluate(_shift(params, directions, [a, b]), model_state)
      for name, value in metrics.items():
        grids.setdefault(name, np.zeros((n, n)))[i, j] = value
  return {'coordinates': np.asarray(coordinates, np.float64), **grids}
