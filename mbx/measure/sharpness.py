"""ε-sharpness of a minimiser, exactly as defined by Keskar et al. 2017 (arXiv 1609.04836, §2.2.2).

    C_ε = { z ∈ R^p : |z_i| ≤ ε (|(A⁺x)_i| + 1) }
    φ(x, ε, A) = (max_{y ∈ C_ε} f(x + A y) − f(x)) / (1 + f(x)) × 100

with A = I (the full space, p = n) or a random n × p matrix (A⁺ its pseudo-inverse), f the
training loss. The inner maximisation is solved as the paper does, with SciPy's L-BFGS-B under
the box bounds for a stated number of iterations (~10 in the paper), but from several starts.
From y = 0 alone the search fails exactly where it matters: at a minimiser the gradient at
y = 0 is zero, so L-BFGS-B stops at once and reports φ = 0, and coordinates with a zero
gradient never move. So the starts are y = 0 (the paper's), the vertex of the box that
maximises the first-order model, sign(∇) · bound (random signs where the gradient is zero),
and random vertices (a convex function peaks at a vertex of a box). For a separable
quadratic near its minimiser the second start is the exact maximiser; in general the result
is the largest f seen at any evaluated point (all lie in C_ε), a lower bound on the exact
maximum, reported with each start's best beside it.
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


def box_vertices(bounds: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
  """`count` random vertices of the box [-bounds, bounds] (independent random signs)."""
  signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(count, len(bounds)))
  return signs * bounds


def epsilon_sharpness(value_and_grad: ValueAndGrad, x: np.ndarray, epsilon: float, *,
                      projection: np.ndarray | None = None, maxiter: int = 10,
                      num_starts: int = 4, seed: int = 0) -> dict:
  """φ(x, ε, A) of Keskar et al. 2017 (eq. 3), maximised by L-BFGS-B with bounds.

  `projection` is A (n × p); None is A = I. Each of `num_starts` starts (y = 0, the
  first-order vertex, then random box vertices drawn with `seed`; see the module doc) runs L-BFGS-B for at most `maxiter` iterations with zero
  tolerances, so that the iteration count, not a gradient threshold, ends the search. The
  reported sharpness is the best over starts; 'start_sharpness' lists each start's.
  """
  if num_starts < 1:
    raise ValueError(f'num_starts={num_starts}: must be >= 1')
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

  f_x, grad_x = value_and_grad(x.astype(np.float32))
  f_x = float(f_x)
  best = {'f': f_x, 'y': np.zeros_like(bounds)}
  random = box_vertices(bounds, num_starts, seed)
  slope = to_sub(np.asarray(grad_x, np.float64))
  first_order = np.where(slope != 0, np.sign(slope) * bounds, random[0])
  starts = np.concatenate([np.zeros((1, len(bounds))), first_order[None], random[1:]])
  starts = starts[:num_starts]
  per_start, iterations, evaluations, messages = [], 0, 0, []
  for start in starts:
    seen = {'f': f_x}

    def negative(y):
      value, grad = value_and_grad((x + to_full(y)).astype(np.float32))
      value = float(value)
      seen['f'] = max(seen['f'], value)
      if value > best['f']:
        best.update(f=value, y=y.copy())
      return -value, -to_sub(np.asarray(grad, np.float64))

    result = scipy.optimize.minimize(
        negative, start, jac=True, method='L-BFGS-B', bounds=list(zip(-bounds, bounds)),
        options={'maxiter': maxiter, 'ftol': 0.0, 'gtol': 0.0})
    per_start.append((seen['f'] - f_x) / (1.0 + f_x) * 100.0)
    iterations += int(result.nit)
    evaluations += int(result.nfev)
    messages.append(str(result.message))
  y = best['y']
  return {'epsilon': epsilon, 'space': 'full' if projection is None else 'subspace',
          'dim': int(len(bounds)), 'sharpness': (best['f'] - f_x) / (1.0 + f_x) * 100.0,
          'loss': f_x, 'max_loss': best['f'], 'num_starts': num_starts,
          'starts': ', '.join(['y = 0', 'sign(gradient) vertex',
                               f'random vertices (seed {seed})'][:min(num_starts, 3)]),
          'start_sharpness': per_start,
          'start_spread': float(max(per_start) - min(per_start)),
          'iterations': iterations, 'maxiter': maxiter, 'evaluations': evaluations,
          'message': messages[int(np.argmax(per_start))],
          'fraction_at_bound': float(np.mean(np.abs(y) >= bounds * (1 - 1e-6))),
          'perturbation_norm': float(np.linalg.norm(to_full(y)))}
