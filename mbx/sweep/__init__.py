"""Batch-size sweeps: trial grids, steps-to-target and critical-batch-size analysis.

    sweep = mbx.sweep.load_sweep('configs/cbs_mnist1d_cnn.py')   # a SweepConfig
    mbx.sweep.run_sweep(sweep, 'sweeps/cbs')                      # resumable, --worker split
    table = mbx.sweep.load_table('sweeps/cbs')                    # one row per trial
    analysis = mbx.sweep.analyze(table)                           # .per_batch_size, .summary
    per_k, summary = mbx.sweep.local_cbs('runs/a', step=400)      # Merrill et al. 2025

Kept import-light: the grid needs only numpy; running and analysis load on first use.
"""
from mbx.sweep.grid import SearchSpace, SweepConfig, Trial, expand, load_sweep

_LAZY = {'run_sweep': 'runner', 'load_table': 'runner', 'trial_table': 'runner',
         'analyze': 'critical_batch', 'analyze_sweep': 'critical_batch',
         'local_cbs': 'critical_batch', 'fit_pareto': 'critical_batch',
         'zhang_cbs': 'critical_batch', 'steps_to_result': 'critical_batch'}

__all__ = ['SearchSpace', 'SweepConfig', 'Trial', 'expand', 'load_sweep', *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(f'mbx.sweep.{_LAZY[name]}'), name)
  raise AttributeError(f'module mbx.sweep has no attribute {name!r}')
