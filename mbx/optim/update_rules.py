"""Update rules: how the step turns a group's loss into the gradient the optimizer receives.

The train step (mbx/training/step.py) splits each global batch into groups, one per device and
micro-batch, and asks the configured rule for each group's gradient. The rule is handed
`value_and_grad(params) -> ((loss, aux), grads)`, the group's loss closed over its examples
(and its dropout key), and may call it as often as it needs: the plain rule once, SAM twice.
The step averages the groups' gradients and hands the mean to the optimizer (mbx.optim).

Choose one with `optim.update_rule` (a built-in name of UPDATE_RULES, or an import path
'pkg.mod:Rule' / 'path/to/file.py:Rule' of a class or factory, called with
`optim.update_rule_options`, or of an instance), e.g.

    mbx train --config configs/mnist1d_cnn.py optim.update_rule=sam \
        optim.update_rule_options='{"rho": 0.05}'
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

from mbx import registry

FIELD, OPTIONS_FIELD = 'optim.update_rule', 'optim.update_rule_options'


class UpdateRule(Protocol):
  """name: what the logs and errors call it.
  gradient_evaluations: forward + backward passes per group and step (plain 1, SAM 2): a step
    costs about that many times a plain one.
  packable: may run vmapped over packed trials (mbx.train_packed); False: they run one by one.
  accumulates: may run per micro-batch under gradient accumulation; False: a config that asks
    for micro-batches is refused.
  group_gradient(value_and_grad, params) -> ((loss, aux), grads): one group's gradient.
    `value_and_grad(p)` evaluates the group's loss at `p` and its gradient
    (jax.value_and_grad(loss, has_aux=True)); `aux` holds the model state BatchNorm updates
    and the task's sums, which the step keeps and logs. Runs traced, inside the jitted step,
    once per device and micro-batch.
  """
  name: str
  gradient_evaluations: int
  packable: bool
  accumulates: bool

  def group_gradient(self, value_and_grad: Callable, params) -> tuple[tuple[Any, Any], Any]: ...


@dataclasses.dataclass(frozen=True)
class Plain:
  """The gradient of the group's loss at the parameters."""
  name: ClassVar[str] = 'plain'
  gradient_evaluations: ClassVar[int] = 1
  packable: ClassVar[bool] = True
  accumulates: ClassVar[bool] = True

  def group_gradient(self, value_and_grad, params):
    return value_and_grad(params)


def global_norm(tree) -> jax.Array:
  """The L2 norm over every leaf of `tree`, summed in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)))
                      for leaf in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class SAM:
  """Sharpness-aware minimization (Foret et al. 2021, arXiv 2010.01412).

  The gradient at θ + ε, ε = rho g / |g|, with g the group's gradient at θ and |g| its global
  L2 norm: the ascent is per group of devices x micro-batches (Foret's m-sharpness, m the group
  size). Both evaluations use the group's one dropout key (the same sub-network).
  """
  rho: float = 0.05
  """The radius of the ascent, a Euclidean length in parameter space (Foret et al. tune it over
  0.01 ... 0.5; 0.05 is the usual default)."""
  name: ClassVar[str] = 'sam'
  gradient_evaluations: ClassVar[int] = 2
  packable: ClassVar[bool] = True
  accumulates: ClassVar[bool] = True
  tiny: ClassVar[float] = 1e-12  # |g| = 0 gives ε = 0, not NaN

  def __post_init__(self):
    if (isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or
        not math.isfinite(self.rho) or self.rho <= 0):
      raise ValueError(f'{OPTIONS_FIELD}.rho={self.rho!r}: must be a positive number')

  def group_gradient(self, value_and_grad, params):
    # The loss and aux at θ are what is logged and kept (BatchNorm statistics): those of the
    # parameters the step updates, as a plain step keeps; θ + ε is only a probe point.
    (loss, aux), grads = value_and_grad(params)
    scale = self.rho / (global_norm(grads) + self.tiny)
    perturbed = jax.tree.map(lambda p, g: p + (scale * g.astype(jnp.float32)).astype(p.dtype),
                             params, grads)
    _, perturbed_grads = value_and_grad(perturbed)
    return (loss, aux), perturbed_grads


UPDATE_RULES: dict[str, type] = {'plain': Plain, 'sam': SAM}
PLAIN = Plain()
ATTRIBUTES = ('name', 'gradient_evaluations', 'packable', 'accumulates', 'group_gradient')


def _check_options(name: str, target, options: Mapping[str, Any]) -> None:
  """Every option a keyword argument of `target`, every argument without a default given."""
  try:
    parameters = list(inspect.signature(target).parameters.values())
  except (TypeError, ValueError):  # no signature to check against: calling it will tell
    return
  named = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               inspect.Parameter.KEYWORD_ONLY)]
  allowed = [p.name for p in named]
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
    for key in options:
      if key not in allowed:
        close = registry.close_names(key, allowed)
        hint = f'{registry.did_you_mean(close)} ' if close else ''
        raise ValueError(f'{OPTIONS_FIELD}.{key}: not an option of update rule {name!r}; '
                         f'{hint}(allowed: {", ".join(allowed) or "none"})')
  for p in named:
    if p.default is inspect.Parameter.empty and p.name not in options:
      raise ValueError(f'{OPTIONS_FIELD}.{p.name}: required by update rule {name!r} (no '
                       'default)')


def resolve_update_rule(name: str, options: Mapping[str, Any] | None = None) -> UpdateRule:
  """The rule `optim.update_rule` names, built with `optim.update_rule_options`; ValueError
  (ResolveError) naming the field: a path that does not resolve, an option the rule does not
  take, a value it refuses, an object that is not an update rule."""
  target = registry.resolve(name, UPDATE_RULES, FIELD, 'RuleClass')
  options = dict(options or {})
  if hasattr(target, 'group_gradient') and not isinstance(target, type):
    if options:
      raise ValueError(f'{OPTIONS_FIELD}={options!r}: {FIELD}={name!r} is an instance, it takes '
                       'no options')
    rule = target
  elif callable(target):
    _check_options(name, target, options)
    rule = target(**options)
  else:
    rule = target
  missing = [m for m in ATTRIBUTES if not hasattr(rule, m)]
  if missing:
    raise ValueError(f'{FIELD}={name!r}: not an update rule (no {", ".join(missing)}); see '
                     'mbx.optim.update_rules.UpdateRule')
  if not callable(rule.group_gradient):
    raise ValueError(f'{FIELD}={name!r}: its group_gradient is not callable')
  evaluations = rule.gradient_evaluations
  if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
    raise ValueError(f'{FIELD}={name!r}: gradient_evaluations={evaluations!r}, expected a '
                     'positive integer')
  return rule


def recorded_name(name: str) -> str:
  """`optim.update_rule` as a run records it: a built-in name as is, an import path as one that
  any process resolves (see registry.import_path), so analyses rebuild the same rule."""
  if not registry.is_import_path(name) or name in UPDATE_RULES:
    return name
  target = registry.resolve(name, UPDATE_RULES, FIELD, 'RuleClass')
  if isinstance(target, type) or inspect.isfunction(target):
    return registry.import_path(target)
  return name
