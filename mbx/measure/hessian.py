"""Hessian curvature from Hessian-vector products: top eigenvalues, trace, spectral density.

Every function takes `hvp`, a map from a flat float32 vector v to H v (e.g.
`LossFunction.hvp`, which accumulates the jvp of the gradient over every batch of the data),
and the dimension n. Lanczos is written here rather than taken from matfree: matfree runs its
iterations inside `lax.fori_loop`/`vmap`, which needs a traceable matvec, while ours is a host
loop over sharded data batches (and XLA:CPU runs loop bodies 5-30x slower, docs/performance.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

HVP = Callable[[jax.Array], jax.Array]


@jax.jit
def _orthogonalize(basis, w):
  """w minus its projection on the rows of `basis`, done twice: classical Gram-Schmidt once
  loses orthogonality in float32, twice keeps it at working precision ("twice is enough")."""
  w = w - basis.T @ (basis @ w)
  return w - basis.T @ (basis @ w)


@jax.jit
def _set_row(basis, i, q):
  return basis.at[i].set(q)


def lanczos(hvp: HVP, v0: jax.Array, num_steps: int):
  """Lanczos tridiagonalisation of H from v0 with full reorthogonalisation (Lanczos 1950).

  Returns (alphas, betas, basis, beta_last): T = tridiag(betas, alphas, betas) (float64), the
  Lanczos vectors as rows of `basis` (float32, k x n) and the residual norm β_k that bounds the
  Ritz residuals ‖H u − θ u‖ = β_k |s_k|. Stops early on an invariant subspace (β ≈ 0).
  """
  q = v0 / jnp.linalg.norm(v0)
  # Preallocated (zero rows project out nothing): one compiled shape for every step.
  basis = _set_row(jnp.zeros((num_steps, v0.size), jnp.float32), 0, q)
  alphas, betas = [], []
  scale = beta = 0.0
  for step in range(num_steps):
    w = hvp(q)
    if step == 0:  # keep the basis where hvp puts its results (replicated over a mesh)
      basis = jax.device_put(basis, w.sharding)
    alpha = float(jnp.vdot(q, w))
    alphas.append(alpha)
    w = _orthogonalize(basis, w)
    beta = float(jnp.linalg.norm(w))
    scale = max(scale, abs(alpha) + beta)
    if step == num_steps - 1 or beta <= 1e-6 * scale:
      break
    betas.append(beta)
    q = w / beta
    basis = _set_row(basis, step + 1, q)
  return (np.asarray(alphas, np.float64), np.asarray(betas, np.float64),
          basis[:len(alphas)], beta)


def _ritz(alphas, betas):
  """Eigenvalues (ascending) and eigenvectors of the tridiagonal T."""
  if len(alphas) == 1:
    return alphas.copy(), np.ones((1, 1))
  return scipy.linalg.eigh_tridiagonal(alphas, betas)


def top_eigenvalues(hvp: HVP, dim: int, k: int = 5, *, num_steps: int | None = None,
                    seed: int = 0) -> dict:
  """The k largest (algebraic) Hessian eigenvalues by Lanczos from a random start.

  Lanczos converges to the extreme eigenvalues first; `num_steps` (default max(3k, 30), at most
  n) Hessian-vector products are used, plus k more for the residuals ‖H u − θ u‖ of the Ritz
  pairs (θ, u), computed explicitly so that convergence is checked, not assumed.
  """
  num_steps = min(dim, num_steps or max(3 * k, 30))
  v0 = jax.random.normal(jax.random.key(seed), (dim,), jnp.float32)
  alphas, betas, basis, _ = lanczos(hvp, v0, num_steps)
  values, vectors = _ritz(alphas, betas)
  order = np.argsort(values)[::-1][:k]
  residuals = []
  for i in order:
    u = basis.T @ jnp.asarray(vectors[:, i], jnp.float32)
    u = u / jnp.linalg.norm(u)
    residuals.append(float(jnp.linalg.norm(hvp(u) - values[i] * u)))
  return {'eigenvalues': values[order].tolist(), 'residuals': residuals,
          'lanczos_steps': len(alphas), 'hvps': len(alphas) + len(order)}


def _rademacher(key, shape) -> jax.Array:
  return jax.random.rademacher(key, shape, jnp.float32)


def hutchinson_trace(hvp: HVP, dim: int, num_samples: int = 100, *, sketch: int = 0,
                     seed: int = 0) -> dict:
  """tr(H) ≈ mean of zᵀHz over Rademacher z (Hutchinson 1989), with its standard error.

  With `sketch` > 0 this is Hutch++ (Meyer et al. 2021, arXiv 2010.09649): the trace of H on
  the range Q of H S (S: `sketch` Rademacher columns) is computed exactly and Hutchinson
  estimates only the rest, (I − QQᵀ)H(I − QQᵀ); exact when rank(H) ≤ sketch. Uses
  2·sketch + num_samples Hessian-vector products.
  """
  key_sketch, key_samples = jax.random.split(jax.random.key(seed))
  exact_part = 0.0
  basis = jnp.zeros((0, dim), jnp.float32)
  if sketch:
    probes = _rademacher(key_sketch, (sketch, dim))
    images = jnp.stack([hvp(s) for s in probes], axis=1)           # n x sketch
    basis = jnp.linalg.qr(images)[0].T                              # sketch x n, orthonormal
    exact_part = float(sum(jnp.vdot(q, hvp(q)) for q in basis))
  samples = []
  for i in range(num_samples):
    z = _rademacher(jax.random.fold_in(key_samples, i), (dim,))
    if sketch:
      z = _orthogonalize(basis, z)
    samples.append(float(jnp.vdot(z, hvp(z))))
  samples = np.asarray(samples, np.float64)
  stderr = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else float('nan')
  return {'trace': exact_part + float(samples.mean()) if len(samples) else exact_part,
          'stderr': float(stderr), 'samples': num_samples, 'sketch': sketch,
          'hvps': num_samples + 2 * sketch,
          'estimator': 'Hutch++ (Meyer et al. 2021)' if sketch else 'Hutchinson (Rademacher)'}


def spectral_density_quadrature(hvp: HVP, dim: int, *, num_runs: int = 5, num_steps: int = 80,
                                seed: int = 0) -> dict:
  """Stochastic Lanczos quadrature (Ghorbani et al. 2019, arXiv 1901.10159; Ubaru et al. 2017).

  For each of `num_runs` random unit vectors v, `num_steps` Lanczos steps give nodes θ_j (Ritz
  values) and weights τ_j = (first component of T's j-th eigenvector)², a quadrature of the
  spectral measure vᵀ δ(t − H) v whose expectation is the eigenvalue density (1/n) Σ δ(t − λ_i).
  """
  nodes, weights = [], []
  for run in range(num_runs):
    v0 = jax.random.normal(jax.random.fold_in(jax.random.key(seed), run), (dim,), jnp.float32)
    alphas, betas, _, _ = lanczos(hvp, v0, min(num_steps, dim))
    values, vectors = _ritz(alphas, betas)
    nodes.append(values.tolist())
    weights.append((vectors[0] ** 2).tolist())
  return {'nodes': nodes, 'weights': weights, 'num_runs': num_runs, 'lanczos_steps': num_steps,
          'hvps': sum(len(n) for n in nodes)}


def density_on_grid(nodes, weights, *, sigma_squared: float = 1e-5, num_points: int | None = None
                    ) -> dict:
  """The SLQ quadrature smoothed with a Gaussian and averaged over runs, on a uniform grid.

  As PyHessian's `density_generate` (Yao et al. 2020, arXiv 1912.07145): the Gaussian's variance
  is σ² · max(1, λ_max − λ_min), with σ² = 1e-5 (Ghorbani et al. 2019). The grid extends 6
  standard deviations past the extreme nodes and is fine enough (≥ 4 points per σ) that the
  density integrates to 1 without renormalisation; `integral` reports the trapezoid integral.
  """
  flat_nodes = np.concatenate([np.asarray(n, np.float64) for n in nodes])
  low, high = float(flat_nodes.min()), float(flat_nodes.max())
  variance = sigma_squared * max(1.0, high - low)
  sigma = math.sqrt(variance)
  low, high = low - 6 * sigma, high + 6 * sigma
  if num_points is None:
    num_points = int(min(200_000, max(2_000, math.ceil(4 * (high - low) / sigma))))
  grid = np.linspace(low, high, num_points)
  density = np.zeros_like(grid)
  for run_nodes, run_weights in zip(nodes, weights):
    for node, weight in zip(run_nodes, run_weights):
      # Only the grid points within 8σ contribute measurably; skip the rest.
      lo, hi = np.searchsorted(grid, [node - 8 * sigma, node + 8 * sigma])
      density[lo:hi] += weight * np.exp(-(grid[lo:hi] - node) ** 2 / (2 * variance))
  density /= len(nodes) * math.sqrt(2 * math.pi * variance)
  return {'grid': grid, 'density': density, 'sigma_squared': sigma_squared,
          'variance': variance, 'integral': float(np.trapezoid(density, grid))}
