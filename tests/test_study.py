"""`mbx study`: the shared statistics against closed forms, options and bad input, growing a
study, and the cbs grid rules."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

import mbx
import mbx.study
from mbx.study import statistics
from mbx.study import sharp_minima

from helpers import REPO


def test_paired_differences_and_ratios_match_the_closed_forms():
  differences = [-1.0, -2.0, -1.5, -0.5, -2.5]
  baseline = [0.9] * 5
  other = [0.9 + d / 100 for d in differences]
  result = statistics.paired(baseline, other, 'difference', scale=100)
  mean, sem = np.mean(differences), np.std(differences, ddof=1) / math.sqrt(5)
  assert result['n'] == 5 and result['estimate'] == pytest.approx(mean)
  assert result['ci_high'] - result['estimate'] == pytest.approx(2.776445 * sem, rel=1e-5)
  assert result['p_t'] == pytest.approx(scipy.stats.ttest_1samp(differences, 0).pvalue)
  assert result['p_wilcoxon'] == pytest.approx(0.0625)  # all 5 below: the smallest possible
  assert (result['higher'], result['lower']) == (0, 5)
  ratio = statistics.paired([1.0, 2.0, 4.0], [2.0, 4.0, 8.0], 'ratio')
  assert ratio['estimate'] == pytest.approx(2.0) and ratio['ci_low'] == pytest.approx(2.0)
  # A ratio is a geometric mean of the per-seed ratios; non-positive pairs are dropped.
  ratio = statistics.paired([1.0, 1.0, -1.0], [2.0, 8.0, 3.0], 'ratio')
  assert ratio['n'] == 2 and ratio['estimate'] == pytest.approx(4.0)
  assert math.isnan(statistics.paired([1.0], [2.0])['ci_low'])


def test_welch_matches_scipy():
  a, b = [0.90, 0.92, 0.91, 0.95], [0.85, 0.88, 0.86]
  result = statistics.welch(a, b, scale=100)
  assert result['estimate'] == pytest.approx((np.mean(b) - np.mean(a)) * 100)
  assert result['p'] == pytest.approx(scipy.stats.ttest_ind(b, a, equal_var=False).pvalue)
  assert result['ci_low'] < result['estimate'] < result['ci_high'] < 0


def test_sharp_minima_pairs_each_regime_with_sb_by_seed_for_every_measure():
  options = sharp_minima.Options(epsilons=(1e-3,))
  key = sharp_minima.sharpness_key('full', 1e-3)
  rows = []
  for seed, (d, r) in enumerate([(-1.0, 2.0), (-2.0, 2.0), (-1.5, 2.0)]):
    rows.append({'regime': 'SB', 'seed': seed, 'test_accuracy': 0.9, key: 1.0})
    rows.append({'regime': 'LB', 'seed': seed, 'test_accuracy': 0.9 + d / 100, key: r})
  stats = {(s['comparison'], s['column']): s
           for s in sharp_minima.paired_rows(rows, options, {'SB': 256, 'LB': 400})}
  assert set(stats) == {('LB vs SB', 'test_accuracy'), ('LB vs SB', key)}
  assert stats['LB vs SB', 'test_accuracy']['estimate'] == pytest.approx(-1.5)
  assert stats['LB vs SB', key]['kind'] == 'ratio'
  assert stats['LB vs SB', key]['estimate'] == pytest.approx(2.0)


def test_interpolation_barrier_reads_the_curve():
  curve = [{'alpha': a, 'train_loss': loss} for a, loss in
           [(-1.0, 3.0), (0.0, 0.01), (0.5, 1.5), (1.0, 0.02), (2.0, 5.0)]]
  row = sharp_minima.barrier_row(curve, 'LB', 0)
  assert row['barrier'] == pytest.approx(1.48)
  assert (row['train_loss_alpha_-1'], row['train_loss_alpha_2']) == (3.0, 5.0)


def test_options_take_overrides_quick_and_suggest_the_closest_field():
  options = mbx.study.options_of('sharp-minima', ['study.seeds=0,1,2', 'study.small_batch=64'],
                                 quick=True)
  assert options.seeds == (0, 1, 2) and options.small_batch == 64
  assert options.learning_rate_factors == sharp_minima.QUICK['learning_rate_factors']
  assert mbx.study.options_of('sharp-minima', ['study.seeds=3']).seeds == (3,)
  with pytest.raises(mbx.ConfigError, match='did you mean study.seeds'):
    mbx.study.options_of('sharp-minima', ['study.seed=1'])
  with pytest.raises(mbx.ConfigError, match='did you mean sharp-minima'):
    mbx.study.options_of('sharp_minima')


def _study(args, tmp_path):
  return subprocess.run([sys.executable, '-m', 'mbx.cli', 'study', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['sharp-minima', '--config', 'configs/mnist1d_cnn.py', 'study.stop_metric=train_rmse'],
     "study.stop_metric='train_rmse': not a metric of task 'classification'; allowed: "
     'train_loss, train_accuracy'),
    (['sharp-minima', '--config', 'configs/mnist1d_cnn.py', 'study.tuning_seed=0'],
     'study.tuning_seed=0: also in study.seeds'),
    (['sharp-minima', '--config', 'configs/mnist1d_cnn.py', 'study.sam_rhos=0.05',
      'study.sam_regimes=XB'], "study.sam_regimes: 'XB' is not a regime; allowed: SB, LB, FB"),
    (['sharp-minima', '--config', 'configs/mnist1d_cnn.py', 'study.sam_rhos=-0.1'],
     'study.sam_rhos=(-0.1,): each ρ must be a number > 0'),
    (['cbs', '--config', 'configs/mnist1d_cnn.py', 'train.target_metric=eval_f1',
      'train.target_value=0.5'],
     "train.target_metric='eval_f1': not a metric of task 'classification'"),
    (['cbs', '--config', 'configs/mnist1d_cnn.py'], 'the cbs study needs a target'),
    (['cbs', '--config', 'configs/mnist1d_cnn.py', 'study.sedes=1'],
     'did you mean study.seeds?'),
    (['cbs', '--config', 'configs/mnist1d_cnn.py', 'train.target_metric=eval_accuracy',
      'train.target_value=0.5', 'study.batch_sizes=16,64', 'study.zhang_reference_batch=32'],
     'study.zhang_reference_batch=32: not a batch size of the grid; allowed: 16, 64 (or None: '
     'the smallest batch size that reached the target)'),
])
def test_a_study_the_config_cannot_answer_stops_in_one_line_before_writing(
    tmp_path, args, message, capsys, monkeypatch):
  from mbx import cli  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(REPO)
  out = tmp_path / 'study'
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['study', *args, '--out', str(out)])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith('mbx study: error: ') and message in lines[0]
  assert not out.exists()


def test_cbs_derives_its_grid_from_a_training_config_by_the_stated_rules():
  from mbx.study import cbs  # pylint: disable=import-outside-toplevel
  config = mbx.load_config(REPO / 'configs' / 'mnist1d_cnn.py',
                           ['train.batch_size=32', 'train.duration=10 epochs',
                            'optim.learning_rate=1e-3', 'train.target_metric=eval_accuracy',
                            'train.target_value=0.8'])
  sweep = cbs.derive_sweep(config, cbs.Options(), num_train=4000, quick=False)
  assert sweep.batch_sizes == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4000)
  space = sweep.search[0]
  assert space.optimizer == config.optim.name and space.reference_batch_size == 32
  assert space.learning_rate == pytest.approx((1e-3 / 8, 1e-3 * 8))
  assert space.lr_scaling_power == (0.5 if config.optim.name.startswith('adam') else 1.0)
  # budget(B) = max(2 x 10 epochs of examples / B, 200) steps
  assert sweep.budgets[32] == f'{2 * 40000 // 32} steps' and sweep.budgets[4000] == '200 steps'
  assert (sweep.target_metric, sweep.target_value) == ('eval_accuracy', 0.8)
  quick = cbs.derive_sweep(config, cbs.Options(), num_train=4000, quick=True)
  assert len(quick.batch_sizes) == 5 and min(quick.batch_sizes) >= 4
  assert max(quick.batch_sizes) == 4000


def test_the_cbs_readme_sets_every_definition_side_by_side(tmp_path, session_data_dir):
  """The cbs study on a sweep whose trials have all finished (nothing trains): per optimizer
  and target McCandlish's B_crit, Zhang's CBS from the B0 asked for, each estimator the
  trials logged (B_simple below the noise at two batch sizes: not measurable there, never a
  negative number) and B_crit over it."""
  import jax  # pylint: disable=import-outside-toplevel  (the sweep turns on JAX's cache)
  from test_critical_batch import _fake_sweep_dir, synthetic_table  # pylint: disable=import-outside-toplevel
  curvature = {'curvature_grad_estimate': 2.0, 'curvature_trace_estimate': 60.0,
               'curvature_steps': 0.5}
  sweep = _fake_sweep_dir(tmp_path, synthetic_table(rng=np.random.default_rng(4)),
                          extra_logs=lambda b: dict(curvature, **(
                              {'grad_sq_estimate': -0.5} if b in (4, 16) else {})))
  with pytest.raises(mbx.ConfigError, match=r'^study.zhang_reference_batch=8: not a batch size '
                     r'of the grid; allowed: 1, 4, 16, 64, 256, 1024, 4000 \(or None'):
    mbx.study.run('cbs', sweep.base, tmp_path, runs=tmp_path, options=mbx.study.options_of(
        'cbs', grid=sweep, zhang_reference_batch=8))
  cache = jax.config.jax_compilation_cache_dir
  try:
    summary = mbx.study.run('cbs', sweep.base, tmp_path, runs=tmp_path,
                            options=mbx.study.options_of('cbs', grid=sweep, local_cbs=False,
                                                         bootstrap=100, zhang_reference_batch=16))
  finally:
    jax.config.update('jax_compilation_cache_dir', cache)
  assert summary['invocations'][-1]['trained_runs'] == 0
  readme = (tmp_path / 'README.md').read_text()
  table = readme.split('## Critical batch size, every definition side by side\n')[1]
  header, _, row = table.strip().splitlines()[:3]
  assert header.startswith('| optimizer | target | McCandlish B_crit [90% CI] | Zhang 20% CBS '
                           '(B0 = 16) | B_simple, run-averaged: median [min, max] over B | '
                           'B_crit / B_simple | B_noise, run-averaged: median [min, max] over B '
                           '| B_crit / B_noise | S_min |')
  cells = [c.strip() for c in row.strip('|').split(' | ')]
  fit = summary['tables']['cbs_summary'][0]
  assert fit['zhang_reference_batch'] == 16
  assert cells[:4] == ['momentum', '0.8', f'{fit["b_crit"]:.3g} [{fit["b_crit_lo"]:.3g}, '
                       f'{fit["b_crit_hi"]:.3g}]', f'{fit["zhang_cbs"]:.3g}; on the fit '
                       f'{fit["zhang_cbs_fit"]:.3g}']
  assert cells[4] == ('150 [150, 150] over 5 B; not measurable here (at B = 4, 16: the \\|G\\|² '
                      'estimate averages to -0.5 ≤ 0: the gradient is below the noise at this '
                      'batch (too few groups or steps to resolve it))')
  assert cells[6] == '30 [30, 30] over 7 B' and float(cells[7]) == pytest.approx(
      fit['b_crit'] / 30, rel=1e-2)
  assert '-300' not in readme and '-3e+02' not in readme
  finding = next(f for f in summary['findings'] if f.startswith('momentum, target 0.8'))
  assert 'Zhang 20% CBS (B0 = 16)' in finding and 'run-averaged B_noise 30 [30, 30]' in finding
  per_b = readme.split('## Steps to target per batch size')[1]
  assert per_b.count('not measurable here (the \\|G\\|² estimate averages to -0.5') == 2


TINY = ['model.name=mlp', 'model.options.hidden=(16,)', 'train.checkpoint_every=none',
        'train.log_every=50 steps']


@pytest.mark.slow
def test_growing_a_study_trains_only_the_new_runs(tmp_path):
  config = mbx.load_config(REPO / 'configs' / 'mnist1d_sharp_minima.py', TINY)
  options = dict(small_batch=256, large_batch=1000, full_batch=False, learning_rates=(1e-2,),
                 stop_value=2.0, max_epochs=20, subspace_dim=4, maxiter=2, top_k=1,
                 lanczos_steps=5, trace_samples=2, density_runs=0, unit_column_subspace=False)
  first = mbx.study.run('sharp-minima', config, tmp_path,
                        options=mbx.study.options_of('sharp-minima', seeds=(0,), **options))
  assert first['invocations'][-1]['trained_runs'] == 2 + 2  # tuning at both B, then seed 0
  grown = mbx.study.run('sharp-minima', config, tmp_path,
                        options=mbx.study.options_of('sharp-minima', seeds=(0, 1), **options))
  last = grown['invocations'][-1]
  assert (last['trained_runs'], last['reused_runs']) == (2, 4)  # only seed 1's two runs
  assert len(grown['invocations']) == 2
  paired = json.loads((tmp_path / 'summary.json').read_text())['tables']['paired']
  assert {row['n'] for row in paired} == {2}  # the analysis uses both seeds
  assert (tmp_path / 'README.md').read_text().count('## Interpretation') == 1
  # A changed config would put other runs beside these: refused, naming the field.
  changed = mbx.apply_overrides(config, ['model.options.hidden=(8,)'])
  with pytest.raises(mbx.ConfigError, match=r'holds the sharp-minima study of a different '
                     r'config \(model.options.hidden: \[16\] -> \[8\]\)'):
    mbx.study.run('sharp-minima', changed, tmp_path,
                  options=mbx.study.options_of('sharp-minima', seeds=(0, 1), **options))


@pytest.mark.slow
def test_sam_rows_tune_rho_on_validation_and_pair_with_the_plain_large_batch(tmp_path):
  config = mbx.load_config(REPO / 'configs' / 'mnist1d_sharp_minima.py', TINY)
  options = dict(small_batch=256, large_batch=1000, full_batch=False, learning_rates=(1e-2,),
                 stop_value=2.0, max_epochs=20, subspace_dim=4, maxiter=2, top_k=1,
                 lanczos_steps=5, trace_samples=2, density_runs=0, unit_column_subspace=False,
                 seeds=(0, 1))
  plain = mbx.study.run('sharp-minima', config, tmp_path,
                        options=mbx.study.options_of('sharp-minima', **options))
  assert plain['invocations'][-1]['trained_runs'] == 2 + 4
  summary = mbx.study.run('sharp-minima', config, tmp_path, options=mbx.study.options_of(
      'sharp-minima', **options, sam_rhos=(0.05, 0.5), sam_regimes=('LB',), sam_timing_steps=5,
      sam_timing_rounds=1))
  # Adding SAM trains only its ρ tuning (2) and its runs (2 seeds); the plain runs are reused.
  assert (summary['invocations'][-1]['trained_runs'],
          summary['invocations'][-1]['reused_runs']) == (4, 6)
  tables = json.loads((tmp_path / 'summary.json').read_text())['tables']
  tuning = tables['sam_tuning']
  assert {r['rho'] for r in tuning} == {0.05, 0.5} and sum(r['chosen'] for r in tuning) == 1
  rho = next(r['rho'] for r in tuning if r['chosen'])
  assert summary['results']['sam_rhos'] == {'LB': rho}
  runs = [r for r in tables['runs'] if r['regime'] == 'LB+SAM']
  assert len(runs) == 2 and all(r['gradient_evaluations'] == 2 * r['steps'] for r in runs)
  sam_run = mbx.load_run(next(d for d in (tmp_path / 'trials').glob('*/config.json')
                              if '"sam"' in d.read_text()).parent)
  assert dict(sam_run.config.optim.update_rule_options) == {'rho': rho}
  paired = {(r['comparison'], r['column']): r for r in tables['paired']}
  cost = paired['LB+SAM vs LB', 'gradient_evaluations']
  assert cost['kind'] == 'ratio' and cost['n'] == 2
  lb = {r['seed']: r['steps'] for r in tables['runs'] if r['regime'] == 'LB'}
  expected = np.exp(np.mean([np.log(2 * r['steps'] / lb[r['seed']]) for r in runs]))
  assert cost['estimate'] == pytest.approx(expected)
  assert ('LB+SAM vs SB', 'test_accuracy') in paired
  assert 'SAM ρ tuning' in (tmp_path / 'README.md').read_text()
  cost, = tables['sam_cost']  # plain and SAM timed side by side
  assert (cost['regime'], cost['batch'], cost['rounds']) == ('LB', 1000, 1)
  assert cost['time_ratio'] == pytest.approx(cost['sam_seconds_per_step']
                                             / cost['plain_seconds_per_step'])


OWN_STUDY = '''
import dataclasses

TITLE = 'Test accuracy per batch size ({name})'


@dataclasses.dataclass(frozen=True)
class Options:
  batch_sizes: tuple = (32, 128)
  seeds: tuple = (0,)


QUICK = {}


def check(config, options):
  import mbx
  if not options.batch_sizes:
    raise mbx.ConfigError('study.batch_sizes=(): give at least one')


def run(ctx):
  configs = {(b, s): dataclasses.replace(ctx.config, train=dataclasses.replace(
      ctx.config.train, batch_size=b, seed=s)) for b in ctx.options.batch_sizes
             for s in ctx.options.seeds}
  runs = ctx.train(configs, 'training')
  rows = [{'batch_size': b, 'seed': s, 'steps': run.status['step']}
          for (b, s), run in runs.items()]
  ctx.table('runs', rows, title='Runs')
  ctx.findings.append(f'{len(rows)} runs')
'''


@pytest.mark.slow
def test_your_own_study_file_runs_through_the_cli(tmp_path):
  study = tmp_path / 'my_study.py'
  study.write_text(OWN_STUDY)
  out = tmp_path / 'out'
  args = [str(study), '--config', 'configs/mnist1d_cnn.py', '--out', str(out), *TINY,
          'train.duration=20 steps', 'train.eval_every=20 steps']
  result = _study(args, tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['tables']['runs'] == [{'batch_size': 32, 'seed': 0, 'steps': 20},
                                       {'batch_size': 128, 'seed': 0, 'steps': 20}]
  assert summary['findings'] == ['2 runs'] and (out / 'runs.md').exists()
  bad = _study([*args, 'study.batch_sizes=()'], tmp_path)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      'mbx study: error: study.batch_sizes=(): give at least one']
