"""Batch-size sweeps: trial grids, steps-to-target and critical-batch-size analysis.

    sweep = mbx.sweep.load_sweep('configs/cbs_mnist1d_cnn.py')   # a SweepConfig
    mbx.sweep.run_sweep(sweep, 'sweeps/cbs')                      # resumable, --worker split
    table = mbx.sweep.load_table('sweeps/cbs')                    # one row per trial
    analysis = mbx.sweep.analyze(table)                           # .per_batch_size, .summary
    per_k, summary = mbx.sweep.local_cbs('runs/a', step=400)      # Merrill et al. 2025
"""
from mbx.sweep.critical_batch import (analyze, analyze_sweep, fit_pareto, local_cbs,
                                      steps_to_result, zhang_cbs)
from mbx.sweep.grid import SearchSpace, SweepConfig, Trial, expand, load_sweep
from mbx.sweep.runner import load_table, run_sweep, trial_table

__all__ = ['SearchSpace', 'SweepConfig', 'Trial', 'analyze', 'analyze_sweep', 'expand',
           'fit_pareto', 'load_sweep', 'load_table', 'local_cbs', 'run_sweep', 'steps_to_result',
           'trial_table', 'zhang_cbs']
