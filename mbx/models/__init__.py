"""Models: the zoo, and the user's own Flax modules, built from `model.name` and `model.options`.

`model.name` is a zoo name (below) or an import path 'package.module:Name' (see mbx.registry)
of a `flax.linen.Module` class or of a factory function returning one. `model.options` are its
keyword arguments, checked against the class's fields (or the factory's parameters) before
anything is built. mbx fills three fields when the module declares them: `num_classes` (from
the dataset, recorded in the run's config.json), `dtype` (model.dtype) and
`batch_norm_axis_name` (the data-parallel axis). A module is called as
`module.apply(variables, inputs, train=...)`, with `train` passed only when `__call__` takes it.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbx import registry
from mbx.models.batch_norm import NORMS, GhostBatchNorm
from mbx.models.cnn import CNN1D, CNN2D
from mbx.models.linear import Linear
from mbx.models.mlp import MLP
from mbx.models.resnet import CifarResNet18, ImageNetResNet50
from mbx.models.transformer import POSITIONS, Transformer
from mbx.models.vit import ViT
from mbx.models.wide_resnet import WideResNet

_MODELS: dict[str, type[nn.Module]] = {
    'mlp': MLP,
    'cnn1d': CNN1D,
    'cnn2d': CNN2D,
    'resnet18': CifarResNet18,
    'resnet50': ImageNetResNet50,
    'wrn16_4': WideResNet,
    'vit': ViT,
    'transformer': Transformer,
    'linear': Linear,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

# Set by the trainer, not by the user's config (num_classes may be given for models whose
# output size is not the dataset's class count, e.g. regression).
FILLED_FIELDS = ('num_classes', 'dtype', 'batch_norm_axis_name')
_HIDDEN_FIELDS = ('parent', 'name')
_CHOICES = {'norm': NORMS, 'pool': ('cls', 'gap'), 'positions': POSITIONS}
# Models whose normalisation is optional (BN is an option of the plain CNN, not its default).
_MODEL_CHOICES = {('cnn1d', 'norm'): ('none',) + NORMS}

__all__ = ['MODEL_NAMES', 'GhostBatchNorm', 'build_model', 'call_takes_train', 'describe_module',
           'has_batch_norm', 'model_fields', 'model_options', 'resolve_options']


def model_target(name: str) -> Callable:
  """The class or factory `model.name` names."""
  target = registry.resolve(name, _MODELS, 'model.name', 'Module')
  if isinstance(target, type) and issubclass(target, nn.Module):
    return target
  if isinstance(target, type) or not callable(target):
    raise ValueError(f'model.name={name!r}: {target!r} is not a flax.linen.Module class or '
                     'a function returning one')
  return target


def model_fields(name: str) -> dict[str, Any]:
  """The keyword arguments model `name` takes, with defaults (inspect.Parameter.empty if none)."""
  target = model_target(name)
  if isinstance(target, type):
    return {f.name: (f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty)
            for f in dataclasses.fields(target) if f.name not in _HIDDEN_FIELDS and f.init}
  return {p.name: p.default for p in inspect.signature(target).parameters.values()
          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def model_options(name: str) -> dict[str, object]:
  """The options of model `name` that a config may set, and their defaults."""
  return {k: v for k, v in model_fields(name).items() if k not in FILLED_FIELDS}
def _check_value(key: str, value, default, choices=None) -> None:
  field = f'model.options.{key}={value!r}'

  def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)

  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = is_int(value) and value >= 1
  elif isinstance(default, float):
    # Every float option here is a rate or a momentum.
    ok = (is_int(value) or isinstance(value, float)) and 0 <= value < 1
  elif isinstance(default, str):
    choices = choices or _CHOICES.get(key, (value,))
    ok = isinstance(value, str) and value in choices
  else:  # tuple of positive ints (layer sizes)
    ok = isinstance(value, (tuple, list)) and all(is_int(v) and v >= 1 for v in value)
  if not ok:
    allowed = {bool: 'a bool', int: 'a positive int', float: 'a number in [0, 1)',
               str: f'one of {choices}', tuple: 'a tuple of positive ints'}
    raise ValueError(f'{field} must be {allowed[type(default)]} (default {default!r})')


def validate_model(name: str, options: Mapping[str, object]) -> None:
  """Raise ValueError naming the offending `model.name` / `model.options.<key>`; builds nothing."""
  fields = model_fields(name)
  if not isinstance(options, Mapping):
    raise ValueError(f'model.options must be a mapping, got {options!r}')
  settable = {k: v for k, v in fields.items() if k not in ('dtype', 'batch_norm_axis_name')}
  for key, value in options.items():
    if key not in settable:
      raise ValueError(f'model.options.{key} is not an option of model {name!r}; '
                       f'{registry.suggest(key, settable, prefix="model.options.")}')
    if name in _MODELS and key == 'num_classes':
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'model.options.num_classes={value!r} must be a positive int')
    elif name in _MODELS:
      _check_value(key, value, fields[key], _MODEL_CHOICES.get((name, key)))
  missing = [k for k, v in fields.items()
             if v is inspect.Parameter.empty and k not in FILLED_FIELDS and k not in options]
  if missing:
    raise ValueError(f'model.options.{missing[0]}: required by model {name!r} (no default)')
  if name not in _MODELS:
    return
  merged = {**model_options(name), **options}
  if name == 'wrn16_4' and (merged['depth'] < 10 or (merged['depth'] - 4) % 6):
    raise ValueError(f'model.options.depth={merged["depth"]!r} must be 6n + 4 with n >= 1 '
                     f'(10, 16, 22, 28, 40, ...)')
  if name == 'vit' and merged['hidden'] % merged['num_heads']:
    raise ValueError(f'model.options.hidden={merged["hidden"]!r} must be divisible by '
                     f'model.options.num_heads={merged["num_heads"]!r}')
  if name == 'transformer' and merged['width'] % merged['num_heads']:
    raise ValueError(f'model.options.width={merged["width"]!r} must be divisible by '
                     f'model.options.num_heads={merged["num_heads"]!r}')


def resolve_options(name: str, options: Mapping[str, object],
                    num_classes: int | None) -> dict[str, object]:
  """`options` with `num_classes` filled from the dataset when the model declares it."""
  validate_model(name, options)
  options = dict(options)
  if 'num_classes' in model_fields(name) and 'num_classes' not in options:
    if num_classes is None:
      raise ValueError(f'model.options.num_classes: model {name!r} needs it and the dataset '
                       'declares no classes (float targets); set it to the output size')
    options['num_classes'] = int(num_classes)
  return options


def build_model(name: str, *, options: Mapping[str, object] = {}, num_classes: int | None = None,
                dtype=jnp.float32, batch_norm_axis_name: str | None = None) -> nn.Module:
  """The module `name` with `options`; `num_classes` fills that field when the options lack it
  (a run's recorded options already hold it)."""
  if num_classes is not None and 'num_classes' in model_fields(name):
    options = {'num_classes': int(num_classes), **options}
  validate_model(name, options)
  fields = model_fields(name)
  kwargs = dict(options)
  if name in _MODELS:  # configs may hold lists or ints where the field wants a tuple or float
    kwargs = {k: v if k == 'num_classes' else type(fields[k])(v) for k, v in kwargs.items()}
  elif any(isinstance(v, list) for v in kwargs.values()):  # JSON turned tuples into lists
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if 'dtype' in fields:
    kwargs['dtype'] = dtype
  if 'batch_norm_axis_name' in fields:
    kwargs['batch_norm_axis_name'] = batch_norm_axis_name
  try:
    module = model_target(name)(**kwargs)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'model.name={name!r}: building it with {kwargs} failed: '
                     f'{type(error).__name__}: {error}') from None
  if not isinstance(module, nn.Module):
    raise ValueError(f'model.name={name!r}: the factory returned {type(module).__name__}, '
                     'expected a flax.linen.Module')
  return module


def describe_module(module: nn.Module) -> tuple[str, dict[str, object]]:
  """(model.name, model.options) that rebuild `module` in a fresh process."""
  cls = type(module)
  name = next((n for n, c in _MODELS.items() if c is cls), None) or registry.import_path(cls)
  options = {}
  for f in dataclasses.fields(cls):
    if f.name in _HIDDEN_FIELDS or f.name in ('dtype', 'batch_norm_axis_name') or not f.init:
      continue
    value = getattr(module, f.name)
    if f.name == 'num_classes' or f.default is dataclasses.MISSING or value != f.default:
      options[f.name] = list(value) if isinstance(value, tuple) else value
  return name, options


def call_takes_train(module: nn.Module) -> bool:
  """Whether `module.__call__` has a `train` argument (the zoo's do; a user's may not)."""
  return 'train' in inspect.signature(type(module).__call__).parameters


def has_batch_norm(model: nn.Module | str) -> bool:
  """Whether the model (or model name, with its default options) keeps a 'batch_stats'
  collection."""
  if isinstance(model, str):
    fields = model_fields(model)
    return 'batch_norm_axis_name' in fields and fields.get('norm') != 'none'
  fields = {f.name for f in dataclasses.fields(type(model))}
  return 'batch_norm_axis_name' in fields and getattr(model, 'norm', None) != 'none'
