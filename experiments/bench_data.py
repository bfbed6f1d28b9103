"""Reading a training split from disk: mbx's host reader against grain.

    python experiments/bench_data.py --repeats 2          # ~6 min on a 2-core CPU, 1.2 GiB on disk
    python experiments/bench_data.py --examples 50000 --repeats 1   # a quick look

A split too large to keep in device memory (here 1.2 GiB: above what `data.placement=auto`
keeps on a device) is read batch by batch from disk (mbx's `data.placement=host`: HostFeed, a background thread that reads each step's rows in the
(seed, epoch) order and places them on the devices). grain, the JAX ecosystem's loader, does
the same job with its own threads (MapDataset) or worker processes (DataLoader). Both read the same array_record file
of CIFAR-shaped records (32x32x3 uint8 + an int label, 3,073 bytes) in a random order, decode
them with numpy and end with the batch on the device; examples/s over --batches batches after
a warm-up, median of --repeats. The file is written first, so it is in the page cache (this
machine has 24 GiB of RAM): the comparison is of the readers, not of the disk.
Prints a Markdown table; results/bench_data.md holds one.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import grain
import jax
import numpy as np

import mbx
from mbx.data import RecordSource
from mbx.training.feed import HostFeed
from mbx.training.plan import make_plan
from mbx.training.step import batch_sharded, make_mesh

SHAPE = (32, 32, 3)
RECORD_BYTES = int(np.prod(SHAPE)) + 4


def write_records(path: pathlib.Path, count: int) -> None:
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
  writer = ArrayRecordWriter(str(path), 'group_size:1')
  rng = np.random.default_rng(0)
  chunk = 10000
  for start in range(0, count, chunk):
    n = min(chunk, count - start)
    images = rng.integers(0, 256, (n, RECORD_BYTES - 4), dtype=np.uint8)
    labels = (np.arange(start, start + n) % 10).astype('<i4').view(np.uint8).reshape(n, 4)
    for row in np.concatenate([images, labels], axis=1):
      writer.write(row.tobytes())
  writer.close()


def decode(record: bytes) -> dict:
  row = np.frombuffer(record, np.uint8)
  return {'inputs': row[:-4].reshape(SHAPE), 'targets': row[-4:].view('<i4')[0]}


def mbx_reader(source, batch_size: int, batches: int, mesh) -> float:
  """examples/s of HostFeed: the batches of a run, in the run's order, on the devices."""
  config = mbx.Config(train=mbx.TrainConfig(batch_size=batch_size,
                                            duration=f'{batches + 5} steps'))
  plan = make_plan(config, mesh.devices.size, len(source), jax.default_backend())
  element_spec = {'inputs': (SHAPE, 'uint8'), 'targets': ((), 'int32')}
  feed = HostFeed(RecordSource(source, decode), element_spec, plan, mesh, seed=0,
                  start_step=0, prefetch=2)
  try:
    for _ in range(5):
      jax.block_until_ready(feed.next())
    start = time.perf_counter()
    for _ in range(batches):
      jax.block_until_ready(feed.next())
    return batch_size * batches / (time.perf_counter() - start)
  finally:
    feed.close()


def grain_reader(source, batch_size: int, batches: int, mesh, threads: int) -> float:
  """examples/s of grain's MapDataset pipeline (shuffle, decode, batch) read by `threads`
  threads with prefetch, each batch then put on the devices."""
  dataset = (grain.MapDataset.source(source).shuffle(seed=0).map(decode)
             .batch(batch_size, drop_remainder=True))
  iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                           prefetch_buffer_size=2 * threads)))
  return _examples_per_second(iterator, batch_size, batches, batch_sharded(mesh))


def _examples_per_second(iterator, batch_size: int, batches: int, sharding) -> float:
  """Batches taken from `iterator` and put on the devices, after 5 warm-up batches."""
  for _ in range(5):
    jax.block_until_ready(jax.device_put(next(iterator), sharding))
  start = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(jax.device_put(next(iterator), sharding))
  return batch_size * batches / (time.perf_counter() - start)


class Decode(grain.transforms.Map):
  def map(self, element):
    return decode(element)


def grain_loader(source, batch_size: int, batches: int, mesh, workers: int) -> float:
  """examples/s of grain's DataLoader (index sampler, decode, batch) with `workers` worker
  processes, each batch then put on the devices."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.IndexSampler(len(source), shuffle=True, seed=0, num_epochs=1),
      operations=[Decode(), grain.transforms.Batch(batch_size, drop_remainder=True)],
      worker_count=workers)
  return _examples_per_second(iter(loader), batch_size, batches, batch_sharded(mesh))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--examples', type=int, default=400_000)
  parser.add_argument('--batch-sizes', type=int, nargs='*', default=[32, 256])
  parser.add_argument('--batches', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dir', default=None, help='where to write the file (default: a tmp dir)')
  args = parser.parse_args()
  command = 'python ' + ' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
  with tempfile.TemporaryDirectory(dir=args.dir) as root:
    path = pathlib.Path(root) / 'records.array_record'
    start = time.perf_counter()
    write_records(path, args.examples)
    size = path.stat().st_size
    print(f'Command: `{command}`\n\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, '
          f'{jax.device_count()} {jax.default_backend()} device(s); jax {jax.__version__}, '
          f'grain {grain.__version__ if hasattr(grain, "__version__") else "?"}; '
          f'{args.examples:,} records, {size / 2**30:.2f} GiB, written in '
          f'{time.perf_counter() - start:.0f} s; median of {args.repeats}\n')
    source = grain.sources.ArrayRecordDataSource([str(path)])
    mesh = make_mesh()
    print('| batch | mbx HostFeed (ex/s) | grain MapDataset, 1 thread (ex/s) | 2 threads | '
          '4 threads | grain DataLoader, 2 worker processes | best grain / mbx |')
    print('|---:|---:|---:|---:|---:|---:|---:|')
    for batch_size in args.batch_sizes:
      rates = {'mbx': [], 1: [], 2: [], 4: [], 'loader': []}
      for _ in range(args.repeats):  # interleaved: the machine's drifts hit all readers
        rates['mbx'].append(mbx_reader(source, batch_size, args.batches, mesh))
        for threads in (1, 2, 4):
          rates[threads].append(grain_reader(source, batch_size, args.batches, mesh, threads))
        rates['loader'].append(grain_loader(source, batch_size, args.batches, mesh, 2))
      median = {k: statistics.median(v) for k, v in rates.items()}
      best = max(median[k] for k in (1, 2, 4, 'loader'))
      print(f'| {batch_size} | {median["mbx"]:,.0f} | {median[1]:,.0f} | {median[2]:,.0f} | '
            f'{median[4]:,.0f} | {median["loader"]:,.0f} | {best / median["mbx"]:.2f} |',
            flush=True)


if __name__ == '__main__':
  main()
