"""In-step probes: measurements made inside the train step from gradients it already has.

A probe is a small object (see `Probe`); the gradient noise scale (noise_scale.py) is the
first one. On a measuring step the step splits its batch into at least `min_groups` groups
(devices x micro-batches; see plan.py), calls `per_group` on each group's mean gradient, averages
those over the groups and hands them to `update` with the mean gradient. A probe keeps its own
state in the train state (checkpointed and resumed with it) and adds its per-step values to
the logged interval means; `summarize` adds columns to each log row, and the optional
`run_summary` columns over the whole run so far (the noise scale's run average). Add one with
`train.probes=package.module:MyProbe`, without touching the step, the loop or the plan.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax

from mbx import registry


@dataclasses.dataclass(frozen=True)
class GroupGradients:
  """What a probe sees on a measuring step (all values are traced arrays inside the step)."""
  grads: Any                    # mean gradient over the global batch
  group_means: Mapping[str, Any]  # {probe.name: mean over groups of probe.per_group(g_i)}
  grad_sq_norm: jax.Array       # |mean gradient|^2
  num_groups: int               # k
  group_size: int               # examples per group, b (the global batch is k * b)
  params: Any                   # before the update
  updates: Any                  # what the optimizer adds to params
  # A read-only view of the optimizer, for the probes that ask for it (see `Probe`):
  preconditioner: Any = None    # its diagonal P before the update (None: P = I)
  p_sq_norm: Callable | None = None  # tree -> Σ P tree² (|tree|² when P = I)
  # For probes with `wants_contrast`, and those that call them (traced only when called):
  contrast: Any = None          # D = (1/k) Σ_i s_i g_i, signs summing to 0
  contrast_scale: float = 0.0   # c in Cov(D) = c Σ / b
  hvp: Callable | None = None   # v -> H v, H the Hessian of the step's batch loss at params
  example_gradients: Callable | None = None  # n -> per-example gradients of the first n
                                             # examples (leaves with a leading axis n)


class Probe(Protocol):
  """name: unique, a key of the train state's `probes` dict.
  metrics: names of the values `update` returns; logged as means over the measuring steps.
  min_groups: gradient groups a measuring step needs (1: any step will do).
  init(params) -> state pytree.
  per_group(grads, sq_norm) -> pytree from one group's mean gradient (sq_norm(tree) = |tree|^2).
  update(state, gradients: GroupGradients) -> (state, {metric: scalar}).
  summarize(state) -> {column: float}, on the host at each log row (may be empty).
  run_summary(rows) -> {column: float}, optional: on the host at each log row, from the train
    rows the run has logged so far (this one, with its `summarize` columns, last; rows kept
    across a resume first); see `run_summary` below.
  Optional attributes: group_norm = 'preconditioned' hands per_group the squared norm in the
  optimizer's preconditioner metric (the optimizer must declare one); wants_contrast = True
  fills GroupGradients.contrast. No optimizer is special-cased: P is what it declares.
  """
  name: str
  metrics: tuple[str, ...]
  min_groups: int

  def init(self, params) -> Any: ...

  def per_group(self, grads, sq_norm: Callable) -> Any: ...

  def update(self, state, gradients: GroupGradients) -> tuple[Any, dict[str, jax.Array]]: ...

  def summarize(self, state) -> dict[str, float]: ...


def run_summary(probe: Probe, rows: list[dict[str, Any]]) -> dict[str, float]:
  """The probe's run-level columns from the train rows logged so far ({} when it has no
  `run_summary`)."""
  hook = getattr(probe, 'run_summary', None)
  return hook(rows) if hook is not None else {}


def summaries(probes, probe_states) -> dict[str, float]:
  """Every probe's `summarize` of its state, merged (e.g. the noise scale's grad_sq,
  trace_sigma and b_simple, which the batch policies read)."""
  return {k: v for probe in probes for k, v in probe.summarize(probe_states[probe.name]).items()}


def resolve_probe(path: str) -> Probe:
  """A probe from an import path of a class (built with no arguments) or of an instance."""
  target = registry.resolve(path, {}, 'train.probes', 'ProbeClass')
  try:
    probe = target() if isinstance(target, type) else target
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'train.probes: {path!r} is not a probe: building it with no arguments '
                     f'failed ({type(error).__name__}: {str(error).splitlines()[0]})') from None
  missing = [m for m in ('name', 'metrics', 'init', 'per_group', 'update', 'summarize')
             if not hasattr(probe, m)]
  if missing:
    raise ValueError(f'train.probes: {path!r} is not a probe (no {", ".join(missing)}); '
                     'see mbx.training.probes.Probe')
  return probe


def check_probes(probes) -> None:
  names = [p.name for p in probes]
  if len(set(names)) != len(names):
    raise ValueError(f'train.probes: two probes share a name ({", ".join(names)})')
  metrics = [m for p in probes for m in p.metrics]
  if len(set(metrics)) != len(metrics):
    raise ValueError(f'train.probes: two probes report a metric of the same name ({metrics})')
