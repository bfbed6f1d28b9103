"""Shared fixtures: a per-session tfds data dir (MNIST-1D is generated there once).

Tests never reach the network.
"""
from __future__ import annotations

import os
import pathlib

import pytest


@pytest.fixture(scope='session', autouse=True)
def session_data_dir(tmp_path_factory):
  """MNIST-1D is prepared once per test session in a private tfds data_dir."""
  path = os.environ.get('MBX_TEST_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))
  previous = os.environ.get('MBX_DATA_DIR')
  os.environ['MBX_DATA_DIR'] = path
  yield pathlib.Path(path)
  if previous is None:
    os.environ.pop('MBX_DATA_DIR', None)
  else:
    os.environ['MBX_DATA_DIR'] = previous
