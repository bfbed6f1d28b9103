"""`mbx report`: the committed critical-batch-size study rendered in a real browser (headless
Chromium, installed by .ci/run), and a run's report."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import mbx
from mbx.figures import report

from helpers import REPO, tiny_config

CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')


def _browser():
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip('Debian chromium and chromium-driver are not installed (.ci/run installs them)')
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'):
    options.add_argument(flag)
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
  return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _same_cell(shown: str, value) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return shown == str(value)
  if pd.isna(value):
    return shown == ''
  try:
    number = float(value)
  except (TypeError, ValueError):
    return shown == str(value)
  if isinstance(value, str) and not value.replace('.', '', 1).lstrip('-').isdigit():
    return shown == value
  return math.isclose(float(shown), number, rel_tol=5e-4, abs_tol=1e-12)  # 4 significant


@pytest.mark.slow
def test_the_study_report_renders_in_chromium_with_every_figure_and_table(tmp_path):
  out = tmp_path / 'report.html'
  result = subprocess.run([sys.executable, '-m', 'mbx.cli', 'report',
                           'results/critical_batch_size', '--target', 'eval_accuracy=0.85',
                           '--bootstrap', '200', '--quiet', '-o', str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  markdown = out.with_suffix('.md').read_text()
  assert '## Study cbs: Critical batch size (cbs_mnist1d_cnn)' in markdown
  assert '### Findings' in markdown and 'steps to target vs B' in markdown
  driver = _browser()
  try:
    driver.get(out.as_uri())
    errors = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
    assert errors == []
    images = driver.execute_script(
        'return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, '
        'i.naturalHeight]);')
    assert len(images) == 6  # 4 CBS figures and a local-CBS figure per optimizer
    assert all(complete and width > 0 and height > 0 for _, complete, width, height in images)
    tables = driver.execute_script(
        'return [...document.querySelectorAll("table[data-csv]")].map(t => [t.dataset.csv, '
        '[...t.querySelectorAll("th")].map(c => c.textContent), '
        '[...t.querySelectorAll("tbody tr")].map(r => [...r.cells].map(c => c.textContent))]);')
  finally:
    driver.quit()
  assert {name for name, _, _ in tables} == {
      'critical_batch_size_per_batch_size.csv', 'critical_batch_size_cbs_definitions.csv'}
  for name, header, rows in tables:
    frame = pd.read_csv(out.with_name('report_files') / name)
    assert header == list(frame.columns) and len(rows) == len(frame)
    for shown_row, row in zip(rows, frame.itertuples(index=False)):
      assert all(_same_cell(s, v) for s, v in zip(shown_row, row)), (name, shown_row, row)


def test_a_run_report_holds_its_outcome_and_curves(tmp_path, session_data_dir):
  run_dir = tmp_path / 'run'
  mbx.train(tiny_config(), run_dir, quiet=True)
  html_path, markdown = report.write_report([run_dir], tmp_path / 'r.html', quiet=True)
  text = markdown.read_text()
  assert '## Run: tiny' in text and 'status: done (budget reached) at step 20' in text
  assert '![training curves](r_files/run_curves.png)' in text
  assert 'data:image/png;base64,' in html_path.read_text()
  # The test metrics, and an analysis's headline numbers rather than its metadata.
  (run_dir / 'analysis').mkdir()
  (run_dir / 'analysis' / 'sharpness_step20.json').write_text(json.dumps({
      'parameters': 1234, 'train': {'loss': 0.5, 'accuracy': 0.8}, 'test': {'accuracy': 0.7},
      'generalization_gap': {'accuracy': 0.1}, 'run': {'workdir': str(run_dir)},
      'sharpness': {'results': [{'space': 'full', 'epsilon': 1e-3, 'sharpness': 4.25}]},
      'hessian': {'top_eigenvalues': {'eigenvalues': [12.5, 3.0]},
                  'trace': {'trace': 99.0, 'stderr': 1.0}}}))
  _, markdown = report.write_report([run_dir], tmp_path / 'r2.html', quiet=True)
  text = markdown.read_text()
  final = pd.read_csv(tmp_path / 'r2_files' / 'run_final.csv')
  assert 'test_accuracy' in final.columns
  numbers = pd.read_csv(tmp_path / 'r2_files' / 'run_sharpness_step20.csv').iloc[0]
  assert numbers['sharpness_full_0.001'] == 4.25 and numbers['lambda_max'] == 12.5
  assert numbers['trace'] == 99.0 and numbers['test_accuracy'] == 0.7
  assert numbers['generalization_gap_accuracy'] == 0.1 and '### sharpness step20' in text


def test_report_refuses_a_directory_it_cannot_read_before_writing(tmp_path):
  with pytest.raises(mbx.ConfigError, match='neither a study'):
    report.write_report([tmp_path], tmp_path / 'r.html', quiet=True)
  assert not (tmp_path / 'r.html').exists()


def _labels(fig, title: str):
  """(offset text, tick labels, y limits) of the panel titled `title`, as drawn."""
  FigureCanvasAgg(fig).draw()
  ax = next(a for a in fig.axes if a.get_title() == title)
  return (ax.yaxis.get_offset_text().get_text(),
          [t.get_text() for t in ax.get_yticklabels()], ax.get_ylim())


def test_a_constant_series_is_drawn_as_constant_without_an_offset():
  """A learning rate equal up to float rounding was labelled '1e-12 + 4.9999964e-3', its
  ticks -0.2 ... 0.4; a series that changes keeps its own range."""
  lr = 0.0049999964
  metrics = pd.DataFrame({'step': [10, 20, 30, 40], 'loss': [2.3, 1.1, 0.72, 0.70],
                          'learning_rate': [lr, lr + 1e-12, lr, lr + 5e-10],
                          'batch_size': [64, 64, 64, 64]})
  fig = report.curves_figure(metrics)
  offset, ticks, (low, high) = _labels(fig, 'learning_rate')
  assert offset == '' and low < 0.99 * lr and high > 1.01 * lr
  assert all(len(t.replace('−', '-')) <= 6 for t in ticks), ticks  # 0.0048, 0.0050, ...
  for title in ('batch_size', 'loss'):
    assert _labels(fig, title)[0] == '', title
  low, high = _labels(fig, 'loss')[2]
  assert low < 0.7 and 2.3 < high < 2.5


def test_the_sweep_header_states_each_batch_sizes_budget(tmp_path):
  from test_critical_batch import synthetic_table  # pylint: disable=import-outside-toplevel
  table = synthetic_table(batch_sizes=(1, 4, 16, 64))
  budgets = {1: '8000 steps', 4: '4000 steps', 16: '2000 steps', 64: '2000 steps'}
  table['budget'] = table['batch_size'].map(budgets)
  sweep = tmp_path / 'sweep'
  sweep.mkdir()
  table.to_csv(sweep / 'trials.csv', index=False)
  _, markdown = report.write_report([sweep], tmp_path / 'r.html', bootstrap=50, quiet=True,
                                    target=('eval_accuracy', 0.8))
  assert ('budget per trial: B=1: 8000 steps, B=4: 4000 steps, B=16: 2000 steps, '
          'B=64: 2000 steps') in markdown.read_text()
  table['budget'] = '8000 steps'
  assert report.budget_line(table, {}) == 'budget per trial: 8000 steps'
  spec = {'sweep': {'budget': '8000 steps', 'budgets': {'1': '100 epochs'}}}
  assert report.budget_line(table.drop(columns='budget'), spec) == (
      'budget per trial: B=1: 100 epochs, B=4: 8000 steps, B=16: 8000 steps, B=64: 8000 steps')


def test_the_sweep_report_sets_the_definitions_side_by_side_and_no_negative_noise_scale(
    tmp_path, session_data_dir):
  """A run-averaged B_simple below the noise at two batch sizes (a ratio of -300) is shown as
  not measurable, with its reason, in the tables, the CSVs behind them and the figure's
  caption; every CBS definition stands in one table with Zhang's B0 named."""
  from test_critical_batch import _fake_sweep_dir, synthetic_table  # pylint: disable=import-outside-toplevel
  sweep = tmp_path / 'sweep'
  _fake_sweep_dir(sweep, synthetic_table(rng=np.random.default_rng(4)),
                  extra_logs=lambda b: {'grad_sq_estimate': -0.5} if b in (4, 16) else {})
  html_path, markdown = report.write_report([sweep], tmp_path / 'r.html', bootstrap=50,
                                            quiet=True)
  text = markdown.read_text()
  assert '-300' not in text and '-3e+02' not in text and '-300' not in html_path.read_text()
  reason = ('not measurable here (the \\|G\\|² estimate averages to -0.5 ≤ 0: the gradient is '
            'below the noise at this batch (too few groups or steps to resolve it))')
  per_b = text.split('### Steps to target per batch size')[1].split('###')[0]
  assert per_b.count(reason) == 2
  files = tmp_path / 'r_files'
  definitions = pd.read_csv(files / 'sweep_cbs_definitions.csv')
  assert 'Zhang 20% CBS (B0 = 1)' in definitions.columns
  assert definitions.loc[0, 'B_simple, run-averaged: median [min, max] over B'].startswith(
      '150 [150, 150] over 5 B; not measurable here (at B = 4, 16: the |G|² estimate')
  shown = pd.read_csv(files / 'sweep_per_batch_size.csv').set_index('batch_size')['b_simple']
  assert shown[64] == '150' and shown[4].startswith('not measurable here (the |G|² estimate')
  summary = pd.read_csv(files / 'sweep_cbs_summary.csv').iloc[0]
  assert summary['b_simple_median'] == 150 and summary['b_simple_not_measurable'] == 2
  assert '### Critical batch size, every definition side by side' in text
  assert '![steps to target vs B: measured, the fit with its band, perfect scaling, B_crit and ' \
         'the run-averaged B_simple]' in text
