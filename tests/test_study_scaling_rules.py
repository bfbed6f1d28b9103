"""The scaling-rules study (mbx/study/scaling_rules.py): its decisions on crafted rows against
hand-computed values, its one-line refusals of bad input, and one tiny end-to-end run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

import mbx
import mbx.study
from mbx.study import scaling_rules as study

from helpers import REPO, tiny_config


def _plan(config=None, num_train=4000, **options):
  config = config or tiny_config(optim=dict(name='momentum', learning_rate=0.1),
                                 train=dict(batch_size=125, duration='60 epochs'))
  return study.make_plan(config, mbx.study.options_of('scaling-rules', **options), num_train,
                         'validation', 'test')


# ------------------------------------------------------------------ decisions
def test_the_base_lr_is_the_best_finished_run_on_validation_ties_to_the_smaller():
  rows = [{'learning_rate': 0.05, 'status': 'done', 'eval_accuracy': 0.923},
          {'learning_rate': 0.1, 'status': 'done', 'eval_accuracy': 0.958},
          {'learning_rate': 0.2, 'status': 'done', 'eval_accuracy': 0.958},
          {'learning_rate': 0.4, 'status': 'diverged', 'eval_accuracy': 0.99}]
  assert study.choose_base_lr(rows, 'eval_accuracy', 'max') == 0.1
  losses = [{'learning_rate': 1.0, 'status': 'done', 'eval_loss': 0.3},
            {'learning_rate': 3.0, 'status': 'done', 'eval_loss': 0.2},
            {'learning_rate': 10.0, 'status': 'done', 'eval_loss': math.nan}]
  assert study.choose_base_lr(losses, 'eval_loss', 'min') == 3.0
  assert study.choose_base_lr(rows[3:], 'eval_accuracy', 'max') is None


def test_a_method_holds_up_to_the_last_batch_size_within_tolerance_of_its_own_b0():
  # The committed single-seed run's Adam row: 93.9, 93.5, 92.9 (exactly 1 point below),
  # 89.5, 83.3, 25.6; its LAMB row drops 1.1 points at the first step.
  adam = {125: [0.939], 250: [0.935], 500: [0.929], 1000: [0.895], 2000: [0.833],
          4000: [0.256]}
  assert study.holds_to(adam, 0.01) == (500, 1000)
  assert study.holds_to({125: [0.948], 250: [0.937], 500: [0.95]}, 0.01) == (125, 250)
  assert study.holds_to({125: [0.9], 250: [0.9]}, 0.01) == (250, None)
  # Over seeds the mean decides, and a diverged seed fails its batch size.
  seeds = {100: [0.90, 0.94], 200: [0.93, 0.89], 400: [0.95, math.nan], 800: [0.95, 0.95]}
  assert study.holds_to(seeds, 0.01) == (200, 400)
  assert study.holds_to({100: [math.nan], 200: [0.9]}, 0.01) == (None, 100)
  # A loss holds while it rises by at most the tolerance.
  assert study.holds_to({64: [0.50], 128: [0.55], 256: [0.62]}, 0.1, 'min') == (128, 256)


def test_the_difference_at_the_first_failure_is_paired_by_seed():
  units = study._Units('accuracy', 0.01)  # pylint: disable=protected-access
  b0 = [{'seed': s, 'test_accuracy': a} for s, a in zip((0, 1, 2), (0.95, 0.96, 0.94))]
  at_b = [{'seed': s, 'test_accuracy': a} for s, a in zip((2, 0, 1), (0.89, 0.90, 0.93))]
  diff = study._difference(b0, at_b, 'test_accuracy', units)  # pylint: disable=protected-access
  # Per seed −5, −3, −5 points: mean −13/3, sd 2/√3, t(0.975, 2) = 4.3027.
  half = 4.302653 * (2 / math.sqrt(3)) / math.sqrt(3)
  assert diff['n'] == 3
  assert diff['estimate'] == pytest.approx(-13 / 3)
  assert (diff['ci_low'], diff['ci_high']) == pytest.approx((-13 / 3 - half, -13 / 3 + half),
                                                            abs=1e-4)
  assert units.spread([0.95, 0.96, 0.94]) == '95.0 ± 1.0%'


def test_the_lr_ceiling_separates_runs_that_held_from_runs_that_failed():
  runs = [{'peak_lr': 0.2, 'held': True, 'failed': False},
          {'peak_lr': 0.283, 'held': True, 'failed': False},
          {'peak_lr': 0.4, 'held': False, 'failed': True},
          {'peak_lr': 0.8, 'held': False, 'failed': True},
          {'peak_lr': 0.566, 'held': False, 'failed': False}]
  assert study.lr_ceiling(runs) == {'largest_held': 0.283, 'smallest_failed': 0.4,
                                    'failed_at_or_above': 2, 'at_or_above': 3}
  assert study.lr_ceiling(runs[:2]) is None


# ------------------------------------------------------------------ grids from the config
def test_the_grid_and_budget_derive_from_the_config():
  plan = _plan()
  assert plan.batch_sizes == (125, 250, 500, 1000, 2000, 4000)
  assert plan.epochs == 60 and plan.warmup_epochs == 5 and plan.milestones == (20, 40, 53.33)
  assert plan.grids['momentum'] == (0.01, 0.03, 0.1, 0.3, 1.0)   # the config's LR × factors
  assert plan.grids['adam'] == (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)    # another family: reference
  assert plan.report == 'test_accuracy' and plan.select == 'eval_accuracy'
  assert study.batch_grid(100, 2, 4000, True) == (100, 200, 400, 800, 1600, 3200, 4000)
  assert study.batch_grid(100, 8, 4000, False) == (100, 800)
  short = _plan(epochs=12, learning_rates={'adam': 0.02}, methods='adam-sqrt-warmup')
  assert short.warmup_epochs == 1 and short.grids == {'adam': (0.02,)}


def test_at_b0_every_rule_is_one_run_and_at_b_the_rule_sets_the_peak_and_warmup():
  from mbx.optim import scaled_learning_rate
  from mbx.sweep import grid
  config, plan = tiny_config(train=dict(batch_size=125)), _plan()
  at_b0 = {grid.Trial.of(study.point_config(config, plan, 'momentum', 0.2, rule, warmup, 125,
                                            0)).id
           for rule in study.RULES for warmup in (False, True)}
  assert len(at_b0) == 1
  goyal = study.point_config(config, plan, 'momentum', 0.2, 'linear', True, 1000, 0)
  assert scaled_learning_rate(goyal.optim, 1000) == pytest.approx(1.6)
  assert goyal.optim.warmup == '5 epochs' and goyal.optim.warmup_start_factor == 0.125
  assert goyal.train.duration == '60 epochs' and goyal.optim.milestones == (20, 40, 53.33)
  hoffer = study.point_config(config, plan, 'adam', 0.01, 'sqrt', False, 500, 0)
  assert scaled_learning_rate(hoffer.optim, 500) == pytest.approx(0.02)
  assert hoffer.optim.warmup == '0 steps'


def test_methods_parse_with_fractions_and_labels():
  methods = study.parse_methods(['momentum-linear-warmup@0.25,lamb-sqrt-warmup'])
  assert [(m.optimizer, m.rule, m.warmup, m.fraction) for m in methods] == [
      ('momentum', 'linear', True, 0.25), ('lamb', 'sqrt', True, 1.0)]
  assert methods[0].label == 'SGD, linear + warmup, 0.25× LR'


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize('options, config, expected', [
    (dict(methods=('momentum-linaer-warmup',)), {},
     "study.methods: 'momentum-linaer-warmup' is not optimizer-rule[-warmup][@fraction]; did "
     "you mean 'momentum-linear-warmup'?"),
    (dict(base_batch=8000), {}, 'study.base_batch=8000: B0 outside 1 … 4000'),
    ({}, dict(batch_size=5000), 'train.batch_size=5000: B0 outside 1 … 4000'),
    (dict(learning_rates={'adamm': 0.1}), {},
     "study.learning_rates: 'adamm' is not an optimizer of study.methods; did you mean adam?"),
    (dict(epochs=3, warmup_epochs=5), {}, 'study.warmup_epochs=5: not below the budget of 3'),
    (dict(methods=('adam-none-warmup',)), {}, "'adam-none-warmup': warmup starts at the base"),
    (dict(metric='bleu'), {}, "study.metric='bleu': the task reports"),
])
def test_bad_input_stops_in_one_line_before_anything_is_written(tmp_path, options, config,
                                                                expected):
  out = tmp_path / 'study'
  with pytest.raises(mbx.ConfigError) as error:
    mbx.study.run('scaling-rules', tiny_config(train=config),
                  out, options=mbx.study.options_of('scaling-rules', **options))
  assert expected in str(error.value) and '\n' not in str(error.value)
  assert not out.exists()


def test_the_cli_refuses_an_unknown_method_with_exit_2_and_writes_nothing(tmp_path):
  out = tmp_path / 'study'
  env = dict(os.environ, PYTHONPATH=str(REPO))
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'study', 'scaling-rules', '--config',
       str(REPO / 'configs' / 'mnist1d_cnn_momentum.py'), '--out', str(out),
       'study.methods=lamb-sqrt-warmup,lars-linear-warmpu'],
      capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert result.returncode == 2, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
  assert "did you mean 'lars-linear-warmup'?" in result.stderr
  assert not out.exists()


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_tiny_study_writes_its_tables_and_a_second_invocation_trains_nothing(tmp_path):
  config = mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='mlp', options={'hidden': (16,)}),
      optim=mbx.OptimConfig(name='momentum', learning_rate=0.1),
      train=mbx.TrainConfig(batch_size=1000, duration='2 epochs'), name='tiny_mlp')
  options = mbx.study.options_of(
      'scaling-rules', quick=True, methods=('momentum-linear-warmup', 'adam-sqrt-warmup'),
      learning_rates={'adam': 0.01}, seeds=(0, 1), batch_ratio=4)
  out = tmp_path / 'study'
  first = mbx.study.run('scaling-rules', config, out, options=options, quick=True)
  assert first['invocations'][-1]['trained_runs'] == 8  # 2 at B0 by seed 0, then 2 × 3
  for name in ('accuracy', 'peak_lr', 'holds', 'base_lr', 'parameter_norms', 'runs'):
    assert (out / f'{name}.csv').is_file() and (out / f'{name}.md').is_file()
  assert (out / 'accuracy_vs_batch_size.png').is_file()
  runs = pd.read_csv(out / 'runs.csv')
  assert len(runs) == 8 and set(runs.batch_size) == {1000, 4000}
  assert set(runs.seed) == {0, 1} and runs.test_accuracy.between(0, 1).all()
  peak = runs.set_index(['spec', 'batch_size', 'seed']).peak_lr
  assert peak['momentum-linear-warmup', 4000, 1] == pytest.approx(0.4)
  assert peak['adam-sqrt-warmup', 4000, 0] == pytest.approx(0.02)
  holds = {r['method']: r for r in first['tables']['holds']}
  assert set(holds) == {'SGD, linear + warmup', 'Adam, sqrt + warmup'}
  assert all(r['holds to B'] in (1000, 4000, '—') for r in holds.values())
  assert first['results']['base_lrs'] == {'momentum': 0.1, 'adam': 0.01}
  assert len(first['findings']) >= 4 and 'n = 2 seeds' in first['findings'][0]
  readme = (out / 'README.md').read_text()
  assert '## Interpretation' in readme and 'Base LR at B0 = 1000' in readme
  second = mbx.study.run('scaling-rules', config, out, options=options, quick=True)
  assert second['invocations'][-1]['trained_runs'] == 0
  assert second['findings'] == first['findings']
  assert len(json.loads((out / 'summary.json').read_text())['invocations']) == 2
