"""Packing: K trials that differ only in PACKABLE_FIELDS train as one vmapped program over their
stacked states; which trials can, and when a pack that is mostly finished should split."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mbx import config as config_lib
from mbx.training.evaluation import trial_slice
from mbx.training.programs import Setup

PACKABLE_FIELDS = tuple(f for f in config_lib.TRIAL_FIELDS if f[1] is not None)


def pack_key(config: config_lib.Config) -> str:
  """Trials with equal keys can share one packed program."""
  return config_lib.trial_key(config)


# Jitted: op by op, every leaf's stack or slice would compile on its own (0.8 s a pack).
@jax.jit
def stack_states(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def pack_groups(s: Setup, trials: list, states: list) -> list[tuple[list, Any]]:
  """[(trials, state)] trained together: all as one pack (state stacked) when they can share
  the program, else one by one. Packing needs the training split on device and a common
  position; a batch policy decides from each trial's own statistics, a branch starts from
  another run's checkpoint, and an update rule may not run vmapped (packable=False), so
  their trials run one by one."""
  counters = {tuple(int(v) for v in jax.device_get(state.counters)) for state in states}
  if len(trials) > 1 and (not s.on_device or len(counters) > 1 or
                          s.config.train.batch_policy != 'none' or
                          not s.parts.update_rule.packable or
                          any(trial.config.train.init_from for trial in trials)):
    return [([trial], state) for trial, state in zip(trials, states)]  # one by one
  return [(trials, stack_states(states) if len(trials) > 1 else states[0])]


def restack(state, active: list[int]):
  """The stacked state of the `active` trials of a pack (unstacked when one is left)."""
  if len(active) > 1:
    return stack_states([trial_slice(state, k) for k in active])
  return trial_slice(state, active[0])


def should_repack(num_active: int, num_trials: int, steps_left: int, step_seconds: float,
                  compile_seconds: float) -> bool:
  """Whether the trials still training should leave a pack that is at least half finished.
  A packed step on XLA:CPU costs nearly K times one trial's share (results/bench_packed.md), so
  finished trials go on costing until the last one ends; a smaller pack costs a compile. Split
  when the steps left, at the pack's measured step time, would save twice what compiling this
  pack took, if the step's cost fell in proportion to the trials left."""
  if not 0 < num_active <= num_trials // 2:
    return False
  saving = steps_left * step_seconds * (1 - num_active / num_trials)
  return saving > 2 * compile_seconds
