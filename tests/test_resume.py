"""Interrupted runs resume to the same final parameters, bit for bit, on CPU."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import mbx
from mbx.training.checkpoints import Checkpoints

from helpers import REPO, run_python, tiny_config

OVERRIDES = ['train.batch_size=256', 'train.duration=3000 steps', 'train.log_every=50 steps',
             'train.eval_every=500 steps', 'train.checkpoint_every=300 steps',
             'optim.learning_rate=0.003', 'name=resume']


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _uninterrupted(tmp_path: pathlib.Path) -> mbx.Run:
  config = mbx.load_config(REPO / 'configs/mnist1d_cnn.py', OVERRIDES)
  return mbx.train(config, tmp_path / 'uninterrupted', quiet=True)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_parameters(tmp_path):
  workdir = tmp_path / 'killed'
  command = [sys.executable, '-m', 'mbx.cli', 'train', '--config', 'configs/mnist1d_cnn.py',
             '--workdir', str(workdir), '--quiet', *OVERRIDES]
  process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / '600').exists():
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    assert time.time() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  status = mbx.load_run(workdir).status
  assert status['status'] == 'running' and status['step'] < 3000, status
  logged = mbx.load_run(workdir).train_metrics['step'].max()

  resumed = mbx.train(mbx.load_config(REPO / 'configs/mnist1d_cnn.py', OVERRIDES), workdir,
                      quiet=True)
  assert resumed.status['status'] == 'done'
  reference = _uninterrupted(tmp_path)
  _assert_bitwise_equal(resumed.params(), reference.params())
  # The logs were cut back to the checkpoint and re-written: no duplicate or missing rows.
  assert resumed.train_metrics['step'].tolist() == reference.train_metrics['step'].tolist()
  np.testing.assert_array_equal(resumed.train_metrics['loss'], reference.train_metrics['loss'])
  assert logged >= 600


@pytest.mark.slow
def test_checkpoint_interrupted_mid_write_is_never_latest(tmp_path):
  """The process dies after writing checkpoint 600's data but before committing it."""
  workdir = tmp_path / 'crashed'
  code = f'''
    import json, os
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def crash_on_600(self):
      if self.get_final().name == '600':
        os._exit(17)
      return await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = crash_on_600
    import mbx
    config = mbx.load_config('configs/mnist1d_cnn.py', {OVERRIDES!r})
    mbx.train(config, {str(workdir)!r}, quiet=True)
  '''
  with pytest.raises(AssertionError, match=r'\(17\)'):
    run_python(code)
  names = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  assert any(n.startswith('600') and 'tmp' in n for n in names), names  # the partial write
  assert Checkpoints(workdir / 'checkpoints', read_only=True).latest_step() == 300
  params_300 = mbx.load_run(workdir).params(300)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params_300))

  resumed = mbx.train(mbx.load_config(REPO / 'configs/mnist1d_cnn.py', OVERRIDES), workdir,
                      quiet=True)
  assert resumed.status['status'] == 'done'
  assert not any('tmp' in p.name for p in (workdir / 'checkpoints').iterdir())
  _assert_bitwise_equal(resumed.params(), _uninterrupted(tmp_path).params())


def test_the_fastest_split_is_timed_once_recorded_and_reused_on_resume(tmp_path, capfd,
                                                                       session_data_dir):
  """train.micro_batch_size=fastest times the splits of the batch, records the winner in
  config.json as 'fastest=<m>', and a resumed run reuses it (no second timing) and ends with
  the uninterrupted run's parameters, bitwise."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  from helpers import tiny_config  # pylint: disable=import-outside-toplevel
  config = tiny_config(train=dict(batch_size=16, micro_batch_size='fastest'))
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  recorded = json.loads((tmp_path / 'run' / 'config.json').read_text())['train']
  assert recorded['micro_batch_size'].startswith('fastest=')
  micro = int(recorded['micro_batch_size'].split('=')[1])
  assert micro in (16, 8, 4, 2, 1)
  timed = capfd.readouterr().err
  assert f'fastest split: train.micro_batch_size={micro}' in timed
  shutil.rmtree(tmp_path / 'run' / 'checkpoints' / '20')
  (tmp_path / 'run' / 'status.json').write_text(json.dumps({'status': 'running'}))
  resumed = mbx.train(config, tmp_path / 'run', quiet=True)
  assert 'fastest split' not in capfd.readouterr().err  # not timed again
  assert resumed.status['step'] == 20
  for a, b in zip(jax.tree.leaves(resumed.params()), jax.tree.leaves(run.params())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The recorded choice is a config of its own: a re-run from config.json uses the same split.
  again = mbx.train(mbx.load_run(tmp_path / 'run').config, tmp_path / 'again', quiet=True)
  assert 'fastest split' not in capfd.readouterr().err
  for a, b in zip(jax.tree.leaves(again.params()), jax.tree.leaves(run.params())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('value, message', [
    ('fastest=7', 'must divide train.batch_size=64'),
    ('fastest=x', "expected 'fastest' or 'fastest=<positive integer>'"),
    ('quickest', "must be a positive integer, 'auto' or 'fastest'"),
])
def test_a_bad_micro_batch_size_fails_in_one_line(value, message):
  from helpers import tiny_config  # pylint: disable=import-outside-toplevel
  with pytest.raises(mbx.ConfigError, match=message):
    mbx.validate(tiny_config(train=dict(batch_size=64, micro_batch_size=value)))


def test_a_run_recorded_before_new_config_fields_is_still_its_own_run(tmp_path):
  """config.json written by an older mbx lacks fields added since; they take their defaults,
  so the finished run is found again (not refused as a different config)."""
  config = tiny_config()
  first = mbx.train(config, tmp_path, quiet=True)
  path = tmp_path / 'config.json'
  recorded = json.loads(path.read_text())
  for field in ('batch_policy', 'min_batch_size', 'goodput_min_gain'):
    del recorded['train'][field]
  path.write_text(json.dumps(recorded))
  again = mbx.train(config, tmp_path, quiet=True)
  assert again.status == first.status
  changed = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=5))
  with pytest.raises(mbx.ConfigError, match='differs in train.seed'):
    mbx.train(changed, tmp_path, quiet=True)
