"""Batch-size sweeps: trial grids, steps-to-target and critical-batch-size analysis.

    sweep = mbx.sweep.load_sweep('configs/cbs_mnist1d_cnn.py')   # a SweepConfig
    mbx.sweep.run_sweep(sweep, 'sweeps/cbs')                      # resumable, --worker split
    table = mbx.sweep.load_table('sweeps/cbs')                    # one row per trial
    analysis = mbx.sweep.analyze(table)                           # .per_batch_size, .summary
    per_k, summary = mbx.sweep.local_cbs('runs/a', step=400)      # Merrill et al. 2025

The grid (`SweepConfig`, `load_sweep`), the trial table (trials) and the fits (critical_batch,
steps_to_target) import no JAX, so sweep config files load and are checked at once and a
finished sweep is analysed without the training stack; the runner and the local CBS load it
when first used.
"""
import importlib

_LAZY = {**dict.fromkeys(('SearchSpace', 'SweepConfig', 'Trial', 'expand', 'load_sweep'),
                         'mbx.sweep.grid'),
         **dict.fromkeys(('load_table', 'trial_table'), 'mbx.sweep.trials'),
         'run_sweep': 'mbx.sweep.runner',
         **dict.fromkeys(('analyze', 'analyze_sweep', 'fit_pareto', 'steps_to_result',
                          'zhang_cbs'), 'mbx.sweep.critical_batch'),
         'local_cbs': 'mbx.sweep.local_cbs'}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module mbx.sweep has no attribute {name!r}')
