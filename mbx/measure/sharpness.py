"""ε-sharpness of a minimiser, exactly as defined by Keskar et al. 2017 (arXiv 1609.04836, §2.2.2).

    C_ε = { z ∈ R^p : |z_i| ≤ ε (|(A⁺x)_i| + 1) }
    φ(x, ε, A) = (max_{y ∈ C_ε} f(x + A y) − f(x)) / (1 + f(x)) × 100

with A = I (the full space, p = n) or a random n × p matrix (A⁺ its pseudo-inverse), f the
training loss. The inner maximisation is solved as the paper does, with SciPy's L-BFGS-B under
the box bounds, from y = 0, for a stated number of iterations (~10 in the paper). The result is
the largest f seen at any point L-BFGS-B evaluated (all lie in C_ε), so φ is a lower bound on
the exact maximum that tightens with more iterations.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import scipy.optimize

# w (flat float32) -> (f(w), ∇f(w)), e.g. LossFunction.value_and_grad.
ValueAndGrad = Callable[[np.ndarray], tuple[float, jax.Array]]


def random_subspace(dim: int, p: int = 100, seed: int = 0, std: float = 1.0) -> np.ndarray:
  """A random n × p matrix A with i.i.d. N(0, std²) entries (Keskar et al. use p = 100).

  The paper does not say how A is drawn, and its scale matters: the box bounds y through A⁺x,
  but the perturbation is A y. With std = 1 (the plain reading, the default) ‖A y‖ ≈ ε√(np);
  std = 1/√n gives unit-norm columns, ‖A y‖ ≈ ε√p, the per-direction analogue of A = I.
  """
  return np.random.default_rng(seed).normal(0.0, std, (dim, p))


def epsilon_sharpness(value_and_grad: ValueAndGrad, x: np.ndarray, epsilon: float, *,
                      projection: np.ndarray | None = None, maxiter: int = 10) -> dict:
  """φ(x, ε, A) of Keskar et al. 2017 (eq. 3), maximised by L-BFGS-B with bounds.

  `projection` is A (n × p); None is A = I. `maxiter` is L-BFGS-B's iteration limit; its
  tolerances are zero so that the iteration count, not a gradient threshold, ends the search
  (at a minimiser the gradient is tiny by construction).
  """
  x = np.asarray(x, np.float64)
  if projection is None:
    bounds = epsilon * (np.abs(x) + 1.0)
    to_full = lambda y: y
    to_sub = lambda g: g
  else:
    a = np.asarray(projection, np.float64)
    bounds = epsilon * (np.abs(np.linalg.pinv(a) @ x) + 1.0)
    to_full = lambda y: a @ y
    to_sub = lambda g: a.T @ g

  f_x = float(value_and_grad(x.astype(np.float32))[0])
  best = {'f': f_x, 'y': np.zeros_like(bounds)}

  def negative(y):
    value, grad = value_and_grad((x + to_full(y)).astype(np.float32))
    value = float(value)
    if value > best['f']:
      best.update(f=value, y=y.copy())
    return -value, -to_sub(np.asarray(grad, np.float64))

  result = scipy.optimize.minimize(
      negative, np.zeros_like(bounds), jac=True, method='L-BFGS-B',
      bounds=list(zip(-bounds, bounds)),
      options={'maxiter': maxiter, 'ftol': 0.0, 'gtol': 0.0})
  y = best['y']
  return {'epsilon': epsilon, 'space': 'full' if projection is None else 'subspace',
          'dim': int(len(bounds)), 'sharpness': (best['f'] - f_x) / (1.0 + f_x) * 100.0,
          'loss': f_x, 'max_loss': best['f'], 'iterations': int(result.nit),
          'maxiter': maxiter, 'evaluations': int(result.nfev),
          'message': str(result.message),
          'fraction_at_bound': float(np.mean(np.abs(y) >= bounds * (1 - 1e-6))),
          'perturbation_norm': float(np.linalg.norm(to_full(y)))}
