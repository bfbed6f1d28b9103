"""Small configs that train in seconds, and a runner for multi-device subprocesses.

Forcing 8 host devices slows ordinary single-device jits (docs/performance.md), so only
subprocesses started through `run_python(..., devices=8)` get that flag.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

import mbx

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**sections) -> mbx.Config:
  """MNIST-1D CNN, Adam, batch 64, 20 steps; `sections` replace fields per section,
  e.g. tiny_config(train=dict(batch_size=32), optim=dict(name='sgd'))."""
  config = mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='adam', learning_rate=1e-2),
      train=mbx.TrainConfig(batch_size=64, duration='20 steps', log_every='5 steps',
                            eval_every='10 steps', checkpoint_every='10 steps'),
      name='tiny')
  for section, fields in sections.items():
    if section == 'name':
      config = dataclasses.replace(config, name=fields)
      continue
    config = dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **fields)})
  return config


def run_python(code: str, *, devices: int = 1, timeout: float = 600, env: dict | None = None):
  """Runs `code` in a fresh interpreter with `devices` host devices; returns its last
  stdout line parsed as JSON (the code should print one)."""
  full_env = dict(os.environ, **(env or {}))
  full_env['XLA_FLAGS'] = (full_env.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={devices}').strip()
  full_env['PYTHONPATH'] = str(REPO) + os.pathsep + full_env.get('PYTHONPATH', '')
  result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
  if result.returncode != 0:
    raise AssertionError(f'subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_lm_config(path, **sections) -> mbx.Config:
  """A 1-layer Transformer on the text file `path`: windows of 16 characters, batch 8, 20
  steps of AdamW; `sections` replace fields per section, as in tiny_config."""
  config = mbx.Config(
      data=mbx.DataConfig(name='text_file', options={'path': str(path), 'seq_len': 16,
                                                     'fractions': [0.8, 0.1, 0.1]}),
      model=mbx.ModelConfig(name='transformer', options={
          'num_layers': 1, 'width': 32, 'num_heads': 2, 'max_len': 16}),
      optim=mbx.OptimConfig(name='adamw', learning_rate=3e-3, weight_decay=0.1),
      train=mbx.TrainConfig(batch_size=8, duration='20 steps', log_every='5 steps',
                            eval_every='10 steps', checkpoint_every='10 steps',
                            eval_batch_size=64),
      name='tiny_lm')
  for section, fields in sections.items():
    config = dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **fields)})
  return config


def mbx_train(*args: str, cwd=REPO, timeout: float = 120) -> subprocess.CompletedProcess:
  """`python -m mbx.cli train ARGS` in a fresh process."""
  return subprocess.run([sys.executable, '-m', 'mbx.cli', 'train', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


# The libraries a command loads only once it starts real work.
TRAINING_STACK = ('jax', 'flax', 'optax', 'orbax', 'tensorflow_datasets')
_PROBE_MARK = 'mbx-test-probe: '
# `python -m mbx.cli` that, as it exits, prints which TRAINING_STACK modules it imported and,
# when asked to count (JAX then loads first), how many XLA programs it compiled.
_PROBED_CLI = f"""
import atexit, json, runpy, sys
compiles = None
if sys.argv.pop(1) == 'count':
  import jax
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, *_, **__: compiles.append(event)
      if event == '/jax/core/compile/backend_compile_duration' else None)
atexit.register(lambda: print({_PROBE_MARK!r} + json.dumps(dict(
    imported=[m for m in {TRAINING_STACK!r} if m in sys.modules],
    compiles=None if compiles is None else len(compiles)))))
sys.argv[0] = 'mbx'
runpy.run_module('mbx.cli', run_name='__main__', alter_sys=True)
"""


def mbx_cli(*args: str, count_compiles: bool = False, cwd=REPO,
            timeout: float = 120) -> subprocess.CompletedProcess:
  """`python -m mbx.cli ARGS` in a fresh process; the result also holds `imported` (the
  TRAINING_STACK modules the command loaded) and, with count_compiles, `compiles` (XLA
  programs it compiled)."""
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run(
      [sys.executable, '-c', _PROBED_CLI, 'count' if count_compiles else 'no', *args], cwd=cwd,
      env=env, capture_output=True, text=True, timeout=timeout)
  lines = result.stdout.splitlines()
  assert lines and lines[-1].startswith(_PROBE_MARK), result.stderr[-2000:]
  report = json.loads(lines[-1][len(_PROBE_MARK):])
  result.stdout = ''.join(line + '\n' for line in lines[:-1])
  result.imported, result.compiles = report['imported'], report['compiles']
  return result


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
  """Exit status 2 and a single stderr line, no traceback, containing every fragment."""
  assert result.returncode == 2, result.stderr[-2000:]
  error = result.stderr.strip()
  assert 'Traceback' not in error and len(error.splitlines()) == 1, error
  for fragment in fragments:
    assert fragment in error, (fragment, error)


def read_wandb_history(path) -> list[dict]:
  """The history rows of an offline W&B run file (`<run>.wandb`), as {key: float}.

  Written by hand for the tests: wandb 0.31 ships no reader for its offline files. They use
  LevelDB's log format (a 7-byte header, then 32 KiB blocks of records: crc32 (4 bytes), length
  (2), type (1: full, 2: first, 3: middle, 4: last), data), each record a wandb Record proto.
  """
  import struct  # pylint: disable=import-outside-toplevel
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  raw = pathlib.Path(path).read_bytes()
  block, position, pending, rows = 32768, 7, b'', []
  while position + 7 <= len(raw):
    if block - position % block < 7:  # a block's tail too short for a header is padding
      position += block - position % block
      continue
    _, length, kind = struct.unpack('<IHB', raw[position:position + 7])
    data = raw[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending + data)
      pending = b''
      if record.WhichOneof('record_type') == 'history':
        rows.append({item.key or '/'.join(item.nested_key): float(json.loads(item.value_json))
                     for item in record.history.item})
    elif kind in (2, 3):
      pending += data
  return rows


class RecordingDataset:
  """A resolved dataset whose train-split reads are recorded: `reads` holds the example
  indices of every read, in order (checks that a batch schedule's stream is exact)."""

  def __init__(self, base):
    self.base, self.name, self.reads = base, base.name, []

  def __getattr__(self, name):
    return getattr(self.base, name)

  def source(self, split):
    source = self.base.source(split)
    return _RecordingSource(source, self.reads) if split == 'train' else source


class _RecordingSource:
  def __init__(self, source, reads: list):
    self.source, self.reads = source, reads

  def __len__(self):
    return len(self.source)

  def __getitem__(self, indices):
    self.reads.append(np.asarray(indices).copy())
    return self.source[indices]
