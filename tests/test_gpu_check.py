"""experiments/gpu_check.py: its dry run on CPU, and the memory-analysis pitfall it reports."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from helpers import REPO

from mbx.training import autobatch as autobatch_lib


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_section(tmp_path):
  out = tmp_path / 'gpu_check.md'
  result = subprocess.run([sys.executable, 'experiments/gpu_check.py', '--dry-run', '--out',
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert text.startswith('# GPU check (dry run')
  for title in ('1. Train step', '2. AutoBatch', '3. Packed trials'):
    assert f'## {title}' in text
  assert 'Failed' not in text and 'failed:' not in text
  for model in ('ResNet-18', 'ViT', 'LM Transformer'):
    assert f'| {model}' in text
  assert 'AutoBatch: largest per-device batch' in text
  assert 'Real boundary not measured here: --verify-oom needs a GPU' in text
  assert 'Total wall time' in text


def test_gpu_check_refuses_to_measure_on_a_cpu_or_to_overwrite_results_with_a_dry_run():
  for args in (['--dry-run'], []):
    result = subprocess.run([sys.executable, 'experiments/gpu_check.py', *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith('gpu_check.py: error: ')
  assert not (REPO / 'results' / 'gpu_check.md').exists() or 'dry run' not in (
      REPO / 'results' / 'gpu_check.md').read_text()


def test_autobatch_says_so_when_memory_analysis_returns_zeros():
  zeros = types.SimpleNamespace(argument_size_in_bytes=0, output_size_in_bytes=0,
                                temp_size_in_bytes=0, generated_code_size_in_bytes=0)
  jitted = types.SimpleNamespace(lower=lambda *a: types.SimpleNamespace(
      compile=lambda: types.SimpleNamespace(memory_analysis=lambda: zeros)))
  compiler = types.SimpleNamespace(compiles=0, compile_seconds=0.0, backend='gpu')
  with pytest.raises(RuntimeError, match='memory_analysis.. returned all zeros'):
    autobatch_lib._StepCompiler._analyse(compiler, jitted)  # pylint: disable=protected-access
