"""How fast is mbx against a bare `jax.jit` loop and PyTorch, and what does the noise scale cost?
(the aim: mbx at >= 1.5x PyTorch eager's examples/s on CPU, or a statement of where it is not)

    pip install -e '.[bench]'     # PyTorch 2.13, CPU wheel: benchmark-only, never a runtime dep
    python experiments/benchmarks.py --out results/benchmarks.md    # ~25 min on a quiet 2-core CPU (est.)
    python experiments/benchmarks.py --steps-scale 0.05 --repeats 1  # a quick look (~3-5 min)

CPU table: the MNIST-1D CNN and MLP (Greydanus & Kobak), Adam (lr 1e-3), B in {32, 512, 4000};
examples/s, median of --repeats timed runs, each after a warm-up:
  - mbx loop: `mbx.train` with the data on device, throughput from status.json's train_time
    (the loop between events: no compile, eval or checkpoint); `experiments/bench_step.py`
  - mbx step alone: mbx's compiled step in a bare Python loop on a fixed order window (the
    step without the loop's events and the per-epoch shuffle), as a ratio to bare jit
  - mbx, fastest split: the same with train.micro_batch_size=fastest (the loop times each
    split of the batch into 2^j micro-batches and keeps the quickest; the choices are printed)
  - mbx + B_simple: the same with train.noise_scale=true (the batch is split in >= 2 groups)
  - bare jit: one jitted Adam step on a fixed on-device batch, in a Python loop
  - PyTorch eager / torch.compile (model compiled, default mode): the same architecture,
    Adam (PyTorch's CPU default: neither foreach nor fused), a fixed batch pre-loaded as tensors,
    torch's default thread count (printed), in a fresh process per repeat
Against the hardware: each row's model FLOP/s (analytic training FLOPs per example, PaLM
convention, mbx/measure/flops.py, x the best mbx examples/s) over this machine's peak, taken as
the FLOP/s of a large float32 matmul under XLA measured in the same run (--peak-size).
The accelerator counterpart (bf16 step time and MFU at large batch, AutoBatch against a real
OOM, packed trials) is experiments/gpu_check.py.
Outputs: the tables on stdout; with --out, a Markdown file with machine, versions, thread
counts and the command.
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_step import (STEPS, bare_loop, in_fresh_process, mbx_loop,  # pylint: disable=wrong-import-position
                        mbx_step_alone)

from mbx import data, models  # pylint: disable=wrong-import-position
from mbx.measure.flops import train_flops_per_example  # pylint: disable=wrong-import-position

MODELS = {'cnn1d': {}, 'mlp': {'hidden': (100, 100), 'residual': True}}
BATCH_SIZES = (32, 512, 4000)

# ----------------------------------------------------------------------------- PyTorch
def torch_model(name: str):
  """The PyTorch twin of mbx's model (MNIST-1D paper's ConvBase / MLPBase)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  if name == 'cnn1d':  # lengths 40 -> 19 -> 10 -> 5, as CNN1D
    return nn.Sequential(nn.Conv1d(1, 25, 5, 2, 1), nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1),
                         nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(125, 10))

  class ResidualMLP(nn.Module):
    def __init__(self):
      super().__init__()
      self.l1, self.l2, self.out = nn.Linear(40, 100), nn.Linear(100, 100), nn.Linear(100, 10)

    def forward(self, x):
      h = torch.relu(self.l1(x.flatten(1)))
      return self.out(h + torch.relu(self.l2(h)))

  return ResidualMLP()


def torch_loop(name: str, batch_size: int, steps: int, x_all, y_all, *, compiled: bool,
               repeats: int) -> list[float]:
  """Examples/s of `repeats` timed runs of a PyTorch Adam loop on a fixed batch."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  net = torch_model(name)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  forward = torch.compile(net) if compiled else net
  x = torch.from_numpy(np.array(x_all[:batch_size].transpose(0, 2, 1), order='C'))  # NWC -> NCW
  y = torch.from_numpy(y_all[:batch_size].astype(np.int64))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(x), y)
    loss.backward()
    optimizer.step()

  for _ in range(max(steps // 20, 3)):  # warm-up, and torch.compile's compile
    step()
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    rates.append(batch_size * steps / (time.perf_counter() - start))
  return rates


def _torch_worker(name: str, batch_size: int, steps: int, repeats: int) -> tuple[float, float]:
  x_all, y_all = data.load_arrays('mnist1d', 'train')
  return tuple(statistics.median(torch_loop(name, batch_size, steps, x_all, y_all, compiled=c,
                                            repeats=repeats)) for c in (False, True))


def torch_rates(name: str, batch_size: int, steps: int, repeats: int) -> tuple[float, float]:
  """(eager, torch.compile) examples/s, measured in a fresh process: PyTorch's intra-op threads
  keep spinning after a run and would slow whatever XLA runs next in this one."""
  return in_fresh_process(_torch_worker, name, batch_size, steps, repeats)


def _torch_version() -> str | None:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return (f'torch {torch.__version__} ({torch.get_num_threads()} intra-op / '
          f'{torch.get_num_interop_threads()} inter-op threads, the defaults)')


@functools.cache
def torch_version() -> str | None:
  """PyTorch's version and thread counts, asked in a fresh process (torch never runs in this
  one, see torch_rates)."""
  return in_fresh_process(_torch_version)


# ----------------------------------------------------------------------------- CPU table
def emit(lines: list[str], *new: str) -> None:
  """Adds lines to the report and prints them at once (the runs are long)."""
  lines.extend(new)
  print('\n'.join(new), flush=True)


def matmul_peak(size: int, repeats: int) -> float:
  """FLOP/s of a size x size float32 matmul under XLA, median of `repeats` timings of 5 calls:
  the machine's practical peak, against which each row's model FLOP/s is read."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(5):
      out = matmul(a, b)
    out.block_until_ready()
    rates.append(5 * 2 * size**3 / (time.perf_counter() - start))
  return statistics.median(rates)


def spread(values: list[float]) -> str:
  """Median [min-max] of per-repeat ratios."""
  return f'{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]'


def cpu_table(args) -> list[str]:
  x_all, y_all = data.load_arrays('mnist1d', 'train')
  have_torch = torch_version() is not None
  peak = matmul_peak(args.peak_size, args.repeats)
  lines = []
  emit(lines, f'## CPU: examples/s (median of {args.repeats})', '',
       f'Peak reference: {peak / 1e9:.1f} GFLOP/s, a {args.peak_size}x{args.peak_size} float32 '
       f'matmul under XLA in this run (median of {args.repeats}).', '',
       '| model | batch | steps | mbx loop | mbx, fastest split (micro-batch) | mbx + B_simple | '
       'B_simple cost | bare jit | PyTorch eager | torch.compile | mbx / bare [range] | '
       'mbx step alone / bare | mbx / eager [range] | '
       'train FLOPs / example | best mbx GFLOP/s | % of peak |', '|---|---:|' + '---:|' * 14)
  for name, options in MODELS.items():
    flops = train_flops_per_example(models.build_model(name, num_classes=10, options=options),
                                    x_all.shape[1:])
    for batch_size in args.batch_sizes:
      steps = max(int(STEPS.get(batch_size, 1000) * args.steps_scale), 10)
      runs = {k: [] for k in ('mbx', 'alone', 'fastest', 'noise', 'bare', 'eager', 'compiled')}
      chosen = set()
      for _ in range(args.repeats):  # interleaved: a drift of the machine hits every column
        runs['mbx'].append(mbx_loop(batch_size, steps, name, options)[0])
        runs['alone'].append(mbx_step_alone(batch_size, steps, name, options))
        rate, _, split = mbx_loop(batch_size, steps, name, options, micro_batch_size='fastest')
        runs['fastest'].append(rate)
        chosen.add(int(str(split).split('=')[-1]))
        runs['noise'].append(mbx_loop(batch_size, steps, name, options, noise_scale=True)[0])
        runs['bare'].append(bare_loop(batch_size, steps, x_all, y_all, name, options))
        eager, compiled = (torch_rates(name, batch_size, steps, 1) if have_torch else
                           (float('nan'), float('nan')))
        runs['eager'].append(eager)
        runs['compiled'].append(compiled)
      median = {k: statistics.median(v) for k, v in runs.items()}
      best = [max(a, b) for a, b in zip(runs['mbx'], runs['fastest'])]  # per repeat
      ratio = lambda num, den: spread([a / b for a, b in zip(num, den)])
      emit(lines, f'| {name} | {batch_size} | {steps} | {median["mbx"]:,.0f} | '
           f'{median["fastest"]:,.0f} ({"/".join(map(str, sorted(chosen)))}) | '
           f'{median["noise"]:,.0f} | {1 - median["noise"] / median["mbx"]:.0%} | '
           f'{median["bare"]:,.0f} | {median["eager"]:,.0f} | {median["compiled"]:,.0f} | '
           f'{ratio(runs["mbx"], runs["bare"])} | {ratio(runs["alone"], runs["bare"])} | '
           f'{ratio(best, runs["eager"])} | '
           f'{flops / 1e6:.2f} M | {statistics.median(best) * flops / 1e9:.1f} | '
           f'{statistics.median(best) * flops / peak:.1%} |')
  if not have_torch:
    emit(lines, '', "PyTorch columns are nan: torch is not installed (pip install -e '.[bench]').")
  emit(lines, '')
  return lines


# ----------------------------------------------------------------------------- report
def machine() -> list[str]:
  cpu = platform.processor() or platform.machine()
  try:
    cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
               if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  import flax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  return [f'- machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} '
          f'{platform.release()}; JAX backend {jax.default_backend()} with {jax.device_count()} '
          f'device(s) ({jax.devices()[0].device_kind})',
          f'- Python {platform.python_version()}, jax {jax.__version__}, jaxlib '
          f'{jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}, '
          f'{torch_version() or "torch not installed"}',
          f'- XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; XLA:CPU uses its default '
          'thread pool (all cores)']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps-scale', type=float, default=1.0)
  parser.add_argument('--batch-sizes', type=int, nargs='*', default=list(BATCH_SIZES))
  parser.add_argument('--peak-size', type=int, default=2048,
                      help='side of the float32 matmul that measures the peak FLOP/s')
  parser.add_argument('--out', default=None, help='also write Markdown here')
  args = parser.parse_args()
  command = 'python ' + ' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
  header = machine()
  print('\n'.join(header) + '\n', flush=True)
  sections = cpu_table(args)
  if args.out:
    text = ['# Benchmarks: mbx vs a bare jax.jit loop vs PyTorch', '',
            f'Command: `{command}` ({time.strftime("%Y-%m-%d")})', '', *header, '', *sections,
            '', 'mbx loop: `mbx.train`\'s training time (status.json `train_time`: the loop '
            'between events, without compile, eval or checkpoints), data on device. Bare jit and '
            'PyTorch train on one fixed pre-loaded batch. B_simple cost = 1 - (mbx + B_simple) / '
            'mbx loop. mbx step alone: mbx\'s compiled step in a bare Python loop on one fixed '
            'order window (no loop, no per-epoch shuffle). Ratios: median and range of the per-repeat ratios (each repeat runs every '
            'column once, in turn); mbx / bare uses the mbx loop (no split); mbx / eager and the '
            'FLOP/s use the faster of the mbx loop and its fastest split in each repeat. FLOPs: matmuls and convolutions '
            'only, training = 3x forward (mbx/measure/flops.py); the peak is a large float32 '
            'matmul under XLA, measured in the same run.']
    pathlib.Path(args.out).write_text('\n'.join(text) + '\n')
    print(f'\nwritten to {args.out}')


if __name__ == '__main__':
  main()
