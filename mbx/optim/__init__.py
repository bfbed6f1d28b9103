"""Optimizers (optax factories and what mbx must know of them), batch rules and LR schedules.

`mbx.optim.declare` and `mbx.optim.batch_rules` are plain Python; the rest loads optax (and so
JAX) when first used.
"""
import importlib

from mbx.optim.declared import Declared, declare

_LAZY = {'Optimizer': 'mbx.optim.optimizers', 'build_optimizer': 'mbx.optim.optimizers',
         'resolve_optimizer': 'mbx.optim.optimizers', 'decay_mask': 'mbx.optim.optimizers',
         'set_hyperparameters': 'mbx.optim.optimizers',
         'place_hyperparameters': 'mbx.optim.optimizers',
         'learning_rate_schedule': 'mbx.optim.schedules',
         'scaled_learning_rate': 'mbx.optim.schedules'}

__all__ = ['Declared', 'declare', *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module mbx.optim has no attribute {name!r}')
