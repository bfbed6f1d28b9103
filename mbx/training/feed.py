"""Getting batches to the step: device-resident arrays, or a prefetching host reader.

Batches are dicts of arrays ('inputs', 'targets', optionally 'weights'). Both feeds follow
the same example order (`mbx.data.example_order`), so a run gives the same batches
whichever one it uses.
"""
from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbx.data.example_order import device_major_arrangement, order_window, stream_indices
from mbx.training.plan import Plan
from mbx.training.step import batch_sharded, replicated


# data.placement='auto' keeps a split on device when it and its order window (about as
# large again; at most example_order.WINDOW_MAX_BYTES for a small split) take at most this much.
DEVICE_DATA_LIMIT_BYTES = 2 * 2**30


def example_bytes(element_spec) -> int:
  """Bytes of one example: every array of a row (inputs, targets, weights)."""
  return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
             for shape, dtype in element_spec.values())


def keeps_data_on_device(placement: str, element_spec, num_examples: int | None) -> bool:
  """Whether the training split lives in device memory (DeviceFeed) or is read (HostFeed)."""
  if placement != 'auto':
    return placement == 'device'
  split_bytes = example_bytes(element_spec) * (num_examples or 10**9)
  return 2 * split_bytes <= DEVICE_DATA_LIMIT_BYTES


def put(array: np.ndarray, sharding) -> jax.Array:
  """A global array from host data that every process holds in full."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@functools.lru_cache(maxsize=4)
def _window_gather(sharding):
  """Jitted rows[indices] (leading axes of indices kept), placed with `sharding`."""
  return jax.jit(lambda rows, indices: jnp.take(rows, indices, axis=0), out_shardings=sharding)


def window_rows(rows, indices, sharding):
  """The training rows (a dict of arrays) in the order of an example-order window (or a stack
  of them)."""
  indices = jnp.asarray(indices)
  return jax.tree.map(lambda a: _window_gather(sharding)(a, indices), rows)


class DeviceFeed:
  """The training split lives in device memory; steps slice their batch there.

  Once per window the host sends its order and the device permutes the split into
  it (whole epochs plus the largest batch, see example_order.window_epochs); each step reads
  a contiguous slice of it. A slice is far cheaper than a gather on XLA:CPU, and
  per-step host work is one comparison. Given several data seeds (packed trials),
  the windows of all the seeds are stacked: they share their start.
  """

  def __init__(self, rows: dict[str, np.ndarray], mesh, *, seed: int | Sequence[int],
               max_batch_size: int):
    self.mesh = mesh
    self.stacked = not isinstance(seed, (int, np.integer))
    self.seeds = list(seed) if self.stacked else [seed]
    self.num_examples = len(next(iter(rows.values())))
    self.max_batch_size = max_batch_size
    self.row_bytes = len(self.seeds) * sum(v[:1].nbytes for v in rows.values())
    self.rows = {k: put(v, replicated(mesh)) for k, v in rows.items()}
    self.window = None
    self.args = None

  def step_args(self, position: int, batch_size: int) -> tuple:
    """(window, window_start) for the step starting at stream `position`: the window's
    rows as a dict, with a leading seed axis when the feed was given several seeds."""
    if self.window is None or not self.window.covers(position, batch_size):
      windows = [order_window(seed, self.num_examples, position, self.max_batch_size,
                              self.row_bytes) for seed in self.seeds]
      self.window = windows[0]
      indices = np.stack([w.indices for w in windows]) if self.stacked else self.window.indices
      sharding = replicated(self.mesh)
      self.args = (window_rows(self.rows, indices, sharding),
                   put(np.asarray(self.window.start, np.int32), sharding))
    return self.args


class HostFeed:
  """Reads each step's rows from a random-access source on a background thread.

  Every process reads only the rows of its own devices; `prefetch` batches are
  kept ready ahead of the step.
  """

  def __init__(self, source, element_spec, plan: Plan, mesh, *, seed: int,
               start_step: int, prefetch: int):
    self.source, self.element_spec = source, dict(element_spec)
    self.plan, self.mesh, self.seed = plan, mesh, seed
    self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True)
    self.thread.start()

  def _batch(self, step: int):
    shape = self.plan.shape_at(step)
    position = int(self.plan.examples_after_step[step])
    arrangement = device_major_arrangement(shape.batch_size, self.plan.num_devices,
                                           shape.num_micro_batches)
    indices = stream_indices(self.seed, self.plan.num_train_examples, position,
                             shape.batch_size)[arrangement]
    row_shapes = {key: row_shape for key, (row_shape, _) in self.element_spec.items()}
    return (host_local_batch(lambda positions: self.source[indices[positions]],
                             shape.batch_size, row_shapes, batch_sharded(self.mesh)),)

  def _produce(self, start_step: int):
    try:
      for step in range(start_step, self.plan.total_steps):
        if self.stop.is_set():
          return
        self.queue.put(self._batch(step))
    except Exception as error:  # pylint: disable=broad-except
      self.queue.put(error)

  def next(self):
    item = self.queue.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self):
    self.stop.set()
    while self.thread.is_alive():
      try:
        self.queue.get_nowait()
      except queue.Empty:
        self.thread.join(timeout=0.1)


def eval_batch_size(requested: int, num_examples: int, num_devices: int) -> int:
  batch_size = min(requested, num_examples)
  return -(-batch_size // num_devices) * num_devices


def host_local_batch(read, batch_size: int, row_shapes: dict[str, tuple], sharding) -> dict:
  """A batch of global arrays for which each process reads only its own devices' rows.

  read(positions) returns the rows (a dict of arrays) at those positions of the global batch;
  it is called once per distinct block of rows this process's devices hold, never for another
  process's rows (multi-host data loading without a global gather).
  """
  local = {}

  def rows(index):
    positions = np.arange(batch_size)[index[0]]
    key = (int(positions[0]), len(positions)) if len(positions) else (0, 0)
    if key not in local:
      local[key] = read(positions)
    return local[key]

  return {key: jax.make_array_from_callback((batch_size, *row_shape), sharding,
                                            lambda index, key=key: rows(index)[key])
          for key, row_shape in row_shapes.items()}


MASK = '__mask__'


def _padded(read, count: int, batch_size: int, specs: dict[str, tuple], sharding) -> tuple:
  """(batch, mask) of batch_size rows, the first `count` from read(positions) and zero padding
  after; mask is 1 on real rows only. Each process reads only its own rows."""

  def padded_rows(positions):
    real = positions[positions < count]
    rows = read(real) if len(real) else None
    out = {}
    for key, (row_shape, dtype) in specs.items():
      block = np.zeros((len(positions), *row_shape), dtype)
      if rows is not None:
        block[:len(real)] = rows[key]
      out[key] = block
    out[MASK] = (positions < count).astype(np.float32)
    return out

  row_shapes = {key: shape for key, (shape, _) in specs.items()}
  arrays = host_local_batch(padded_rows, batch_size, {**row_shapes, MASK: ()}, sharding)
  return arrays, arrays.pop(MASK)


def eval_batches(rows: dict[str, np.ndarray], batch_size: int, mesh) -> list[tuple]:
  """The whole in-memory split as padded, batch-sharded (batch, mask) device batches.

  Each example appears exactly once with mask 1; padding rows have mask 0.
  """
  count = len(next(iter(rows.values())))
  batch_size = eval_batch_size(batch_size, count, mesh.devices.size)
  specs = {k: (v.shape[1:], v.dtype) for k, v in rows.items()}
  return [_padded(lambda positions, i=i: {k: v[i + positions] for k, v in rows.items()},
                  min(batch_size, count - i), batch_size, specs, batch_sharded(mesh))
          for i in range(0, count, batch_size)]


def streamed_eval_batches(source, batch_size: int, mesh):
  """Like `eval_batches`, read from a random-access source one batch at a time, each process
  reading only the rows of its own devices."""
  count = len(source)
  batch_size = eval_batch_size(batch_size, count, mesh.devices.size)
  specs = {k: (v.shape[1:], v.dtype) for k, v in source[np.arange(1)].items()}
  for i in range(0, count, batch_size):
    yield _padded(lambda positions, i=i: source[i + positions], min(batch_size, count - i),
                  batch_size, specs, batch_sharded(mesh))
