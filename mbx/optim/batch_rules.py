"""What the optimizer's hyperparameters become when the batch size changes by κ = B_new / B_old.

One small protocol serves the three places a batch size changes: a sweep's batch sizes
(`optim.lr_scaling`, relative to `optim.base_batch_size`), a batch-size schedule
(`train.batch_size_rule`, at each of `train.batch_size_milestones`) and a batch policy's
decisions (`train.batch_policy_lr`). A rule maps the hyperparameters at the old batch to those
at the new one; rules compose left to right with '+', e.g. 'sqrt+beta2_half_life'. Every rule is
a published formula (docs/batch_rules.md):

  none              nothing changes
  linear            η → κη                                        (Goyal et al. 2017)
  sqrt              η → √κ η                                      (Hoffer et al. 2017)
  adam_sde          η → √κ η, 1−β1 → κ(1−β1), 1−β2 → κ(1−β2), ε → ε/√κ   (Malladi et al. 2022)
  beta2_half_life   β2 → β2^κ: β2's half-life stays fixed in examples (Marek et al. 2025)
  adamw_timescale   λ → λ κ η_old/η_new: the AdamW timescale τ = B/(ηλD) stays fixed
                    (Bergsma et al. 2025; D, the training set's size, does not change); it
                    assumes AdamW's decoupled decay (the update holds ηλθ)

This module is plain Python (no JAX): configs are checked with it before anything loads.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

Hyperparameters = Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class BatchRule:
  """name; reads: the hyperparameters it needs the optimizer to have; changes: those it sets;
  apply(hyper, ratio, before) -> the changed values, where `hyper` holds the values after the
  rules to its left and `before` those at the old batch."""
  name: str
  reads: tuple[str, ...]
  changes: tuple[str, ...]
  apply: Callable[[Hyperparameters, float, Hyperparameters], dict[str, float]]
  reference: str


def _scale_lr(factor: Callable[[float], float]):
  return lambda hyper, ratio, before: {'learning_rate': hyper['learning_rate'] * factor(ratio)}


def _adam_sde(hyper, ratio, before):
  changed = {'learning_rate': hyper['learning_rate'] * math.sqrt(ratio),
             'eps': hyper['eps'] / math.sqrt(ratio)}
  for name in ('b1', 'b2'):
    one_minus = ratio * (1 - hyper[name])
    if one_minus >= 1:
      raise ValueError(f'adam_sde: at κ = {ratio:g}, 1 - {name} = κ (1 - {hyper[name]:g}) = '
                       f'{one_minus:g} >= 1; the SDE rule holds only for smaller batch changes')
    changed[name] = 1 - one_minus
  return changed


def _beta2_half_life(hyper, ratio, before):
  return {'b2': hyper['b2'] ** ratio}


def _adamw_timescale(hyper, ratio, before):
  return {'weight_decay': before['weight_decay'] * ratio * before['learning_rate']
                          / hyper['learning_rate']}


RULES: dict[str, BatchRule] = {rule.name: rule for rule in (
    BatchRule('none', (), (), lambda hyper, ratio, before: {}, ''),
    BatchRule('linear', ('learning_rate',), ('learning_rate',), _scale_lr(lambda ratio: ratio),
              'Goyal et al. 2017'),
    BatchRule('sqrt', ('learning_rate',), ('learning_rate',), _scale_lr(math.sqrt),
              'Hoffer et al. 2017'),
    BatchRule('adam_sde', ('learning_rate', 'b1', 'b2', 'eps'),
              ('learning_rate', 'b1', 'b2', 'eps'), _adam_sde, 'Malladi et al. 2022'),
    BatchRule('beta2_half_life', ('b2',), ('b2',), _beta2_half_life, 'Marek et al. 2025'),
    BatchRule('adamw_timescale', ('learning_rate', 'weight_decay'), ('weight_decay',),
              _adamw_timescale, 'Bergsma et al. 2025'),
)}


def parse(expression: str, field: str) -> tuple[BatchRule, ...]:
  """The rules of 'a+b+...'; ValueError naming `field` and the known rules."""
  names = [part.strip() for part in str(expression).split('+')]
  unknown = [name for name in names if name not in RULES]
  if unknown or not names:
    raise ValueError(f'{field}={expression!r}: {unknown[0]!r} is not a batch rule; rules: '
                     f'{", ".join(RULES)}, composed with "+" (e.g. sqrt+beta2_half_life)')
  rules = tuple(RULES[name] for name in names if name != 'none')
  for i, rule in enumerate(rules):
    later = [r.name for r in rules[i + 1:] if 'learning_rate' in r.changes]
    if 'learning_rate' in rule.reads and 'learning_rate' not in rule.changes and later:
      raise ValueError(f'{field}={expression!r}: {rule.name} reads the new LR, so the LR rule '
                       f'({later[0]}) must come before it, e.g. {later[0]}+{rule.name}')
  changed = [name for rule in rules for name in rule.changes]
  if len(set(changed)) != len(changed):
    raise ValueError(f'{field}={expression!r}: two of its rules set the same hyperparameter '
                     f'({", ".join(sorted({n for n in changed if changed.count(n) > 1}))})')
  return rules


def reads(expression: str, field: str) -> tuple[str, ...]:
  return tuple(dict.fromkeys(name for rule in parse(expression, field) for name in rule.reads))


def changes(expression: str, field: str) -> tuple[str, ...]:
  return tuple(dict.fromkeys(name for rule in parse(expression, field) for name in rule.changes))


def apply(expression: str, hyperparameters: Hyperparameters, ratio: float,
          field: str = 'batch rule') -> dict[str, float]:
  """`hyperparameters` (at the old batch) after a batch change by `ratio` = B_new / B_old."""
  if not ratio > 0:
    raise ValueError(f'{field}: batch ratio {ratio!r} must be > 0')
  before = dict(hyperparameters)
  hyper = dict(before)
  for rule in parse(expression, field):
    missing = [name for name in rule.reads if name not in hyper]
    if missing:
      raise ValueError(f'{field}={expression!r}: rule {rule.name!r} needs the optimizer\'s '
                       f'{", ".join(missing)}, which it does not have')
    hyper.update(rule.apply(hyper, ratio, before))
  return hyper


def lr_factor(expression: str, ratio: float, field: str = 'batch rule') -> float:
  """What the expression multiplies the LR by at a batch `ratio` times the old one."""
  factor = 1.0
  for rule in parse(expression, field):
    if rule.name in ('linear', 'sqrt', 'adam_sde'):
      factor *= ratio if rule.name == 'linear' else math.sqrt(ratio)
  return factor


def lr_power(expression: str, field: str) -> float:
  """The exponent p of η ∝ B^p the expression implies (0, 0.5 or 1): where sweeps move their LR
  range and AdaScale's gain enters the LR."""
  powers = {'linear': 1.0, 'sqrt': 0.5, 'adam_sde': 0.5}
  found = [powers[rule.name] for rule in parse(expression, field) if rule.name in powers]
  return found[0] if found else 0.0
