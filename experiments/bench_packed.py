"""How much faster is a sweep when trials share one vmapped program? (issue 6)

Question: K trials of the MNIST-1D CNN that differ only in learning rate (and
seed) — trained one after the other with `mbx.train`, or packed into one jitted,
vmapped step with `mbx.train_packed`. Both write identical run
directories (tests/test_packed.py checks the parameters agree).

    python experiments/bench_packed.py                 # ~3 min on a 2-core CPU
    python experiments/bench_packed.py --trials 4 --batch-sizes 1 16

Reports, per batch size, the wall time of the whole sweep (data loading,
compilation, evaluation and checkpoints included) and the training-loop time
summed over trials (status.json train_time; for a pack, the pack's loop time),
and their ratios. Prints a Markdown table; results/bench_packed.md holds one.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import jax
import numpy as np

import mbx
from mbx.training.loop import train_packed

STEPS = {1: 3000, 16: 1500, 256: 300, 4000: 40}


def configs(batch_size: int, steps: int, trials: int) -> list[mbx.Config]:
  learning_rates = np.geomspace(3e-3, 1e-1, trials)
  return [mbx.Config(
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='momentum', learning_rate=float(lr), momentum=0.9),
      train=mbx.TrainConfig(batch_size=batch_size, duration=f'{steps} steps', seed=i,
                            log_every=f'{max(steps // 5, 1)} steps',
                            eval_every=f'{max(steps // 5, 1)} steps', checkpoint_every=None),
      name=f'bench_b{batch_size}_{i}') for i, lr in enumerate(learning_rates)]


def measure(batch_size: int, steps: int, trials: int) -> dict[str, float]:
  sweep = configs(batch_size, steps, trials)
  with tempfile.TemporaryDirectory() as root:
    start = time.perf_counter()
    solo = [mbx.train(c, f'{root}/solo{i}', quiet=True) for i, c in enumerate(sweep)]
    solo_wall = time.perf_counter() - start
    start = time.perf_counter()
    packed = train_packed(sweep, [f'{root}/packed{i}' for i in range(trials)], quiet=True)
    packed_wall = time.perf_counter() - start
  solo_train = sum(r.status['train_time'] for r in solo)
  packed_train = max(r.status['train_time'] for r in packed)  # one loop for all trials
  return {'solo_wall': solo_wall, 'packed_wall': packed_wall, 'solo_train': solo_train,
          'packed_train': packed_train,
          'solo_compile': sum(r.status['compile_time'] for r in solo),
          'packed_compile': packed[0].status['compile_time']}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--trials', type=int, nargs='*', default=[8, 16],
                      help='pack sizes K to measure')
  parser.add_argument('--batch-sizes', type=int, nargs='*', default=sorted(STEPS))
  parser.add_argument('--steps-scale', type=float, default=1.0)
  args = parser.parse_args()
  print(f'Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s); '
        f'jax {jax.__version__}; MNIST-1D CNN, momentum SGD; K trials per batch size '
        'differing in learning rate and seed.\n')
  print('| K | batch | steps | one-by-one: wall (s) | packed: wall (s) | wall speed-up | '
        'one-by-one: loop (s) | packed: loop (s) | loop speed-up | compile one-by-one / packed (s) |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for trials in args.trials:
    for batch_size in args.batch_sizes:
      steps = max(int(STEPS.get(batch_size, 200) * args.steps_scale), 10)
      m = measure(batch_size, steps, trials)
      print(f'| {trials} | {batch_size} | {steps} | {m["solo_wall"]:.1f} | {m["packed_wall"]:.1f} | '
            f'{m["solo_wall"] / m["packed_wall"]:.2f}x | {m["solo_train"]:.2f} | '
            f'{m["packed_train"]:.2f} | {m["solo_train"] / m["packed_train"]:.2f}x | '
            f'{m["solo_compile"]:.1f} / {m["packed_compile"]:.1f} |', flush=True)


if __name__ == '__main__':
  main()
