"""The model zoo: names, options (with defaults and validation) and `build_model`.

Every model is called as `model.apply(variables, x, train, mutable=...)` on NHWC / NWC float32
input and returns float32 logits of shape (batch, num_classes). Parameters are float32; `dtype`
is the compute dtype. A model's options are the fields of its module, defaults included.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mbx.models.batch_norm import NORMS, GhostBatchNorm
from mbx.models.cnn import CNN1D, CNN2D
from mbx.models.mlp import MLP
from mbx.models.resnet import CifarResNet18, ImageNetResNet50
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
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

# Set by the trainer, not by the user's config.
_TRAINER_FIELDS = ('num_classes', 'dtype', 'batch_norm_axis_name', 'parent', 'name')
_CHOICES = {'norm': NORMS, 'pool': ('cls', 'gap')}

__all__ = ['MODEL_NAMES', 'GhostBatchNorm', 'build_model', 'has_batch_norm', 'model_options',
           'validate_model']


def _model_class(name: str) -> type[nn.Module]:
  if name not in _MODELS:
    raise ValueError(f'model.name={name!r} is not a model; choose one of {", ".join(MODEL_NAMES)}')
  return _MODELS[name]


def model_options(name: str) -> dict[str, object]:
  """The options of model `name` and their defaults."""
  return {f.name: f.default for f in dataclasses.fields(_model_class(name))
          if f.name not in _TRAINER_FIELDS}


def _check_value(key: str, value, default) -> None:
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
    ok = isinstance(value, str) and value in _CHOICES.get(key, (value,))
  else:  # tuple of positive ints (layer sizes)
    ok = isinstance(value, (tuple, list)) and all(is_int(v) and v >= 1 for v in value)
  if not ok:
    allowed = {bool: 'a bool', int: 'a positive int', float: 'a number in [0, 1)',
               str: f'one of {_CHOICES.get(key)}', tuple: 'a tuple of positive ints'}
    raise ValueError(f'{field} must be {allowed[type(default)]} (default {default!r})')


def validate_model(name: str, options: Mapping[str, object]) -> None:
  """Raise ValueError naming the offending `model.name` / `model.options.<key>`; builds nothing."""
  defaults = model_options(name)
  if not isinstance(options, Mapping):
    raise ValueError(f'model.options must be a mapping, got {options!r}')
  for key, value in options.items():
    if key not in defaults:
      raise ValueError(f'model.options.{key} is not an option of model {name!r}; '
                       f'allowed: {", ".join(defaults) or "none"}')
    _check_value(key, value, defaults[key])
  merged = {**defaults, **options}
  if name == 'wrn16_4' and (merged['depth'] < 10 or (merged['depth'] - 4) % 6):
    raise ValueError(f'model.options.depth={merged["depth"]!r} must be 6n + 4 with n >= 1 '
                     f'(10, 16, 22, 28, 40, ...)')
  if name == 'vit' and merged['hidden'] % merged['num_heads']:
    raise ValueError(f'model.options.hidden={merged["hidden"]!r} must be divisible by '
                     f'model.options.num_heads={merged["num_heads"]!r}')


def build_model(name: str, *, num_classes: int, options: Mapping[str, object] = {},
                dtype=jnp.float32, batch_norm_axis_name: str | None = None) -> nn.Module:
  """Validate and build model `name`; `batch_norm_axis_name` is used only by the BN models."""
  validate_model(name, options)
  defaults = model_options(name)
  # Configs may hold lists or ints where the field wants a tuple or float.
  kwargs = {k: type(defaults[k])(v) for k, v in options.items()}
  if has_batch_norm(name):
    kwargs['batch_norm_axis_name'] = batch_norm_axis_name
  return _model_class(name)(num_classes=num_classes, dtype=dtype, **kwargs)


def has_batch_norm(model: nn.Module | str) -> bool:
  """Whether the model (or model name) keeps a 'batch_stats' collection."""
  cls = _model_class(model) if isinstance(model, str) else type(model)
  return any(f.name == 'batch_norm_axis_name' for f in dataclasses.fields(cls))
