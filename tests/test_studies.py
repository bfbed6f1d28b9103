"""The study scripts' own statistics, on inputs with known answers (their runs are in results/)."""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

import mbx

from helpers import REPO


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f'study_{name}', REPO / 'experiments' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[f'study_{name}'] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_sharp_minima_paired_statistics_match_the_closed_forms():
  sharp = _script('sharp_minima')
  key = sharp.sharpness_key('full', 1e-3)
  differences = [-1.0, -2.0, -1.5, -0.5, -2.5]
  rows = []
  for seed, d in enumerate(differences):
    rows.append({'regime': 'SB', 'seed': seed, 'test_accuracy': 0.9, key: 1.0})
    rows.append({'regime': 'LB', 'seed': seed, 'test_accuracy': 0.9 + d / 100, key: 2.0})
  stats = {(r['comparison'], r['metric']): r for r in sharp.paired_statistics(rows)}
  accuracy = stats['LB vs SB', 'test accuracy (points)']
  mean, sem = np.mean(differences), np.std(differences, ddof=1) / math.sqrt(5)
  assert accuracy['estimate'] == pytest.approx(mean)
  assert accuracy['ci_high'] - accuracy['estimate'] == pytest.approx(2.776445 * sem, rel=1e-5)
  assert accuracy['p_wilcoxon'] == pytest.approx(0.0625)  # all 5 below: the smallest possible
  assert (accuracy['larger_for_other'], accuracy['smaller_for_other']) == (0, 5)
  ratio = stats['LB vs SB', 'ε-sharpness, full space, ε = 1e-3']
  assert ratio['estimate'] == pytest.approx(2.0) and ratio['ci_low'] == pytest.approx(2.0)


def test_the_study_grids_are_valid_configs():
  adaptive = _script('adaptive_batch')
  for workload in adaptive.WORKLOADS.values():
    configs = adaptive.configs(workload, seed=0)
    assert {c.train.batch_policy for c in configs.values()} == {
        'none', 'warmup', 'adascale', 'noise_scale', 'goodput'}
    for config in configs.values():
      mbx.config.validate(config)
