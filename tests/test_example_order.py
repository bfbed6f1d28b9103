"""The example order: deterministic from (seed, epoch), nothing dropped or repeated in an epoch."""
from __future__ import annotations

import numpy as np
import pytest

from mbx.data.example_order import (WINDOW_MAX_BYTES, WINDOW_MAX_EPOCHS, WINDOW_STEPS,
                                    device_major_arrangement, epoch_permutation, order_window,
                                    window_epochs,
                                    stream_indices)
from mbx.training.plan import make_plan

from helpers import tiny_config


def test_epoch_permutations_are_deterministic_and_distinct():
  a, b = epoch_permutation(0, 0, 100), epoch_permutation(0, 0, 100)
  np.testing.assert_array_equal(a, b)
  assert sorted(a.tolist()) == list(range(100))
  assert not np.array_equal(epoch_permutation(0, 1, 100), a)
  assert not np.array_equal(epoch_permutation(1, 0, 100), a)


@pytest.mark.parametrize('batch_sizes', [[7] * 30, [3, 5, 50, 1, 64, 100, 2]])
def test_batches_cover_each_epoch_exactly_once(batch_sizes):
  """Across batch-size changes, epoch e's examples are each seen once before epoch e+1."""
  n, seed, position, seen = 97, 3, 0, []
  for batch in batch_sizes:
    seen.extend(stream_indices(seed, n, position, batch).tolist())
    position += batch
  for epoch in range(len(seen) // n):
    assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))


def test_window_matches_the_stream():
  n = 50
  window = order_window(seed=1, num_examples=n, position=120, max_batch=64, row_bytes=4)
  assert window.start == 100 and window.covers(120, 64) and not window.covers(99, 2)
  np.testing.assert_array_equal(window.indices, stream_indices(1, n, 100, len(window.indices)))


def test_a_window_spans_enough_epochs_for_several_large_batches_within_its_bounds():
  """At B ~ N a one-epoch window would be rebuilt every step; it spans whole epochs for
  WINDOW_STEPS of the largest batch instead, within WINDOW_MAX_EPOCHS and WINDOW_MAX_BYTES."""
  assert window_epochs(4000, 32, row_bytes=164) == 1
  assert window_epochs(4000, 1000, row_bytes=164) == -(-WINDOW_STEPS * 1000 // 4000)
  assert window_epochs(4000, 4000, row_bytes=164) == WINDOW_MAX_EPOCHS
  big_row = WINDOW_MAX_BYTES // (4000 * 3)  # three epochs fit in the byte bound
  assert window_epochs(4000, 4000, row_bytes=big_row) == min(3, WINDOW_MAX_EPOCHS)
  assert window_epochs(4000, 4000, row_bytes=WINDOW_MAX_BYTES) == 1  # never below one
  epochs = window_epochs(40, 40, row_bytes=1)
  window = order_window(seed=2, num_examples=40, position=85, max_batch=40, row_bytes=1)
  assert window.start == 80 and len(window.indices) == epochs * 40 + 40
  assert window.covers(80 + epochs * 40 - 1, 40) and not window.covers(80 + epochs * 40 + 1, 40)


@pytest.mark.parametrize('devices, micro', [(1, 1), (2, 2), (4, 1), (8, 4)])
def test_device_major_arrangement(devices, micro):
  """Device d's contiguous shard holds slice d of each micro-batch, in micro-batch order."""
  batch = 64
  arranged = device_major_arrangement(batch, devices, micro)
  assert sorted(arranged.tolist()) == list(range(batch))
  per_device, m = batch // devices, batch // micro
  for d in range(devices):
    shard = arranged[d * per_device:(d + 1) * per_device].reshape(micro, -1)
    for j in range(micro):
      start = j * m + d * (m // devices)
      assert shard[j].tolist() == list(range(start, start + m // devices))


def test_plan_batch_size_schedule_and_hybrid_cap():
  """Smith et al.: B x5 at epochs 2 and 4; with a cap of 500 the second becomes an LR decay."""
  config = tiny_config(train=dict(batch_size=100, duration='6 epochs', batch_size_factor=5,
                                  batch_size_milestones=(2, 4)))
  plan = make_plan(config, 1, 4000)
  assert [(s, shape.batch_size) for s, shape in plan.phases] == [(0, 100), (80, 500), (96, 2500)]
  assert plan.total_examples == 8000 + 8000 + 4 * 2500  # the last step may overshoot the budget
  assert plan.examples_after_step[80] == 8000 and plan.examples_after_step[96] == 16000
  capped = tiny_config(train=dict(batch_size=100, duration='6 epochs', batch_size_factor=5,
                                  batch_size_milestones=(2, 4), max_batch_size=500))
  plan = make_plan(capped, 1, 4000)
  assert [shape.batch_size for _, shape in plan.phases] == [100, 500]
  assert plan.lr_extra_decays == ((16000, 0.2),)
  assert plan.total_examples == 24000


def test_plan_events():
  config = tiny_config(train=dict(batch_size=100, duration='1000 steps', log_every='100 steps',
                                  eval_every='1 epochs', eval_growth=2.0,
                                  checkpoint_every='300 steps'))
  plan = make_plan(config, 1, 4000)
  assert plan.total_steps == 1000
  assert sorted(plan.log_steps) == list(range(100, 1001, 100))
  assert {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 40, 80, 1000} <= plan.eval_steps
  assert sorted(plan.checkpoint_steps) == [300, 600, 900, 1000]
