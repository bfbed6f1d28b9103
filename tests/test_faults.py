"""Damaged checkpoints: each is moved aside with a warning, and the run resumes from the newest
good one and ends bitwise equal to a run that never had the damaged checkpoint."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

import mbx
from mbx.config import ConfigError

from helpers import tiny_config

# Checkpoints at 10 and 20 (kept: 2) of a 30-step run; the newest, 20, gets damaged.
CONFIG = tiny_config(train=dict(duration='30 steps', checkpoint_every='10 steps',
                                keep_checkpoints=3))


def _truncate_largest(directory: pathlib.Path) -> None:
  files = [p for p in directory.rglob('*') if p.is_file() and p.stat().st_size > 0 and
           p.parent.name == 'd']
  largest = max(files, key=lambda p: p.stat().st_size)
  with open(largest, 'r+b') as f:
    f.truncate(largest.stat().st_size // 2)


def _random_bytes(step_dir: pathlib.Path) -> None:
  shutil.rmtree(step_dir)
  step_dir.mkdir()
  (step_dir / 'params').write_bytes(os.urandom(4096))


DAMAGE = {
    'truncated_params': lambda d: _truncate_largest(d / 'params'),
    'truncated_optimizer_state': lambda d: _truncate_largest(d / 'train_state'),
    'missing_params_metadata': lambda d: (d / 'params' / '_METADATA').unlink(),
    'empty_step_directory': lambda d: (shutil.rmtree(d), d.mkdir()),
    'random_bytes': _random_bytes,
}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run, and a copy of its directory as it was at step 20."""
  root = tmp_path_factory.mktemp('faults')
  partial = mbx.train(dataclasses.replace(CONFIG, train=dataclasses.replace(
      CONFIG.train, duration='20 steps')), root / 'partial', quiet=True)
  assert partial.checkpoint_steps == [10, 20]
  full = mbx.train(CONFIG, root / 'full', quiet=True)
  return root, full


@pytest.mark.slow
@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(
    reference, tmp_path, capsys, damage):
  root, full = reference
  workdir = tmp_path / 'run'
  # The run as a crash left it at step 20, but with the config of the 30-step run.
  shutil.copytree(root / 'partial', workdir)
  (workdir / 'config.json').write_text((root / 'full' / 'config.json').read_text())
  (workdir / 'status.json').write_text('{"status": "running", "step": 20}')
  DAMAGE[damage](workdir / 'checkpoints' / '20')
  run = mbx.train(CONFIG, workdir, quiet=True)
  warning = capsys.readouterr().err
  assert 'checkpoint step 20' in warning and 'moved to' in warning, warning
  corrupt = list((workdir / 'checkpoints' / 'corrupt').iterdir())
  assert len(corrupt) == 1 and corrupt[0].name.startswith('20-')
  assert run.status['status'] == 'done' and run.status['step'] == 30
  # From step 10 onwards the run is recomputed exactly: the same as never having stopped.
  for a, b in zip(jax.tree.leaves(run.params()), jax.tree.leaves(full.params())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert run.train_metrics['step'].tolist() == full.train_metrics['step'].tolist()


@pytest.mark.slow
def test_load_run_falls_back_and_a_named_corrupt_step_is_a_clear_error(reference, tmp_path,
                                                                       capsys):
  root, _ = reference
  workdir = tmp_path / 'run'
  shutil.copytree(root / 'partial', workdir)
  _truncate_largest(workdir / 'checkpoints' / '20' / 'params')
  with pytest.raises(ConfigError, match='checkpoint step 20 cannot be restored'):
    mbx.load_run(workdir).params(step=20)
  params = mbx.load_run(workdir).params()  # the newest that restores: step 10
  assert 'checkpoint step 20' in capsys.readouterr().err
  assert mbx.load_run(workdir).checkpoint_steps == [10]
  assert jax.tree.leaves(params)


@pytest.mark.slow
def test_a_full_disk_during_a_save_fails_the_run_and_keeps_the_previous_checkpoint(
    reference, tmp_path, monkeypatch):
  """Orbax's commit of step 20 raises ENOSPC: status 'failed' with the reason and the last good
  step, checkpoint 10 still loads, and a re-run (disk freed) resumes from it bitwise."""
  import errno  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  _, full = reference
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def full_disk(self, *args, **kwargs):
    if self.get_final().name == '20':
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', full_disk)
  workdir = tmp_path / 'run'
  with pytest.raises(OSError, match='No space left'):
    mbx.train(CONFIG, workdir, quiet=True)
  status = mbx.load_run(workdir).status
  assert status['status'] == 'failed' and status['last_good_step'] == 10, status
  assert 'No space left on device' in status['reason']
  assert mbx.load_run(workdir).checkpoint_steps == [10]
  assert jax.tree.leaves(mbx.load_run(workdir).params())

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', finalize)
  run = mbx.train(CONFIG, workdir, quiet=True)
  assert run.status['status'] == 'done' and run.status['step'] == 30
  for a, b in zip(jax.tree.leaves(run.params()), jax.tree.leaves(full.params())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert run.train_metrics['step'].tolist() == full.train_metrics['step'].tolist()


@pytest.mark.slow
def test_ctrl_c_records_interrupted_and_the_same_command_resumes(tmp_path):
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from helpers import REPO  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  command = [sys.executable, '-m', 'mbx.cli', 'train', '--config', 'configs/mnist1d_cnn.py',
             '--workdir', str(workdir), '--quiet', 'train.duration=3000 steps',
             'train.checkpoint_every=100 steps', 'train.eval_every=1000 steps']
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (workdir / 'checkpoints' / '200').exists():
    assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr[-2000:]
  assert 'Traceback' not in stderr and 'interrupted' in stderr.strip().splitlines()[-1]
  status = mbx.load_run(workdir).status
  assert status['status'] == 'interrupted' and status['last_good_step'] >= 200, status
  assert 'the same command resumes' in status['reason']
  resumed = subprocess.run(command[:-3] + ['train.duration=300 steps',
                                           'train.checkpoint_every=100 steps',
                                           'train.eval_every=1000 steps'],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  # A different duration is a different config: refused, one line, nothing lost.
  assert resumed.returncode == 2, resumed.stderr[-2000:]
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert mbx.load_run(workdir).status['status'] == 'done'
