"""The order in which training examples are visited: a pure function of (seed, epoch).

Training reads one endless stream: the permutation of epoch 0, then that of
epoch 1, and so on. Step t with batch B consumes stream positions
[examples_seen, examples_seen + B), so no example is dropped or repeated within
an epoch, the number of epochs is exactly examples_seen / N, and changing the
batch size mid-run only changes how much of the stream a step takes.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The visiting order of epoch `epoch`; independent of every other epoch."""
  generator = np.random.Generator(np.random.Philox(key=[seed, epoch]))
  permutation = generator.permutation(num_examples).astype(np.int32)
  permutation.flags.writeable = False
  return permutation


def stream_indices(seed: int, num_examples: int, start: int, length: int) -> np.ndarray:
  """Example indices at stream positions [start, start + length)."""
  first_epoch, last_epoch = start // num_examples, (start + length - 1) // num_examples
  chunks = [epoch_permutation(seed, e, num_examples)
            for e in range(first_epoch, last_epoch + 1)]
  offset = start - first_epoch * num_examples
  return np.concatenate(chunks)[offset:offset + length]


@dataclasses.dataclass(frozen=True)
class OrderWindow:
  """A stretch of the stream that a device can read without asking the host.

  It starts at an epoch boundary and is `window_epochs` epochs plus the largest batch
  long, so every step starting inside those epochs reads from it; the host builds a new
  window once per window.
  """
  indices: np.ndarray  # int32
  start: int           # stream position of indices[0]

  @property
  def end(self) -> int:
    return self.start + len(self.indices)

  def covers(self, position: int, length: int) -> bool:
    return self.start <= position and position + length <= self.end


# A window spans several epochs when batches are large against the split, so that a new one
# (a device gather and its dispatch, ~0.2 ms on a 2-core CPU) is not built every step: at
# B = N it was, 10% of the MNIST-1D MLP's step. Enough epochs for WINDOW_STEPS of the largest
# batch, at most WINDOW_MAX_EPOCHS (the window is device memory that AutoBatch charges to the
# step) and, beyond one epoch, at most WINDOW_MAX_BYTES.
WINDOW_STEPS = 8
WINDOW_MAX_EPOCHS = 8
WINDOW_MAX_BYTES = 64 * 2**20


def window_epochs(num_examples: int, max_batch: int, row_bytes: int) -> int:
  """Whole epochs in a window (row_bytes: one window row, of every stacked trial)."""
  wanted = -(-WINDOW_STEPS * max_batch // num_examples)
  affordable = WINDOW_MAX_BYTES // max(num_examples * row_bytes, 1)
  return max(1, min(wanted, affordable, WINDOW_MAX_EPOCHS))


def window_length(num_examples: int, max_batch: int, row_bytes: int) -> int:
  return window_epochs(num_examples, max_batch, row_bytes) * num_examples + max_batch


def order_window(seed: int, num_examples: int, position: int, max_batch: int,
                 row_bytes: int) -> OrderWindow:
  """The window starting at the epoch of `position`, long enough for any batch."""
  start = position // num_examples * num_examples
  return OrderWindow(stream_indices(seed, num_examples, start,
                                    window_length(num_examples, max_batch, row_bytes)), start)


def device_major_arrangement(batch_size: int, num_devices: int, num_micro_batches: int) -> np.ndarray:
  """Row order that gives device d the d-th slice of every micro-batch.

  Micro-batch j is stream positions [j*m, (j+1)*m) with m = B / num_micro_batches,
  whatever the device count. Sharding the arranged batch contiguously over
  devices hands device d, for each j, positions j*m + [d*m/n, (d+1)*m/n).
  """
  per_device = batch_size // (num_devices * num_micro_batches)
  positions = np.arange(batch_size).reshape(num_micro_batches, num_devices, per_device)
  return positions.transpose(1, 0, 2).reshape(-1).astype(np.int32)
