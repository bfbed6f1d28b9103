"""Merrill et al. 2025's local critical batch size (arXiv 2505.23971): branch runs from a
checkpoint at k x B on the same window of data (mbx.training.branching.branch_configs), and the
largest k B whose branch keeps up with the k = 1 branch (batch_policy.keeps_up)."""
from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mbx import config as config_lib
from mbx.training.batch_policy import keeps_up, shortfall
from mbx.training.branching import branch_configs, default_batch_rule
from mbx.training.loop import train
from mbx.training.records import load_run
from mbx.training.workload import resolve


def local_cbs(run_dir: str | pathlib.Path, step: int, *, factors: Sequence[int] = (
    1, 2, 4, 8, 16, 32, 64), window: str = '2 epochs', lr_scaling: str | None = None,
              tolerance: float = 0.01, metric: str = 'eval_loss', seeds: Sequence[int] = (0,),
              workdir: str | pathlib.Path | None = None, quiet: bool = True
              ) -> tuple[pd.DataFrame, dict[str, Any]]:
  """Merrill et al. 2025's local critical batch size at a checkpoint.

  From `run_dir`'s checkpoint at `step` (trained at batch B), branches train with
  k B for every k in `factors` (the LR scaled by `lr_scaling`), each on the same
  `window` of data, with every seed in `seeds` (data order). The local CBS is the
  largest k B such that every branch with k' <= k ends with `metric` (mean over
  seeds) within `tolerance` of the k = 1 branch (above it for losses/errors, below
  for accuracy). Branches are ordinary run directories under `workdir`
  (default RUN_DIR/local_cbs/step<N>) and are reused when run again.

  Returns (per-factor DataFrame, summary dict with 'local_cbs' and the inputs).
  """
  source = load_run(run_dir).config
  workload = resolve(source)
  allowed = ['train_loss'] + [f'eval_{m}' for m in workload.task.metrics]
  if metric not in allowed:
    raise ValueError(f'metric={metric!r}: allowed {", ".join(allowed)}')
  factors = sorted(set(int(k) for k in factors) | {1})
  num_train = workload.dataset.num_examples(source.data.train_split)
  factors = [k for k in factors if k * source.train.batch_size <= num_train]
  workdir = pathlib.Path(workdir) if workdir else pathlib.Path(run_dir) / 'local_cbs' / f'step{step}'
  rows = []
  branches = branch_configs(run_dir, step, factors, window, lr_scaling, seeds)
  for factor, seed, config in tqdm(branches, desc='local CBS branches', unit='run',
                                   disable=quiet):
    run = train(config, workdir / f'k{factor:05d}-s{seed}', quiet=True)
    if metric == 'train_loss':
      value = float(run.train_metrics['loss'].iloc[-1]) if len(run.train_metrics) else np.nan
    else:
      value = float(run.eval_metrics[metric].iloc[-1]) if len(run.eval_metrics) else np.nan
    if run.status.get('status') == 'diverged':
      value = np.nan
    rows.append({'factor': factor, 'batch_size': config.train.batch_size, 'seed': seed,
                 'learning_rate': config.optim.learning_rate, 'steps': run.status.get('step'),
                 'status': run.status.get('status'), metric: value})
  per_run = pd.DataFrame(rows)
  per_factor = per_run.groupby(['factor', 'batch_size', 'learning_rate'], as_index=False).agg(
      value=(metric, 'mean'), std=(metric, 'std'), steps=('steps', 'first'),
      diverged=('status', lambda s: bool((s == 'diverged').any())))
  baseline = float(per_factor.loc[per_factor['factor'] == 1, 'value'].iloc[0])
  better = 'min' if metric == 'train_loss' else workload.task.metrics[metric.partition('_')[2]]
  per_factor['excess'] = shortfall(per_factor['value'], baseline, higher_is_better=better == 'max')
  per_factor['within_tolerance'] = (keeps_up(per_factor['value'], baseline, tolerance,
                                             higher_is_better=better == 'max')
                                    & ~per_factor['diverged'])
  within = per_factor['within_tolerance'].to_numpy()
  last = int(np.argmin(within)) - 1 if not within.all() else len(within) - 1
  cbs = int(per_factor['batch_size'].iloc[max(last, 0)])
  # The k = 1 branch's spread over seeds: a tolerance below it cannot tell branches apart.
  baseline_std = float(per_factor.loc[per_factor['factor'] == 1, 'std'].iloc[0])
  noise_limited = bool(np.isfinite(baseline_std) and baseline_std > tolerance)
  summary = {'local_cbs': None if noise_limited else cbs, 'noise_limited': noise_limited,
             'step': step, 'batch_size': int(source.train.batch_size),
             'metric': metric, 'tolerance': tolerance, 'window': window,
             'lr_scaling': lr_scaling or default_batch_rule(source.optim.name),
             'seeds': list(seeds), 'baseline': baseline, 'baseline_seed_std': baseline_std,
             'run_dir': str(run_dir), 'capped': bool(within.all()) and not noise_limited}
  per_factor = per_factor.rename(columns={'value': metric, 'std': f'{metric}_std'})
  return per_factor, summary


def local_cbs_text(summary: dict) -> str:
  """'noise-limited', '>= 128' (every factor within tolerance) or '64'."""
  if summary.get('noise_limited'):
    return (f'noise-limited (the k = 1 branch varies by {summary["baseline_seed_std"]:.3g} '
            f'over seeds, more than the tolerance {summary["tolerance"]:g})')
  return f'{"≥ " if summary["capped"] else ""}{summary["local_cbs"]}'
