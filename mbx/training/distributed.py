"""Joining a multi-process JAX system before anything touches a device.

Two ways in:
- `mbx launch` (local processes) sets MBX_COORDINATOR_ADDRESS, MBX_NUM_PROCESSES and
  MBX_PROCESS_ID;
- MBX_DISTRIBUTED=1 lets `jax.distributed.initialize()` detect SLURM, Open MPI or a TPU pod.

On CPU the processes' collectives go through gloo, which has to be chosen before the
backend starts (docs/performance.md, "Multi-process JAX on CPU").
"""
from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

from mbx.config import ConfigError

ENV_FIELDS = ('MBX_COORDINATOR_ADDRESS', 'MBX_NUM_PROCESSES', 'MBX_PROCESS_ID')


def initialize() -> None:
  """Initializes jax.distributed once if the environment asks for it; else does nothing."""
  launched = {name: os.environ.get(name) for name in ENV_FIELDS}
  if jax.distributed.is_initialized():
    return
  if any(launched.values()):
    missing = [name for name, value in launched.items() if not value]
    if missing:
      raise ConfigError(f'{", ".join(missing)} not set: a process of `mbx launch` needs all of '
                        f'{", ".join(ENV_FIELDS)}')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=launched['MBX_COORDINATOR_ADDRESS'],
        num_processes=int(launched['MBX_NUM_PROCESSES']),
        process_id=int(launched['MBX_PROCESS_ID']))
  elif os.environ.get('MBX_DISTRIBUTED') == '1':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize()


def barrier(name: str) -> None:
  """All processes wait here (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def from_writer(values):
  """Process 0's `values` (a float array) on every process: a host-side measurement that the
  processes must agree on, such as a step time a decision is taken from."""
  if jax.process_count() == 1:
    return values
  return multihost_utils.broadcast_one_to_all(values)


def is_writer() -> bool:
  """Only process 0 writes records, metrics and status."""
  return jax.process_index() == 0
