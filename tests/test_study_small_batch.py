"""The small-batch study (mbx/study/small_batch.py): its grid rules and decisions on crafted
rows with hand-computed answers, its one-line refusals, and one tiny end-to-end run."""
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
from mbx.study import small_batch

from helpers import REPO

# Welch's t with 2 + 2 seeds of equal spread has 2 degrees of freedom, where the t distribution
# has closed forms: two-sided p = 1 - t / sqrt(t^2 + 2), and the 97.5% quantile
# 0.95 / sqrt(2 * 0.975 * 0.025).
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
# The crafted rows' seeds differ by 0.004 in test accuracy: per side variance 0.004^2 / 2 over
# n = 2, so the standard error of a difference, in points, is:
STANDARD_ERROR = math.sqrt(2 * 0.004**2 / 2 / 2) * 100


def p_df2(t: float) -> float:
  return 1 - t / math.sqrt(t * t + 2)


def crafted_rows(variant: str = 'v', test_shift: float = 0.0) -> list[dict]:
  """Per-run rows: B = 2, 64, 4000 × 4 LRs × seeds 0, 1. Validation = accuracy + 0.002·seed,
  test = accuracy − 0.01 + 0.004·seed (+ test_shift); at B = 64 seed 1 of LR 0.3 diverged."""
  accuracy = {2: (0.80, 0.93, 0.92, 0.95), 64: (0.80, 0.93, 0.92, 0.925),
              4000: (0.30, 0.40, 0.50, 0.45)}
  rows = []
  for b, values in accuracy.items():
    for lr, a in zip((0.01, 0.03, 0.1, 0.3), values):
      for seed in (0, 1):
        diverged = b == 64 and lr == 0.3 and seed == 1
        rows.append({'variant': variant, 'batch_size': b, 'learning_rate': lr, 'seed': seed,
                     'diverged': diverged,
                     'validation': math.nan if diverged else a + 0.002 * seed,
                     'test': math.nan if diverged else a - 0.01 + 0.004 * seed + test_shift})
  return rows


def test_the_lr_choice_and_the_good_range_per_batch_size():
  per_b = {r['batch_size']: r for r in small_batch.batch_size_rows(
      small_batch.settings_rows(crafted_rows()), tolerance=0.02, maximize=True)}
  # B = 2: 0.3 is best (mean 0.951); 0.03 (0.931) is exactly 2 points below and counts, 0.1
  # (0.921) does not: 2 good LRs whose range 0.03 – 0.3 spans a bad one.
  two = per_b[2]
  assert two['best_learning_rate'] == 0.3 and two['best_at_grid_edge']
  assert two['validation'] == pytest.approx(0.951)
  assert two['test'] == pytest.approx(0.942) and two['test_per_seed'] == pytest.approx([0.94, 0.944])
  assert two['test_std'] == pytest.approx(0.004 / math.sqrt(2))
  assert (two['good_lrs'], two['good_lr_min'], two['good_lr_max']) == (2, 0.03, 0.3)
  assert two['good_base_lr_max'] == pytest.approx(0.15) and two['diverged_lrs'] == 0
  # B = 64: a seed of 0.3 diverged, so 0.3 is neither chosen (its 0.926 would lose anyway)
  # nor good; 0.03 wins (0.931) and 0.1 (0.921) is within 2 points.
  sixty_four = per_b[64]
  assert sixty_four['best_learning_rate'] == 0.03 and not sixty_four['best_at_grid_edge']
  assert (sixty_four['good_lrs'], sixty_four['good_lr_min'], sixty_four['good_lr_max']) == (
      2, 0.03, 0.1)
  assert sixty_four['good_base_lr_min'] == pytest.approx(0.03 / 64)
  assert sixty_four['diverged_lrs'] == 1
  assert per_b[4000]['best_learning_rate'] == 0.1 and per_b[4000]['good_lrs'] == 1


def test_a_loss_is_chosen_low_and_ties_go_to_the_smaller_lr():
  rows = [{'variant': 'v', 'batch_size': 8, 'learning_rate': lr, 'seed': 0, 'diverged': False,
           'validation': loss, 'test': loss}
          for lr, loss in ((0.01, 0.50), (0.1, 0.30), (1.0, 0.30), (3.0, 0.33))]
  (row,) = small_batch.batch_size_rows(small_batch.settings_rows(rows), tolerance=0.02,
                                       maximize=False)
  assert row['best_learning_rate'] == 0.1
  assert (row['good_lrs'], row['good_lr_min'], row['good_lr_max']) == (2, 0.1, 1.0)


def test_the_best_batch_the_largest_that_holds_and_small_against_large():
  per_b = small_batch.batch_size_rows(small_batch.settings_rows(crafted_rows()), 0.02, True)
  (summary,) = small_batch.variant_rows(per_b, tolerance=0.02, maximize=True,
                                        small_batch_max=32, held_out='test', scale=100)
  assert summary['best_batch_size'] == 2 and summary['best_learning_rate'] == 0.3
  # B = 64 (0.931) is exactly 2 points below B = 2 (0.951); full batch (0.501) is not.
  assert summary['batch_sizes_within_tolerance'] == [2, 64]
  assert summary['largest_batch_within_tolerance'] == 64
  # Small: B = 2 at 0.3, test 0.94 and 0.944; large: B = 64 at 0.03, test 0.92 and 0.924.
  assert (summary['best_small_batch'], summary['best_large_batch']) == (2, 64)
  assert summary['difference'] == pytest.approx(2.0)
  assert summary['p'] == pytest.approx(p_df2(2.0 / STANDARD_ERROR), rel=1e-6)
  assert summary['ci_high'] - 2.0 == pytest.approx(T_975_DF2 * STANDARD_ERROR, rel=1e-6)
  assert (summary['n_small'], summary['n_large']) == (2, 2)
  tight = small_batch.variant_rows(per_b, 0.01, True, 32)[0]
  assert tight['batch_sizes_within_tolerance'] == [2]


def test_each_variant_against_the_first_at_every_batch_size():
  rows = crafted_rows('no BN') + crafted_rows('BN', test_shift=0.01)
  per_b = small_batch.batch_size_rows(small_batch.settings_rows(rows), 0.02, True)
  differences = small_batch.variant_differences(per_b, 'test', 100)
  assert [(d['comparison'], d['batch_size']) for d in differences] == [
      ('BN − no BN', 2), ('BN − no BN', 64), ('BN − no BN', 4000)]
  for d in differences:
    assert d['difference'] == pytest.approx(1.0)
    assert d['p'] == pytest.approx(p_df2(1.0 / STANDARD_ERROR), rel=1e-6)


def test_runs_of_counts():
  assert small_batch.runs_of([(2, 2), (4, 2), (8, 1), (4000, 1)]) == '2 at B = 2–4, 1 at B = 8–4000'
  assert small_batch.runs_of([(2, 3), (4, 1), (8, 3)]) == '3 at B = 2, 1 at B = 4, 3 at B = 8'


def test_the_grid_derives_from_the_config():
  config = mbx.load_config(REPO / 'configs' / 'small_batch_mnist1d.py')
  options = small_batch.Options()
  assert small_batch.batch_sizes(options, 4000) == (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024,
                                                    2048, 4000)
  quick = mbx.study.options_of('small-batch', quick=True)
  assert small_batch.batch_sizes(quick, 4000) == (2, 32, 512, 4000)
  lrs = small_batch.learning_rates(config, options)  # 0.1 × (0.01 … 30), 10 points
  assert len(lrs) == 10 and (lrs[0], lrs[-1]) == (0.001, 3.0)
  assert lrs[1] == pytest.approx(0.001 * 3000 ** (1 / 9), rel=1e-5)
  assert small_batch.epochs(config, options, 4000) == 30
  steps = dataclasses.replace(config, train=dataclasses.replace(
      config.train, batch_size=100, duration='8000 steps'))
  assert small_batch.epochs(steps, options, 4000) == 200
  assert list(small_batch.variants(config, options)) == ['no BN', 'BN']
  user = mbx.apply_overrides(config, ['model.name=user_models:TwoLayer', 'model.options={}'])
  assert small_batch.variants(user, options) == {'config': ()}
  trial = small_batch.grid(config, options, 4000)[('BN', 64, lrs[3], 1)]
  assert (trial.train.batch_size, trial.train.seed, trial.optim.learning_rate) == (64, 1, lrs[3])
  assert trial.model.options['norm'] == 'batch' and trial.train.duration == '30 epochs'


@pytest.mark.parametrize('overrides, field', [
    (['study.batch_sizes=2,64,8192'], 'study.batch_sizes'),
    (['study.learning_rates=0.1'], 'study.learning_rates'),
    (['study.num_learning_rates=1'], 'study.num_learning_rates'),
    (['study.small_batch_max=4000'], 'study.small_batch_max'),
    (['study.variants={"bn": ["model.options.norm=sideways"]}'], "study.variants['bn']"),
    (['study.select_metric=eval_bleu'], 'study.select_metric'),
])
def test_bad_options_stop_in_one_line_before_anything_is_written(tmp_path, overrides, field):
  config = mbx.load_config(REPO / 'configs' / 'small_batch_mnist1d.py')
  with pytest.raises(mbx.ConfigError) as error:
    mbx.study.run('small-batch', config, tmp_path / 'out',
                  options=mbx.study.options_of('small-batch', overrides))
  assert str(error.value).startswith(field) and '\n' not in str(error.value)
  assert not (tmp_path / 'out').exists()


def test_the_cli_refuses_a_batch_above_the_training_set(tmp_path):
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'study', 'small-batch', '--config',
       str(REPO / 'configs' / 'small_batch_mnist1d.py'), '--out', str(out),
       'study.batch_sizes=2,5000'], capture_output=True, text=True, cwd=tmp_path, timeout=300,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
  assert 'study.batch_sizes' in lines[0] and '5000' in lines[0] and '4000' in lines[0]
  assert not out.exists()


@pytest.mark.slow
def test_a_tiny_study_end_to_end_and_again_without_training(tmp_path):
  config = mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='user_models:TwoLayer', options={'width': 8}),
      optim=mbx.OptimConfig(name='sgd', learning_rate=0.3),
      train=mbx.TrainConfig(duration='1 epochs', log_every='1 epochs', eval_every='1 epochs',
                            checkpoint_every=None, keep_checkpoints=1),
      name='tiny_small_batch')
  options = mbx.study.options_of(
      'small-batch', batch_sizes=(250, 1000, 4000), small_batch_max=250,
      learning_rates=(0.1, 1.0), pack_max_batch_size=4000)
  out = tmp_path / 'study'
  summary = mbx.study.run('small-batch', config, out, options=options, log=lambda _: None)
  assert summary['invocations'][-1]['trained_runs'] == 12
  for name in ('batch_sizes', 'best_batch_size', 'settings', 'trials'):
    assert (out / f'{name}.csv').is_file() and (out / f'{name}.md').is_file()
  for name in ('accuracy_vs_batch_size.png', 'good_learning_rates.png', 'README.md'):
    assert (out / name).is_file()
  assert not (out / 'variants.csv').exists()  # one variant: the config as given
  tables = json.loads((out / 'summary.json').read_text())['tables']
  assert len(tables['trials']) == 12 and len(tables['settings']) == 6
  assert {r['status'] for r in tables['trials']} <= {'done', 'diverged'}
  assert [r['batch_size'] for r in tables['batch_sizes']] == [250, 1000, 4000]
  for row in tables['batch_sizes']:
    assert row['best_learning_rate'] in (0.1, 1.0) and 0 <= row['validation'] <= 1
    assert 1 <= row['good_lrs'] <= row['grid_points'] == 2
  (best,) = tables['best_batch_size']
  assert best['best_batch_size'] in (250, 1000, 4000) and best['best_small_batch'] == 250
  assert summary['results']['epochs'] == 1 and summary['results']['held_out'] == 'test_accuracy'
  readme = (out / 'README.md').read_text()
  assert '## Interpretation' in readme and 'B = 250' in readme

  again = mbx.study.run('small-batch', config, out, options=options, log=lambda _: None)
  assert again['invocations'][-1]['trained_runs'] == 0
  assert again['invocations'][-1]['reused_runs'] == 12
  assert again['tables']['batch_sizes'] == tables['batch_sizes']
