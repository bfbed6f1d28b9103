"""What mbx must know of an optimizer, declared once, beside it (plain Python: no JAX here).

    @mbx.optim.declare(momentum='b1', batch_rule='sqrt', preconditioner=my_diagonal)
    def my_optimizer(learning_rate, b1=0.9, b2=0.99): return optax.chain(...)

* momentum: the option holding the momentum of the update direction ('momentum', 'b1'), or a
  number (0.0 for plain SGD). Smith et al.'s noise scale g = ηN / (B(1 − m)) needs it.
* batch_rule: the default rule when the batch changes (mbx.optim.batch_rules): 'linear' for
  SGD-type updates, 'sqrt' for normalised (Adam-type) ones. Sweeps move their LR range by it,
  local-CBS branches scale their LR by it, and AdaScale's gain enters the LR with its power.
* preconditioner: (inner optax state, hyperparameters) -> the diagonal P of the update Δθ = −ηPG as a
  tree like the params, or 'identity'. The preconditioned noise-scale estimators need it.
* eval_params: (inner optax state, params) -> the parameters to evaluate, for an optimizer whose
  iterate is not the model it returns (schedule-free methods evaluate an average); None: the
  params themselves. Evaluations (the target, the test split) use it.

An optimizer that does not declare one of these gets a one-line answer from each feature that
needs it, naming what to declare; nothing falls back silently.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mbx import registry
from mbx.config import Config, ConfigError, OptimConfig
from mbx.config import validate as validate_fields
from mbx.optim import batch_rules

DECLARED_ATTRIBUTE = 'mbx_declared'


@dataclasses.dataclass(frozen=True)
class Declared:
  momentum: str | float | None = None
  batch_rule: str | None = None
  preconditioner: Callable[[Any, dict], Any] | str | None = None
  reference_lr: float | None = None  # a typical peak LR, where studies centre an LR grid
  label: str | None = None           # its name in tables and figures
  eval_params: Callable[[Any, Any], Any] | str | None = None


def declare(*, momentum: str | float | None = None, batch_rule: str | None = None,
            preconditioner: Callable | str | None = None, reference_lr: float | None = None,
            label: str | None = None, eval_params: Callable | None = None):
  """Decorates an optimizer factory with what mbx must know of it (see the module docstring)."""
  if batch_rule is not None:
    batch_rules.parse(batch_rule, 'declare(batch_rule=...)')

  def decorate(factory):
    setattr(factory, DECLARED_ATTRIBUTE, Declared(momentum, batch_rule, preconditioner,
                                                  reference_lr, label, eval_params))
    return factory
  return decorate


# The optim fields each built-in reads (the newer ones read only optim.options).
_ADAM_FIELDS = ('b1', 'b2', 'eps', 'weight_decay')
BUILTIN_FIELDS: dict[str, tuple[str, ...]] = {
    'sgd': ('weight_decay',),
    'momentum': ('momentum', 'weight_decay'),
    'nesterov': ('momentum', 'weight_decay'),
    'adam': _ADAM_FIELDS,
    'adamw': _ADAM_FIELDS,
    'lars': ('momentum', 'eps', 'weight_decay', 'trust_coefficient'),
    'lamb': _ADAM_FIELDS,
    'schedule_free_adamw': _ADAM_FIELDS,
    'lion': (),
    'muon': (),
}
_SGD = dict(batch_rule='linear', reference_lr=0.1)
_ADAM = dict(momentum='b1', batch_rule='sqrt', reference_lr=1e-3)
BUILTIN_DECLARED: dict[str, Declared] = {
    'sgd': Declared(momentum=0.0, preconditioner='identity', label='plain SGD', **_SGD),
    'momentum': Declared(momentum='momentum', preconditioner='identity', label='SGD', **_SGD),
    'nesterov': Declared(momentum='momentum', preconditioner='identity', label='Nesterov',
                         **_SGD),
    'adam': Declared(preconditioner='adam', label='Adam', **_ADAM),
    'adamw': Declared(preconditioner='adam', label='AdamW', **_ADAM),
    # Layer-wise trust ratios, sign updates and orthogonalised ones are not a diagonal
    # preconditioner of G: none is declared.
    'lars': Declared(momentum='momentum', batch_rule='linear', reference_lr=1.0, label='LARS'),
    'lamb': Declared(label='LAMB', **_ADAM),
    # b1 interpolates between the averaged and the current iterate: it is the momentum.
    'schedule_free_adamw': Declared(preconditioner='adam', label='schedule-free AdamW',
                                    eval_params='schedule_free',
                                    **{**_ADAM, 'reference_lr': 2.5e-3}),
    'lion': Declared(momentum='b1', batch_rule='sqrt', reference_lr=1e-4, label='Lion'),
    'muon': Declared(momentum='beta', batch_rule='sqrt', reference_lr=0.02, label='Muon'),
}
BUILTIN = tuple(BUILTIN_DECLARED)
# Optim fields that are a built-in's options; an import-path optimizer takes optim.options.
OPTION_FIELDS = ('momentum', 'b1', 'b2', 'eps', 'weight_decay', 'trust_coefficient')


def check(config: Config) -> None:
  """What can be checked without importing the optimizer (no JAX): its name, the fields it
  reads, and the batch rules' spelling; ValueError naming the field."""
  o, t = config.optim, config.train
  check_name(o.name, 'optim.name')
  if not isinstance(o.options, dict) and not hasattr(o.options, 'items'):
    raise ValueError(f'optim.options must be a mapping of keyword arguments, got {o.options!r}')
  reads = BUILTIN_FIELDS.get(o.name, ())
  for key in o.options:
    if key in reads:
      raise ValueError(f'optim.options.{key}: optim.name={o.name!r} reads it from optim.{key}; '
                       f'set optim.{key} instead')
  defaults = OptimConfig()
  for field in OPTION_FIELDS:
    if field not in reads and getattr(o, field) != getattr(defaults, field):
      where = (f'{o.name} reads optim.options' if o.name in BUILTIN else
               'an import-path optimizer takes its keyword arguments from optim.options')
      raise ValueError(f'optim.{field}={getattr(o, field)!r}: optim.name={o.name!r} does not '
                       f'read it ({where}; e.g. optim.options={{"{field}": ...}})')
  batch_rules.parse(o.lr_scaling, 'optim.lr_scaling')
  batch_rules.parse(t.batch_size_rule, 'train.batch_size_rule')
  if t.batch_policy_lr not in ('auto', 'adascale'):
    try:
      batch_rules.parse(t.batch_policy_lr, 'train.batch_policy_lr')
    except ValueError as error:
      raise ValueError(f'{error}; or auto, or adascale') from None


def validate(config: Config) -> None:
  """config.validate's checks of every field, then `check`'s of the optimizer: ConfigError
  naming the first bad one, in one line, without importing the optimizer (no JAX)."""
  validate_fields(config)
  try:
    check(config)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def declared(config: OptimConfig, factory=None) -> Declared:
  """The declarations of the optimizer `config.name` names (`factory`: already resolved)."""
  if config.name in BUILTIN_DECLARED:
    return BUILTIN_DECLARED[config.name]
  return getattr(factory, DECLARED_ATTRIBUTE, None) or Declared()


def undeclared(name: str, what: str, needed_by: str) -> ValueError:
  """The one-line answer of a feature that needs a declaration the optimizer lacks."""
  return ValueError(f'{needed_by} needs the optimizer\'s {what.replace("_", " ")}, and '
                    f'optim.name={name!r} declares none; declare it beside the factory with '
                    f'@mbx.optim.declare({what}=...) (docs/optimizers.md)')


def momentum_value(name: str, declared_facts: Declared, options: dict,
                   needed_by: str) -> float:
  """The optimizer's momentum m (Smith's g = ηN / (B(1 − m)))."""
  m = declared_facts.momentum
  if m is None:
    raise undeclared(name, 'momentum', needed_by)
  if isinstance(m, str):
    if m not in options:
      raise ValueError(f'{needed_by}: optim.name={name!r} declares momentum={m!r}, '
                       f'which is not among its options ({", ".join(options)})')
    return float(options[m])
  return float(m)


def of_name(name: str, field: str = 'optim.name') -> Declared:
  """The declarations of a built-in or an import-path optimizer (importing the latter)."""
  if name in BUILTIN_DECLARED:
    return BUILTIN_DECLARED[name]
  factory = registry.resolve(name, {}, field, 'factory')
  return getattr(factory, DECLARED_ATTRIBUTE, None) or Declared()


def momentum_setting(name: str, field: str = 'optim.name') -> tuple[str, str] | None:
  """Where a sweep sets the optimizer's momentum: ('optim', 'momentum') or ('optim', 'b1') for
  a built-in, ('options', <option>) for an import path; None when it has none (plain SGD) or
  declares none."""
  momentum = of_name(name, field).momentum
  if not isinstance(momentum, str):
    return None
  if name in BUILTIN_FIELDS and momentum in BUILTIN_FIELDS[name]:
    return ('optim', momentum)
  return ('options', momentum)


def is_heavy_ball(name: str, field: str = 'optim.name') -> bool:
  """SGD-type with a momentum option: its effective LR is lr / (1 − m) (Shallue et al. §3.2)."""
  facts = of_name(name, field)
  return facts.batch_rule == 'linear' and isinstance(facts.momentum, str)


def check_name(name: str, field: str) -> None:
  if not isinstance(name, str) or not (name in BUILTIN or registry.is_import_path(name)):
    raise ValueError(f'{field}={name!r}: {registry.suggest(str(name), BUILTIN)} (neither a '
                     'built-in optimizer nor an import path "package.module:factory" or '
                     '"path/to/file.py:factory")')


def for_optimizer(optim: OptimConfig, name: str) -> OptimConfig:
  """`optim` switched to optimizer `name` (a sweep's or a study's trial of another optimizer):
  the optim fields `name` does not read back at their defaults and the options, another
  optimizer's keyword arguments, dropped; unchanged when the name is the same."""
  if name == optim.name:
    return optim
  defaults, reads = OptimConfig(), BUILTIN_FIELDS.get(name, ())
  return dataclasses.replace(optim, name=name, options={}, **{
      f: getattr(defaults, f) for f in OPTION_FIELDS if f not in reads})


def with_hyperparameters(optim: OptimConfig, values: dict[str, float]) -> OptimConfig:
  """`optim` with these hyperparameters: the LR and a built-in's fields as fields, the rest in
  optim.options (what a batch rule's result becomes in a config)."""
  fields = {'learning_rate'} | set(BUILTIN_FIELDS.get(optim.name, ()))
  options = dict(optim.options)
  changes = {}
  for name, value in values.items():
    if name in fields:
      changes[name] = value
    else:
      options[name] = value
  return dataclasses.replace(optim, options=options, **changes)
