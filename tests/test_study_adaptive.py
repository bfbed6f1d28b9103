"""The adaptive batch-size study (mbx/study/adaptive.py): its decisions and statistics on
crafted rows, its one-line refusals of bad input, and one small run end to end."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

import mbx
import mbx.study
from mbx.study import adaptive

from helpers import REPO

NAN = math.nan


def _row(policy, seed, steps, batch=32, examples=None, wall=1.0, largest=None, **extra):
  return {'policy': policy, 'seed': seed, 'batch_size': batch, 'reached': math.isfinite(steps),
          'steps_to_target': steps,
          'examples_to_target': examples if examples is not None else steps * batch,
          'wall_time_to_target': wall if math.isfinite(steps) else NAN,
          'largest_batch_size': largest or batch, 'b_simple_median': 100.0,
          'validation': 0.86, 'test': 0.85, **extra}


def regression_config(**train) -> mbx.Config:
  """Linear regression on 256 examples (tests/user_datasets.py), SGD from B = 8."""
  return mbx.Config(
      data=mbx.DataConfig(name='user_datasets:make_regression', options={'n': 256}),
      model=mbx.ModelConfig(name='user_models:Linear'),
      task=mbx.TaskConfig(name='regression'),
      optim=mbx.OptimConfig(name='sgd', learning_rate=0.05),
      train=mbx.TrainConfig(**{**dict(
          batch_size=8, duration='8 epochs', log_every='64 examples', eval_every='1000 epochs',
          target_metric='eval_loss', target_value=0.05, checkpoint_every=None), **train}),
      name='tiny_adaptive')


# ------------------------------------------------------------------ decisions
def test_the_lr_with_fewest_steps_is_kept_ties_go_to_the_smaller_and_edges_are_flagged():
  rows = [{'batch_size': 32, 'learning_rate': lr, 'steps_to_target': s}
          for lr, s in ((0.006, 500.0), (0.012, 430.0), (0.024, NAN))]  # 0.024 diverged
  rows += [{'batch_size': 64, 'learning_rate': lr, 'steps_to_target': s}
           for lr, s in ((0.0085, 300.0), (0.017, 250.0), (0.034, 250.0))]
  rows += [{'batch_size': 128, 'learning_rate': lr, 'steps_to_target': s}
           for lr, s in ((0.012, 200.0), (0.024, 180.0), (0.048, 150.0))]
  rows += [{'batch_size': 256, 'learning_rate': lr, 'steps_to_target': NAN}
           for lr in (0.017, 0.034)]
  chosen = adaptive.choose_learning_rates(rows)
  assert set(chosen) == {32, 64, 128}  # no LR reached the target at 256
  assert chosen[32] == {'learning_rate': 0.012, 'steps_to_target': 430.0, 'at_edge': False}
  assert chosen[64]['learning_rate'] == 0.017 and not chosen[64]['at_edge']
  assert chosen[128]['learning_rate'] == 0.048 and chosen[128]['at_edge']


def test_b_star_is_the_rung_nearest_b_crit_in_log2():
  rungs = (32, 64, 128, 256, 512)
  assert adaptive.nearest_rung(190.0, rungs) == 256   # log2 7.57: 0.43 from 256, 0.57 from 128
  assert adaptive.nearest_rung(181.0, rungs) == 128   # just below 128 √2
  assert adaptive.nearest_rung(5000.0, rungs) == 512  # beyond the ladder: its top
  assert adaptive.nearest_rung(3.0, rungs) == 32


def test_the_grid_derives_from_the_config():
  config = mbx.load_config(REPO / 'configs' / 'adaptive_mnist1d_cnn.py',
                           ['train.max_batch_size=none', 'train.duration=100 steps'])
  options = adaptive.Options()
  grid = adaptive.plan(config, options, num_train=4000)
  assert grid.ladder == (32, 64, 128, 256, 512, 1024, 2048)  # 64 B0 fits in 4000
  assert grid.budget == '3200 examples'                      # 100 steps at B0 = 32
  assert (grid.target_metric, grid.target_value, grid.eval_growth) == ('eval_accuracy', 0.85,
                                                                      1.05)
  assert adaptive.plan(config, options, num_train=1000).ladder[-1] == 512
  # Adam: the LR moves as sqrt(B / 32) from 0.012, then the factors 0.5, 1, 2.
  assert adaptive.learning_rates(config, options, grid, 128) == pytest.approx(
      (0.012, 0.024, 0.048))
  sgd = dataclasses.replace(config, optim=dataclasses.replace(config.optim, name='sgd'))
  assert adaptive.learning_rates(sgd, options, adaptive.plan(sgd, options, 4000),
                                 128) == pytest.approx((0.024, 0.048, 0.096))


def test_summary_and_paired_ratios_match_hand_computed_values():
  reference, base = 'fixed B* = 256', 'fixed B0 = 32'
  rows = [_row(reference, s, steps, batch=256) for s, steps in enumerate((100.0, 120.0, 110.0))]
  rows += [_row(base, s, steps) for s, steps in enumerate((400.0, 480.0, 440.0))]
  # warmup takes 1, 2 and 4 times B*'s steps: geometric mean 2, log ratios ln 2 × (0, 1, 2).
  rows += [_row('warmup', s, steps, largest=128)
           for s, steps in enumerate((100.0, 240.0, 440.0))]
  rows += [_row('goodput', 0, 200.0), _row('goodput', 1, NAN), _row('goodput', 2, 300.0)]
  summary = {e['policy']: e for e in adaptive.summarize(rows)}
  assert (summary['goodput']['n'], summary['goodput']['reached']) == (3, 2)
  assert summary['goodput']['steps_to_target_mean'] == pytest.approx(250.0)
  assert summary['goodput']['steps_to_target_std'] == pytest.approx(50 * math.sqrt(2))
  assert summary['goodput']['validation_mean'] == pytest.approx(0.86)  # over all 3 seeds
  assert summary[reference]['seconds_per_step_mean'] == pytest.approx(
      (1 / 100 + 1 / 120 + 1 / 110) / 3)

  paired = {(p['policy'], p['column']): p for p in adaptive.paired_rows(rows, reference)}
  steps = paired['warmup', 'steps_to_target']
  assert steps['n'] == 3 and steps['estimate'] == pytest.approx(2.0)
  # t with 2 degrees of freedom: t = mean / (sd / sqrt 3) = sqrt 3, and F(t) = 1/2 +
  # t / (2 sqrt(2 + t^2)); the interval's half-width is t_0.975(2) = 4.302653 standard errors.
  assert steps['p_t'] == pytest.approx(2 * (0.5 - math.sqrt(3) / (2 * math.sqrt(5))))
  half = 4.302653 * math.log(2) / math.sqrt(3)
  assert steps['ci_low'] == pytest.approx(2 * math.exp(-half), rel=1e-5)
  assert steps['ci_high'] == pytest.approx(2 * math.exp(half), rel=1e-5)
  assert paired['goodput', 'steps_to_target']['n'] == 2  # the missed seed is left out
  assert ('fixed B* = 256', 'steps_to_target') not in paired

  grid = adaptive.Plan(base_batch_size=32, max_batch_size=2048, ladder=(32, 64), num_train=4000,
                       reference_batch_size=32, lr_power=0.5, target_metric='eval_accuracy',
                       target_value=0.85, budget='60 epochs', eval_growth=1.05)
  never_moved = [_row('noise_scale', s, steps) for s, steps in enumerate((400.0, 480.0, 440.0))]
  lines = adaptive.findings(rows + never_moved, adaptive.summarize(rows + never_moved),
                            adaptive.paired_rows(rows + never_moved, reference), reference,
                            base, grid)
  assert any(line.startswith(f'Fewest steps to the target of {base}, {reference} and the '
                             f'policies (mean over seeds, every seed reached): {reference}, '
                             '110 ± 10') for line in lines)
  assert 'goodput missed the target in 1 of 3 seeds within the budget.' in lines
  assert any(line.startswith('noise_scale never left B0 = 32 in any of 3 seeds; its steps and '
                             'examples to the target equal') for line in lines)
  assert not any(line.startswith('warmup never left') for line in lines)
  warmup = next(line for line in lines if line.startswith('warmup ÷'))
  assert 'steps 2.00× [' in warmup and f'paired t p = {steps["p_t"]:.2g}' in warmup


# ------------------------------------------------------------------ bad input
def test_an_unknown_policy_stops_the_cli_in_one_line_before_anything_is_written(tmp_path):
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'study', 'adaptive', '--config',
       'configs/adaptive_mnist1d_cnn.py', '--out', str(out), 'study.policies=warmup,noise_scal'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in result.stderr
  assert 'study.policies' in lines[0] and 'did you mean noise_scale?' in lines[0]
  assert not out.exists()


@pytest.mark.parametrize('config, values, expected', [
    (regression_config(), dict(target_metric='eval_accuracy'),
     "study.target_metric='eval_accuracy': not an evaluation metric of task 'regression'; "
     'allowed: eval_loss, eval_rmse'),
    (regression_config(target_metric=None, target_value=None), {},
     'study.target_metric=None, study.target_value=None: the study needs a target'),
    (regression_config(), dict(max_batch_size=512),
     'study.max_batch_size=512: above the training set (256 examples)'),
    (regression_config(max_batch_size=8), {}, 'train.max_batch_size=8: the ladder 8 × 2^k '
                                              'needs at least two rungs'),
    (regression_config(), dict(best_batch_size=24), 'study.best_batch_size=24: not on the '
                                                    'ladder [8, 16, 32, 64, 128, 256]'),
])
def test_a_config_that_cannot_answer_the_study_stops_before_anything_is_written(
    tmp_path, config, values, expected):
  out = tmp_path / 'out'
  with pytest.raises(mbx.ConfigError) as error:
    mbx.study.run('adaptive', config, out, options=mbx.study.options_of('adaptive', **values))
  assert str(error.value).startswith(expected) and '\n' not in str(error.value)
  assert not out.exists()


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_small_study_writes_its_tables_and_a_second_invocation_trains_nothing(tmp_path):
  out = tmp_path / 'study'
  options = mbx.study.options_of('adaptive', seeds=(0, 1), learning_rate_factors=(1.0,),
                                 fixed_grid_seeds=False, max_batch_size=32)
  summary = mbx.study.run('adaptive', regression_config(), out, options=options, quick=True)
  for name in ('fixed_batches', 'policies', 'paired', 'tuning', 'runs'):
    assert (out / f'{name}.csv').is_file() and (out / f'{name}.md').is_file()
  for name in ('decisions', 'metric', 'frontier'):
    assert (out / f'{name}.png').stat().st_size > 0
  tables, results = summary['tables'], summary['results']
  assert [r['batch_size'] for r in tables['tuning']] == [8, 16, 32]
  assert results['best_batch_size'] in (8, 16, 32) and results['base_batch_size'] == 8
  best = results['best_batch_size']
  policies = {r['policy']: r for r in tables['policies']}
  assert list(policies) == ['fixed B0 = 8', f'fixed B* = {best}', 'warmup', 'adascale',
                            'noise_scale', 'goodput']
  for row in policies.values():
    assert row['n'] == 2 and row['reached'] == 2 and row['steps_to_target_mean'] > 0
  assert policies['adascale']['largest_batch_size_mean'] == best
  assert 8 <= policies['noise_scale']['largest_batch_size_mean'] <= 32
  assert len(tables['paired']) == 5 * 3 and all(r['n'] == 2 for r in tables['paired'])
  assert summary['findings'] and '## Interpretation' in (out / 'README.md').read_text()
  first = summary['invocations'][-1]
  assert first['trained_runs'] > 0 and first['reused_runs'] == 0

  again = mbx.study.run('adaptive', regression_config(), out, options=options, quick=True)
  assert again['invocations'][-1]['trained_runs'] == 0
  assert again['invocations'][-1]['reused_runs'] == first['trained_runs']
  assert again['tables']['policies'] == tables['policies']  # the same runs, the same answer
  assert json.loads((out / 'summary.json').read_text())['invocations'] == again['invocations']
