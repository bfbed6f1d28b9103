"""Sweeps: grid expansion, worker split, steps-to-target resolution, resume after SIGKILL."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

import mbx
from mbx.figures import report
from mbx.sweep import SearchSpace, SweepConfig, critical_batch, expand, grid, load_sweep, runner
from mbx.sweep import steps_to_target as stt
from mbx.training.plan import make_plan

from helpers import REPO, assert_one_line_error, tiny_config


def _sweep(**fields) -> SweepConfig:
  base = tiny_config(train=dict(checkpoint_every=None, log_every='5 steps',
                                eval_every='1000 epochs', max_loss=10.0))
  values = dict(base=base, search=(SearchSpace('adam', (3e-3, 3e-2), num_learning_rates=2),),
                batch_sizes=(16, 64), seeds=(0,), budget='150 steps', target_value=0.5,
                name='test')
  values.update(fields)
  return SweepConfig(**values)


# ------------------------------------------------------------------ the grid
def test_default_batch_sizes_are_powers_of_two_then_the_full_batch():
  assert grid.default_batch_sizes(4000) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048,
                                           4000)
  assert grid.default_batch_sizes(1024)[-1] == 1024


def test_learning_rate_grid_moves_with_the_batch_size_up_to_the_cap():
  space = SearchSpace('momentum', (1e-3, 1e-1), num_learning_rates=3, lr_scaling_power=1.0,
                      max_scaled_batch_size=64)
  at = lambda b: [lr for lr, _ in grid.search_points(space, b, base_momentum=0.9)]
  assert at(1) == pytest.approx([1e-3, 1e-2, 1e-1])
  assert at(16) == pytest.approx([16e-3, 16e-2, 16e-1])
  assert at(4000) == pytest.approx(at(64))
  sqrt = dataclasses.replace(space, lr_scaling_power=0.5, max_scaled_batch_size=None)
  assert [lr for lr, _ in grid.search_points(sqrt, 100, 0.9)] == pytest.approx(
      [1e-2, 1e-1, 1.0])


def test_quasirandom_search_is_log_uniform_in_range_and_deterministic():
  space = SearchSpace('momentum', (1e-4, 1.0), num_learning_rates=16, sampling='quasirandom',
                      one_minus_momentum=(1e-3, 0.5))
  points = grid.search_points(space, 8, 0.9, seed=3)
  assert points == grid.search_points(space, 8, 0.9, seed=3)
  lrs, momenta = np.array(points).T
  assert np.all((1e-4 <= lrs) & (lrs <= 1.0)) and np.all((0.5 <= momenta) & (momenta < 1))
  # Low discrepancy: every decade of the LR range holds some of the 16 points.
  assert set(np.floor(np.log10(lrs)).astype(int)) == {-4, -3, -2, -1}


def test_trials_cover_the_grid_with_stable_unique_ids(session_data_dir):
  sweep = _sweep(search=(SearchSpace('adam', (1e-3, 1e-2), num_learning_rates=2),
                         SearchSpace('sgd', (1e-2, 1e-1), num_learning_rates=3)),
                 batch_sizes=(1, 8), seeds=(0, 1), budgets={1: '500 steps'}, noise_scale=True)
  trials = expand(sweep)
  assert len(trials) == (2 + 3) * 2 * 2
  assert len({t.id for t in trials}) == len(trials)
  assert [t.id for t in expand(sweep)] == [t.id for t in trials]
  for t in trials:
    assert t.config.train.batch_size == t.batch_size and t.config.optim.name == t.optimizer
    assert t.config.train.duration == ('500 steps' if t.batch_size == 1 else '150 steps')
    assert t.config.train.noise_scale == (t.batch_size > 1)  # B = 1 cannot be split
    assert t.config.train.target_value == 0.5 and t.config.train.stop_at_target
    assert (t.momentum is None) == (t.optimizer == 'sgd')
    mbx.validate(t.config)
  adam = next(t for t in trials if t.optimizer == 'adam')
  assert adam.config.optim.b1 == adam.momentum == 0.9
  momentum = expand(_sweep(search=(SearchSpace('momentum', (0.1, 0.1), num_learning_rates=1,
                                               momentum=0.5),)))[0]
  assert momentum.effective_learning_rate == pytest.approx(0.2)


def test_sweep_config_round_trips_and_takes_overrides(session_data_dir):
  sweep = load_sweep(REPO / 'configs' / 'cbs_mnist1d_cnn.py')
  assert grid.from_dict(json.loads(json.dumps(grid.to_dict(sweep)))) == sweep
  changed = grid.apply_overrides(sweep, ['sweep.seeds=0', 'sweep.budget=10 steps',
                                         'train.log_every=7 steps'])
  assert changed.seeds == (0,) and changed.budget == '10 steps'
  assert changed.base.train.log_every == '7 steps'
  assert grid.spec_hash(dataclasses.replace(sweep, pack=True)) == grid.spec_hash(sweep)
  with pytest.raises(mbx.ConfigError, match='unknown sweep field sweep.nope; allowed: batch_'):
    grid.apply_overrides(sweep, ['sweep.nope=1'])
  for override, hint in (('sweep.seedz=0', 'did you mean sweep.seeds?'),
                         ('swep.seeds=0', 'did you mean sweep?'),
                         ('sweep.target=0.5', 'did you mean sweep.target_value'),
                         ('sweep.search=[]', 'set in the sweep file')):
    with pytest.raises(mbx.ConfigError, match=re.escape(hint)):
      grid.apply_overrides(sweep, [override])
  with pytest.raises(mbx.ConfigError, match='learning_rate'):
    expand(_sweep(search=(SearchSpace('adam', (1e-2, 1e-3)),)))


def test_the_study_sweep_has_the_required_grid(session_data_dir):
  """B = 1 ... 4000, >= 6 LRs per B, >= 2 seeds, momentum SGD and Adam, noise scale on."""
  sweep = load_sweep(REPO / 'configs' / 'cbs_mnist1d_cnn.py')
  trials = expand(sweep)
  table = pd.DataFrame([t.row() for t in trials])
  assert sorted(table['optimizer'].unique()) == ['adam', 'momentum']
  assert table['batch_size'].min() == 1 and table['batch_size'].max() == 4000
  per_b = table.groupby(['optimizer', 'batch_size'])
  assert (per_b['learning_rate'].nunique() >= 6).all() and (per_b['seed'].nunique() >= 2).all()
  assert sweep.noise_scale and sweep.stop_at_target and sweep.eval_growth <= 1.05
  for trial in trials:
    mbx.validate(trial.config)


# ------------------------------------------------------------ worker split
@pytest.mark.parametrize('pack', [False, True])
def test_worker_split_is_a_partition(session_data_dir, pack):
  trials = expand(_sweep(search=(SearchSpace('adam', (1e-3, 1e-2), num_learning_rates=3),
                                 SearchSpace('momentum', (1e-2, 1e-1), num_learning_rates=2)),
                         batch_sizes=(2, 4, 8), seeds=(0, 1)))
  ids = [t.id for t in trials]
  for num_workers in (1, 2, 3, 5, 40):
    shares = [[t.id for unit in runner.assign(trials, w, num_workers, pack) for t in unit]
              for w in range(num_workers)]
    flat = [i for share in shares for i in share]
    assert sorted(flat) == sorted(ids)  # every trial once: disjoint and complete
    assert max(map(len, shares)) - min(map(len, shares)) <= (12 if pack else 1)
    if pack:  # a pack group (same optimizer and batch size) stays on one worker
      for share in shares:
        keys = {(t.optimizer, t.batch_size) for t in trials if t.id in share}
        assert all(sum(1 for t in trials if (t.optimizer, t.batch_size) == k) ==
                   sum(1 for t in trials if t.id in share and (t.optimizer, t.batch_size) == k)
                   for k in keys)
  with pytest.raises(mbx.ConfigError, match='--worker'):
    runner.assign(trials, 2, 2)


def test_packing_stops_above_pack_max_batch_size(session_data_dir):
  """Above sweep.pack_max_batch_size every trial is its own unit; the grid is the same."""
  sweep = _sweep(search=(SearchSpace('adam', (1e-3, 1e-2), num_learning_rates=3),),
                 batch_sizes=(2, 4, 8), seeds=(0, 1), pack_max_batch_size=4)
  units = runner.assign(expand(sweep), 0, 1, True, sweep.pack_max_batch_size)
  assert sorted((u[0].batch_size, len(u)) for u in units) == [(2, 6), (4, 6)] + [(8, 1)] * 6
  assert grid.spec_hash(sweep) == grid.spec_hash(dataclasses.replace(sweep,
                                                                     pack_max_batch_size=None))
  with pytest.raises(mbx.ConfigError, match='sweep.pack_max_batch_size'):
    grid.validate(dataclasses.replace(sweep, pack_max_batch_size=0))


def test_trial_lock_excludes_a_second_holder(tmp_path, session_data_dir):
  trial = expand(_sweep())[0]
  with runner._locks(tmp_path, [trial]) as held:
    assert held == [trial]
    with runner._locks(tmp_path, [trial]) as second:
      assert second == []
  with runner._locks(tmp_path, [trial]) as again:  # released on exit
    assert again == [trial]


def test_growing_the_grid_keeps_the_ids_of_every_existing_trial(session_data_dir):
  """More learning rates (same spacing), seeds, batch sizes or optimizers only add trials."""
  sweep = _sweep(search=(SearchSpace('adam', (1e-2, 3e-2), num_learning_rates=2),),
                 budgets={16: '100 steps'})
  grown = [
      dataclasses.replace(sweep, search=(SearchSpace('adam', (1e-2, 9e-2),
                                                     num_learning_rates=3),)),
      dataclasses.replace(sweep, seeds=(0, 1)),
      dataclasses.replace(sweep, batch_sizes=(16, 64, 256), budgets={16: '100 steps',
                                                                     256: '50 steps'}),
      dataclasses.replace(sweep, search=(SearchSpace('sgd', (0.1, 1.0)), *sweep.search)),
  ]
  ids = {t.id for t in expand(sweep)}
  for other in grown:
    assert grid.trial_changing_field(sweep, other) is None, other
    assert ids < {t.id for t in expand(other)}, other
  # A quasi-random search with more points keeps the first ones (the same sequence).
  quasi = dataclasses.replace(sweep, search=(SearchSpace('adam', (1e-3, 1e-1), sampling=
                                                         'quasirandom', num_learning_rates=4),))
  more = dataclasses.replace(quasi, search=(dataclasses.replace(quasi.search[0],
                                                                num_learning_rates=7),))
  assert grid.trial_changing_field(quasi, more) is None
  assert {t.id for t in expand(quasi)} < {t.id for t in expand(more)}
  # Fewer values are allowed too (their trials stay on disk); so is how trials run.
  assert grid.trial_changing_field(grown[0], sweep) is None
  assert grid.trial_changing_field(sweep, dataclasses.replace(
      sweep, pack=True, submit={'time': '1:00:00'})) is None


@pytest.mark.parametrize('change, field, values', [
    (dict(target_value=0.6), 'sweep.target_value', '(0.5 -> 0.6)'),
    (dict(budget='200 steps'), 'sweep.budget', "('150 steps' -> '200 steps')"),
    (dict(budgets={64: '10 steps'}), 'sweep.budgets[64]', "('150 steps' -> '10 steps')"),
    (dict(eval_growth=1.1), 'sweep.eval_growth', '(1.05 -> 1.1)'),
    (dict(search=(SearchSpace('adam', (3e-3, 3e-2), num_learning_rates=2,
                              lr_scaling_power=0.5),)),
     'sweep.search[0].lr_scaling_power', '(0.0 -> 0.5)'),
    (dict(base=tiny_config(optim=dict(weight_decay=0.1))), 'optim.weight_decay', '(0.0 -> 0.1)'),
    (dict(base=tiny_config(model=dict(name='mlp'))), 'model.name', "('cnn1d' -> 'mlp')"),
])
def test_a_sweep_dir_refuses_a_change_to_its_trials_naming_the_field(tmp_path, session_data_dir,
                                                                       change, field, values):
  base = _sweep()
  if 'base' in change:  # the same train section as _sweep's base, another model or optimizer
    change['base'] = dataclasses.replace(change['base'], train=base.base.train)
  sweep = dataclasses.replace(base, **change)
  assert grid.trial_changing_field(base, sweep)[0] == field
  runner.write_spec(tmp_path, base, expand(base))
  before = (tmp_path / 'sweep.json').read_text()
  with pytest.raises(mbx.ConfigError) as error:
    runner.write_spec(tmp_path, sweep, expand(sweep))
  message = str(error.value)
  assert f'holds a sweep with a different {field} {values}' in message
  assert '--sweep-dir' in message and len(message.splitlines()) == 1
  assert (tmp_path / 'sweep.json').read_text() == before


def test_sweep_json_takes_the_grown_grid_and_keeps_the_earlier_ones(tmp_path, session_data_dir):
  sweep = _sweep()
  assert runner.write_spec(tmp_path, sweep, expand(sweep)) is None
  assert runner.write_spec(tmp_path, dataclasses.replace(sweep, pack=True),
                           expand(sweep)) is None  # the same grid
  grown = dataclasses.replace(sweep, seeds=(0, 1))
  previous = runner.write_spec(tmp_path, grown, expand(grown))
  assert previous['sweep']['seeds'] == [0]
  spec = json.loads((tmp_path / 'sweep.json').read_text())
  assert spec['sweep']['seeds'] == [0, 1] and len(spec['trials']) == len(expand(grown))
  [earlier] = spec['history']
  assert earlier['grid']['seeds'] == [0] and earlier['num_trials'] == len(expand(sweep))
  assert earlier['spec_hash'] == grid.spec_hash(sweep) and earlier['replaced'] == spec['written']
  assert runner.load_spec(tmp_path)[0] == grown
  runner.write_spec(tmp_path, sweep, expand(sweep))  # and back: the history grows
  assert [h['grid']['seeds'] for h in json.loads(
      (tmp_path / 'sweep.json').read_text())['history']] == [[0], [0, 1]]


def test_a_target_the_task_does_not_declare_fails_before_anything_is_written(
    tmp_path, session_data_dir):
  for metric, fragments in [
      ('eval_bleu', ["sweep.target_metric='eval_bleu'", "task 'classification'",
                     'allowed: eval_loss, eval_accuracy, eval_error']),
      ('accuracy', ["sweep.target_metric='accuracy'", 'allowed: eval_loss']),
      ('train_accuracy', ["sweep.target_metric='train_accuracy'", 'train.eval_on_train=true',
                          'eval_accuracy'])]:
    with pytest.raises(mbx.ConfigError) as error:
      runner.run_sweep(_sweep(target_metric=metric), tmp_path / 'sweep', log=lambda _: None)
    assert len(str(error.value).splitlines()) == 1
    for fragment in fragments:
      assert fragment in str(error.value)
    assert not (tmp_path / 'sweep').exists()
  with pytest.raises(mbx.ConfigError, match="data.eval_split='nope'"):  # a split of no data
    runner.run_sweep(_sweep(base=tiny_config(data=dict(eval_split='nope'))),
                     tmp_path / 'sweep', log=lambda _: None)
  assert not (tmp_path / 'sweep').exists()
  on_train = _sweep(target_metric='train_accuracy',
                    base=tiny_config(train=dict(eval_on_train=True)))
  grid.validate(on_train)  # read from the train split, which these trials evaluate
  with pytest.raises(mbx.ConfigError, match="allowed: eval_loss, eval_rmse, train_loss"):
    grid.validate(_sweep(base=tiny_config(task=dict(name='regression'),
                                          train=dict(eval_on_train=True))))


# ------------------------------------------------------- steps to target
def test_first_crossing_brackets_the_target():
  steps, values = [0, 1, 2, 4, 8], [0.1, 0.3, 0.45, 0.7, 0.9]
  assert stt.first_crossing(steps, values, 0.5, 'eval_accuracy') == (3, 4)
  assert stt.first_crossing(steps, [3.0, 2.0, 1.0, 0.5, 0.2], 0.4, 'eval_loss') == (5, 8)
  assert stt.first_crossing(steps, values, 0.95, 'eval_accuracy') is None
  assert stt.first_crossing([0, 5], [float('nan'), 0.9], 0.5, 'eval_accuracy') == (1, 5)


@pytest.mark.parametrize('growth', [1.05, 1.1])
def test_geometric_evaluations_bound_the_steps_to_target_error(growth):
  """With the plan's real evaluation steps, reported / true - 1 < growth - 1 for every
  true first step S* (the docstring's bound), and it is exact below ~20 steps."""
  config = tiny_config(train=dict(duration='20000 steps', eval_every='1000 epochs',
                                  eval_growth=growth))
  evals = np.array(sorted(make_plan(config, 1, 4000).eval_steps))
  true = np.arange(1, 20001)
  reported = evals[np.searchsorted(evals, true)]  # first evaluation at or after S*
  error = reported / true - 1
  assert error.max() < stt.max_relative_error(growth) == pytest.approx(growth - 1)
  assert np.all(error[true < 1 / (growth - 1)] == 0)
  assert len(evals) < 2.5 * math.log(20000) / math.log(growth)  # and few evaluations


# ------------------------------------------------- end to end, in process
@pytest.fixture(scope='module')
def small_sweep(tmp_path_factory, session_data_dir):
  """Adam (2 LRs) and SGD (a vanishing and an exploding LR) at B = 32."""
  sweep = _sweep(search=(SearchSpace('adam', (1e-2, 3e-2), num_learning_rates=2),
                         SearchSpace('sgd', (1e-7, 1e4), num_learning_rates=2)),
                 batch_sizes=(32,), noise_scale=True)
  sweep_dir = tmp_path_factory.mktemp('sweep')
  # Packed: trials sharing a pack key (optimizer, batch size) go through train_packed.
  progress = runner.run_sweep(sweep, sweep_dir, pack=True, log=lambda _: None)
  return sweep, sweep_dir, progress


@pytest.mark.slow
def test_sweep_records_every_trial_and_outcome(small_sweep):
  sweep, sweep_dir, progress = small_sweep
  trials = expand(sweep)
  assert sorted(progress.trained) == sorted(t.id for t in trials) and not progress.failed
  table = pd.read_csv(sweep_dir / 'trials.csv')
  assert sorted(table['trial_id']) == sorted(t.id for t in trials)
  assert sorted(p.name for p in (sweep_dir / 'trials').iterdir()) == sorted(table['trial_id'])
  assert json.loads((sweep_dir / 'sweep.json').read_text())['sweep']['seeds'] == [0]
  exploding = table[(table['optimizer'] == 'sgd') & (table['learning_rate'] == 1e4)]
  vanishing = table[(table['optimizer'] == 'sgd') & (table['learning_rate'] == 1e-7)]
  # Diverged trials are infeasible, a recorded outcome; a vanishing LR never gets there.
  assert list(exploding['outcome']) == ['infeasible'] and list(exploding['status']) == ['diverged']
  assert list(vanishing['outcome']) == ['not_reached'] and list(vanishing['steps']) == [150]
  assert vanishing['steps_to_target'].isna().all()
  adam = table[table['optimizer'] == 'adam']
  assert (adam['outcome'] == 'reached').any()
  for _, row in adam[adam['outcome'] == 'reached'].iterrows():
    run = mbx.load_run(sweep_dir / row['run_dir'])
    assert row['steps_to_target'] == run.status['steps_to_target'] == run.status['step']
    assert row['examples_to_target'] == row['steps_to_target'] * row['batch_size']
    assert row['steps_to_target_lower'] <= row['steps_to_target']
    assert row['steps_to_target'] / row['steps_to_target_lower'] - 1 < 0.05 + 1e-9
    assert row['best_metric'] >= 0.5 and row['wall_time'] > 0
    assert np.isfinite(row['b_simple']) and row['b_simple'] > 0  # logged and summarised


@pytest.mark.slow
def test_rerunning_a_finished_sweep_trains_nothing(small_sweep):
  sweep, sweep_dir, _ = small_sweep
  before = (sweep_dir / 'trials.csv').read_text()
  progress = runner.run_sweep(sweep, sweep_dir, log=lambda _: None)
  assert progress.trained == [] and len(progress.skipped) == len(expand(sweep))
  assert (sweep_dir / 'trials.csv').read_text() == before
  assert len(runner.load_table(sweep_dir)) == len(expand(sweep))


@pytest.mark.slow
def test_a_grown_sweep_trains_only_its_new_trials_and_analyses_all(tmp_path, monkeypatch):
  """2 learning rates, then a third (same spacing) and a second seed: the 2 finished trials
  are reused untouched, the 4 new ones train, and the table and the analysis hold all 6."""
  trained = []
  real_train = runner.train

  def counting_train(config, workdir, **kwargs):
    trained.append(pathlib.Path(workdir).name)
    return real_train(config, workdir, **kwargs)

  monkeypatch.setattr(runner, 'train', counting_train)
  sweep = _sweep(search=(SearchSpace('adam', (1e-2, 3e-2), num_learning_rates=2),),
                 batch_sizes=(16,), budget='20 steps', target_value=0.15)
  sweep_dir = tmp_path / 'sweep'
  first = runner.run_sweep(sweep, sweep_dir, log=lambda _: None)
  old_ids = sorted(t.id for t in expand(sweep))
  assert sorted(trained) == sorted(first.trained) == old_ids
  files = [runner.trial_dir(sweep_dir, i) / name for i in old_ids
           for name in ('status.json', 'eval_metrics.jsonl', 'config.json')]
  stamps = {f: f.stat().st_mtime_ns for f in files}

  grown = dataclasses.replace(
      sweep, search=(SearchSpace('adam', (1e-2, 9e-2), num_learning_rates=3),), seeds=(0, 1))
  lines = []
  trained.clear()
  second = runner.run_sweep(grown, sweep_dir, log=lines.append)
  new_ids = sorted(t.id for t in expand(grown))
  assert len(new_ids) == 6 and set(old_ids) < set(new_ids)
  assert sorted(trained) == sorted(second.trained) == sorted(set(new_ids) - set(old_ids))
  assert sorted(second.skipped) == old_ids and not second.failed
  assert {f: f.stat().st_mtime_ns for f in files} == stamps  # untouched
  assert any('the grid changed (2 -> 6 trials); 2 of them finished already' in line
             for line in lines), lines

  table = runner.load_table(sweep_dir)
  assert sorted(table['trial_id']) == new_ids and set(table['status']) <= {'done', 'diverged'}
  assert sorted(table['learning_rate'].unique()) == pytest.approx([0.01, 0.03, 0.09])
  per_b = critical_batch.analyze_sweep(sweep_dir, num_samples=20).per_batch_size
  assert per_b['num_trials'].sum() == 6
  assert (per_b[['num_reached', 'num_not_reached', 'num_infeasible']].sum(axis=1) == 6).all()
  spec = json.loads((sweep_dir / 'sweep.json').read_text())
  assert [h['grid']['seeds'] for h in spec['history']] == [[0]]
  doc = report.Document(files_dir=tmp_path / 'report_files')
  report._what_was_run(doc, sweep_dir, table, spec)  # pylint: disable=protected-access
  assert f'grown from the grid {grid.spec_hash(sweep)} (2 trials' in doc.md_parts[-1]

  # Shrinking back: nothing trains, the earlier trials stay on disk, the table is the grid.
  trained.clear()
  lines.clear()
  runner.run_sweep(sweep, sweep_dir, log=lines.append)
  assert trained == [] and sorted(runner.load_table(sweep_dir)['trial_id']) == old_ids
  assert any('4 of the earlier grid stay in trials/ but leave trials.csv' in line
             for line in lines), lines
  assert sorted(p.name for p in (sweep_dir / 'trials').iterdir()) == new_ids


# ----------------------------------------------- killed with SIGKILL, resumed
KILL_SWEEP = '''
import mbx
from mbx.sweep import SearchSpace, SweepConfig

def get_sweep():
  base = mbx.Config(optim=mbx.OptimConfig(name='adam'), train=mbx.TrainConfig(
      log_every='100 steps', eval_every='1000 epochs', checkpoint_every='200 steps'))
  return SweepConfig(base=base, search=(SearchSpace('adam', (1e-3, 1e-2),
                                                    num_learning_rates=2),),
                     batch_sizes=(2, 8, 32), seeds=(0,), budget='1200 steps',
                     target_value=0.99, name='kill')  # never reached: every trial runs on
'''


def _statuses(sweep_dir: pathlib.Path) -> dict[str, str]:
  trials = sweep_dir / 'trials'
  return {d.name: runner.read_status(d).get('status', 'pending')
          for d in (trials.iterdir() if trials.exists() else [])}


def _mbx_sweep(config: pathlib.Path, sweep_dir: pathlib.Path, *extra: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.Popen([sys.executable, '-m', 'mbx.cli', 'sweep', '--config', str(config),
                           '--sweep-dir', str(sweep_dir), *extra], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_sweep_resumes_with_no_duplicate_or_missing_trial(tmp_path, session_data_dir):
  """SIGKILL `mbx sweep` while a trial is mid-run (with a checkpoint) after others finished;
  two concurrent workers then complete it: exactly the grid's trials, once each."""
  config = tmp_path / 'kill_sweep.py'
  config.write_text(textwrap.dedent(KILL_SWEEP))
  sweep_dir = tmp_path / 'sweep'
  process = _mbx_sweep(config, sweep_dir)
  deadline, killed_mid_trial = time.time() + 240, False
  while time.time() < deadline and process.poll() is None:
    statuses = _statuses(sweep_dir)
    running = [t for t, s in statuses.items() if s == 'running' and any(
        p.name.isdigit() for p in (sweep_dir / 'trials' / t / 'checkpoints').glob('*'))]
    if 'done' in statuses.values() and running:
      process.send_signal(signal.SIGKILL)
      killed_mid_trial = True
      break
    time.sleep(0.01)
  process.wait(timeout=60)
  assert killed_mid_trial, f'the sweep ended before it could be killed:\n{process.stdout.read()}'
  assert process.returncode == -signal.SIGKILL
  interrupted = _statuses(sweep_dir)
  assert 'running' in interrupted.values() and len(interrupted) < 6

  workers = [_mbx_sweep(config, sweep_dir, '--worker', str(w), '--num-workers', '2')
             for w in range(2)]
  for worker in workers:
    output = worker.communicate(timeout=300)[0]
    assert worker.returncode == 0, output

  expected = {t.id for t in expand(load_sweep(config))}
  table = pd.read_csv(sweep_dir / 'trials.csv')
  assert len(table) == len(expected) == 6 and set(table['trial_id']) == expected
  assert set(_statuses(sweep_dir)) == expected
  assert set(table['status']) == {'done'} and set(table['outcome']) == {'not_reached'}
  for trial_id in expected:
    run = mbx.load_run(sweep_dir / 'trials' / trial_id)
    assert run.status['step'] == 1200
    for frame in (run.eval_metrics, run.train_metrics):  # no row written twice
      assert frame['step'].is_unique and frame['step'].is_monotonic_increasing


# ------------------------------------------------ job array through submitit
SUBMIT_SWEEP = '''
import mbx
from mbx.sweep import SearchSpace, SweepConfig

def get_sweep():
  base = mbx.Config(model=mbx.ModelConfig(name='mlp'), optim=mbx.OptimConfig(name='adam'),
                    train=mbx.TrainConfig(log_every='20 steps', eval_every='40 steps',
                                          checkpoint_every='40 steps'))
  return SweepConfig(base=base, search=(SearchSpace('adam', (1e-3, 1e-2),
                                                    num_learning_rates=2),),
                     batch_sizes=(16, 64), seeds=(0,), budget='80 steps', target_value=0.3,
                     name='submitted', submit={'time': '0:10:00', 'partition': 'unused-here'})
'''


@pytest.mark.slow
def test_a_sweep_submitted_as_a_job_array_through_submitit_local_executor_is_complete(
    tmp_path, session_data_dir):
  """`mbx sweep --submit local --num-workers 2`: submitit's local executor runs the same
  job array a SLURM cluster would; the table holds every trial of the grid exactly once."""
  config = tmp_path / 'submit_sweep.py'
  config.write_text(textwrap.dedent(SUBMIT_SWEEP))
  sweep_dir = tmp_path / 'sweep'
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-m', 'mbx.cli', 'sweep', '--config', str(config),
                           '--sweep-dir', str(sweep_dir), '--submit', 'local',
                           '--num-workers', '2'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'submitted 2 worker job(s) to local' in result.stdout
  expected = {t.id for t in expand(load_sweep(config))}
  table = pd.read_csv(sweep_dir / 'trials.csv')
  assert len(table) == len(expected) == 4 and table['trial_id'].is_unique
  assert set(table['trial_id']) == expected and set(table['status']) == {'done'}
  logs = list((sweep_dir / 'submitit').rglob('*_log.err'))
  assert len(logs) == 2  # one per array task; each trained its own share, none twice
  worker_lines = [line for log in logs for line in log.read_text().splitlines()
                  if line.startswith('[worker ')]
  assert sorted(line.split()[3].rstrip(':') for line in worker_lines) == sorted(expected)
  assert {line.split()[1] for line in worker_lines} == {'0/2]', '1/2]'}


def test_submit_options_are_checked_before_anything_is_submitted(tmp_path):
  from mbx.sweep import submit
  with pytest.raises(mbx.ConfigError, match='unknown field.*gpus; allowed'):
    submit.SubmitOptions.from_mapping({'gpus': 1}, 'sweep.submit')
  with pytest.raises(mbx.ConfigError, match="time='4 hours'"):
    submit.SubmitOptions.from_mapping({'time': '4 hours'}, 'sweep.submit')
  assert submit.SubmitOptions(time='1-02:30:00').timeout_minutes() == 1590
  parameters = submit.SubmitOptions(partition='gpu', gpus_per_task=1,
                                    array_parallelism=4).executor_parameters('mbx-x')
  assert parameters['slurm_partition'] == 'gpu' and parameters['gpus_per_node'] == 1
  assert parameters['slurm_array_parallelism'] == 4 and parameters['timeout_min'] == 240


# ------------------------------------------------------- JSON and YAML grids
GRID_YAML = '''
# the SUBMIT_SWEEP grid as plain data
name: submitted
base:
  model: {name: mlp}
  optim: {name: adam}
  train: {log_every: 20 steps, eval_every: 40 steps, checkpoint_every: 40 steps}
search:
  - {optimizer: adam, learning_rate: [1e-3, 1e-2], num_learning_rates: 2}
batch_sizes: [16, 64]
seeds: [0]
budget: 80 steps
target_value: 0.3
'''


def test_a_yaml_or_json_grid_is_the_same_sweep_as_its_python_config(tmp_path):
  python_config = tmp_path / 'grid.py'
  python_config.write_text(textwrap.dedent(SUBMIT_SWEEP))
  reference = load_sweep(python_config)
  yaml_config = tmp_path / 'grid.yaml'
  yaml_config.write_text(GRID_YAML)
  json_config = tmp_path / 'grid.json'
  json_config.write_text(json.dumps(grid.to_dict(reference)))
  for path in (yaml_config, json_config):
    sweep = load_sweep(path)
    assert [t.id for t in expand(sweep)] == [t.id for t in expand(reference)]
    assert grid.spec_hash(sweep) == grid.spec_hash(reference)
  assert load_sweep(yaml_config, ['sweep.seeds=0,1']).seeds == (0, 1)


def test_mbx_sweep_refuses_a_changed_base_field_in_one_line(tmp_path):
  """Through the command line: exit 2, one line naming the field, nothing written."""
  config = tmp_path / 'grid.yaml'
  config.write_text(GRID_YAML)
  sweep, sweep_dir = load_sweep(config), tmp_path / 'sweep'
  runner.write_spec(sweep_dir, sweep, expand(sweep))
  before = (sweep_dir / 'sweep.json').read_text()
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  command = [sys.executable, '-m', 'mbx.cli', 'sweep', '--config', str(config), '--sweep-dir',
             str(sweep_dir)]
  result = subprocess.run([*command, 'optim.weight_decay=0.1'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert_one_line_error(result, f'mbx sweep: error: {sweep_dir} holds a sweep with a '
                        'different optim.weight_decay (0.0 -> 0.1)', '--sweep-dir')
  assert (sweep_dir / 'sweep.json').read_text() == before
  assert sorted(p.name for p in sweep_dir.iterdir()) == ['locks', 'sweep.json']


@pytest.mark.parametrize('text, message', [
    ('search: []\n', '`search` must list at least one'),
    ('serch: []\n', "unknown sweep field 'serch'; did you mean search?"),
    ('lr: []\n', "unknown sweep field 'lr'; allowed: base, batch_sizes"),
    ('search:\n  - {optimizer: adam, learning_rate: [1e-3, 1e-2], lrs: 2}\n',
     "search\\[0\\]: unknown field 'lrs'"),
    ('search: [\n', 'not valid YAML'),
])
def test_a_bad_grid_file_fails_in_one_line(tmp_path, text, message):
  path = tmp_path / 'grid.yaml'
  path.write_text(text)
  with pytest.raises(mbx.ConfigError, match=message):
    load_sweep(path)


def test_a_grid_too_coarse_to_locate_an_optimum_is_warned_about():
  base = tiny_config()
  coarse = SweepConfig(base=base, search=(SearchSpace('adam', (1e-3, 3.2e-2),
                                                      num_learning_rates=2),), name='x')
  (line,) = grid.coarse_grid_warnings(coarse)
  assert line.startswith('sweep.search[0] (adam): 2 learning rate(s)') and '32x apart' in line
  fine = dataclasses.replace(coarse, search=(SearchSpace('adam', (1e-3, 3.2e-2),
                                                         num_learning_rates=6),))
  assert grid.coarse_grid_warnings(fine) == []  # 2x apart


def test_the_progress_line_says_when_a_finished_trial_missed_its_target():
  describe = runner._describe  # pylint: disable=protected-access
  assert describe({'status': 'done', 'step': 80}) == 'done, target not reached in 80 steps'
  assert describe({'status': 'done', 'step': 40, 'steps_to_target': 31}) == (
      'done, steps_to_target=31')
