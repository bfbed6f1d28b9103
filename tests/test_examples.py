"""The worked examples run as a user would run them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_own_model_example_trains_sweeps_and_analyses_in_fresh_processes(tmp_path):
  result = subprocess.run([sys.executable, 'examples/own_model.py', '--quick', '--out',
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert config['model']['name'].endswith('examples/own_model.py:NoisyMLP')
  assert config['data']['name'].endswith('examples/own_model.py:noisy_sines')
  assert (tmp_path / 'sweep' / 'analysis' / 'per_batch_size.csv').exists()
  sharpness = json.loads((tmp_path / 'run' / 'analysis' / 'sharpness_step300.json').read_text())
  assert sharpness['train']['accuracy'] > 0.5 and sharpness['sharpness']['results']
  assert 'test accuracy' in result.stdout


@pytest.mark.slow
def test_own_study_example_runs_both_studies_and_the_report_in_fresh_processes(tmp_path):
  result = subprocess.run([sys.executable, 'examples/own_study.py', '--quick', '--out',
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  import pandas as pd  # pylint: disable=import-outside-toplevel
  sharp = tmp_path / 'sharp_minima'
  summary = json.loads((sharp / 'summary.json').read_text())
  assert summary['config']['model']['name'].endswith('examples/own_study.py:SineMLP')
  assert summary['invocations'][-1]['trained_runs'] == 3 + 3 * 2  # tuning at 1 LR, 2 seeds
  paired = pd.read_csv(sharp / 'paired.csv')
  # One row per (comparison, measure) with n, the mean difference or ratio, its CI and p.
  assert not paired.duplicated(['comparison', 'measure']).any()
  assert set(paired['comparison']) == {'LB vs SB', 'FB vs SB'}
  assert {'test acc (%)', 'φ full ε=0.001', 'λ_max', 'tr(H)'} <= set(paired['measure'])
  assert (paired['n'] == 2).all()
  finite = paired.dropna(subset=['ci_low'])
  assert len(finite) >= len(paired) - 2
  assert ((finite['ci_low'] <= finite['estimate']) & (finite['estimate'] <= finite['ci_high'])).all()
  assert paired['p_t'].between(0, 1).sum() >= len(paired) - 2
  runs = pd.read_csv(sharp / 'runs.csv')
  assert len(runs) == 6 and runs['test_accuracy'].between(0.25, 1).all()
  cbs = tmp_path / 'cbs'
  fit = pd.read_csv(cbs / 'cbs_summary.csv')
  assert fit['optimizer'].tolist() == ['adam'] and fit['b_crit'].notna().all()
  assert len(pd.read_csv(cbs / 'trials.csv')) == 5 * 3
  report = (tmp_path / 'report.md').read_text()
  assert 'Study sharp-minima' in report and 'Study cbs' in report
  assert 'Paired comparisons' in report and 'λ_max' in report
  readme = (sharp / 'README.md').read_text()
  assert summary['command'] in readme and '## Interpretation' in readme


@pytest.mark.slow
def test_own_optimizer_example_trains_sweeps_analyses_and_runs_its_sam_on_eight_devices(
    tmp_path):
  result = subprocess.run([sys.executable, 'examples/own_optimizer.py', '--quick', '--out',
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((tmp_path / 'signum' / 'config.json').read_text())
  assert config['optim']['name'].endswith('examples/own_optimizer.py:signum')
  assert config['optim']['options'] == {'beta': 0.9, 'weight_decay': 1e-4}
  import pandas as pd  # pylint: disable=import-outside-toplevel
  trials = pd.read_csv(tmp_path / 'sweep' / 'trials.csv')
  assert len(trials) == 9 and (trials['status'] == 'done').all()
  assert set(trials['momentum']) == {0.9}  # the declared momentum option, read from options
  assert (tmp_path / 'sweep' / 'analysis' / 'per_batch_size.csv').exists()
  sharpness = json.loads((tmp_path / 'signum' / 'analysis' /
                          'sharpness_step300.json').read_text())
  assert sharpness['sharpness']['results']
  sam = json.loads((tmp_path / 'signum_sam' / 'status.json').read_text())
  sam_config = json.loads((tmp_path / 'signum_sam' / 'config.json').read_text())
  assert sam_config['optim']['update_rule'].endswith('examples/own_optimizer.py:SharpnessAware')
  assert sam['status'] == 'done' and sam['num_devices'] == 8
  assert sam_config['train']['micro_batch_size'] == 32  # 8 devices x 2 micro-batches
  assert 'signum_sam: optimizer signum, update rule SharpnessAware, 8 devices' in result.stdout
