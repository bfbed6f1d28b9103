"""How long the `mbx` command takes to answer when it has no real work to do.

    python experiments/bench_startup.py                    # ~1 min on a 2-core CPU
    python experiments/bench_startup.py --repo /tmp/mbx_old   # another checkout's mbx

`mbx --help` and a config error (an unknown field) should answer at once: neither imports the
training stack (JAX, Flax, Optax, Orbax, TFDS), which loads only when a command starts real
work. Each command runs in a fresh process, --repeats times after one unmeasured warm-up
(which fills the OS file cache); the table gives the median wall time and the range. Two
references frame the numbers: the bare interpreter, and importing the training stack alone
(what the CLI used to pay before every answer). Prints a Markdown table; docs/performance.md
holds one.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# (what, argv after the interpreter, the exit status it must give)
COMMANDS = (
    ('python -c pass (the interpreter alone)', ['-c', 'pass'], 0),
    ('mbx --help', ['-m', 'mbx.cli', '--help'], 0),
    ('mbx train --config configs/mnist1d_cnn.py train.batchsize=3 (a config error)',
     ['-m', 'mbx.cli', 'train', '--config', 'configs/mnist1d_cnn.py', 'train.batchsize=3'], 2),
    ('python -c "import jax, flax.linen, optax, orbax.checkpoint, tensorflow_datasets" '
     '(the training stack alone)',
     ['-c', 'import jax, flax.linen, optax, orbax.checkpoint, tensorflow_datasets'], 0),
)


def wall_times(argv: list[str], expected_status: int, repeats: int,
               repo: pathlib.Path) -> list[float]:
  """Seconds per fresh process run in `repo` with its mbx, after one unmeasured run."""
  env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], cwd=repo, env=env, capture_output=True,
                            text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != expected_status:
      raise SystemExit(f'{argv}: exit status {result.returncode}, expected {expected_status}:\n'
                       f'{result.stderr[-2000:]}')
    if i:
      times.append(elapsed)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=11, help='measured runs per command')
  parser.add_argument('--repo', type=pathlib.Path, default=REPO,
                      help='the checkout whose mbx is measured (default: this one), e.g. an '
                           'older commit unpacked with git archive')
  args = parser.parse_args()
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python '
        f'{platform.python_version()}; load average {os.getloadavg()[0]:.2f} at the start; '
        f'median of {args.repeats} fresh processes (min to max); mbx from {args.repo}\n')
  print('| command | wall time |')
  print('|---|---:|')
  for what, argv, status in COMMANDS:
    times = wall_times(argv, status, args.repeats, args.repo.resolve())
    print(f'| {what} | {statistics.median(times):.2f} s ({min(times):.2f} to '
          f'{max(times):.2f}) |', flush=True)


if __name__ == '__main__':
  main()
