"""Multi-process training on one machine: `mbx launch` joins local processes through
jax.distributed (gloo collectives on CPU), as hosts of a cluster would be joined.

What is checked: 2 processes x 4 devices train the same parameters as 1 process x 8 devices;
only process 0 writes; evaluation counts every example once; each process reads only its own
devices' rows; a run whose second process is killed resumes bitwise when both are relaunched.
"""
from __future__ import annotations

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

from helpers import REPO

from mbx.training.records import load_run

pytestmark = pytest.mark.slow

TRAIN = ['--config', 'configs/mnist1d_cnn.py', 'train.batch_size=32', "train.duration=60 steps",
         'train.log_every=15 steps', 'train.eval_every=30 steps',
         'train.checkpoint_every=15 steps', 'data.placement=host']


def _env(**extra) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
  env.pop('XLA_FLAGS', None)
  return env


def _launch_command(workdir, *extra) -> list[str]:
  return [sys.executable, '-m', 'mbx.cli', 'launch', '-n', '2', '--devices-per-process', '4',
          '--', sys.executable, '-m', 'mbx.cli', 'train', *TRAIN, '--workdir', str(workdir),
          *extra]


def _launch(workdir, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(_launch_command(workdir), cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


def _leaves(workdir, step):
  params, _, _ = load_run(workdir).restore(step)
  return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  from mbx import data
  data.load_arrays('mnist1d', 'test')  # prepared once here, not raced by the two processes
  workdir = tmp_path_factory.mktemp('mp') / 'two'
  result = _launch(workdir)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return workdir, result


def test_two_processes_train_the_parameters_of_one_process_with_eight_devices(
    two_process_run, tmp_path):
  workdir, launched = two_process_run
  single = tmp_path / 'one'
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'train', *TRAIN, '--workdir', str(single)], cwd=REPO,
      env=_env(XLA_FLAGS='--xla_force_host_platform_device_count=8'), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  for ours, reference in zip(_leaves(workdir, 60), _leaves(single, 60), strict=True):
    scale = np.max(np.abs(reference)) or 1.0
    assert np.max(np.abs(ours - reference)) / scale <= 1e-5
  run = load_run(workdir)
  # Only process 0 wrote: each row once, one summary printed.
  assert run.train_metrics.step.tolist() == [15, 30, 45, 60]
  assert run.eval_metrics.step.tolist() == [0, 30, 60]
  assert (run.eval_metrics.eval_examples == 1000).all()  # every test example, once
  assert launched.stdout.count('status=done') == 1 and '[0] status=done' in launched.stdout
  reference = load_run(single).eval_metrics
  np.testing.assert_allclose(run.eval_metrics.eval_loss, reference.eval_loss, rtol=1e-5)


def _pid_of_rank(rank: int, workdir) -> int | None:
  for proc in pathlib.Path('/proc').iterdir():
    try:
      environ = (proc / 'environ').read_bytes().split(b'\0')
      cmdline = (proc / 'cmdline').read_bytes()
    except OSError:
      continue
    if f'MBX_PROCESS_ID={rank}'.encode() in environ and str(workdir).encode() in cmdline:
      return int(proc.name)
  return None


def test_a_run_whose_second_process_is_killed_resumes_bitwise_on_relaunch(
    two_process_run, tmp_path):
  reference, _ = two_process_run
  workdir = tmp_path / 'killed'
  launcher = subprocess.Popen(_launch_command(workdir), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 240
  while not (workdir / 'checkpoints' / '15').exists():
    assert time.monotonic() < deadline and launcher.poll() is None, launcher.stdout.read()
    time.sleep(0.05)
  os.kill(_pid_of_rank(1, workdir), signal.SIGKILL)
  output, _ = launcher.communicate(timeout=120)
  assert launcher.returncode != 0, output  # the launcher stopped process 0 and says so
  status = json.loads((workdir / 'status.json').read_text())
  assert status['step'] < 60 and status['status'] != 'done'
  result = _launch(workdir)
  assert result.returncode == 0, result.stdout[-3000:]
  for ours, expected in zip(_leaves(workdir, 60), _leaves(reference, 60), strict=True):
    np.testing.assert_array_equal(ours, expected)


FEED_CHECK = r'''
import json
from mbx.training import distributed
distributed.initialize()
import jax, jax.numpy as jnp, numpy as np
from mbx.training import feed
from mbx.training.step import batch_sharded, make_mesh, replicated

mesh = make_mesh()
sharding = batch_sharded(mesh)
rows = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
reads = []
def read(positions):
  reads.extend(positions.tolist())
  return {'inputs': rows[positions]}
batch = feed.host_local_batch(read, 24, {'inputs': (3,)}, sharding)
mine = sorted({int(p) for d, index in sharding.addressable_devices_indices_map((24, 3)).items()
               for p in np.arange(24)[index[0]]})
total = jax.jit(lambda x: x.sum(), out_shardings=replicated(mesh))(batch['inputs'])

class Source:
  def __init__(self): self.read = []
  def __len__(self): return 10
  def __getitem__(self, indices):
    indices = np.asarray(indices); self.read.extend(indices.tolist())
    return {'inputs': rows[indices], 'targets': indices.astype(np.int32)}
source = Source()
sums = jax.jit(lambda b, m: jnp.stack([jnp.sum(b['inputs'].sum(1) * m), jnp.sum(m)]),
               out_shardings=replicated(mesh))
eval_totals = sum(np.asarray(sums(b, m)) for b, m in feed.streamed_eval_batches(source, 8, mesh))
print(json.dumps({'rank': jax.process_index(), 'reads': sorted(reads), 'mine': mine,
                  'total': float(total), 'eval_reads': sorted(set(source.read) - {0}),
                  'eval_totals': eval_totals.tolist()}))
'''


def test_each_process_reads_only_the_rows_of_its_own_devices():
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'launch', '-n', '2', '--devices-per-process', '2', '--',
       sys.executable, '-c', FEED_CHECK], cwd=REPO, env=_env(), capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0, result.stdout[-3000:]
  reports = {}
  for line in result.stdout.splitlines():
    rank, _, text = line.partition('] ')
    if text.startswith('{'):
      reports[int(rank.lstrip('['))] = json.loads(text)
  assert sorted(reports) == [0, 1]
  rows = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
  for rank, report in reports.items():
    assert report['reads'] == report['mine'] == list(range(12 * rank, 12 * rank + 12))
    assert report['total'] == float(rows.sum())
    # eval batches of 8 over 10 examples: process 0 holds positions 0-3 of each batch, process
    # 1 positions 4-7 (the second batch's are all padding, so it reads nothing there); row 0
    # is also read once by every process to learn the row shapes
    assert report['eval_reads'] == ([1, 2, 3, 8, 9] if rank == 0 else [4, 5, 6, 7])
    assert report['eval_totals'] == [float(rows[:10].sum()), 10.0]


def test_launch_stops_the_other_processes_when_one_fails(tmp_path):
  # Rank 0 waits for a signal and would wait forever; rank 1 fails once rank 0 is waiting.
  code = ('import os, pathlib, signal, sys, time\n'
          'rank = int(os.environ["MBX_PROCESS_ID"])\n'
          f'ready = pathlib.Path({str(tmp_path / "ready")!r})\n'
          'signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n'
          'print("hello from", rank, os.environ["MBX_NUM_PROCESSES"], flush=True)\n'
          'if rank == 1:\n'
          '  while not ready.exists(): time.sleep(0.01)\n'
          '  sys.exit(3)\n'
          'ready.touch()\n'
          'signal_number = signal.sigwait({signal.SIGTERM})\n'
          'print("stopped by", signal.Signals(signal_number).name, flush=True)\n')
  result = subprocess.run([sys.executable, '-m', 'mbx.cli', 'launch', '-n', '2', '--',
                           sys.executable, '-c', code], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 3
  assert '[0] hello from 0 2' in result.stdout and '[1] hello from 1 2' in result.stdout
  assert '[0] stopped by SIGTERM' in result.stdout
  assert result.stderr.strip().splitlines() == [
      'mbx launch: a process exited with code 3; the others were stopped']
