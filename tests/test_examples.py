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
