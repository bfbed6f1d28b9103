"""Critical batch size: Shallue's S(B), McCandlish's fit with bootstrap CI, Zhang's 20% CBS,
Merrill's local CBS; on synthetic sweeps with known answers, and end to end."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mbx
from mbx import cli
from mbx.sweep import SearchSpace, SweepConfig, critical_batch as cb, expand, runner
from mbx.sweep.local_cbs import local_cbs, local_cbs_text
from mbx.training.records import write_json_atomic

from helpers import REPO, TRAINING_STACK, mbx_cli, tiny_config

POWERS = 2.0**np.arange(0, 13)


def _model(b, s_min=50.0, b_crit=200.0):
  return s_min * (1 + b_crit / np.asarray(b, dtype=float))


def synthetic_table(*, s_min=50.0, b_crit=200.0, seeds=(0, 1), noise=0.05, rng=None,
                    batch_sizes=(1, 4, 16, 64, 256, 1024, 4000)) -> pd.DataFrame:
  """A sweep table whose S(B) follows McCandlish's model exactly at the best LR.

  Per B, 5 LRs a factor 2 apart around lr* = 1e-3 min(B, B_crit); steps grow by
  (1 + 0.5 log2(lr/lr*)^2), lr = 4 lr* diverges, and trials past 5 S_true never
  reach the target.
  """
  rng = rng or np.random.default_rng(0)
  rows = []
  for b in batch_sizes:
    best = 1e-3 * min(b, b_crit)
    for k in (-2, -1, 0, 1, 2):
      lr = best * 2.0**k
      for seed in seeds:
        steps = _model(b, s_min, b_crit) * (1 + 0.5 * k**2) * np.exp(noise * rng.normal())
        outcome = 'infeasible' if k == 2 else ('reached' if steps < 5 * _model(
            b, s_min, b_crit) else 'not_reached')
        rows.append({'trial_id': f'b{b}-k{k}-s{seed}', 'optimizer': 'momentum',
                     'batch_size': b, 'learning_rate': lr, 'momentum': 0.9,
                     'effective_learning_rate': lr * 10, 'seed': seed,
                     'outcome': outcome, 'b_simple': 150.0 if b > 1 else np.nan,
                     'steps_to_target': round(steps) if outcome == 'reached' else pd.NA})
  table = pd.DataFrame(rows)
  table['steps_to_target'] = table['steps_to_target'].astype('Int64')
  return table


def test_fit_recovers_known_parameters():
  s_min, e_min = cb.fit_steps(POWERS, _model(POWERS, 50, 200))
  assert s_min == pytest.approx(50, rel=1e-6) and e_min == pytest.approx(50 * 200, rel=1e-6)
  rng = np.random.default_rng(1)
  noisy = _model(POWERS, 30, 1000) * np.exp(0.05 * rng.normal(size=len(POWERS)))
  fit = cb.fit_pareto(POWERS, noisy)
  assert fit.s_min == pytest.approx(30, rel=0.15) and fit.b_crit == pytest.approx(1000, rel=0.15)
  # The hyperbola (S/S_min - 1)(E/E_min - 1) = 1 holds along the fitted curve.
  s = fit.steps(POWERS)
  np.testing.assert_allclose((s / fit.s_min - 1) * (POWERS * s / fit.e_min - 1), 1, rtol=1e-9)


def test_bootstrap_interval_covers_the_truth():
  """90% intervals from 13-point curves with 15% log-normal scatter: over 40 synthetic
  sweeps, each of B_crit, S_min and E_min is covered about 90% of the time."""
  rng = np.random.default_rng(2)
  covered = {'b_crit': 0, 's_min': 0, 'e_min': 0}
  truth = {'b_crit': 200.0, 's_min': 50.0, 'e_min': 10_000.0}
  for i in range(40):
    steps = _model(POWERS) * np.exp(0.15 * rng.normal(size=len(POWERS)))
    fit = cb.fit_pareto(POWERS, steps, num_samples=1000, seed=i)
    for name in covered:
      low, high = getattr(fit, f'{name}_ci')
      assert low <= getattr(fit, name) <= high
      covered[name] += low <= truth[name] <= high
  for name, count in covered.items():
    assert 0.75 <= count / 40 <= 1.0, (name, count)


def test_zhang_cbs_on_synthetic_curves():
  """Exceeding linear scaling from B0 by 20% happens at B = 1.2 B0 + 0.2 B_crit."""
  dense = np.geomspace(1, 4096, 200)
  assert cb.zhang_cbs(dense, _model(dense, 50, 200)) == pytest.approx(1.2 + 40, rel=0.01)
  assert cb.zhang_cbs(POWERS, _model(POWERS, 50, 200)) == pytest.approx(41.2, rel=0.05)
  assert cb.zhang_cbs_of_fit(50, 50 * 200, 1) == pytest.approx(41.2)
  assert cb.zhang_cbs(POWERS, 1e5 / POWERS) == float('inf')  # perfect scaling throughout
  assert cb.zhang_cbs(POWERS, np.full(13, 40.0)) == pytest.approx(2 ** (np.log(1.2) /
                                                                         np.log(2)), rel=1e-6)
  assert np.isnan(cb.zhang_cbs([8], [10]))


def test_zhang_cbs_from_a_given_reference_batch():
  """B0 moves the 20% CBS. By hand: E = B S = 100, 100, 120, 160 at B = 1, 2, 4, 8, so from
  B0 = 1 or 2 the ratio reaches 1.2 exactly at B = 4; from B0 = 4 it goes 1 -> 4/3 between
  B = 4 and 8, crossing 1.2 at log-fraction log 1.2 / log(4/3). On McCandlish's curve
  E(B)/E(B0) = (B + B_crit)/(B0 + B_crit), so the CBS is 1.2 B0 + 0.2 B_crit: it grows with B0
  (Zhang et al. 2024 measure from the smallest batch: a larger B0 gives a larger CBS)."""
  b, s = [1, 2, 4, 8], [100, 50, 30, 20]
  assert cb.zhang_cbs(b, s) == cb.zhang_cbs(b, s, reference_batch=1) == pytest.approx(4.0)
  assert cb.zhang_cbs(b, s, reference_batch=2) == pytest.approx(4.0)
  assert cb.zhang_cbs(b, s, reference_batch=4) == pytest.approx(
      4 * 2 ** (math.log(1.2) / math.log(4 / 3)))  # 6.21
  assert math.isnan(cb.zhang_cbs(b, s, reference_batch=8))  # nothing above B0
  with pytest.raises(ValueError, match='reference_batch=3'):
    cb.zhang_cbs(b, s, reference_batch=3)
  dense = np.geomspace(1, 4096, 400)
  dense = np.unique(np.concatenate([dense, [16.0, 64.0]]))
  for b0, expected in ((1, 41.2), (16, 59.2), (64, 116.8)):
    assert cb.zhang_cbs(dense, _model(dense, 50, 200), reference_batch=b0) == pytest.approx(
        expected, rel=0.005)
    assert cb.zhang_cbs_of_fit(50, 50 * 200, b0) == pytest.approx(expected)


def test_the_analysis_takes_zhangs_reference_batch_and_refuses_one_it_cannot_use():
  table = synthetic_table(rng=np.random.default_rng(3))
  default = cb.analyze(table, num_samples=100).summary.iloc[0]
  per_b = cb.steps_to_result(table)
  # By default B0 is the smallest batch size, as before.
  assert default['zhang_reference_batch'] == 1 and default['zhang_cbs'] == cb.zhang_cbs(
      per_b['batch_size'], per_b['steps_to_target'])
  given = cb.analyze(table, num_samples=100, zhang_reference_batch=16).summary.iloc[0]
  assert given['zhang_reference_batch'] == 16
  assert given['zhang_cbs_fit'] == pytest.approx(1.2 * 16 + 0.2 * given['b_crit'])
  assert given['zhang_cbs'] == cb.zhang_cbs(per_b['batch_size'], per_b['steps_to_target'],
                                            reference_batch=16)
  assert given['zhang_cbs'] > default['zhang_cbs'] and given['b_crit'] == default['b_crit']
  with pytest.raises(mbx.ConfigError, match=r'^zhang_reference_batch=8: not a batch size of '
                     r'this sweep; allowed: 1, 4, 16, 64, 256, 1024, 4000 \(the measured'):
    cb.analyze(table, zhang_reference_batch=8)
  late = table['batch_size'] == 1024
  table.loc[late, 'outcome'] = 'not_reached'
  table.loc[late, 'steps_to_target'] = pd.NA
  with pytest.raises(mbx.ConfigError, match=r'^zhang_reference_batch=1024: momentum did not '
                     r'reach the target at B = 1024; allowed: 1, 4, 16, 64, 256, 4000 '):
    cb.analyze(table, zhang_reference_batch=1024)


def test_steps_to_result_is_the_minimum_over_the_search():
  """Seeds are averaged per search point; a point with a seed that missed does not count."""
  table = pd.DataFrame([
      # lr 0.1: both seeds reach -> mean 110; lr 0.2: one seed misses (lucky 50 ignored);
      # lr 0.4: diverged
      dict(optimizer='sgd', batch_size=8, learning_rate=0.1, seed=0, steps_to_target=100),
      dict(optimizer='sgd', batch_size=8, learning_rate=0.1, seed=1, steps_to_target=120),
      dict(optimizer='sgd', batch_size=8, learning_rate=0.2, seed=0, steps_to_target=50),
      dict(optimizer='sgd', batch_size=8, learning_rate=0.2, seed=1, steps_to_target=None),
      dict(optimizer='sgd', batch_size=8, learning_rate=0.4, seed=0, steps_to_target=None),
      dict(optimizer='sgd', batch_size=8, learning_rate=0.4, seed=1, steps_to_target=None),
      dict(optimizer='sgd', batch_size=16, learning_rate=0.1, seed=0, steps_to_target=None),
  ])
  table['outcome'] = ['reached', 'reached', 'reached', 'not_reached', 'infeasible',
                      'infeasible', 'incomplete']
  table['momentum'] = np.nan
  table['effective_learning_rate'] = table['learning_rate']
  table['b_simple'] = np.nan
  per_b = cb.steps_to_result(table).set_index('batch_size')
  assert per_b.loc[8, 'steps_to_target'] == 110 and per_b.loc[8, 'learning_rate'] == 0.1
  assert per_b.loc[8, 'examples_to_target'] == 880
  assert per_b.loc[8, 'seed_steps'] == (100.0, 120.0)
  assert (per_b.loc[8, 'num_reached'], per_b.loc[8, 'num_not_reached'],
          per_b.loc[8, 'num_infeasible']) == (3, 1, 2)
  assert per_b.loc[16, 'steps_to_target'] == np.inf and per_b.loc[16, 'num_incomplete'] == 1


@pytest.mark.parametrize('bootstrap', ['residuals', 'seeds'])
def test_analysis_of_a_synthetic_sweep(bootstrap):
  # One fixed draw (coverage as a rate is test_bootstrap_interval_covers_the_truth's job).
  table = synthetic_table(seeds=(0, 1, 2, 3), rng=np.random.default_rng(1))
  analysis = cb.analyze(table, num_samples=1000, bootstrap=bootstrap)
  per_b = analysis.per_batch_size.set_index('batch_size')
  for b in per_b.index:  # the best LR is the one the model puts the optimum at
    assert per_b.loc[b, 'learning_rate'] == pytest.approx(1e-3 * min(b, 200))
    assert per_b.loc[b, 'effective_learning_rate'] == pytest.approx(1e-2 * min(b, 200))
  row = analysis.summary.iloc[0]
  assert row['b_crit_lo'] <= 200 <= row['b_crit_hi']
  assert row['s_min_lo'] <= 50 <= row['s_min_hi']
  assert row['b_crit'] == pytest.approx(200, rel=0.2)
  assert 16 <= row['zhang_cbs'] <= 64  # the grid points around the true 41.2
  assert row['zhang_cbs_fit'] == pytest.approx(1.2 + 40, rel=0.25)
  assert row['b_simple_median'] == 150 and row['b_crit_over_b_simple'] == pytest.approx(
      row['b_crit'] / 150)


def _fake_sweep_dir(path, table: pd.DataFrame, *,
                    batch_sizes=(1, 4, 16, 64, 256, 1024, 4000), extra_logs=None) -> SweepConfig:
  """A sweep directory whose run directories hold the synthetic table's outcomes; each trial
  logs B_simple = 150 where it stops, and the columns `extra_logs(batch_size)` gives."""
  base = tiny_config(train=dict(log_every='10 steps', eval_every='1000 epochs'))
  sweep = SweepConfig(base=base, search=(SearchSpace('momentum', (1e-3, 1e-3 * 2**4),
                                                     num_learning_rates=5),),
                      batch_sizes=batch_sizes, seeds=(0, 1),
                      target_value=0.8, noise_scale=True, name='fake')
  trials = expand(sweep)
  runner.write_spec(path, sweep, trials)
  for trial, (_, row) in zip(trials, table.iterrows()):
    run_dir = runner.trial_dir(path, trial)
    run_dir.mkdir(parents=True)
    steps = row['steps_to_target']
    status = {'diverged' if row['outcome'] == 'infeasible' else 'done'}.pop()
    final = int(steps) if row['outcome'] == 'reached' else 1000
    evals = [{'step': s, 'examples_seen': s * trial.batch_size,
              'eval_accuracy': 0.9 if row['outcome'] == 'reached' and s >= final else 0.5}
             for s in sorted({0, max(final - 1, 0), final})]
    logs = [{'step': final, 'grad_sq_estimate': 1.0, 'trace_estimate': 150.0, 'b_simple': 150.0,
             **(extra_logs(trial.batch_size) if extra_logs else {})}]
    (run_dir / 'eval_metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in evals))
    (run_dir / 'train_metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in logs))
    write_json_atomic(run_dir / 'status.json', {'status': status, 'step': final,
                                                'wall_time': 1.0})
  return sweep


def _write_run(run_dir, logs, evals, status='done') -> None:
  run_dir.mkdir(parents=True)
  (run_dir / 'eval_metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in evals))
  (run_dir / 'train_metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in logs))
  write_json_atomic(run_dir / 'status.json', {'status': status, 'step': evals[-1]['step']})


def test_each_logged_estimator_is_run_averaged_to_the_target_per_trial(tmp_path):
  """b_noise runs on some measuring steps only (`curvature_steps`: the fraction of each
  interval); rows after the target are left out, and a ratio over |G|² <= 0 is no number."""
  evals = [{'step': s, 'examples_seen': 8 * s, 'eval_accuracy': a}
           for s, a in ((10, 0.5), (20, 0.5), (30, 0.9), (40, 0.9))]
  logs = [{'step': 10, 'grad_sq_estimate': 2.0, 'trace_estimate': 100.0,
           'curvature_grad_estimate': 1.0, 'curvature_trace_estimate': 30.0,
           'curvature_steps': 0.5},
          {'step': 20, 'grad_sq_estimate': 4.0, 'trace_estimate': 200.0},
          {'step': 30, 'grad_sq_estimate': 1.0, 'trace_estimate': 100.0, 'b_simple': 100.0,
           'curvature_grad_estimate': 3.0, 'curvature_trace_estimate': 90.0,
           'curvature_steps': 0.25},
          {'step': 40, 'grad_sq_estimate': -100.0, 'trace_estimate': 10.0, 'b_simple': -0.1,
           'curvature_grad_estimate': -50.0, 'curvature_trace_estimate': 1.0,
           'curvature_steps': 1.0}]
  _write_run(tmp_path / 'a', logs, evals)
  row = runner.trial_result(tmp_path / 'a', 'eval_accuracy', 0.8)
  assert row['steps_to_target'] == 30
  # Each estimate averaged over the steps it ran on, up to step 30, then divided:
  # b_simple = (10·100 + 10·200 + 10·100) / (10·2 + 10·4 + 10·1); b_noise from the rows that
  # carry it (intervals 10 and 20 long), (10·30 + 20·90) / (10·1 + 20·3).
  assert row['b_simple'] == pytest.approx(4000 / 70) and row['b_simple_reason'] == ''
  assert row['b_noise'] == pytest.approx(2100 / 70) and row['b_noise_reason'] == ''
  assert row['b_simple_final'] == -0.1  # the last interval's, as before
  assert 'b_simple_preconditioned' not in row and 'b_noise_preconditioned' not in row
  # Past the target the gradient estimate is negative: no number, and why.
  row = runner.trial_result(tmp_path / 'a', 'eval_accuracy', 0.95)
  assert row['steps_to_target'] is None and math.isnan(row['b_simple'])
  assert row['b_simple_reason'].startswith('the |G|² estimate averages to')
  # An estimator whose weight is 0 on every row ran on no step.
  zero = [dict(r, curvature_steps=0.0) if 'curvature_steps' in r else r for r in logs]
  _write_run(tmp_path / 'b', zero, evals)
  row = runner.trial_result(tmp_path / 'b', 'eval_accuracy', 0.8)
  assert math.isnan(row['b_noise']) and row['b_noise_reason'] == 'b_noise was not measured up to step 30'


def test_the_trial_table_has_the_new_estimator_columns_only_when_logged(tmp_path):
  table = synthetic_table(batch_sizes=(4, 16))
  _fake_sweep_dir(tmp_path / 'plain', table, batch_sizes=(4, 16))
  plain = runner.trial_table(tmp_path / 'plain')
  assert list(plain.columns) == [*runner.TABLE_COLUMNS, 'b_simple_reason']
  curvature = {'curvature_grad_estimate': 2.0, 'curvature_trace_estimate': 60.0,
               'curvature_steps': 0.5}
  _fake_sweep_dir(tmp_path / 'hessian', table, batch_sizes=(4, 16),
                  extra_logs=lambda b: curvature)
  with_b_noise = runner.trial_table(tmp_path / 'hessian')
  assert list(with_b_noise.columns) == [*runner.TABLE_COLUMNS, 'b_simple_reason', 'b_noise',
                                        'b_noise_reason']
  assert np.allclose(with_b_noise['b_noise'], 30.0)
  written = runner.load_table(tmp_path / 'hessian')
  reread = runner.load_table(tmp_path / 'hessian', refresh=False)
  assert list(reread.columns) == list(written.columns)
  assert (reread['b_noise_reason'] == '').all()


def test_the_trial_table_is_built_without_jax(tmp_path):
  """A finished sweep's table (and its noise-scale columns) is read by a fresh process that
  never loads JAX: what `mbx analyze cbs` and a notebook do."""
  _fake_sweep_dir(tmp_path, synthetic_table(batch_sizes=(4, 16)), batch_sizes=(4, 16))
  code = ('import sys\n'
          'from mbx.sweep import trials\n'
          f'table = trials.trial_table({str(tmp_path)!r})\n'
          'print(len(table), round(float(table["b_simple"].median())), '
          '[m for m in sys.modules if m.split(".")[0] in %r])' % (TRAINING_STACK,))
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['20', '150', '[]'], result.stdout


def test_analyze_cbs_command_writes_tables_and_figures(tmp_path, capsys, session_data_dir):
  table = synthetic_table(rng=np.random.default_rng(4))
  _fake_sweep_dir(tmp_path, table)
  loaded = runner.load_table(tmp_path)
  assert len(loaded) == 70 and loaded['trial_id'].is_unique
  assert (loaded['outcome'].value_counts().to_dict() ==
          table['outcome'].value_counts().to_dict())
  assert np.allclose(loaded['b_simple'], 150.0)
  cli.main(['analyze', 'cbs', str(tmp_path), '--bootstrap', '300'])
  printed = capsys.readouterr().out
  assert 'B_crit' in printed and 'Zhang' in printed and 'B_simple' in printed
  out = tmp_path / 'analysis'
  summary = pd.read_csv(out / 'cbs_summary.csv').iloc[0]
  assert summary['b_crit_lo'] <= 200 <= summary['b_crit_hi']
  for name in ('steps_vs_batch_size.png', 'pareto.png', 'best_learning_rate.png',
               'lr_heatmap.png', 'per_batch_size.csv'):
    assert (out / name).stat().st_size > 0


def _negative_below_noise(batch_sizes):
  """Logs in which |G|² averages to -0.5 at `batch_sizes`: B_simple = 150 / -0.5 = -300."""
  return lambda b: {'grad_sq_estimate': -0.5} if b in batch_sizes else {}


@pytest.mark.parametrize('below_noise', [(4, 16), (1, 4, 16, 64, 256, 1024, 4000)])
def test_a_negative_noise_scale_is_not_measurable_here_never_a_number(
    tmp_path, capsys, session_data_dir, below_noise):
  """A run average over |G|² <= 0 is -300 as a ratio; it is reported with its reason, the
  median runs over the measurable batch sizes only, and with none there is no median."""
  _fake_sweep_dir(tmp_path, synthetic_table(rng=np.random.default_rng(4)),
                  extra_logs=_negative_below_noise(below_noise))
  cli.main(['analyze', 'cbs', str(tmp_path), '--bootstrap', '100', '--no-figures'])
  printed = capsys.readouterr().out
  assert '-300' not in printed and '-3e+02' not in printed
  reason = ('not measurable here (the |G|² estimate averages to -0.5 ≤ 0: the gradient is '
            'below the noise at this batch (too few groups or steps to resolve it))')
  per_b = printed.split('momentum: B_crit')[0]
  assert per_b.count(reason) == len(below_noise)
  summary = pd.read_csv(tmp_path / 'analysis' / 'cbs_summary.csv').iloc[0]
  definitions = pd.read_csv(tmp_path / 'analysis' / 'cbs_definitions.csv').iloc[0]
  noise = definitions['B_simple, run-averaged: median [min, max] over B']
  assert f'B_simple, run-averaged: median [min, max] over B: {noise}' in printed
  assert summary['b_simple_not_measurable'] == len(below_noise)
  sizes = ', '.join(map(str, below_noise))
  if len(below_noise) == 7:
    assert math.isnan(summary['b_simple_median']) and 'b_crit_over_b_simple' not in summary
    assert noise.startswith(f'not measurable here (at B = {sizes}: the |G|² estimate averages '
                            'to -0.5 ≤ 0: ')
    assert definitions['B_crit / B_simple'] == '—'
  else:
    assert summary['b_simple_median'] == 150 and summary['b_simple_measurable'] == 5
    assert noise.startswith(f'150 [150, 150] over 5 B; not measurable here (at B = {sizes}: '
                            'the |G|² estimate averages to -0.5 ≤ 0: ')
  per_b_csv = pd.read_csv(tmp_path / 'analysis' / 'per_batch_size.csv')
  negative = per_b_csv['batch_size'].isin(below_noise)
  assert per_b_csv.loc[negative, 'b_simple'].isna().all()
  assert per_b_csv.loc[negative, 'b_simple_reason'].str.startswith('the |G|² estimate').all()


def test_analyze_cbs_sets_every_definition_side_by_side_with_zhangs_b0(
    tmp_path, capsys, session_data_dir):
  curvature = {'curvature_grad_estimate': 2.0, 'curvature_trace_estimate': 60.0,
               'curvature_steps': 0.5}
  _fake_sweep_dir(tmp_path, synthetic_table(rng=np.random.default_rng(4)),
                  extra_logs=lambda b: curvature)
  cli.main(['analyze', 'cbs', str(tmp_path), '--bootstrap', '100', '--no-figures',
            '--zhang-b0', '16'])
  printed = capsys.readouterr().out
  definitions = pd.read_csv(tmp_path / 'analysis' / 'cbs_definitions.csv')
  assert list(definitions.columns) == [
      'optimizer', 'target', 'McCandlish B_crit [90% CI]', 'Zhang 20% CBS (B0 = 16)',
      'B_simple, run-averaged: median [min, max] over B', 'B_crit / B_simple',
      'B_noise, run-averaged: median [min, max] over B', 'B_crit / B_noise']
  row = definitions.iloc[0]
  summary = pd.read_csv(tmp_path / 'analysis' / 'cbs_summary.csv').iloc[0]
  assert row['McCandlish B_crit [90% CI]'] == (
      f'{summary["b_crit"]:.3g} [{summary["b_crit_lo"]:.3g}, {summary["b_crit_hi"]:.3g}]')
  assert row['Zhang 20% CBS (B0 = 16)'] == (
      f'{summary["zhang_cbs"]:.3g}; on the fit {summary["zhang_cbs_fit"]:.3g}')
  assert row['B_noise, run-averaged: median [min, max] over B'] == '30 [30, 30] over 7 B'
  assert float(row['B_crit / B_noise']) == pytest.approx(summary['b_crit'] / 30, rel=1e-2)
  for column in definitions.columns[2:]:
    assert f'    {column}: {row[column]}' in printed


def test_mbx_analyze_cbs_loads_no_training_stack(tmp_path, session_data_dir):
  _fake_sweep_dir(tmp_path, synthetic_table(rng=np.random.default_rng(4)))
  result = mbx_cli('analyze', 'cbs', str(tmp_path), '--bootstrap', '50', '--no-figures',
                   '--zhang-b0', '4')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Zhang 20% CBS (B0 = 4)' in result.stdout and result.imported == []


@pytest.mark.parametrize('b0, message', [
    ('8', '--zhang-b0=8: not a batch size of this sweep; allowed: 1, 4, 16, 64, 256, 1024 (the '
          'measured batch sizes at which every optimizer reached the target)'),
    ('4000', '--zhang-b0=4000: momentum did not reach the target at B = 4000; allowed: 1, 4, '
             '16, 64, 256, 1024 (the measured')])
def test_a_bad_zhang_b0_stops_in_one_line_before_anything_is_written(
    tmp_path, capsys, session_data_dir, b0, message):
  table = synthetic_table(rng=np.random.default_rng(4))
  late = table['batch_size'] == 4000
  table.loc[late, 'outcome'] = 'not_reached'
  table.loc[late, 'steps_to_target'] = pd.NA
  _fake_sweep_dir(tmp_path, table)
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*'))
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['analyze', 'cbs', str(tmp_path), '--zhang-b0', b0])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'mbx analyze: error: {message}'), lines
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*')) == before


def test_analyze_cbs_warns_of_an_edge_of_search_best_lr_and_reports_the_fit_sensitivity(
    tmp_path, capsys, session_data_dir):
  table = synthetic_table(rng=np.random.default_rng(4))
  # At B = 64 the smallest LR becomes the fastest: the best LR sits at the edge of its search.
  edge = (table['batch_size'] == 64) & (table['learning_rate'] == table.loc[
      table['batch_size'] == 64, 'learning_rate'].min())
  table.loc[edge, 'steps_to_target'] = (table.loc[edge, 'steps_to_target'] // 3).astype('Int64')
  table.loc[edge, 'outcome'] = 'reached'
  out_of_budget = (table['batch_size'] == 4000) & (table['learning_rate'] == table.loc[
      table['batch_size'] == 4000, 'learning_rate'].min())
  table.loc[out_of_budget, 'outcome'] = 'not_reached'
  table.loc[out_of_budget, 'steps_to_target'] = pd.NA
  analysis = cb.analyze(table, num_samples=200)
  assert any('edge of its search at B = 64' in w and 'trains only the new trials' in w
             for w in analysis.warnings), analysis.warnings
  assert any('ran out of budget' in w for w in analysis.warnings)
  row = analysis.summary.iloc[0]
  assert row['b_crit_leave_out_min'] <= row['b_crit'] <= row['b_crit_leave_out_max']
  assert np.isfinite(row['b_crit_without_largest']) and 0 <= row['lack_of_fit_p'] <= 1
  subsets = analysis.sensitivity['momentum']['subset'].tolist()
  assert subsets[0] == 'all' and 'without B=64' in subsets and 'without the 2 largest' in subsets
  # The command prints the warnings and stores them with the sensitivity table.
  _fake_sweep_dir(tmp_path, table)
  cli.main(['analyze', 'cbs', str(tmp_path), '--bootstrap', '200', '--no-figures'])
  printed = capsys.readouterr().out
  assert 'warning: momentum: the best learning rate is at the edge of its search at B = 64' in printed
  assert 'B_crit with batch sizes left out' in printed
  out = tmp_path / 'analysis'
  assert 'edge of its search' in (out / 'warnings.txt').read_text()
  assert len(pd.read_csv(out / 'fit_sensitivity.csv')) == len(subsets)


def test_a_clean_synthetic_fit_has_no_lack_of_fit_and_a_curved_one_does():
  b = np.array([1, 4, 16, 64, 256, 1024, 4000], float)
  rng = np.random.default_rng(0)
  clean = [_model(x) * np.exp(0.02 * rng.normal(size=3)) for x in b]
  s_min, e_min = cb.fit_steps(b, [np.mean(c) for c in clean])
  assert cb.lack_of_fit(b, clean, s_min, e_min)['lack_of_fit_p'] > 0.01
  bent = [c * (1.5 if x in (64, 256) else 1.0) for x, c in zip(b, clean)]
  s_min, e_min = cb.fit_steps(b, [np.mean(c) for c in bent])
  assert cb.lack_of_fit(b, bent, s_min, e_min)['lack_of_fit_p'] < 1e-3


@pytest.mark.slow
def test_local_cbs_branches_from_a_checkpoint(tmp_path, capsys, session_data_dir):
  source = mbx.train(tiny_config(train=dict(batch_size=16, duration='40 steps',
                                            eval_every='20 steps', checkpoint_every='20 steps')),
                     tmp_path / 'source', quiet=True)
  per_factor, summary = local_cbs(tmp_path / 'source', 20, factors=(1, 2, 4, 8),
                                  window='320 examples', tolerance=0.05)
  assert list(per_factor['batch_size']) == [16, 32, 64, 128]
  np.testing.assert_allclose(per_factor['learning_rate'], 1e-2 * np.sqrt([1, 2, 4, 8]))
  assert list(per_factor['steps']) == [20, 10, 5, 3]  # the same data for every branch
  within = list(per_factor['within_tolerance'])
  expected = 16 * 2**(within.index(False) - 1) if False in within else 128
  assert summary['local_cbs'] == expected and summary['lr_scaling'] == 'sqrt'
  branch = mbx.load_run(tmp_path / 'source' / 'local_cbs' / 'step20' / 'k00004-s0')
  # The branch starts from the source's step-20 parameters: the same evaluation.
  source_eval = source.eval_metrics.set_index('step').loc[20, 'eval_loss']
  assert branch.eval_metrics.iloc[0]['eval_loss'] == pytest.approx(source_eval, rel=1e-5)
  assert branch.config.train.init_from.endswith('source@20')
  cli.main(['analyze', 'local-cbs', str(tmp_path / 'source'), '--step', '20',
            '--factors', '1,2,4,8', '--window', '320 examples', '--tolerance', '0.05'])
  assert 'local CBS at step 20' in capsys.readouterr().out
  written = json.loads((tmp_path / 'source' / 'local_cbs' / 'step20' / 'local_cbs.json')
                       .read_text())
  assert written['local_cbs'] == summary['local_cbs']
  assert (tmp_path / 'source' / 'local_cbs' / 'step20' / 'local_cbs.png').exists()
  assert summary['noise_limited'] is False  # one seed: its spread is unknown
  # Two data seeds per branch and a tolerance below the k = 1 branch's spread over them: the
  # branches cannot be told apart, so no number is reported.
  per_factor, summary = local_cbs(tmp_path / 'source', 20, factors=(1,), seeds=(0, 1),
                                  window='160 examples', tolerance=1e-7,
                                  workdir=tmp_path / 'two_seeds')
  assert summary['baseline_seed_std'] > 1e-7
  assert summary['noise_limited'] and summary['local_cbs'] is None and not summary['capped']
  assert local_cbs_text(summary).startswith('noise-limited')


def test_the_steps_figure_legends_cover_no_marker():
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from mbx.figures import critical_batch as figures
  table = synthetic_table(b_crit=200.0)
  late = table['batch_size'] == 4000  # the largest batch never reaches the target
  table.loc[late, 'outcome'] = 'not_reached'
  table.loc[late, 'steps_to_target'] = pd.NA
  figure = figures.steps_figure(cb.analyze(table, num_samples=50))
  FigureCanvasAgg(figure).draw()
  for ax in figure.axes:
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())  # below the panel, not on it
    assert any('target not reached' in t.get_text() for t in ax.get_legend().get_texts())


def test_reasons_that_differ_only_in_their_numbers_are_told_once():
  below = lambda g: (f'the |G|² estimate averages to {g} ≤ 0: the gradient is below the noise '
                     'at this batch (too few groups or steps to resolve it)')
  assert cb.not_measurable_text([4, 16, 64], [below(-0.5), below(-0.25), 'not measured']) == (
      f'at B = 4, 16 (e.g. B = 4: {below(-0.5)}); at B = 64: not measured')
  assert cb.estimate_text(-11.4, '') == (
      'not measurable here (the run-averaged estimate is -11.4 ≤ 0)')
  assert cb.estimate_text(float('nan'), '') == '—'  # no best trial: the target was not reached
  assert cb.estimate_text(149.96, '') == '150'


def test_the_steps_figure_draws_a_noise_scale_only_where_it_is_measurable():
  from mbx.figures import critical_batch as figures
  measured = synthetic_table()
  labels = _legend_texts(figures.steps_figure(cb.analyze(measured, num_samples=50)))
  assert 'run-averaged B_simple = 150 (median over B)' in labels
  negative = measured.assign(b_simple=-11.4)  # a table written before reasons were recorded
  analysis = cb.analyze(negative, num_samples=50)
  labels = _legend_texts(figures.steps_figure(analysis))
  assert not any('= -11' in t for t in labels)
  [text] = [t for t in labels if t.startswith('run-averaged B_simple')]
  assert text.replace('\n', ' ') == (
      'run-averaged B_simple: not measurable here (at B = 1, 4, 16, 64, 256, 1024, 4000: the '
      'run-averaged estimate is -11.4 ≤ 0)')
  assert figures.steps_caption(analysis).endswith(
      'B_crit; B_simple not measurable here (the legend says why)')


def _legend_texts(figure) -> list[str]:
  return [t.get_text() for ax in figure.axes if ax.get_legend()
          for t in ax.get_legend().get_texts()]


def test_the_effective_learning_rate_panel_shows_heavy_ball_optimizers_only():
  from mbx.figures import critical_batch as figures
  momentum = synthetic_table()
  adam = momentum.assign(optimizer='adam', momentum=0.9,
                         effective_learning_rate=momentum['learning_rate'],
                         trial_id='adam-' + momentum['trial_id'])
  only_adam = figures.learning_rate_figure(cb.analyze(adam, num_samples=50))
  assert len(only_adam.axes) == 1 and only_adam.axes[0].get_ylabel() == 'best learning rate'
  both = figures.learning_rate_figure(cb.analyze(pd.concat([momentum, adam]), num_samples=50))
  assert [ax.get_ylabel() for ax in both.axes] == ['best learning rate',
                                                   'best lr / (1 - momentum)']
  labels = [line.get_label() for line in both.axes[1].get_lines()]
  assert 'momentum' in labels and 'adam' not in labels


def test_the_best_learning_rate_exponent_is_fitted_with_its_interval():
  # The synthetic sweep's best LR is 1e-3 min(B, 200): exponent 1 below B_crit, 0 above.
  below = synthetic_table(batch_sizes=(1, 4, 16, 64))
  row = cb.analyze(below, num_samples=50).summary.iloc[0]
  assert row['lr_exponent'] == pytest.approx(1.0) and row['lr_exponent_n'] == 4
  assert row['lr_exponent_lo'] <= 1.0 <= row['lr_exponent_hi']
  mixed = cb.analyze(synthetic_table(), num_samples=50).summary.iloc[0]
  assert 0.4 < mixed['lr_exponent'] < 0.9  # a bend, not one power: a wide interval
  assert mixed['lr_exponent_hi'] - mixed['lr_exponent_lo'] > 0.2
  assert math.isnan(cb.learning_rate_exponent([1, 2], [0.1, 0.2])['lr_exponent'])


def test_a_second_target_comes_from_the_same_evaluations(tmp_path, capsys, session_data_dir):
  """Steps to an easier target are read from the evaluations the trials already made; a
  harder one than the target the trials stopped at is refused in one line."""
  table = synthetic_table(rng=np.random.default_rng(4))
  _fake_sweep_dir(tmp_path, table)
  for run_dir in sorted((tmp_path / 'trials').iterdir())[:5]:  # 0.75 halfway to the stop
    path = run_dir / 'eval_metrics.jsonl'
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    final = rows[-1]['step']
    if final < 4 or rows[-1]['eval_accuracy'] < 0.8:
      continue
    rows.insert(-1, {'step': final // 2, 'examples_seen': 0, 'eval_accuracy': 0.75})
    rows.sort(key=lambda r: r['step'])
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  at_stop = runner.trial_table(tmp_path).set_index('trial_id')['steps_to_target']
  easier = runner.trial_table(tmp_path, target_value=0.7)
  assert easier.attrs['target_value'] == 0.7
  easier = easier.set_index('trial_id')['steps_to_target']
  moved = (easier != at_stop).fillna(False)
  assert 1 <= int(moved.sum()) <= 5
  assert (easier[moved] < at_stop[moved]).all()
  with pytest.raises(mbx.ConfigError, match=r'^target eval_accuracy=0\.95: harder than'):
    runner.trial_table(tmp_path, target_value=0.95)
  cli.main(['analyze', 'cbs', str(tmp_path), '--bootstrap', '100', '--no-figures',
            '--target', '0.7'])
  assert 'target: eval_accuracy 0.7' in capsys.readouterr().out


def test_the_fits_and_their_figures_import_no_training_stack():
  """The statistics of a sweep work on numbers and DataFrames: importing them loads neither
  JAX nor the training stack of mbx.training, only its plain-Python estimators and run files
  (a fresh process, as `import mbx` in a notebook would be)."""
  code = ('import sys\n'
          'import mbx.sweep.critical_batch, mbx.sweep.steps_to_target, mbx.sweep.grid\n'
          'import mbx.figures.critical_batch\n'
          'print([m for m in sys.modules if m.split(".")[0] in %r or (m.startswith("mbx.train'
          'ing") and m not in ("mbx.training", "mbx.training.estimators", '
          '"mbx.training.run_files"))])' % (TRAINING_STACK,))
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]', result.stdout
