"""How much faster is a packed sweep than the same sweep trained one trial after the other?
(whole-sweep wall time, packed vs one-by-one, at B in {1, 4, 16})

The sweep is the critical-batch-size study's own (configs/cbs_mnist1d_cnn.py: the MNIST-1D
CNN, momentum SGD, 6 learning rates x 2 seeds = 12 trials per batch size, geometric
evaluations, each trial stopped at validation accuracy 0.85 or at its budget, the final
checkpoint written), restricted to one batch size at a time. It runs through `run_sweep`, as
`mbx sweep` does, with sweep.pack off and on; each run is a fresh process (so each compiles,
as a user's sweep does), and the wall time is the whole `run_sweep` call: data loading,
compilation, training, evaluations, checkpoints, records and trials.csv.

    python experiments/bench_packed.py --out results/bench_packed.md   # ~10 min, 2-core CPU
    python experiments/bench_packed.py --batch-sizes 16 --budget-scale 0.1 --repeats 1

Reported per batch size: the median wall time of --repeats runs of each (alternated, so a
drift of the machine hits both), their ratio, and where the time went (training loops,
compilation) from the trials' status.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'experiments'))
from bench_step import in_fresh_process  # pylint: disable=wrong-import-position


def study_sweep(batch_size: int, budget_scale: float, pack: bool,
                learning_rates: int | None = None):
  """The CBS study's sweep at one batch size, momentum SGD only (learning_rates: fewer points
  of its learning-rate grid, for a quick check)."""
  from mbx.sweep.grid import SweepConfig  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('cbs', REPO / 'configs' / 'cbs_mnist1d_cnn.py')
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  sweep: SweepConfig = study.get_sweep()
  steps = int(study.budget(batch_size).split()[0])
  return dataclasses.replace(
      sweep, batch_sizes=(batch_size,), budgets={},
      budget=f'{max(int(steps * budget_scale), 10)} steps',
      search=tuple(dataclasses.replace(s, num_learning_rates=learning_rates or
                                       s.num_learning_rates)
                   for s in sweep.search if s.optimizer == 'momentum'),
      pack=pack, pack_max_batch_size=None, name=f'bench_packed_b{batch_size}')


def time_sweep(batch_size: int, budget_scale: float, pack: bool,
               learning_rates: int | None = None) -> dict:
  """Runs the sweep in this (fresh) process; wall time and the trials' own times."""
  from mbx.sweep.runner import run_sweep  # pylint: disable=import-outside-toplevel
  sweep = study_sweep(batch_size, budget_scale, pack, learning_rates)
  with tempfile.TemporaryDirectory() as sweep_dir:
    start = time.perf_counter()
    run_sweep(sweep, sweep_dir, log=lambda text: None)
    wall = time.perf_counter() - start
    statuses = [json.loads(p.read_text())
                for p in pathlib.Path(sweep_dir).glob('trials/*/status.json')]
  done = [s for s in statuses if s.get('status') in ('done', 'diverged')]
  # A pack's loop and compile are shared: each trial records the pack's (the longest one).
  combine = max if pack else sum
  return {'wall': wall, 'trials': len(statuses), 'finished': len(done),
          'steps': sum(s['step'] for s in done), 'budget': sweep.budget,
          'reached': sum('steps_to_target' in s for s in done),
          'train_time': combine(s['train_time'] for s in done),
          'compile_time': combine(s.get('compile_time', 0.0) for s in done)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch-sizes', type=int, nargs='*', default=[1, 4, 16])
  parser.add_argument('--budget-scale', type=float, default=1.0,
                      help="times the study's per-batch-size step budget")
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--out', default=None, help='also write Markdown here')
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  command = 'python ' + ' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
  lines = [f'Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, '
           f'{jax.device_count()} {jax.default_backend()} device(s); jax {jax.__version__}. '
           f'Sweep: configs/cbs_mnist1d_cnn.py, momentum SGD, one batch size per row '
           f'(6 learning rates x 2 seeds), stopped at validation accuracy 0.85 or the budget; '
           f'median of {args.repeats} fresh-process runs of each.', '',
           '| batch | trials | budget | reached target: one-by-one / packed | steps trained: '
           'one-by-one / packed | one-by-one: wall (s) | packed: wall (s) | wall speed-up | '
           'one-by-one: loops, compile (s) | packed: loop, compile (s) |',
           '|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|']
  print('\n'.join(lines), flush=True)
  for batch_size in args.batch_sizes:
    runs = {False: [], True: []}
    for repeat in range(args.repeats):
      for pack in ((False, True) if repeat % 2 == 0 else (True, False)):
        runs[pack].append(in_fresh_process(time_sweep, batch_size, args.budget_scale, pack))
    solo, packed = ({k: statistics.median(r[k] for r in runs[p])
                     for k in ('wall', 'train_time', 'compile_time')} for p in (False, True))
    first, alone = runs[True][0], runs[False][0]
    for p in runs:  # runs of one variant are bitwise repeats
      if any((r['reached'], r['steps']) != (runs[p][0]['reached'], runs[p][0]['steps'])
             for r in runs[p]):
        print(f'warning: B = {batch_size}: repeats of pack={p} trained differently',
              file=sys.stderr)
    row = (f'| {batch_size} | {first["trials"]} | {first["budget"]} | '
           f'{alone["reached"]} / {first["reached"]} | {alone["steps"]:,} / {first["steps"]:,} | '
           f'{solo["wall"]:.1f} | {packed["wall"]:.1f} | {solo["wall"] / packed["wall"]:.2f}x | '
           f'{solo["train_time"]:.1f}, {solo["compile_time"]:.1f} | '
           f'{packed["train_time"]:.1f}, {packed["compile_time"]:.1f} |')
    lines.append(row)
    print(row, flush=True)
  if args.out:
    text = [f'Command: `{command}` ({time.strftime("%Y-%m-%d")})', '', *lines, '',
            'Packed trials compute what they would alone up to float rounding (vmapped kernels '
            'round differently); trials near the edge of stability then drift apart, which can '
            'move when they reach the target, hence the two counts. '
            'Wall = the whole `run_sweep` call in a fresh process (JAX and mbx imports excluded). '
            'Loops = the training loops (status.json `train_time`, summed over one-by-one '
            'trials; a pack has one loop); compile = ahead-of-time compilation of the steps '
            '(one-by-one trials after the first reuse the compiled programs).']
    pathlib.Path(args.out).write_text('\n'.join(text) + '\n')
    print(f'\nwritten to {args.out}')


if __name__ == '__main__':
  main()
