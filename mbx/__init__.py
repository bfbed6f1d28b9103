"""mbx: large-batch scaling studies in JAX.

    run = mbx.train(mbx.load_config('configs/mnist1d_cnn.py'))
    run = mbx.load_run('runs/mnist1d_cnn')   # config, metrics DataFrame, checkpoints

Kept import-light: the heavy modules load on first use.
"""
from mbx.config import (Config, ConfigError, DataConfig, ModelConfig, OptimConfig,
                        TrainConfig, apply_overrides, load_config, validate)

__all__ = ['Config', 'ConfigError', 'DataConfig', 'ModelConfig', 'OptimConfig', 'TrainConfig',
           'apply_overrides', 'load_config', 'validate', 'train', 'load_run', 'Run']


def __getattr__(name):
  if name == 'train':
    from mbx.training.loop import train  # pylint: disable=import-outside-toplevel
    return train
  if name in ('load_run', 'Run'):
    from mbx.training import records  # pylint: disable=import-outside-toplevel
    return getattr(records, name)
  raise AttributeError(f'module mbx has no attribute {name!r}')
