"""Optimizers: `optim.name` is a factory (learning_rate, **options) -> optax.GradientTransformation.

A built-in name (below) or an import path 'pkg.mod:factory' (see mbx.registry). Built-ins read
the optim fields their signature names (momentum, b1, b2, eps, weight_decay, trust_coefficient)
and `optim.options`; an import-path factory reads `optim.options` only. What mbx must know of an
optimizer is declared beside it (mbx.optim.declared).

LR schedules are functions of examples seen (schedules.py), not of optax's step count, so the
transform is wrapped in `optax.inject_hyperparams`: the step writes each step's LR into the
state's hyperparameters before the update. So are the per-trial momentum (packed trials differ
in it) and whatever a batch rule changes during training (e.g. β2 under beta2_half_life);
every other option is static.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import contrib
from optax._src.transform import ScaleByRmsWithCountState  # not exported at the top level

from mbx import registry
from mbx.config import Config, OptimConfig, uses_adascale
from mbx.optim import batch_rules
from mbx.optim.declared import (BUILTIN_FIELDS, Declared, check as check_declared, declared,
                                momentum_value, undeclared)


def decay_mask(params):
  """True for kernels and embeddings; False for biases and norm scales/offsets.

  Every bias and normalisation parameter in mbx models is 1-D, every weight
  matrix, convolution kernel and embedding is >= 2-D (You et al. exclude the
  same set from LARS/LAMB adaptation and weight decay).
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _coupled_decay(weight_decay):
  """L2 added to the gradient (not AdamW's decoupled decay)."""
  return optax.add_decayed_weights(weight_decay, mask=decay_mask) if weight_decay else \
      optax.identity()


def sgd(learning_rate, weight_decay=0.0):
  return optax.chain(_coupled_decay(weight_decay), optax.sgd(learning_rate))


def momentum(learning_rate, momentum=0.9, weight_decay=0.0):  # pylint: disable=redefined-outer-name
  return optax.chain(_coupled_decay(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def nesterov(learning_rate, momentum=0.9, weight_decay=0.0):  # pylint: disable=redefined-outer-name
  return optax.chain(_coupled_decay(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum, nesterov=True))


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  return optax.chain(_coupled_decay(weight_decay),
                     optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     mask=decay_mask)


def lars(learning_rate, momentum=0.9, eps=1e-8, weight_decay=0.0,  # pylint: disable=redefined-outer-name
         trust_coefficient=0.001):
  return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=trust_coefficient, eps=eps, trust_ratio_mask=decay_mask,
                    momentum=momentum)


def lamb(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  # optax.lamb's chain with a trust-ratio mask (which optax.lamb lacks): biases and norm
  # parameters are neither decayed nor layer-adapted (You et al. 2020, as in BERT).
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.add_decayed_weights(weight_decay, mask=decay_mask),
                     optax.masked(optax.scale_by_trust_ratio(), decay_mask),
                     optax.scale_by_learning_rate(learning_rate))


def schedule_free_adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                        weight_lr_power=2.0):
  """Schedule-free AdamW (Defazio et al. 2024; optax.contrib.schedule_free_adamw's chain, with
  the decay masked as everywhere in mbx). Evaluations use the averaged iterate (eval_params)."""
  base = optax.chain(optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False,
                                        bias_correction=True),
                     optax.add_decayed_weights(weight_decay, mask=decay_mask),
                     optax.scale_by_learning_rate(learning_rate))
  return contrib.schedule_free(base, learning_rate=learning_rate, b1=b1,
                               weight_lr_power=weight_lr_power)


def lion(learning_rate, b1=0.9, b2=0.99, weight_decay=0.0):
  """optax.lion (Chen et al. 2023), decay masked as everywhere in mbx (optax's default is 1e-3)."""
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)


def muon(learning_rate, beta=0.95, ns_steps=5, nesterov=True,  # pylint: disable=redefined-outer-name
         weight_decay=0.0, adam_b1=0.9, adam_b2=0.999, adam_for=('embedding', 'head'),
         consistent_rms=None):
  """optax.contrib.muon: Newton–Schulz-orthogonalised momentum for every >= 2-D kernel (a
  convolution kernel's leading axes are its reduction axes), Adam for biases and norms and for
  the parameters under a module named in `adam_for` (by default a Transformer's embedding and
  output head, as Muon's authors train them). consistent_rms=0.2 scales each orthogonalised
  update to AdamW's typical RMS (Liu et al. 2025), so AdamW's LR grid applies to both parts."""
  def dimensions(params):
    def of(path, p):
      names = {str(getattr(key, 'key', key)) for key in path}
      if p.ndim < 2 or names & set(adam_for):
        return None
      return contrib.MuonDimensionNumbers(reduction_axis=tuple(range(p.ndim - 1)),
                                          output_axis=(p.ndim - 1,))
    return jax.tree_util.tree_map_with_path(of, params)
  return contrib.muon(learning_rate, beta=beta, ns_steps=ns_steps, nesterov=nesterov,
                      weight_decay=weight_decay, weight_decay_mask=decay_mask,
                      adam_b1=adam_b1, adam_b2=adam_b2,
                      muon_weight_dimension_numbers=dimensions, consistent_rms=consistent_rms)


FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    'sgd': sgd, 'momentum': momentum, 'nesterov': nesterov, 'adam': adam, 'adamw': adamw,
    'lars': lars, 'lamb': lamb, 'lion': lion, 'muon': muon,
    'schedule_free_adamw': schedule_free_adamw}
# Per-trial hyperparameters (config.TRIAL_FIELDS) that enter the step as inputs.
TRIAL_HYPERPARAMETERS = ('momentum',)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optimizer resolved from its config: the factory, its options, what it declares, and
  the hyperparameters its state holds (`injected`, the learning rate first)."""
  name: str                     # as config.json records it (an import path any process reaches)
  factory: Callable[..., optax.GradientTransformation]
  options: Mapping[str, Any]    # keyword arguments besides learning_rate
  declared: Declared
  injected: tuple[str, ...]
  clip_grad_norm: float | None
  learning_rate: float          # the configured peak LR (the state's initial value)

  def transform(self) -> optax.GradientTransformation:
    """The optax transform, its LR and `injected` options held in the state."""
    factory, clip = self.factory, self.clip_grad_norm

    def inner(learning_rate, **options):
      transform = factory(learning_rate=learning_rate, **options)
      return optax.chain(optax.clip_by_global_norm(clip) if clip is not None
                         else optax.identity(), transform)
    # inject_hyperparams binds the inner factory's signature: name each option.
    keyword = inspect.Parameter.KEYWORD_ONLY
    inner.__signature__ = inspect.Signature(
        [inspect.Parameter('learning_rate', inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, keyword) for name in self.options])
    static = tuple(name for name in self.options if name not in self.injected)
    # Injected values are floats: optax keeps an int as an int32 array, which would truncate
    # every LR (or β) written into it later.
    options = {k: float(v) if k in self.injected else v for k, v in self.options.items()}
    return optax.inject_hyperparams(inner, static_args=static)(
        learning_rate=float(self.learning_rate), **options)

  @property
  def hyperparameters(self) -> dict[str, float]:
    """The learning rate and every numeric option: what batch rules read and change."""
    return numeric_hyperparameters(self.learning_rate, self.options)

  def momentum(self, needed_by: str, optim: OptimConfig | None = None,
               changed: Mapping[str, float] | None = None) -> float:
    """The declared momentum's value: of this trial's optim fields (packed trials differ in
    optim.momentum) and of what a batch rule changed (`changed`), when given."""
    options = dict(self.options)
    if optim is not None:
      options.update({f: getattr(optim, f) for f in BUILTIN_FIELDS.get(optim.name, ())})
    options.update(changed or {})
    return momentum_value(self.name, self.declared, options, needed_by)

  def batch_rule(self, needed_by: str) -> str:
    if self.declared.batch_rule is None:
      raise undeclared(self.name, 'batch_rule', needed_by)
    return self.declared.batch_rule

  def preconditioner(self, opt_state, needed_by: str):
    """The diagonal preconditioner P (a tree like the params) of the current state."""
    p = self.declared.preconditioner
    if p is None:
      raise undeclared(self.name, 'preconditioner', needed_by)
    hyper = {**self.hyperparameters, **opt_state.hyperparams}
    inner = opt_state.inner_state
    if p == 'identity':
      return None
    if p == 'adam':
      return adam_preconditioner(inner, hyper)
    return p(inner, hyper)

  def eval_params(self, opt_state, params):
    """The parameters evaluations use: `params`, or what the optimizer declares (the averaged
    iterate of a schedule-free method). One trial's state; vmap it over a stack."""
    view = self.declared.eval_params
    if view is None:
      return params
    if view == 'schedule_free':
      return contrib.schedule_free_eval_params(
          _find(opt_state.inner_state, contrib.ScheduleFreeState), params)
    return view(opt_state.inner_state, params)

  @property
  def has_eval_params(self) -> bool:
    return self.declared.eval_params is not None

  def changed_by(self, rule: str, ratio: float, field: str) -> dict[str, float]:
    """The injected hyperparameters besides the LR after a batch change by `ratio` from the
    configured batch (the LR follows the schedule's factor)."""
    changed = batch_rules.apply(rule, self.hyperparameters, ratio, field)
    return {k: v for k, v in changed.items()
            if k != 'learning_rate' and k in batch_rules.changes(rule, field)}


def numeric_hyperparameters(learning_rate, options: Mapping[str, Any]) -> dict[str, float]:
  """The learning rate and every numeric option (not a bool), as floats."""
  numeric = {k: float(v) for k, v in options.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  return {'learning_rate': float(learning_rate), **numeric}


def set_hyperparameters(opt_state, **values):
  """The state with these injected hyperparameters replaced (inside the step: traced values)."""
  hyperparams = dict(opt_state.hyperparams)
  for name, value in values.items():
    hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
  return opt_state._replace(hyperparams=hyperparams)


def place_hyperparameters(opt_state, values: Mapping[str, float]):
  """On the host, between steps: the state with these hyperparameters, placed (and, for packed
  trials, broadcast) as the values they replace."""
  hyperparams = dict(opt_state.hyperparams)
  for name, value in values.items():
    old = hyperparams[name]
    hyperparams[name] = jax.device_put(jnp.full(old.shape, value, old.dtype), old.sharding)
  return opt_state._replace(hyperparams=hyperparams)


def _find(state, kind):
  if isinstance(state, kind):
    return state
  if isinstance(state, (tuple, list)):
    for item in state:
      found = _find(item, kind)
      if found is not None:
        return found
  return None


def adam_preconditioner(inner_state, hyper: Mapping[str, Any]):
  """Adam's diagonal P = 1 / (sqrt(v̂) + ε), v̂ the bias-corrected second moment (of
  scale_by_adam, or of scale_by_rms with a count, as schedule-free AdamW has it)."""
  adam_state = (_find(inner_state, optax.ScaleByAdamState)
                or _find(inner_state, ScaleByRmsWithCountState))
  correction = 1 - jnp.asarray(hyper['b2'], jnp.float32) ** adam_state.count
  return jax.tree.map(lambda nu: 1.0 / (jnp.sqrt(nu / correction) + hyper['eps']), adam_state.nu)


def _signature(factory, name: str) -> tuple[set[str], set[str], bool]:
  """(parameters, required parameters, takes **kwargs) of a factory."""
  try:
    parameters = inspect.signature(factory).parameters
  except (TypeError, ValueError):
    raise ValueError(f'optim.name={name!r}: {factory!r} is not a callable factory '
                     '(learning_rate, **options) -> optax.GradientTransformation') from None
  names = {p.name for p in parameters.values()
           if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
  required = {p.name for p in parameters.values() if p.default is p.empty
              and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
  return names, required, any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def rule_fields(config: Config, facts: Declared) -> dict[str, str]:
  """{field: rule expression} of the batch rules this config applies during training; a rule
  left to the optimizer (batch_policy_lr=auto, AdaScale's gain) needs its declared one."""
  t, fields = config.train, {}
  if t.batch_size_milestones and t.batch_size_rule != 'none':
    fields['train.batch_size_rule'] = t.batch_size_rule
  if t.batch_policy == 'none':
    return fields
  if uses_adascale(config) or t.batch_policy_lr == 'auto':
    if facts.batch_rule is None:
      raise undeclared(config.optim.name, 'batch_rule',
                       f'train.batch_policy={t.batch_policy} with '
                       f'train.batch_policy_lr={t.batch_policy_lr}')
  if not uses_adascale(config):
    fields['train.batch_policy_lr'] = (facts.batch_rule if t.batch_policy_lr == 'auto'
                                       else t.batch_policy_lr)
  return fields


def resolve_optimizer(config: Config | OptimConfig) -> Optimizer:
  """The optimizer of `config`, checked (ValueError naming the field, one line) and built once
  to see that it is an optax transform; nothing is compiled. An OptimConfig alone: at its base
  batch, no batch rules."""
  if isinstance(config, OptimConfig):
    config = Config(optim=dataclasses.replace(config, base_batch_size=None))
  check_declared(config)
  o = config.optim
  if o.name in FACTORIES:
    factory = FACTORIES[o.name]
    recorded = o.name
  else:
    factory = registry.resolve(o.name, FACTORIES, 'optim.name', 'factory')
    recorded = registry.import_path(factory)
  names, required, var_keyword = _signature(factory, o.name)
  if 'learning_rate' not in names and not var_keyword:
    raise ValueError(f'optim.name={o.name!r}: the factory must take learning_rate (it takes '
                     f'{", ".join(sorted(names)) or "nothing"})')
  options = {f: getattr(o, f) for f in BUILTIN_FIELDS.get(o.name, ())}
  for key, value in o.options.items():
    if key == 'learning_rate':
      raise ValueError('optim.options.learning_rate: the LR is optim.learning_rate (the '
                       'schedule sets it each step)')
    if not str(key).isidentifier():
      raise ValueError(f'optim.options.{key}: not a keyword argument name')
    if key not in names and not var_keyword:
      raise ValueError(f'optim.options.{key} is not an option of optimizer {o.name!r}; '
                       f'{registry.suggest(key, sorted(names - {"learning_rate"}), "optim.options.")}')
    options[key] = value
  missing = sorted(required - set(options) - {'learning_rate'})
  if missing:
    raise ValueError(f'optim.options.{missing[0]}: required by optimizer {o.name!r} '
                     '(no default)')
  try:
    built = factory(learning_rate=o.learning_rate, **options)
  except Exception as error:  # pylint: disable=broad-except  (said in one line by the caller)
    if registry.user_code_error(error) is not None:
      raise
    raise ValueError(f'optim.name={o.name!r}: building it with optim.options '
                     f'{dict(o.options)} failed: {type(error).__name__}: '
                     f'{str(error).splitlines()[0] if str(error) else ""}') from None
  if not isinstance(built, optax.GradientTransformation):
    raise ValueError(f'optim.name={o.name!r}: returns {type(built).__name__}, not an '
                     'optax.GradientTransformation')
  facts = declared(o, factory)
  defaults = {name: parameter.default for name, parameter in
              inspect.signature(factory).parameters.items()
              if parameter.default is not inspect.Parameter.empty}
  full = {**{k: v for k, v in defaults.items() if k != 'learning_rate'}, **options}
  injected = ['learning_rate']
  if o.name in FACTORIES:  # built-ins read optim.momentum: a trial field, an input of the step
    injected += [h for h in TRIAL_HYPERPARAMETERS if h in BUILTIN_FIELDS[o.name]]
  hyper = numeric_hyperparameters(o.learning_rate, full)
  for field, rule in {'optim.lr_scaling': o.lr_scaling, **rule_fields(config, facts)}.items():
    lacking = [h for h in batch_rules.reads(rule, field) if h not in hyper]
    if lacking:
      raise ValueError(f'{field}={rule!r}: needs the optimizer\'s {", ".join(lacking)}, which '
                       f'optim.name={o.name!r} does not have')
    if field != 'optim.lr_scaling':
      injected += [h for h in batch_rules.changes(rule, field)
                   if h != 'learning_rate' and h not in injected]
  # The configured batch relative to base_batch_size: a rule's non-LR changes are options.
  ratio = config.train.batch_size / (o.base_batch_size or config.train.batch_size)
  if ratio != 1:
    scaled = batch_rules.apply(o.lr_scaling, hyper, ratio, 'optim.lr_scaling')
    full.update({k: v for k, v in scaled.items() if k != 'learning_rate'
                 and k in batch_rules.changes(o.lr_scaling, 'optim.lr_scaling')})
  return Optimizer(name=recorded, factory=factory, options=full, declared=facts,
                   injected=tuple(injected), clip_grad_norm=o.clip_grad_norm,
                   learning_rate=o.learning_rate)


def build_optimizer(config: Config | OptimConfig) -> optax.GradientTransformation:
  """The optax transform of a config (an OptimConfig alone: at its base batch, no rules)."""
  return resolve_optimizer(config).transform()


def option_default(name: str, option: str):
  """The default of an option of the optimizer's factory (None when it has none)."""
  factory = FACTORIES[name] if name in FACTORIES else registry.resolve(
      name, FACTORIES, 'optim.name', 'factory')
  parameter = inspect.signature(factory).parameters.get(option)
  if parameter is None or parameter.default is inspect.Parameter.empty:
    return None
  return parameter.default
