"""mbx: large-batch scaling studies in JAX.

    run = mbx.train(mbx.load_config('configs/mnist1d_cnn.py'))
    run = mbx.train(config, data=mbx.ArrayDataset({...}), model=MyModule())  # your own
    run = mbx.load_run('runs/mnist1d_cnn')   # config, metrics DataFrame, checkpoints
    summary = mbx.study.run('sharp-minima', config, 'studies/sharp')  # a whole study
    @mbx.optim.declare(momentum='b1', batch_rule='sqrt')  # beside your own optax factory

The facade: `import mbx` loads only the configs; the training stack (jax) loads when one of
`train`, `load_run`, `Run` or `ArrayDataset` is first used.
"""
import importlib

from mbx.config import (Config, ConfigError, DataConfig, ModelConfig, OptimConfig, TaskConfig,
                        TrainConfig, apply_overrides, load_config)
from mbx.optim.declared import validate

_LAZY = {'train': 'mbx.training.loop', 'train_packed': 'mbx.training.loop',
         'load_run': 'mbx.training.records', 'Run': 'mbx.training.records',
         'ArrayDataset': 'mbx.data', 'resolve': 'mbx.training.workload'}

__all__ = ['Config', 'ConfigError', 'DataConfig', 'ModelConfig', 'OptimConfig', 'TaskConfig',
           'TrainConfig', 'apply_overrides', 'load_config', 'validate', *_LAZY]


def __getattr__(name):
  if name in ('study', 'optim'):  # mbx.study.run(...), @mbx.optim.declare: no JAX until used
    return importlib.import_module(f'mbx.{name}')
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module mbx has no attribute {name!r}')
