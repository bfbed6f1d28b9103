"""The noisy quadratic model, solved exactly: expected loss, steps to a target and B_crit.

Zhang et al. 2019 (arXiv 1907.04164): on a quadratic whose gradient noise is tied to its
curvature, the expected loss of SGD, heavy-ball momentum and diagonally preconditioned SGD
follows a closed recursion, so steps-to-target S(B) needs no sampling. The NQM here is the
linear regression of `mbx.data.nqm` (x ~ N(0, H), H = diag(h), y = xᵀθ* + σε, start θ = 0),
in the units of mbx's `regression` task (squared error, no ½). With δ = θ − θ*:

    L(θ) = δᵀHδ + σ²,   G = 2Hδ,   loss Hessian H_L = 2H,   per example g = 2x(xᵀδ − σε)
    Σ(δ) = Cov g = 4(HδδᵀH + (δᵀHδ)H + σ²H)

(Isserlis: E[g gᵀ] = 4(E[x xᵀ (xᵀδ)²] + σ²H) = 4(2HδδᵀH + (δᵀHδ)H + σ²H), less GGᵀ.)

A step averages B fresh examples: E[ĝ] = G, Cov ĝ = Σ(δ)/B. Every update is diagonal,
v' = μv + ĝ and θ' = θ − η P v' (optax.sgd(momentum=μ); SGD: μ = 0, P = I; preconditioned:
μ = 0, P = diag(h^-power)), so each dimension's a = E[δ_i²], c = E[δ_i v_i], b = E[v_i²]
obey, with η_i = η P_ii, k = 2h_i, r = 1 − η_i k and the noise entering dimension i,
s_i = E[Σ_ii(δ)]/B = 4(h_i² a_i + h_i (Σ_j h_j a_j + σ²))/B, which depends on a only (ĝ − G
has mean zero given δ and v, so it adds no cross terms):

    a' = r² a − 2 r η_i μ c + η_i² μ² b + η_i² s_i
    c' = k r a + μ (r − η_i k) c − η_i μ² b − η_i s_i
    b' = k² a + 2 k μ c + μ² b + s_i

from a = θ*², b = c = 0; E[L] = Σ_i h_i a_i + σ². For SGD this is
m' = (1 − 2ηh)² m + (4η²/B)(h² m + h Σ_j h_j m_j + σ² h). Examples are fresh at every step
(the online limit): training on the num_train examples of the dataset is this process while
no example is seen twice (the first epoch) and approximates it after.

Numpy only; `exact_curve` also loads the McCandlish fit (`mbx.sweep.critical_batch`), which
imports no JAX either.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from mbx.data.nqm import Problem

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "preconditioned")
MOMENTUM = 0.9
POWER = 0.5  # Adam-like: Adam's second moment of g_i grows with h_i, so P ~ h^-1/2
LEARNING_RATES = np.geomspace(1e-5, 10.0, 73)  # 12 a decade
MAX_STEPS = 10**5
DIVERGED = 1e4  # an expected loss above this times the initial loss has diverged


def preconditioner(problem: Problem, power: float = POWER) -> np.ndarray:
  """P's diagonal, h^-power (power 0: SGD; 1: P H_L = 2I)."""
  return problem.curvature ** -float(power)


# ----------------------------------------------------------- closed forms
def gradient_covariance(problem: Problem, delta: np.ndarray) -> np.ndarray:
  """Σ(δ) = 4(HδδᵀH + (δᵀHδ)H + σ²H), the per-example gradient covariance at θ = θ* + δ."""
  h, delta = problem.curvature, np.asarray(delta, dtype=np.float64)
  hd = h * delta
  return 4 * (np.outer(hd, hd) + np.diag(h * (delta @ hd + problem.noise**2)))


def noise_scales(problem: Problem, second_moments: np.ndarray,
                 power: float = POWER) -> dict[str, float]:
  """McCandlish's noise scales at E[δδᵀ] with diagonal `second_moments` (δ² at one δ).

  Each is tr(DΣ)/(GᵀDG) for a diagonal D, the numerator's and the denominator's expectations
  over δ taken apart; both depend on the diagonal m only:
  tr(DΣ) = 4(Σ d h² m + (Σ h m + σ²) Σ d h), GᵀDG = 4 Σ d h² m, so B_D = 1 + L tr(DH)/Σ d h² m.

    b_simple   D = I          tr(Σ)/|G|²: one example's gradient noise over the signal.
    b_noise    D = H_L = 2H   the step −εĝ changes L by −ε|G|² + ε²/2 (GᵀH_L G + tr(H_LΣ)/B),
                              exactly here; the best ε gives ΔL_max / (1 + b_noise/B).
    b_simple_p D = P          b_simple of the whitened gradient P^½ĝ.
    b_noise_p  D = P H_L P    the step −εPĝ: G → PG and Σ → PΣP in the line above.

  Also returned: the numerators and denominators (trace_*, grad_*) and the expected loss.
  """
  h, sigma_sq = problem.curvature, problem.noise**2
  m = np.asarray(second_moments, dtype=np.float64)
  p = preconditioner(problem, power)
  loss = float(h @ m + sigma_sq)
  out = {"loss": loss}
  for name, d in (("", np.ones_like(h)), ("h", 2 * h), ("p", p), ("php", 2 * p * h * p)):
    trace = 4 * (d @ (h**2 * m) + loss * (d @ h))
    grad = 4 * (d @ (h**2 * m))
    out[f"trace_{name}sigma" if name else "trace_sigma"] = float(trace)
    out[f"grad_{name}grad" if name else "grad_sq"] = float(grad)
  with np.errstate(divide="ignore", invalid="ignore"):
    out["b_simple"] = out["trace_sigma"] / out["grad_sq"]
    out["b_noise"] = out["trace_hsigma"] / out["grad_hgrad"]
    out["b_simple_p"] = out["trace_psigma"] / out["grad_pgrad"]
    out["b_noise_p"] = out["trace_phpsigma"] / out["grad_phpgrad"]
  return out


# ------------------------------------------------------------- recursion
def _checked(optimizer: str, batch_size: int) -> None:
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={optimizer!r}: one of {', '.join(OPTIMIZERS)}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r}: must be a positive int")


class _Moments:
  """a = E[δ²], c = E[δv], b = E[v²] per dimension, one row per learning rate."""

  def __init__(self, problem: Problem, batch_size: int, learning_rates: Sequence[float],
               optimizer: str, momentum: float, power: float):
    _checked(optimizer, batch_size)
    self.h, self.sigma_sq, self.batch_size = problem.curvature, problem.noise**2, batch_size
    scale = preconditioner(problem, power) if optimizer == "preconditioned" else 1.0
    self.eta = np.asarray(learning_rates, dtype=np.float64)[:, None] * scale
    self.momentum = momentum if optimizer == "momentum" else 0.0
    self.a = np.tile(problem.optimum**2, (len(self.eta), 1))
    self.c, self.b = np.zeros_like(self.a), np.zeros_like(self.a)

  def loss(self) -> np.ndarray:
    return self.a @ self.h + self.sigma_sq

  def step(self) -> None:
    h, eta, mu, a = self.h, self.eta, self.momentum, self.a
    k, r = 2 * h, 1 - 2 * h * eta
    s = 4 * (h**2 * a + h * self.loss()[:, None]) / self.batch_size
    if mu == 0:
      self.a = r**2 * a + eta**2 * s
      return
    c, b = self.c, self.b
    self.a = r**2 * a - 2 * r * eta * mu * c + eta**2 * mu**2 * b + eta**2 * s
    self.c = k * r * a + mu * (r - eta * k) * c - eta * mu**2 * b - eta * s
    self.b = k**2 * a + 2 * k * mu * c + mu**2 * b + s

  def keep(self, rows: np.ndarray) -> None:
    self.eta, self.a, self.b, self.c = self.eta[rows], self.a[rows], self.b[rows], self.c[rows]


def second_moments(problem: Problem, batch_size: int, learning_rate: float, steps: int, *,
                   optimizer: str = "sgd", momentum: float = MOMENTUM,
                   power: float = POWER) -> np.ndarray:
  """E[δ_i²] after t = 0..steps steps, shape (steps + 1, dim)."""
  moments = _Moments(problem, batch_size, [learning_rate], optimizer, momentum, power)
  out = np.empty((steps + 1, problem.dim))
  out[0] = moments.a[0]
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(1, steps + 1):
      moments.step()
      out[t] = moments.a[0]
  return out


def expected_loss(problem: Problem, batch_size: int, learning_rate: float, steps: int, *,
                  optimizer: str = "sgd", momentum: float = MOMENTUM,
                  power: float = POWER) -> np.ndarray:
  """E[L(θ_t)] = Σ_i h_i E[δ_i²] + σ² for t = 0..steps, shape (steps + 1,)."""
  moments = second_moments(problem, batch_size, learning_rate, steps, optimizer=optimizer,
                           momentum=momentum, power=power)
  with np.errstate(over="ignore", invalid="ignore"):
    return moments @ problem.curvature + problem.noise**2


@dataclasses.dataclass(frozen=True)
class BestSteps:
  """The fewest steps to the target over a grid of learning rates."""
  steps: float            # inf if no learning rate reached the target
  learning_rate: float    # the best (nan if none reached it)
  at_edge: bool           # the best is the grid's smallest or largest, or the grid has < 3


def best_steps(problem: Problem, batch_size: int, target: float,
               learning_rates: Sequence[float] = LEARNING_RATES, *,
               optimizer: str = "sgd", momentum: float = MOMENTUM, power: float = POWER,
               max_steps: int = MAX_STEPS) -> BestSteps:
  """The first step t at which E[L(θ_t)] <= target, minimised over `learning_rates`.

  All rates advance together; a rate is dropped once its loss diverges (non-finite or above
  DIVERGED x the initial loss), and the loop ends at the first step any rate reaches the
  target (the others would need more). Ties go to the lowest loss at that step.
  """
  grid = np.asarray(learning_rates, dtype=np.float64)
  if grid.ndim != 1 or not len(grid) or not np.all(grid > 0):
    raise ValueError(f"learning_rates={learning_rates!r}: must be positive numbers")
  moments = _Moments(problem, batch_size, grid, optimizer, momentum, power)
  rows = np.arange(len(grid))
  limit = DIVERGED * problem.initial_loss
  loss = moments.loss()
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(max_steps + 1):
      reached = loss <= target
      if reached.any():
        best = rows[reached][np.argmin(loss[reached])]
        edge = len(grid) < 3 or grid[best] in (grid.min(), grid.max())
        return BestSteps(float(t), float(grid[best]), bool(edge))
      alive = np.isfinite(loss) & (loss < limit)
      if not alive.all():
        rows = rows[alive]
        moments.keep(alive)
        if not len(rows):
          break
      if t < max_steps:
        moments.step()
        loss = moments.loss()
  return BestSteps(float("inf"), float("nan"), False)


def steps_to_target(problem: Problem, batch_size: int, learning_rate: float, target: float, *,
                    optimizer: str = "sgd", momentum: float = MOMENTUM, power: float = POWER,
                    max_steps: int = MAX_STEPS) -> float:
  """The first step t <= max_steps at which E[L(θ_t)] <= target; inf if none (or diverged)."""
  return best_steps(problem, batch_size, target, [learning_rate], optimizer=optimizer,
                    momentum=momentum, power=power, max_steps=max_steps).steps


# ------------------------------------------------------------------ S(B)
@dataclasses.dataclass(frozen=True)
class ExactCurve:
  """Exact S(B) of one optimizer, and McCandlish's S_min (1 + B_crit/B) fitted to it."""
  optimizer: str
  batch_sizes: np.ndarray
  steps: np.ndarray           # S(B); inf where no learning rate reached the target
  learning_rates: np.ndarray  # the best per B
  at_edge: np.ndarray         # the best sat at the edge of its grid
  s_min: float
  e_min: float
  b_crit: float               # E_min / S_min of the fit
  rms_log_residual: float     # how far the exact curve is from the fitted form


def exact_curve(problem: Problem, batch_sizes: Sequence[int], target: float, *,
                learning_rates: Sequence[float] | Callable[[str, int], Sequence[float]] =
                LEARNING_RATES, optimizers: Sequence[str] = OPTIMIZERS,
                momentum: float = MOMENTUM, power: float = POWER,
                max_steps: int = MAX_STEPS) -> dict[str, ExactCurve]:
  """S(B) per optimizer, each B minimised over its learning rates, and B_crit of the fit.

  `learning_rates`: one grid for all, or fn(optimizer, batch_size) -> grid (a sweep's grid,
  to compare with it point for point). The fit is `mbx.sweep.critical_batch.fit_steps`, the
  point estimate of `fit_pareto` (its bootstrap interval would measure how far the exact
  curve is from McCandlish's form, not noise), over the batch sizes that reached the target.
  """
  # mbx's one McCandlish fit lives with the sweeps; it is numpy statistics, imported here only.
  from mbx.sweep.critical_batch import fit_steps  # pylint: disable=import-outside-toplevel
  sizes = np.asarray(batch_sizes, dtype=np.int64)
  curves = {}
  for optimizer in optimizers:
    results = [best_steps(problem, int(b), target,
                          learning_rates(optimizer, int(b)) if callable(learning_rates)
                          else learning_rates, optimizer=optimizer, momentum=momentum,
                          power=power, max_steps=max_steps) for b in sizes]
    steps = np.array([r.steps for r in results])
    finite = np.isfinite(steps) & (steps > 0)
    s_min = e_min = b_crit = rms = float("nan")
    if finite.sum() >= 3:
      s_min, e_min = fit_steps(sizes[finite], steps[finite])
      b_crit = e_min / s_min
      residuals = np.log(steps[finite]) - np.log(s_min + e_min / sizes[finite])
      rms = float(np.sqrt(np.mean(residuals**2)))
    curves[optimizer] = ExactCurve(
        optimizer, sizes, steps, np.array([r.learning_rate for r in results]),
        np.array([r.at_edge for r in results]), s_min, e_min, b_crit, rms)
  return curves
