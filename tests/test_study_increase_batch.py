"""The increase-batch study (mbx/study/increase_batch.py): its schedules and statistics against
hand-computed values, its one-line refusals, and a whole run on a user's model and data."""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

import mbx
import mbx.study
from mbx.study import increase_batch as study
from mbx.training.plan import make_plan

from helpers import REPO

MOMENTUM_CONFIG = REPO / 'configs' / 'mnist1d_cnn_momentum.py'
TINY = mbx.Config(  # tests/user_models.py and tests/user_datasets.py: 256 training examples
    data=mbx.DataConfig(name='user_datasets:make_regression', options={'n': 256}),
    model=mbx.ModelConfig(name='user_models:Linear'), task=mbx.TaskConfig(name='regression'),
    optim=mbx.OptimConfig(name='momentum', learning_rate=0.02, momentum=0.9),
    train=mbx.TrainConfig(batch_size=16, duration='20 epochs', checkpoint_every=None),
    name='tiny_regression')
TINY_FILE = f'''import mbx
def get_config():
  return mbx.Config(
      data=mbx.DataConfig(name='user_datasets:make_regression', options={{'n': 256}}),
      model=mbx.ModelConfig(name='user_models:Linear'), task=mbx.TaskConfig(name='regression'),
      optim=mbx.OptimConfig(name='momentum', learning_rate=0.02, momentum=0.9),
      train=mbx.TrainConfig(batch_size=16, duration='20 epochs'), name='tiny_regression')
'''
ACCURACY = {'accuracy': 'max', 'loss': 'min'}


def _design(config, **options):
  return study.design(config, study.Options(**options), 4000, True, 'validation', ACCURACY)


def test_phase_batches_grow_to_the_cap_then_decay_the_lr():
  assert study.phase_batches(100, 5, 3, 4000) == [(100, 1), (500, 1), (2500, 1), (2500, 0.2)]
  assert study.phase_batches(100, 5, 3, 500) == [(100, 1), (500, 1), (500, 0.2), (500, 0.04)]
  decay = study.phase_batches(100, 5, 3, 100)
  assert [b for b, _ in decay] == [100] * 4 and decay[-1][1] == pytest.approx(0.008)
  assert [study.increases(study.phase_batches(100, 5, 3, cap)) for cap in (4000, 500, 100)] == [
      2, 1, 0]


def test_the_design_reads_milestones_factor_and_budget_from_the_config():
  config = mbx.load_config(MOMENTUM_CONFIG)  # step schedule: LR x 0.2 at 60, 120, 160 of 200
  plan = _design(config)
  assert (plan.budgets, plan.fractions, plan.factor, plan.cap) == ((200.0,), (0.3, 0.6, 0.8), 5,
                                                                   4000)
  assert 'step schedule' in plan.milestone_rule and plan.column == 'test_accuracy'
  # The same schedule in steps at B = 100 (40 steps an epoch) gives the same fractions.
  in_steps = mbx.load_config(MOMENTUM_CONFIG, ['train.duration=8000 steps',
                                               'optim.milestone_unit=steps',
                                               'optim.milestones=(2400, 4800, 7200)',
                                               'optim.decay_factor=0.5'])
  plan = _design(in_steps)
  assert (plan.budgets, plan.fractions, plan.factor) == ((200.0,), (0.3, 0.6, 0.9), 2)
  # Without a step schedule: Smith's 30/60/80% and k = 5; options win over the config.
  constant = mbx.load_config(MOMENTUM_CONFIG, ['optim.schedule=constant'])
  plan = _design(constant, budgets=(200, 30), budget_scale=0.1, factor=2, max_batch_size=1000)
  assert (plan.budgets, plan.fractions, plan.factor, plan.cap) == ((20.0, 3.0), (0.3, 0.6, 0.8),
                                                                   2, 1000)
  assert plan.milestones(3.0) == (0.9, 1.8, 2.4)


def test_the_schedules_plan_as_smith_et_al_describe_them():
  config = mbx.load_config(MOMENTUM_CONFIG)
  plan = _design(config)
  expected = {'decaying LR': ([100], 3), 'hybrid': ([100, 500], 2),
              'increasing batch': ([100, 500, 2500], 1)}
  for schedule, (batches, lr_cuts) in expected.items():
    run_config = study.schedule_config(config, plan, schedule, 30.0, seed=3, evaluations=100)
    mbx.config.validate(run_config)
    assert run_config.train.seed == 3 and run_config.train.duration == '30 epochs'
    assert run_config.train.eval_every == '0.3 epochs'
    steps = make_plan(run_config, 1, 4000)
    assert [shape.batch_size for _, shape in steps.phases] == batches
    extra = len(steps.lr_extra_decays)
    assert (extra if schedule != 'decaying LR' else len(run_config.optim.milestones)) == lr_cuts
  decay = study.schedule_config(config, plan, 'decaying LR', 30.0, 0, 100)
  assert decay.optim.milestones == (9.0, 18.0, 24.0) and decay.optim.decay_factor == 0.2
  increase = study.schedule_config(config, plan, 'increasing batch', 30.0, 0, 100)
  assert increase.optim.schedule == 'constant' and increase.train.max_batch_size == 4000


@pytest.mark.parametrize('change, options, fragments', [
    ({}, dict(max_batch_size=5000), ['study.max_batch_size=5000', '4000 training examples']),
    ({'train.batch_size': 1000}, {}, ['study.factor=5', '5000 exceeds the cap 4000']),
    ({}, dict(hybrid_increases=2), ['study.hybrid_increases=2', 'allowed: 0 … 1']),
    ({'train.duration': '1e6 tokens'}, {}, ["train.duration='1e6 tokens'", 'study.budgets']),
    ({}, dict(metric='rmse'), ["study.metric='rmse'", 'allowed: accuracy, loss']),
])
def test_the_design_refuses_what_cannot_answer_the_question(change, options, fragments):
  config = mbx.load_config(MOMENTUM_CONFIG, [f'{k}={v}' for k, v in change.items()])
  with pytest.raises(mbx.config.ConfigError) as error:
    _design(config, **options)
  assert all(f in str(error.value) for f in fragments) and '\n' not in str(error.value)


def _run_rows():
  """Three seeds: increasing batch 1, 2, 3 points above decaying LR, hybrid equal to it."""
  rows = []
  for seed, accuracy in enumerate([0.90, 0.92, 0.94]):
    for schedule, delta, updates in [('decaying LR', 0.0, 8000), ('hybrid', 0.0, 3520),
                                     ('increasing batch', 0.01 * (seed + 1), 3008)]:
      rows.append({'budget_epochs': 200.0, 'schedule': schedule, 'seed': seed,
                   'test_accuracy': accuracy + delta, 'updates': updates,
                   'final_batch_size': 100, 'final_learning_rate': 0.0008,
                   'train_time_s': 10.0, 'wall_time_s': 12.0})
  return rows


def test_the_paired_differences_match_the_closed_forms():
  paired = {p['comparison']: p for p in study.paired_rows(_run_rows(), 'test_accuracy', 100)}
  p = paired['increasing batch − decaying LR']
  # Differences 1, 2, 3 points: mean 2, std 1, t = 2√3 with 2 degrees of freedom, whose
  # two-sided p is 1 − t/√(2 + t²) = 1 − √(12/14); t(0.975, 2) = 4.302653.
  assert (p['n'], p['higher'], p['lower']) == (3, 3, 0)
  assert p['estimate'] == pytest.approx(2.0)
  assert p['ci_high'] - p['estimate'] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
  assert p['p_t'] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)
  assert p['p_wilcoxon'] == pytest.approx(0.25)  # 3 of 3 positive: 2 / 2³
  assert p['fewer_updates'] == pytest.approx(8000 / 3008)
  hybrid = paired['hybrid − decaying LR']
  assert hybrid['estimate'] == pytest.approx(0.0) and math.isnan(hybrid['p_wilcoxon'])
  summary = {s['schedule']: s for s in study.summary_rows(_run_rows(), 'test_accuracy', 100)}
  assert summary['decaying LR']['mean'] == pytest.approx(92.0)
  assert summary['decaying LR']['std'] == pytest.approx(2.0)
  assert summary['increasing batch']['mean'] == pytest.approx(94.0)
  assert summary['hybrid']['fewer_updates_than_decaying_lr'] == pytest.approx(8000 / 3520)
  assert summary['increasing batch']['per_seed'] == '91, 94, 97'


def test_phases_read_batch_lr_updates_and_the_exact_noise_scale_from_the_log():
  # Increasing batch on MNIST-1D: N = 4000, m = 0.9; g = εN/(B(1−m)) as the loop logs it.
  log = pd.DataFrame(
      [(1200, 30.0, 100, 0.1, 0.5), (2400, 60.0, 100, 0.1, 0.03), (2880, 120.0, 500, 0.1, 2e-4),
       (2944, 160.0, 2500, 0.1, 2e-4), (3008, 200.0, 2500, 0.02, 2e-4)],
      columns=['step', 'epoch', 'batch_size', 'learning_rate', 'loss'])
  log['sgd_noise_scale'] = log['learning_rate'] * 4000 / (log['batch_size'] * 0.1)
  rows = study.phases(log, (60.0, 120.0, 160.0), 200.0, 4000)
  assert [r['updates'] for r in rows] == [2400, 480, 64, 64]
  assert [r['batch_size'] for r in rows] == [100, 500, 2500, 2500]
  assert [r['g'] for r in rows] == pytest.approx([40, 8, 1.6, 0.32])
  assert [r['g_exact'] for r in rows] == pytest.approx([39, 7, 0.6, 0.12])  # ε(N/B − 1)/(1−m)
  assert rows[-1]['learning_rate'] == 0.02 and rows[1]['start_epoch'] == 60.0


def _refusal(out, overrides):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]))
  return subprocess.run([sys.executable, '-m', 'mbx.cli', 'study', 'increase-batch', '--config',
                         str(out.parent / 'tiny.py'), '--out', str(out), *overrides],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_bad_input_stops_in_one_line_before_anything_is_written(tmp_path):
  (tmp_path / 'tiny.py').write_text(TINY_FILE)
  out = tmp_path / 'study'
  result = _refusal(out, ['study.max_batch_size=300'])
  assert result.returncode == 2, result.stderr[-2000:]
  error = result.stderr.strip()
  assert 'Traceback' not in error and len(error.splitlines()) == 1, error
  assert 'study.max_batch_size=300' in error and '256 training examples' in error
  assert not out.exists()
  for options, config, fragment in [
      (dict(hybrid_increases=4), TINY, 'study.hybrid_increases=4'),
      (dict(factor=1), TINY, 'study.factor=1'),
      (dict(milestone_fractions=(0.6, 0.3)), TINY, 'study.milestone_fractions'),
      ({}, dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, batch_size=64)),
       'study.factor=5'),
      ({}, dataclasses.replace(TINY, optim=dataclasses.replace(TINY.optim, lr_scaling='linear')),
       "optim.lr_scaling='linear'")]:
    with pytest.raises(mbx.config.ConfigError) as error:
      mbx.study.run('increase-batch', config, out, options=mbx.study.options_of(
          'increase-batch', **options))
    assert fragment in str(error.value) and '\n' not in str(error.value), error.value
    assert not out.exists()


@pytest.mark.slow
def test_a_quick_study_on_a_user_model_writes_its_tables_and_reuses_its_runs(tmp_path):
  options = mbx.study.options_of('increase-batch', quick=True, factor=2, evaluations=10)
  summary = mbx.study.run('increase-batch', TINY, tmp_path, options=options, quick=True)
  assert summary['invocations'][-1]['trained_runs'] == 6  # 3 schedules x 2 seeds, 2 epochs
  for name in ('schedules.csv', 'schedules.md', 'paired.csv', 'phases.csv', 'runs.csv',
               'schedules_2ep.png', 'loss_vs_epochs_2ep.png', 'loss_vs_updates_2ep.png'):
    assert (tmp_path / name).is_file(), name
  schedules = pd.read_csv(tmp_path / 'schedules.csv').set_index('schedule')
  # 2 epochs of 256 examples, B x 2 at 0.6, 1.2 and 1.6 epochs while B <= 256.
  assert schedules['final_batch_size'].to_dict() == {'decaying LR': 16, 'hybrid': 32,
                                                    'increasing batch': 128}
  assert schedules.loc['decaying LR', 'updates'] == 32
  assert (schedules.loc['decaying LR', 'updates'] > schedules.loc['hybrid', 'updates']
          > schedules.loc['increasing batch', 'updates'])
  assert schedules.loc['decaying LR', 'final_learning_rate'] == pytest.approx(0.02 / 8)
  assert (schedules['n'] == 2).all() and schedules['mean'].between(0, 10).all()
  paired = pd.read_csv(tmp_path / 'paired.csv')
  assert list(paired['n']) == [2, 2] and paired['estimate'].notna().all()
  phases = pd.read_csv(tmp_path / 'phases.csv')
  increasing = phases[phases['schedule'] == 'increasing batch']
  assert list(increasing['batch_size']) == [16, 32, 64, 128]
  assert increasing['updates'].sum() == schedules.loc['increasing batch', 'updates']
  readme = (tmp_path / 'README.md').read_text()
  assert '## Interpretation' in readme and 'increasing batch − decaying LR' in readme
  assert len(summary['findings']) == 3 and 'n = 2 paired seeds' in summary['findings'][1]
  again = mbx.study.run('increase-batch', TINY, tmp_path, options=options, quick=True)
  assert again['invocations'][-1]['trained_runs'] == 0
  assert again['invocations'][-1]['reused_runs'] == 6
  assert again['tables'] == summary['tables']  # the same runs give the same tables
