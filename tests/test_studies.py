"""The study scripts' own statistics, on inputs with known answers (their runs are in results/)."""
from __future__ import annotations

import importlib.util
import sys

import pandas as pd
import pytest

import mbx
from mbx.sweep import expand, load_sweep

from helpers import REPO


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f'study_{name}', REPO / 'experiments' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[f'study_{name}'] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_small_batch_picks_the_lr_on_validation_and_reads_the_stable_range():
  small_batch = _script('small_batch')
  rows = []
  for b in (2, 64):
    for lr, accuracy, diverged in ((0.01, 0.80, 0), (0.03, 0.93, 0), (0.1, 0.92, 0),
                                   (0.3, 0.95 if b == 2 else 0.925, 1 if b == 64 else 0)):
      for seed in (0, 1):
        rows.append({'batch_size': b, 'learning_rate': lr, 'seed': seed,
                     'outcome': 'infeasible' if diverged and seed == 1 else 'not_reached',
                     'status': 'diverged' if diverged and seed == 1 else 'done',
                     'final_metric': accuracy + 0.002 * seed, 'test_metric': accuracy - 0.01})
  summary = small_batch.summarize(small_batch.per_setting(pd.DataFrame(rows)), 4)
  by_b = summary.set_index('batch_size')
  # B = 2: 0.3 is best; within 2 points of it: 0.3 only (0.93 is exactly 2 points below,
  # but the seed mean 0.931 < 0.951 - 0.02 = 0.931 is not strictly below either).
  assert by_b.loc[2, 'best_learning_rate'] == 0.3 and by_b.loc[2, 'best_at_grid_edge']
  assert by_b.loc[2, 'test_accuracy'] == pytest.approx(0.94)
  # B = 64: a seed of 0.3 diverged, so 0.3 neither wins nor counts as stable.
  assert by_b.loc[64, 'best_learning_rate'] == 0.03
  assert (by_b.loc[64, 'stable_lr_min'], by_b.loc[64, 'stable_lr_max']) == (0.03, 0.1)
  assert by_b.loc[64, 'stable_base_lr_max'] == pytest.approx(0.1 / 64)
  assert by_b.loc[64, 'diverged_lrs'] == 1


def test_the_study_grids_are_valid_configs():
  sweep = load_sweep(REPO / 'configs' / 'small_batch_mnist1d.py')
  trials = expand(sweep)
  assert len(trials) == 12 * 10 * 2
  for trial in trials[:5] + trials[-5:]:
    mbx.config.validate(trial.config)
