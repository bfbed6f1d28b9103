"""Bad input that used to get a traceback or nothing: one line, nothing written, nothing trained."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import mbx
from mbx.config import ConfigError

from helpers import REPO, assert_one_line_error, mbx_cli, mbx_train, tiny_config


@pytest.fixture(autouse=True, scope='module')
def prepared_mnist1d():
  """MNIST-1D prepared in the session's data dir, so the CLI's stderr holds only the error."""
  mbx.resolve(tiny_config()).dataset.arrays('train')


def test_a_config_file_with_a_syntax_error_names_file_and_line(tmp_path):
  path = tmp_path / 'broken.py'
  path.write_text('import mbx\n\ndef get_config(:\n  return mbx.Config()\n')
  result = mbx_cli('train', '--config', str(path), '--workdir', str(tmp_path / 'run'))
  assert_one_line_error(result, f'{path}:3', 'syntax error')
  assert result.imported == []  # refused before the training stack loaded
  assert not (tmp_path / 'run').exists()


def test_warmup_longer_than_the_run_is_an_error_naming_both(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                      'train.duration=10 steps', 'optim.warmup=2 epochs')
  assert_one_line_error(result, "optim.warmup='2 epochs'", "train.duration='10 steps'")
  assert not (tmp_path / 'run').exists()


def test_init_from_a_missing_run_is_checked_before_anything_is_written(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                      f'train.init_from={tmp_path / "nowhere"}')
  assert_one_line_error(result, 'train.init_from', 'not a run directory')
  assert not (tmp_path / 'run').exists()


def test_a_catalog_dataset_that_is_not_prepared_is_one_line_with_the_prepare_command(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                      'data.name=mnist', f'data.data_dir={tmp_path / "empty"}',
                      'model.name=mlp')
  assert_one_line_error(result, "'mnist' is not prepared", 'tfds build mnist')
  assert not (tmp_path / 'run').exists()


def test_load_run_checks_the_recorded_config_like_a_new_one(tmp_path):
  run = mbx.train(tiny_config(train=dict(duration='2 steps', checkpoint_every=None)), tmp_path,
                  quiet=True)
  config = json.loads((run.workdir / 'config.json').read_text())
  config['optim']['learning_rate'] = -1.0
  (run.workdir / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ConfigError, match='optim.learning_rate=-1.0'):
    mbx.load_run(tmp_path)


def test_a_truncated_metrics_line_is_skipped_with_a_warning_and_later_rows_kept(tmp_path):
  run = mbx.train(tiny_config(), tmp_path, quiet=True)
  path = run.workdir / 'train_metrics.jsonl'
  lines = path.read_text().splitlines()
  lines[1] = lines[1][:20]
  path.write_text('\n'.join(lines) + '\n')
  with pytest.warns(UserWarning, match=r'train_metrics.jsonl:2: not a JSON row'):
    rows = mbx.load_run(tmp_path).train_metrics
  assert list(rows['step']) == [5, 15, 20]


def test_a_truncated_status_is_a_clear_error_and_training_rewrites_it(tmp_path):
  config = tiny_config(train=dict(duration='10 steps'))
  mbx.train(config, tmp_path, quiet=True)
  (tmp_path / 'status.json').write_text('{"status": "do')
  with pytest.raises(ConfigError, match=r'status.json: not valid JSON'):
    mbx.load_run(tmp_path)
  with pytest.warns(UserWarning, match='status.json: not valid JSON'):
    run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['status'] == 'done' and run.status['step'] == 10


def test_a_second_train_on_the_same_workdir_exits_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  args = ['--config', 'configs/mnist1d_cnn.py', '--workdir', str(workdir), '--quiet',
          'train.duration=20000 steps']
  first = subprocess.Popen([sys.executable, '-m', 'mbx.cli', 'train', *args], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 60
    while not (workdir / 'train_metrics.jsonl').exists() and time.time() < deadline:
      assert first.poll() is None, first.communicate()[1][-2000:]
      time.sleep(0.2)
    second = mbx_train(*args)
    assert first.poll() is None  # it did not wait for the holder to finish (no wall-clock bound)
    assert_one_line_error(second, str(workdir), f'PID {first.pid}', 'another process')
  finally:
    out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-2000:]
  run = mbx.load_run(workdir)
  assert run.status['status'] == 'done' and run.status['step'] == 20000
  steps = run.train_metrics['step'].tolist()
  assert steps == sorted(set(steps))  # no duplicated rows from a second writer
