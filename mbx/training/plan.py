"""Everything a run derives from its config and the machine, checked before compiling.

The plan fixes the batch size of every step (batch-size schedules included),
how each step's batch is split over devices and micro-batches, and at which
steps the loop logs, evaluates and checkpoints.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from mbx.config import (Config, ConfigError, Duration, batch_ladder, uses_adascale,
                        fastest_micro_batch_size, parse_duration)
from mbx.optim import batch_rules

INT32_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class StepShape:
  """How one step's global batch is computed; each distinct shape compiles once."""
  batch_size: int          # global
  num_micro_batches: int   # looped inside the step, each spread over all devices
  accumulation: str        # 'unrolled' or 'scan'
  measure_noise: bool = True  # with probes (e.g. the noise scale): this step measures

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.num_micro_batches


@dataclasses.dataclass(frozen=True)
class Segment:
  """Under a batch policy, the steps from `first_step` to the next segment's: one decision.

  progress is the LR schedule's position (in examples) before first_step and
  progress_per_step what each step adds: the batch itself, or AdaScale's gain x the base
  batch. lr_factor multiplies the schedule's LR; gain is AdaScale's r (1 otherwise);
  hyperparameters: what the batch rule sets besides the LR (e.g. (('b2', 0.998),))."""
  first_step: int
  batch_size: int
  progress: float = 0.0
  progress_per_step: float | None = None  # None: batch_size (progress = examples seen)
  lr_factor: float = 1.0
  gain: float = 1.0
  hyperparameters: tuple[tuple[str, float], ...] = ()

  @classmethod
  def from_meta(cls, recorded: dict) -> 'Segment':
    """A segment as a checkpoint's metadata (JSON) records it."""
    pairs = tuple((str(k), float(v)) for k, v in recorded.get('hyperparameters', ()))
    return cls(**{**recorded, 'hyperparameters': pairs})

  @property
  def rate(self) -> float:
    return self.batch_size if self.progress_per_step is None else self.progress_per_step


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
  # With probes, the steps in between measurements use these cheaper shapes
  # (no extra split of the batch); step s measures when s % probe_every == 0.
  probe_every: int = 1
  plain_shapes: tuple[StepShape | None, ...] = ()  # per phase; None: every step measures
  tokens_per_example: int = 1  # target positions per example: 'tokens' durations, logs
  # Under a batch policy (train.batch_policy): the decisions so far, the batches it may
  # choose, the steps at which it decides, and the schedule's span (the budget, in examples).
  segments: tuple[Segment, ...] = ()
  batch_ladder: tuple[int, ...] = ()
  decision_steps: frozenset[int] = frozenset()
  budget_examples: int | None = None

  @property
  def total_examples(self) -> int:
    return int(self.examples_after_step[-1])

  @property
  def schedule_examples(self) -> int:
    """Where decaying LR schedules end: the budget, which a policy's steps may overshoot."""
    return self.budget_examples or self.total_examples

  def segment_at(self, step: int) -> Segment | None:
    later = [seg for seg in self.segments if seg.first_step <= step]
    return later[-1] if later else None

  def progress_at(self, step: int) -> float:
    """The LR schedule's position before `step` (examples seen, without a policy)."""
    segment = self.segment_at(step)
    if segment is None:
      return float(self.examples_after_step[step])
    return segment.progress + (step - segment.first_step) * segment.rate

  @property
  def initial_batch_size(self) -> int:
    return self.phases[0][1].batch_size

  @property
  def max_batch_size(self) -> int:
    return max([shape.batch_size for _, shape in self.phases] + list(self.batch_ladder))

  def phase_index(self, step: int) -> int:
    return max(i for i, (first_step, _) in enumerate(self.phases) if first_step <= step
               or i == 0)

  def shapes_of_phase(self, step: int) -> tuple[StepShape, ...]:
    """The shapes the steps of `step`'s phase use (one, or two with sparse noise steps)."""
    index = self.phase_index(step)
    plain = self.plain_shapes[index] if self.plain_shapes else None
    return (self.phases[index][1],) + ((plain,) if plain is not None else ())

  def shape_at(self, step: int) -> StepShape:
    shapes = self.shapes_of_phase(step)
    return shapes[1] if len(shapes) > 1 and step % self.probe_every else shapes[0]

  def next_phase_step(self, step: int) -> int:
    later = [first for first, _ in self.phases if first > step]
    return min(later) if later else self.total_steps


def _batch_phases(config: Config, num_train_examples: int, tokens_per_example: int):
  """[(start_examples, batch_size)] and the LR factors from then on: the hybrid schedule's
  decays, and train.batch_size_rule's LR factor at each batch change."""
  t = config.train
  batch, phases, decays = t.batch_size, [(0, t.batch_size)], []
  lr_factor = batch_rules.lr_factor(t.batch_size_rule, t.batch_size_factor,
                                    'train.batch_size_rule')
  for milestone in t.batch_size_milestones:
    at = Duration(milestone, t.batch_size_milestone_unit).to_examples(
        batch, num_train_examples, tokens_per_example)
    if t.max_batch_size is not None and batch * t.batch_size_factor > t.max_batch_size:
      decays.append((at, 1.0 / t.batch_size_factor))  # Smith et al.'s hybrid
    else:
      batch *= t.batch_size_factor
      phases.append((at, batch))
      if lr_factor != 1:
        decays.append((at, lr_factor))
  return phases, decays


def _micro_batches(config: Config, batch_size: int, num_devices: int, granule: int) -> int:
  t = config.train
  field = 'train.batch_size' if batch_size == t.batch_size else 'train.batch_size_factor'
  if batch_size % num_devices:
    raise ConfigError(f'{field}: global batch {batch_size} is not divisible by the '
                      f'{num_devices} devices; use a multiple of {num_devices}')
  accumulation = 1
  if t.micro_batch_size in ('auto', 'fastest'):
    raise ConfigError(f'train.micro_batch_size={t.micro_batch_size}: resolve it before planning '
                      '(mbx.training.autobatch.resolve_auto_micro_batch / '
                      'resolve_fastest_micro_batch)')
  micro = fastest_micro_batch_size(t.micro_batch_size) or t.micro_batch_size
  if micro is not None:
    if micro % num_devices:
      raise ConfigError(f'train.micro_batch_size={t.micro_batch_size}: not divisible by '
                        f'the {num_devices} devices')
    if batch_size % micro:
      raise ConfigError(f'train.micro_batch_size={t.micro_batch_size}: does not divide '
                        f'the global batch {batch_size}')
    accumulation = batch_size // micro
  elif t.max_device_batch_size is not None:
    per_device, ghost = batch_size // num_devices, granule
    fits = [k for k in range(1, per_device + 1) if per_device % k == 0 and
            per_device // k <= t.max_device_batch_size and (per_device // k) % ghost == 0]
    if not fits:
      raise ConfigError(f'train.max_device_batch_size={t.max_device_batch_size}: the '
                        f'{per_device} examples per device cannot be split into equal '
                        f'micro-batches of at most that size that are multiples of '
                        f'model.options.ghost_batch_size={ghost}')
    accumulation = fits[0]
  return accumulation


def _probe_micro_batches(config: Config, batch_size: int, num_devices: int,
                         accumulation: int, min_groups: int) -> int:
  """Micro-batches per device for steps that feed the probes (>= min_groups groups)."""
  t = config.train
  groups = t.probe_groups or max(min_groups, num_devices * accumulation)
  if groups % num_devices or (groups // num_devices) % accumulation:
    raise ConfigError(f'train.probe_groups={groups}: must be a multiple of '
                      f'devices x micro-batches = {num_devices * accumulation}')
  if batch_size % groups:
    raise ConfigError(f'train.probe_groups={groups}: the global batch {batch_size} '
                      f'cannot be split into that many equal groups (the probes need at '
                      f'least {min_groups} groups, so batch_size >= {min_groups})')
  return groups // num_devices


def _refuse_micro_batches(config: Config, batch_size: int, num_devices: int, accumulation: int,
                          micro: int) -> None:
  """ConfigError naming optim.update_rule and the field that asks for micro-batches."""
  t = config.train
  if accumulation > 1:
    field = ('train.max_device_batch_size' if t.micro_batch_size is None else
             'train.micro_batch_size')
    why = (f'{field}={getattr(t, field.partition(".")[2])} splits the global batch '
           f'{batch_size} into {accumulation} micro-batches per device ({num_devices} devices)')
    fix = f'unset {field}'
  else:
    field = ('train.probe_groups' if t.probe_groups else
             'train.noise_scale' if t.noise_scale else 'train.probes')
    why = (f'the probes ({field}) split the global batch {batch_size} into {micro} '
           f'micro-batches per device on measuring steps')
    fix = (f'unset {field}' if t.probe_groups else
           'measure without it, or on at least 2 devices (one group each)')
  raise ConfigError(f'optim.update_rule={config.optim.update_rule!r}: cannot run per '
                    f'micro-batch (accumulates=False), but {why}; {fix}')


def step_shape(config: Config, batch_size: int, num_devices: int,
               backend: str = 'cpu', measure_noise: bool = True, *, probe_groups: int = 0,
               batch_granule: int = 1, accumulates: bool = True) -> StepShape:
  """How a step of global batch `batch_size` runs: gradient accumulation switches on
  when the per-device batch exceeds train.max_device_batch_size (or is fixed by
  train.micro_batch_size); with probes (probe_groups = the most groups one needs, 0: no
  probes) and measure_noise, the batch is split into at least that many groups. Per-device
  micro-batches must be multiples of `batch_granule` (ghost BatchNorm's virtual batch).
  accumulates=False (an update rule that cannot run per micro-batch): one micro-batch only.
  Raises ConfigError if the batch cannot be split."""
  accumulation = _micro_batches(config, batch_size, num_devices, batch_granule)
  micro = accumulation
  measures = probe_groups > 0 and measure_noise
  if measures:
    micro = _probe_micro_batches(config, batch_size, num_devices, accumulation, probe_groups)
  if micro > 1 and not accumulates:
    _refuse_micro_batches(config, batch_size, num_devices, accumulation, micro)
  ghost = batch_granule
  if (batch_size // num_devices // micro) % ghost:
    raise ConfigError(f'model.options.ghost_batch_size={ghost}: does not divide the '
                      f'{batch_size // num_devices // micro} examples of each per-device '
                      f'micro-batch (global batch {batch_size}, {num_devices} devices, '
                      f'{micro} micro-batches); ghost BN statistics are per device')
  mode = config.train.accumulation
  if mode == 'auto':
    # Accumulating to save memory needs a scan: XLA keeps the unrolled micro-batches'
    # temporaries alive together. Splits made only for the noise scale are unrolled on
    # CPU, whose loop bodies run far slower than straight-line code (docs/performance.md).
    mode = 'unrolled' if backend == 'cpu' and accumulation == 1 and micro <= 32 else 'scan'
  return StepShape(batch_size, micro, mode, measure_noise=measures)


def _event_steps(every: Duration | None, examples_after_step: np.ndarray,
                 batch_size: int, num_train_examples: int, tokens_per_example: int) -> set[int]:
  total_steps = len(examples_after_step) - 1
  if every is None:
    return set()
  if every.unit == 'steps':
    interval = max(1, int(round(every.amount)))
    return set(range(interval, total_steps + 1, interval))
  interval = max(1, every.to_examples(batch_size, num_train_examples, tokens_per_example))
  marks = np.arange(interval, examples_after_step[-1] + 1, interval)
  return set(np.searchsorted(examples_after_step, marks).tolist())


def _lr_step_changes(config: Config, examples_after_step: np.ndarray, num_train_examples: int,
                     lr_extra_decays, tokens_per_example: int) -> set[int]:
  """Steps after which the LR of a 'step' schedule (or the hybrid's decays) changes."""
  o, total_steps = config.optim, len(examples_after_step) - 1
  marks = [at for at, _ in lr_extra_decays]
  if o.schedule == 'step':
    marks += [Duration(m, o.milestone_unit).to_examples(config.train.batch_size,
                                                        num_train_examples, tokens_per_example)
              for m in o.milestones]
  # The LR is a function of the examples seen before a step (optim.schedules), so the
  # first step at the new LR is the first one starting at or past the mark.
  steps = np.searchsorted(examples_after_step, marks).tolist()
  return {s for s in steps if 0 < s < total_steps}


def policy_ladder(config: Config) -> tuple[int, ...]:
  """The batches train.batch_policy may choose: B_min x factor^k <= B_max (AdaScale: B)."""
  t = config.train
  if t.batch_policy == 'adascale':
    return (t.batch_size,)
  return batch_ladder(t.min_batch_size or t.batch_size, t.max_batch_size, t.batch_policy_factor)


def initial_segment(config: Config) -> Segment:
  """A policy's first decision: the configured batch at the configured LR; under AdaScale the
  gain is 1 until measured, so the schedule advances by one base batch a step."""
  t = config.train
  if uses_adascale(config):
    return Segment(0, t.batch_size, progress_per_step=float(config.optim.base_batch_size
                                                            or t.batch_size))
  return Segment(0, t.batch_size)


def _segment_steps(segments: tuple[Segment, ...], budget: float) -> list[tuple[int, int]]:
  """[(batch, steps)] of the decisions so far; the last runs until the schedule's progress
  reaches the budget."""
  counts = [(seg.batch_size, nxt.first_step - seg.first_step)
            for seg, nxt in zip(segments, segments[1:])]
  last = segments[-1]
  counts.append((last.batch_size, max(0, math.ceil((budget - last.progress) / last.rate))))
  return counts


def make_plan(config: Config, num_devices: int, num_train_examples: int,
              backend: str = 'cpu', *, probe_groups: int = 0, batch_granule: int = 1,
              tokens_per_example: int = 1, segments: tuple[Segment, ...] = (),
              accumulates: bool = True) -> Plan:
  """Resolves batch phases, micro-batching and event steps; raises ConfigError.

  probe_groups: the most gradient groups an in-step probe needs (0: no probes);
  batch_granule: per-device micro-batches are multiples of it (see step_shape);
  tokens_per_example: what a 'tokens' duration is divided by (seq_len for windows of text);
  segments: under train.batch_policy, the decisions taken so far (none: the initial batch);
  accumulates: False for an update rule that cannot run per micro-batch (see step_shape)."""
  shape_options = dict(probe_groups=probe_groups, batch_granule=batch_granule,
                       accumulates=accumulates)
  t = config.train
  adaptive = t.batch_policy != 'none'
  phases, lr_extra_decays = _batch_phases(config, num_train_examples, tokens_per_example)
  ladder = policy_ladder(config) if adaptive else ()
  for batch in ladder:
    if batch > num_train_examples:
      raise ConfigError(f'train.max_batch_size={t.max_batch_size}: the batch ladder {list(ladder)} '
                        f'of train.batch_policy={t.batch_policy} reaches {batch}, more than the '
                        f'{num_train_examples} training examples of {config.data.name}')
    try:
      step_shape(config, batch, num_devices, backend, **shape_options)
    except ConfigError as error:
      raise ConfigError(f'train.batch_policy={t.batch_policy}: batch {batch} of its ladder '
                        f'{list(ladder)} cannot be split: {error}') from None
  for _, batch in phases:
    if batch > num_train_examples:
      if batch == t.batch_size:
        raise ConfigError(f'train.batch_size={batch}: exceeds the {num_train_examples} '
                          f'training examples of {config.data.name}')
      raise ConfigError(
          f'train.batch_size_factor={t.batch_size_factor}: the batch-size schedule reaches '
          f'a global batch of {batch}, more than the {num_train_examples} training examples '
          f'of {config.data.name}; set train.max_batch_size (at most {num_train_examples}) '
          'to decay the LR past it instead (Smith et al. 2018\'s hybrid)')
  duration = parse_duration(t.duration, 'train.duration')

  # Steps per phase: a phase's batch size applies to steps that start inside it.
  step_batches = []
  seen = 0
  total = (None if duration.unit == 'steps'
           else duration.to_examples(t.batch_size, num_train_examples, tokens_per_example))
  for i, (start, batch) in enumerate(phases):
    end = phases[i + 1][0] if i + 1 < len(phases) else total
    if duration.unit == 'steps':
      count = int(round(duration.amount))
    else:
      count = max(0, math.ceil((min(end, total) - max(seen, start)) / batch)) if seen < min(end, total) else 0
    step_batches.append((batch, count))
    seen += batch * count
  if adaptive:
    segments = segments or (initial_segment(config),)
    step_batches = _segment_steps(segments, total)
  examples_after_step = np.concatenate(
      [[0], np.cumsum(np.concatenate([np.full(n, b, np.int64) for b, n in step_batches]))])
  total_steps = len(examples_after_step) - 1
  if total_steps == 0:
    raise ConfigError(f'train.duration={t.duration!r}: amounts to zero steps')
  if examples_after_step[-1] + max(b for _, b in phases) > INT32_LIMIT:
    raise ConfigError(f'train.duration={t.duration!r}: more than 2^31 examples are not supported')
  warmup = parse_duration(config.optim.warmup, 'optim.warmup').to_examples(
      t.batch_size, num_train_examples, tokens_per_example)
  if warmup > examples_after_step[-1]:
    raise ConfigError(f'optim.warmup={config.optim.warmup!r}: longer than '
                      f'train.duration={t.duration!r} ({warmup} > {examples_after_step[-1]} '
                      'examples)')

  step_phases, first_step = [], 0
  for batch, count in step_batches:
    if count == 0:
      continue
    step_phases.append((first_step, step_shape(config, batch, num_devices, backend,
                                               **shape_options)))
    first_step += count

  every = lambda text, name: parse_duration(text, name) if text is not None else None
  events = lambda text, name: _event_steps(every(text, name), examples_after_step,
                                           t.batch_size, num_train_examples, tokens_per_example)
  log_steps = events(t.log_every, 'train.log_every')
  eval_steps = events(t.eval_every, 'train.eval_every') | {0}
  if t.eval_growth:
    eval_steps |= {s for s in (math.ceil(t.eval_growth ** i) for i in range(
        int(math.log(total_steps) / math.log(t.eval_growth)) + 2)) if s <= total_steps}
  checkpoint_steps = events(t.checkpoint_every, 'train.checkpoint_every')
  # A log row averages over its interval; ending rows where the batch size or a step
  # of the LR changes keeps each row's batch size, LR and noise scale g exact.
  log_steps |= {first for first, _ in step_phases[1:]}
  log_steps |= _lr_step_changes(config, examples_after_step, num_train_examples,
                                lr_extra_decays, tokens_per_example)
  decision_steps = set()
  if adaptive:
    decision_steps = events(t.batch_policy_every or t.log_every, 'train.batch_policy_every')
    marks = [Duration(m, t.batch_size_milestone_unit).to_examples(
        t.batch_size, num_train_examples, tokens_per_example) for m in t.batch_policy_milestones]
    decision_steps |= set(np.searchsorted(examples_after_step, marks).tolist())
    decision_steps = {s for s in decision_steps if 0 < s < total_steps}
    log_steps |= decision_steps  # each log row has one batch size and one LR factor
  noise_every, plain_shapes = 1, ()
  if probe_groups:
    plain_shapes = tuple(step_shape(config, shape.batch_size, num_devices, backend, False,
                                    **shape_options) for _, shape in step_phases)
    splits_only_for_noise = any(plain.num_micro_batches != shape.num_micro_batches
                                for plain, (_, shape) in zip(plain_shapes, step_phases))
    noise_every = t.probe_every or (10 if splits_only_for_noise else 1)
    if noise_every == 1:
      plain_shapes = ()
  final = {total_steps}
  return Plan(num_devices=num_devices, num_train_examples=num_train_examples,
              total_steps=total_steps, examples_after_step=examples_after_step,
              phases=tuple(step_phases), lr_extra_decays=tuple(lr_extra_decays),
              log_steps=frozenset(log_steps | final), eval_steps=frozenset(eval_steps | final),
              checkpoint_steps=frozenset(checkpoint_steps | final),
              probe_every=noise_every, plain_shapes=plain_shapes,
              tokens_per_example=tokens_per_example, segments=tuple(segments) if adaptive else (),
              batch_ladder=ladder, decision_steps=frozenset(decision_steps),
              budget_examples=total if adaptive else None)
