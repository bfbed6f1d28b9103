"""`mbx launch -n 2 [--devices-per-process 4] -- mbx train ...`: N local processes as one JAX
system, for testing multi-host code on one machine and for single-node multi-process use.

Each process gets the coordinator settings that `mbx.training.distributed.initialize` reads
(MBX_COORDINATOR_ADDRESS, MBX_NUM_PROCESSES, MBX_PROCESS_ID); its output is streamed with a
`[rank]` prefix. When one process fails, the others are stopped and the launcher exits with
the failing process's code. On SLURM or a TPU pod use `srun`/the pod's launcher instead, with
MBX_DISTRIBUTED=1 (jax.distributed's own cluster detection; docs/multi_host.md).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from mbx.config import ConfigError

STOP_GRACE_SECONDS = 10.0


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'launch', help='run a command as N local processes joined by jax.distributed',
      description='Starts N copies of COMMAND as one multi-process JAX system on this machine.',
      usage='mbx launch -n N [--devices-per-process D] [--port P] -- COMMAND ...')
  parser.add_argument('-n', '--num-processes', type=int, required=True)
  parser.add_argument('--devices-per-process', type=int, default=None,
                      help='CPU only: host devices each process simulates '
                           '(sets --xla_force_host_platform_device_count)')
  parser.add_argument('--port', type=int, default=None,
                      help='coordinator port on 127.0.0.1 (default: a free one)')
  parser.add_argument('launched', nargs='+', metavar='COMMAND', help='the command, after --')
  parser.set_defaults(run=_run)


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def process_env(rank: int, num_processes: int, port: int,
                devices_per_process: int | None) -> dict[str, str]:
  env = dict(os.environ, MBX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
             MBX_NUM_PROCESSES=str(num_processes), MBX_PROCESS_ID=str(rank),
             PYTHONUNBUFFERED='1')
  if devices_per_process is not None:
    flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                   env.get('XLA_FLAGS', '')).strip()
    env['XLA_FLAGS'] = (f'{flags} --xla_force_host_platform_device_count='
                        f'{devices_per_process}').strip()
  return env


def _stream(rank: int, process: subprocess.Popen, lock: threading.Lock) -> None:
  for line in process.stdout:
    with lock:
      sys.stdout.write(f'[{rank}] {line}')
      sys.stdout.flush()


def launch(command: list[str], num_processes: int, *, devices_per_process: int | None = None,
           port: int | None = None) -> int:
  """Runs `command` as `num_processes` processes; returns 0, or the first failure's code."""
  if num_processes < 1:
    raise ConfigError(f'-n/--num-processes={num_processes}: must be at least 1')
  if devices_per_process is not None and devices_per_process < 1:
    raise ConfigError(f'--devices-per-process={devices_per_process}: must be at least 1')
  if not command:
    raise ConfigError('no command given: mbx launch -n N -- COMMAND ...')
  port = port or free_port()
  lock = threading.Lock()
  processes = []
  for rank in range(num_processes):
    processes.append(subprocess.Popen(
        command, env=process_env(rank, num_processes, port, devices_per_process),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
  readers = [threading.Thread(target=_stream, args=(rank, p, lock), daemon=True)
             for rank, p in enumerate(processes)]
  for reader in readers:
    reader.start()
  code = 0
  try:
    while any(p.poll() is None for p in processes):
      failed = [p for p in processes if p.poll() not in (None, 0)]
      if failed:
        code = failed[0].returncode
        _stop(processes, signal.SIGTERM)
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    _stop(processes, signal.SIGINT)
    code = 130
  for process in processes:
    process.wait()
  for reader in readers:
    reader.join(timeout=5)
  if code == 0:
    code = next((p.returncode for p in processes if p.returncode != 0), 0)
  return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def _stop(processes, sig) -> None:
  """Sends `sig` to the live processes' groups, then SIGKILL after a grace period."""
  for process in processes:
    if process.poll() is None:
      os.killpg(process.pid, sig)
  deadline = time.monotonic() + STOP_GRACE_SECONDS
  while time.monotonic() < deadline and any(p.poll() is None for p in processes):
    time.sleep(0.1)
  for process in processes:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)


def _run(args) -> None:
  command = args.launched[1:] if args.launched[:1] == ['--'] else args.launched
  code = launch(command, args.num_processes, devices_per_process=args.devices_per_process,
                port=args.port)
  if code:
    print(f'mbx launch: a process exited with code {code}; the others were stopped',
          file=sys.stderr)
    sys.exit(code)
