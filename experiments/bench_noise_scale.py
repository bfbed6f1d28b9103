"""What does logging the gradient noise scale cost per training step?

B_simple (McCandlish et al. 2018, arXiv 1812.06162, App. A.1) needs the squared
norm of >= 2 small-batch gradients besides the full one. With several devices or
micro-batches the step already has them and the estimator adds one squared norm
per group; on one device mbx splits the batch into 2 micro-batches to get them,
by default on every 10th step only (train.probe_every). The target is <= 5%
of step time. Four variants of the same run are timed:

  off    noise_scale=false: one gradient over the whole batch
  on     noise_scale=true with the defaults: every 10th step split + estimator
  every  noise_scale=true, probe_every=1: every step split + estimator
  split  noise_scale=false, micro_batch_size=B/2: the split alone, as when
         accumulation or several devices already provide the groups

so `on / off` is the cost a user pays by default and `every / split` the
estimator's own cost where the groups exist anyway.

    python experiments/bench_noise_scale.py                # ~4 min on a 2-core CPU
    python experiments/bench_noise_scale.py --steps-scale 0.1 --repeats 1   # quick look
    -> prints a Markdown table; --out results/noise_scale_overhead.md writes it

Model: the MNIST-1D CNN, Adam. Step time = the training loop's time (status.json
`train_time`: excludes compilation, evaluation and checkpoints) / steps; median of
--repeats runs, the three variants interleaved (in rotating order) so that load drifts hit
all alike.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import tempfile

import jax

import mbx

STEPS = {2: 8000, 16: 6000, 128: 2000, 512: 600, 4000: 200}
VARIANTS = ('off', 'on', 'every', 'split')


def step_time(batch_size: int, steps: int, variant: str) -> float:
  """Seconds per training step of one of VARIANTS."""
  train = dict(batch_size=batch_size, duration=f'{steps} steps', log_every=f'{steps} steps',
               eval_every='1000 epochs', checkpoint_every=None,
               noise_scale=variant in ('on', 'every'),
               probe_every=1 if variant == 'every' else None,
               micro_batch_size=batch_size // 2 if variant == 'split' else None,
               accumulation='unrolled')
  config = mbx.Config(model=mbx.ModelConfig(name='cnn1d'),
                      optim=mbx.OptimConfig(name='adam', learning_rate=1e-3),
                      train=mbx.TrainConfig(**train), name='bench_noise_scale')
  with tempfile.TemporaryDirectory() as workdir:
    run = mbx.train(config, workdir, quiet=True)
  return run.status['train_time'] / steps  # compilation is timed apart


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--steps-scale', type=float, default=1.0)
  parser.add_argument('--batch-sizes', type=int, nargs='*', default=sorted(STEPS))
  parser.add_argument('--out', default=None, help='also write the table here')
  args = parser.parse_args()
  rows = []
  for batch_size in args.batch_sizes:
    steps = max(int(STEPS.get(batch_size, 500) * args.steps_scale), 20)
    times = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
      shift = repeat % len(VARIANTS)
      for variant in VARIANTS[shift:] + VARIANTS[:shift]:  # rotated: drifts hit all alike
        times[variant].append(step_time(batch_size, steps, variant))
    medians = {v: statistics.median(times[v]) for v in VARIANTS}
    rows.append((batch_size, steps, medians))
    print(f'B={batch_size}: ' + ', '.join(f'{v} {t * 1e3:.3f} ms' for v, t in medians.items()),
          flush=True)
  over = [m['on'] / m['off'] - 1 for _, _, m in rows]
  lines = [
      '# Gradient noise scale: overhead per training step', '',
      'Command: `python experiments/bench_noise_scale.py'
      + (f' --steps-scale {args.steps_scale}' if args.steps_scale != 1 else '')
      + (f' --repeats {args.repeats}' if args.repeats != 5 else '') + '`', '',
      f'Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, '
      f'{jax.device_count()} {jax.default_backend()} device(s); jax {jax.__version__}. '
      f'MNIST-1D CNN, Adam; median of {args.repeats} runs per cell.', '',
      '| batch | steps | off (ms/step) | on, default (ms/step) | **on / off − 1** | '
      'every step (ms/step) | every / off − 1 | split only (ms/step) | '
      'estimator alone: every / split − 1 |',
      '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for (batch_size, steps, m), o in zip(rows, over):
    lines.append(f'| {batch_size} | {steps} | {m["off"] * 1e3:.3f} | {m["on"] * 1e3:.3f} | '
                 f'**{o:+.1%}** | {m["every"] * 1e3:.3f} | {m["every"] / m["off"] - 1:+.1%} | '
                 f'{m["split"] * 1e3:.3f} | {m["every"] / m["split"] - 1:+.1%} |')
  worst = max(zip(over, [r[0] for r in rows]))
  lines += [
      '', 'off: noise_scale=false. on: noise_scale=true with the defaults — on one device '
      'every 10th step splits its batch into 2 micro-batches, keeps each gradient\'s squared '
      'norm and updates McCandlish\'s two-batch estimates and their EMAs; the other steps run '
      'as with off. every: the same on every step (probe_every=1). split: 2 '
      'micro-batches (unrolled) without the estimator, as when gradient accumulation or '
      'several devices already provide the groups: there the noise scale costs only '
      '"estimator alone".', '',
      f'Target ≤ 5% (on / off − 1): {"met" if worst[0] <= 0.05 else "not met"} '
      f'(largest: {worst[0]:+.1%} at B = {worst[1]}). Splitting every step costs more at '
      'small batch, where XLA:CPU steps are bound by per-kernel overhead and two half-batch '
      'gradients launch twice the kernels.']
  table = '\n'.join(lines) + '\n'
  print()
  print(table)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(table)


if __name__ == '__main__':
  main()
