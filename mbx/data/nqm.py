"""The noisy quadratic model (Zhang et al. 2019, arXiv 1907.04164) as linear-regression data.

`data.name='nqm'`: inputs x ~ N(0, H), H = diag(h) with h_i = i^-alpha (i = 1..dim), and
targets y = xᵀθ* + σε with ε ~ N(0, 1). With the `regression` task (squared error, no ½) and
`model.name='linear'` (no bias, started at θ = 0), the expected loss at θ is
L(θ) = δᵀHδ + σ² for δ = θ − θ*, training starts at δ_0 = −θ*, and `mbx.measure.nqm` gives
the expected loss of SGD, momentum and preconditioned SGD on it exactly.

θ*_i ~ N(0, 1/tr H), independently, so the initial excess loss Σ h_i θ*_i² is 1 on average
(0.966 for the defaults). θ*, train, validation and test come from four independent streams
of one numpy SeedSequence(seed): changing num_train or num_eval changes no other array.
Validation and test are fresh draws, num_eval examples each.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping

import numpy as np

from mbx.data.dataset import ArrayDataset

NAME = "nqm"
DIM, ALPHA, NOISE, SEED = 100, 1.0, 0.5, 0
NUM_TRAIN, NUM_EVAL = 2**16, 2**13
_CHUNK = 8192  # rows drawn at a time


@dataclasses.dataclass(frozen=True)
class Problem:
  """One NQM: the curvatures h (H = diag(h), loss Hessian 2H), the optimum θ* and the label
  noise σ; the expected loss at θ is (θ − θ*)ᵀH(θ − θ*) + σ²."""
  curvature: np.ndarray
  optimum: np.ndarray
  noise: float

  @property
  def dim(self) -> int:
    return len(self.curvature)

  @property
  def initial_loss(self) -> float:
    """L at θ = 0: θ*ᵀHθ* + σ²."""
    return float(self.curvature @ self.optimum**2 + self.noise**2)


def _streams(seed: int) -> list[np.random.Generator]:
  """Generators for θ*, train, validation and test."""
  return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
  if not ok:
    raise ValueError(f"data.options.{name}={value!r}: must be {allowed}")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (_is_int(value) or isinstance(value, (float, np.floating))) and np.isfinite(value)


def problem(dim: int = DIM, alpha: float = ALPHA, noise: float = NOISE,
            seed: int = SEED) -> Problem:
  """The NQM that `dataset` with the same options samples from."""
  _check("dim", dim, _is_int(dim) and dim >= 1, "a positive int")
  _check("alpha", alpha, _is_number(alpha) and alpha >= 0, "a number >= 0")
  _check("noise", noise, _is_number(noise) and noise >= 0, "a number >= 0")
  _check("seed", seed, _is_int(seed) and seed >= 0, "an int >= 0")
  curvature = np.arange(1, dim + 1, dtype=np.float64) ** -float(alpha)
  optimum = _streams(seed)[0].standard_normal(dim) / np.sqrt(curvature.sum())
  return Problem(curvature, optimum, float(noise))


def problem_of(options: Mapping[str, Any] | None = None) -> Problem:
  """The NQM of `data.options` (num_train and num_eval do not change it)."""
  options = dict(options or {})
  try:
    inspect.signature(dataset).bind(**options)
  except TypeError as error:
    raise ValueError(f"data.options={options!r}: nqm does not take them ({error})") from None
  return problem(**{k: v for k, v in options.items() if k not in ("num_train", "num_eval")})


def _draw(nqm: Problem, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  inputs = np.empty((n, nqm.dim), np.float32)
  targets = np.empty(n, np.float32)
  scale = np.sqrt(nqm.curvature)
  for start in range(0, n, _CHUNK):
    stop = min(n, start + _CHUNK)
    x = (rng.standard_normal((stop - start, nqm.dim)) * scale).astype(np.float32)
    noise = rng.standard_normal(stop - start)
    inputs[start:stop] = x
    targets[start:stop] = x.astype(np.float64) @ nqm.optimum + nqm.noise * noise
  return {"inputs": inputs, "targets": targets}


def dataset(dim: int = DIM, alpha: float = ALPHA, noise: float = NOISE,
            num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL, seed: int = SEED) -> ArrayDataset:
  """Splits train (num_train examples), validation and test (num_eval each): float32 inputs
  of shape (dim,) and float32 scalar targets."""
  _check("num_train", num_train, _is_int(num_train) and num_train >= 1, "a positive int")
  _check("num_eval", num_eval, _is_int(num_eval) and num_eval >= 1, "a positive int")
  nqm = problem(dim, alpha, noise, seed)
  _, train, validation, test = _streams(seed)
  return ArrayDataset({"train": _draw(nqm, train, num_train),
                       "validation": _draw(nqm, validation, num_eval),
                       "test": _draw(nqm, test, num_eval)}, name=NAME)
