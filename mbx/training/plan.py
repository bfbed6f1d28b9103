"""Everything a run derives from its config and the machine, checked before compiling.

The plan fixes the batch size of every step (batch-size schedules included),
how each step's batch is split over devices and micro-batches, and at which
steps the loop logs, evaluates and checkpoints.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from mbx.config import Config, ConfigError, Duration, parse_duration

INT32_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class StepShape:
  """How one step's global batch is computed; each distinct shape compiles once."""
  batch_size: int          # global
  num_micro_batches: int   # looped inside the step, each spread over all devices
  accumulation: str        # 'unrolled' or 'scan'

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.num_micro_batches


@dataclasses.dataclass(frozen=True)
class Plan:
  num_devices: int
  num_train_examples: int
  total_steps: int
  examples_after_step: np.ndarray  # [s] = examples seen after s steps; [0] = 0
  phases: tuple[tuple[int, StepShape], ...]  # (first step, shape), by first step
  lr_extra_decays: tuple[tuple[int, float], ...]
  log_steps: frozenset[int]
  eval_steps: frozenset[int]       # 0 = before training
  checkpoint_steps: frozenset[int]

  @property
  def total_examples(self) -> int:
    return int(self.examples_after_step[-1])

  @property
  def initial_batch_size(self) -> int:
    return self.phases[0][1].batch_size

  @property
  def max_batch_size(self) -> int:
    return max(shape.batch_size for _, shape in self.phases)

  def shape_at(self, step: int) -> StepShape:
    shape = self.phases[0][1]
    for first_step, phase_shape in self.phases:
      if first_step <= step:
        shape = phase_shape
    return shape

  def next_phase_step(self, step: int) -> int:
    later = [first for first, _ in self.phases if first > step]
    return min(later) if later else self.total_steps


def _batch_phases(config: Config, num_train_examples: int):
  """[(start_examples, batch_size)] and the LR decays of the hybrid schedule."""
  t = config.train
  batch, phases, decays = t.batch_size, [(0, t.batch_size)], []
  for milestone in t.batch_size_milestones:
    at = Duration(milestone, t.batch_size_milestone_unit).to_examples(batch, num_train_examples)
    if t.max_batch_size is not None and batch * t.batch_size_factor > t.max_batch_size:
      decays.append((at, 1.0 / t.batch_size_factor))  # Smith et al.'s hybrid
    else:
      batch *= t.batch_size_factor
      phases.append((at, batch))
  return phases, decays


def _micro_batches(config: Config, batch_size: int, num_devices: int) -> int:
  t = config.train
  field = 'train.batch_size' if batch_size == t.batch_size else 'train.batch_size_factor'
  if batch_size % num_devices:
    raise ConfigError(f'{field}: global batch {batch_size} is not divisible by the '
                      f'{num_devices} devices; use a multiple of {num_devices}')
  accumulation = 1
  if t.micro_batch_size is not None:
    if t.micro_batch_size % num_devices:
      raise ConfigError(f'train.micro_batch_size={t.micro_batch_size}: not divisible by '
                        f'the {num_devices} devices')
    if batch_size % t.micro_batch_size:
      raise ConfigError(f'train.micro_batch_size={t.micro_batch_size}: does not divide '
                        f'the global batch {batch_size}')
    accumulation = batch_size // t.micro_batch_size
  elif t.max_device_batch_size is not None:
    per_device = batch_size // num_devices
    accumulation = next(k for k in range(1, per_device + 1)
                        if per_device % k == 0 and per_device // k <= t.max_device_batch_size)
  if not t.noise_scale:
    return accumulation
  groups = t.noise_scale_groups or max(2, num_devices * accumulation)
  if groups % num_devices or (groups // num_devices) % accumulation:
    raise ConfigError(f'train.noise_scale_groups={groups}: must be a multiple of '
                      f'devices x micro-batches = {num_devices * accumulation}')
  if batch_size % groups:
    raise ConfigError(f'train.noise_scale_groups={groups}: the global batch {batch_size} '
                      'cannot be split into that many equal groups (the noise scale needs '
                      'at least 2 groups, so batch_size >= 2)')
  return groups // num_devices


def _event_steps(every: Duration | None, examples_after_step: np.ndarray,
                 batch_size: int, num_train_examples: int) -> set[int]:
  total_steps = len(examples_after_step) - 1
  if every is None:
    return set()
  if every.unit == 'steps':
    interval = max(1, int(round(every.amount)))
    return set(range(interval, total_steps + 1, interval))
  interval = max(1, every.to_examples(batch_size, num_train_examples))
  marks = np.arange(interval, examples_after_step[-1] + 1, interval)
  return set(np.searchsorted(examples_after_step, marks).tolist())


def make_plan(config: Config, num_devices: int, num_train_examples: int,
              backend: str = 'cpu') -> Plan:
  """Resolves batch phases, micro-batching and event steps; raises ConfigError."""
  t = config.train
  phases, lr_extra_decays = _batch_phases(config, num_train_examples)
  for _, batch in phases:
    if batch > num_train_examples:
      field = 'train.batch_size' if batch == t.batch_size else 'train.max_batch_size'
      raise ConfigError(f'{field}: a global batch of {batch} exceeds the '
                        f'{num_train_examples} training examples of {config.data.name}')
  duration = parse_duration(t.duration, 'train.duration')

  # Steps per phase: a phase's batch size applies to steps that start inside it.
  step_batches = []
  seen = 0
  total = (None if duration.unit == 'steps'
           else duration.to_examples(t.batch_size, num_train_examples))
  for i, (start, batch) in enumerate(phases):
    end = phases[i + 1][0] if i + 1 < len(phases) else total
    if duration.unit == 'steps':
      count = int(round(duration.amount))
    else:
      count = max(0, math.ceil((min(end, total) - max(seen, start)) / batch)) if seen < min(end, total) else 0
    step_batches.append((batch, count))
    seen += batch * count
  examples_after_step = np.concatenate(
      [[0], np.cumsum(np.concatenate([np.full(n, b, np.int64) for b, n in step_batches]))])
  total_steps = len(examples_after_step) - 1
  if total_steps == 0:
    raise ConfigError(f'train.duration={t.duration!r}: amounts to zero steps')
  if examples_after_step[-1] + max(b for _, b in phases) > INT32_LIMIT:
    raise ConfigError(f'train.duration={t.duration!r}: more than 2^31 examples are not supported')

  step_phases, first_step = [], 0
  for batch, count in step_batches:
    if count == 0:
      continue
    micro = _micro_batches(config, batch, num_devices)
    mode = t.accumulation
    if mode == 'auto':
      # XLA:CPU runs loop bodies far slower than straight-line code (MEASURED.md).
      mode = 'unrolled' if backend == 'cpu' and micro <= 32 else 'scan'
    step_phases.append((first_step, StepShape(batch, micro, mode)))
    first_step += count

  every = lambda text, name: parse_duration(text, name) if text is not None else None
  log_steps = _event_steps(every(t.log_every, 'train.log_every'), examples_after_step,
                           t.batch_size, num_train_examples)
  eval_steps = _event_steps(every(t.eval_every, 'train.eval_every'), examples_after_step,
                            t.batch_size, num_train_examples) | {0}
  if t.eval_growth:
    eval_steps |= {s for s in (math.ceil(t.eval_growth ** i) for i in range(
        int(math.log(total_steps) / math.log(t.eval_growth)) + 2)) if s <= total_steps}
  checkpoint_steps = _event_steps(every(t.checkpoint_every, 'train.checkpoint_every'),
                                  examples_after_step, t.batch_size, num_train_examples)
  final = {total_steps}
  return Plan(num_devices=num_devices, num_train_examples=num_train_examples,
              total_steps=total_steps, examples_after_step=examples_after_step,
              phases=tuple(step_phases), lr_extra_decays=tuple(lr_extra_decays),
              log_steps=frozenset(log_steps | final), eval_steps=frozenset(eval_steps | final),
              checkpoint_steps=frozenset(checkpoint_steps | final))
