"""Seconds per step of compiled train steps on this machine: the one step timer, used by the
goodput batch policy (`time_batches`) and train.micro_batch_size=fastest
(autobatch.time_micro_batches)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbx import config as config_lib
from mbx.training import distributed
from mbx.training.components import step_arguments
from mbx.training.plan import Segment
from mbx.training.programs import Setup, compiled_steps, copy_state
from mbx.training.step import TrainState

POLICY_TIMED_STEPS = 3


def zeros_like(abstract):
  """Zeros of an abstract array (shape, dtype, sharding), made on its devices."""
  return jax.jit(lambda: jnp.zeros(abstract.shape, abstract.dtype),
                 out_shardings=abstract.sharding)()


def seconds_per_step(step: Callable, state, args: tuple, *, steps: int,
                     repeats: int = 1) -> tuple[float, object]:
  """(median seconds per step over `repeats` runs of `steps` steps after one warm-up step, the
  last state) of step(state, *args) -> (state, metrics). The step donates its state: pass one
  that may be consumed, and go on from the returned one."""
  state, _ = step(state, *args)  # warm-up (and compile, for a jitted step)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    for _ in range(steps):
      state, _ = step(state, *args)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - tic) / steps)
  return statistics.median(times), state


def time_batches(s: Setup, step: int, state: TrainState, config: config_lib.Config, feed,
                 batches: Sequence[int]) -> dict[int, float]:
  """Seconds per step of each batch's compiled steps on this machine (a measuring step every
  probe_every steps, plain ones between), run on a copy of `state` that is then dropped."""
  position, seconds = int(s.plan.examples_after_step[step]), {}
  for batch in batches:
    plan = s.replan(segments=s.plan.segments + (Segment(step, batch),))
    timed = []
    for fn, hyper in compiled_steps(s, plan.shapes_of_phase(step), state, [config]):
      if s.on_device:
        args = feed.step_args(position, batch)
      else:
        _, *abstract = step_arguments(s.workload, plan.shape_at(step), s.mesh, on_device=False,
                                      num_train_examples=s.num_train,
                                      max_batch_size=plan.max_batch_size)
        args = jax.tree.map(zeros_like, abstract)
      seconds_each, _ = seconds_per_step(fn, copy_state(state), (hyper, *args),
                                         steps=POLICY_TIMED_STEPS)
      timed.append(seconds_each)
    every = plan.probe_every if len(timed) > 1 else 1
    seconds[batch] = (timed[0] + (every - 1) * timed[-1]) / every
  # Every process decides; they must agree on what was measured.
  agreed = distributed.from_writer(np.asarray([seconds[b] for b in batches], np.float64))
  return {b: float(t) for b, t in zip(batches, agreed)}
