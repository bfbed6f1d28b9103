"""AutoBatch: the largest batch that fits a memory budget, from XLA's memory analysis.

Every candidate is the run's real train step compiled on abstract inputs
(`jit(step).lower(ShapeDtypeStructs).compile().memory_analysis()`): nothing is
allocated or run, so there are no trial steps and no out-of-memory crashes (unlike
Ultralytics' AutoBatch, which profiles a few batches and fits a line, or Lightning's
batch-size finder, which doubles the batch until it crashes).

    mbx autobatch --config configs/mnist1d_cnn.py --budget 64MiB
    mbx train --config configs/mnist1d_cnn.py train.batch_size=4000 \\
        train.micro_batch_size=auto train.autobatch_budget=64MiB

Counted, per device: the step's arguments (parameters, model and optimizer state;
the batch, or the whole train split and its order window when `data.placement` keeps
it on device), its outputs less those written into the donated state, XLA's
temporary buffers, and what stays live beside the step (the eval splits cached on
device, or the prefetched host batches); the eval step's peak is checked too. Not
counted: the runtime's own overhead and allocator fragmentation, hence a default
budget of 0.9 of the device allocator's limit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mbx import config as config_lib
from mbx.data.example_order import window_length
from mbx.training.components import abstract_state, step_arguments, step_parts
from mbx.training.feed import eval_batch_size, example_bytes, keeps_data_on_device
from mbx.training.plan import StepShape, make_plan
from mbx.training.step import (batch_sharded, init_train_state, make_eval_step, make_mesh,
                               make_step, replicated)
from mbx.training.timing import seconds_per_step, zeros_like
from mbx.training.workload import Workload, resolve


def format_bytes(count: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if abs(count) < 1024:
      return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
    count /= 1024
  return f'{count:.1f} TiB'


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What memory depends on in the data: one example's arrays, split sizes, placement."""
  element_spec: dict
  num_train_examples: int
  num_eval_examples: int
  on_device: bool

  @classmethod
  def of(cls, workload: Workload, *, num_train_examples=None, on_device=None) -> DataFacts:
    """From the dataset's metadata; values given (the loop knows them) win."""
    d = workload.config.data
    num_train = num_train_examples or workload.dataset.num_examples(d.train_split)
    if on_device is None:
      on_device = keeps_data_on_device(d.placement, workload.info.element_spec, num_train)
    return cls(element_spec=dict(workload.info.element_spec), num_train_examples=int(num_train),
               num_eval_examples=int(workload.dataset.num_examples(workload.eval_split)),
               on_device=bool(on_device))


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device of one compiled train step, and what stays live beside it."""
  per_device_batch: int      # examples per device in one micro-batch
  num_micro_batches: int
  argument_bytes: int        # state + data (the batch, or the train split and order window)
  output_bytes: int
  alias_bytes: int           # outputs written into the donated state
  temp_bytes: int            # XLA's scratch: activations, gradients, ...
  state_bytes: int           # parameters + model state + optimizer state (in argument_bytes)
  data_bytes: int            # the data among the arguments
  beside_bytes: int          # eval splits cached on device, or prefetched host batches

  @property
  def total_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes +
            self.beside_bytes)

  def describe(self) -> str:
    return (f'{format_bytes(self.total_bytes)} ({self.total_bytes:,} bytes) = arguments '
            f'{format_bytes(self.argument_bytes)} '
            f'(state {format_bytes(self.state_bytes)}, data {format_bytes(self.data_bytes)}) '
            f'+ outputs {format_bytes(self.output_bytes)} - donated {format_bytes(self.alias_bytes)} '
            f'+ temp {format_bytes(self.temp_bytes)} + beside the step '
            f'{format_bytes(self.beside_bytes)}')


def _with_micro_batch(config: config_lib.Config, micro_batch_size: int | None,
                      **train_fields) -> config_lib.Config:
  return dataclasses.replace(config, train=dataclasses.replace(
      config.train, micro_batch_size=micro_batch_size, max_device_batch_size=None,
      autobatch_budget=None, **train_fields))


def _per_device_bytes(tree) -> int:
  """Bytes one device holds of abstract arrays (replicated: all; sharded: its shard)."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
             for a in jax.tree.leaves(tree))


class _StepCompiler:
  """The run's step parts and abstract state, built once; steps compiled per shape, from the
  same builder and arguments as the loop's (components.py)."""

  def __init__(self, workload: Workload, facts: DataFacts, mesh):
    self.workload, self.config, self.facts, self.mesh = workload, workload.config, facts, mesh
    self.num_devices = mesh.devices.size
    self.backend = mesh.devices.flat[0].platform
    self.base_plan = make_plan(_with_micro_batch(self.config, None), self.num_devices,
                               facts.num_train_examples, self.backend, **workload.plan_options)
    self.parts = step_parts(workload, self.base_plan, mesh)
    self.replicated, self.sharded = replicated(mesh), batch_sharded(mesh)
    self.state = abstract_state(workload, self.parts, mesh)
    self.state_bytes = _per_device_bytes(self.state)
    self.compiles, self.compile_seconds = 0, 0.0
    self._train_cache: dict[StepShape, StepMemory] = {}
    self._eval_cache: dict[int, int] = {}

  def _array(self, shape, dtype, sharded: bool):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype),
                                sharding=self.sharded if sharded else self.replicated)

  def _batch(self, batch_size: int) -> dict:
    return self.workload.batch_spec(batch_size, self.sharded)

  def _train_split(self, max_batch_size: int) -> tuple:
    """The step's on-device data, as `DeviceFeed` passes it: the split's rows in the order
    of one window (whole epochs plus the largest batch) and the window's start."""
    n = self.facts.num_train_examples
    window = window_length(n, max_batch_size, example_bytes(self.facts.element_spec))
    return ({k: jax.ShapeDtypeStruct((window, *a.shape[1:]), a.dtype, sharding=self.replicated)
             for k, a in self.workload.batch_spec(1).items()},
            self._array((), jnp.int32, False))

  def _train_split_bytes(self) -> int:
    """The split itself, which `DeviceFeed` keeps beside the windows it builds from it."""
    return self.facts.num_train_examples * example_bytes(self.facts.element_spec)

  def _eval_cache_bytes(self) -> int:
    """The eval splits that the Evaluator keeps on device: padded, batch-sharded (batch, mask)."""
    t, f = self.config.train, self.facts
    splits = [f.num_eval_examples] + ([f.num_train_examples] if t.eval_on_train else [])
    per_example = example_bytes(f.element_spec) + 4
    total = 0
    for count in splits:
      batch = eval_batch_size(t.eval_batch_size, count, self.num_devices)
      total += -(-count // batch) * batch * per_example
    return total // self.num_devices

  def _prefetched_bytes(self, batch_size: int) -> int:
    # The host feed's queue holds `prefetch` batches and its thread builds one more.
    return (self.config.data.prefetch + 1) * _per_device_bytes(self._batch(batch_size))

  def _analyse(self, jitted, *args):
    tic = time.perf_counter()
    analysis = jitted.lower(*args).compile().memory_analysis()
    self.compiles += 1
    self.compile_seconds += time.perf_counter() - tic
    if analysis is None:
      raise RuntimeError(f'the {self.backend} backend gives no memory analysis')
    if not any(getattr(analysis, f'{kind}_size_in_bytes', 0)
               for kind in ('argument', 'output', 'temp', 'generated_code')):
      raise RuntimeError(f'the {self.backend} backend\'s memory_analysis() returned all zeros '
                         '(seen on some GPU builds), so AutoBatch cannot size the batch here; '
                         'set train.micro_batch_size by hand')
    return analysis

  def train_program(self, shape: StepShape) -> tuple[Callable, tuple, int]:
    """(jitted step, its abstract arguments, bytes live beside it) for `shape`: the loop's
    program (programs.trial_step) on the loop's arguments (programs.compiled_steps)."""
    step = make_step(self.parts, shape, self.mesh, on_device_data=self.facts.on_device)
    hyper, *data = step_arguments(
        self.workload, shape, self.mesh, on_device=self.facts.on_device,
        num_train_examples=self.facts.num_train_examples,
        max_batch_size=max(shape.batch_size, self.base_plan.max_batch_size))
    if self.facts.on_device:
      beside = self._eval_cache_bytes() + self._train_split_bytes()
    else:
      beside = self._prefetched_bytes(shape.batch_size)
    return step, (self.state, hyper, *data), beside

  def train_step(self, shape: StepShape) -> StepMemory:
    if shape.num_micro_batches == 1:  # one micro-batch compiles the same either way
      shape = dataclasses.replace(shape, accumulation='unrolled')
    if shape not in self._train_cache:
      step, args, beside = self.train_program(shape)
      m = self._analyse(step, *args)
      self._train_cache[shape] = StepMemory(
          per_device_batch=shape.micro_batch_size // self.num_devices,
          num_micro_batches=shape.num_micro_batches,
          argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
          alias_bytes=m.alias_size_in_bytes, temp_bytes=m.temp_size_in_bytes,
          state_bytes=self.state_bytes, data_bytes=_per_device_bytes(args[2:]),
          beside_bytes=beside)
    return self._train_cache[shape]

  def single_step(self, per_device_batch: int) -> StepMemory:
    """One micro-batch of `per_device_batch` examples per device."""
    return self.train_step(StepShape(per_device_batch * self.num_devices, 1, 'unrolled'))

  def eval_step(self, max_batch_size: int) -> int:
    """Peak bytes while evaluating: the eval step and everything the run keeps meanwhile."""
    key = max_batch_size if not self.facts.on_device else 0
    if key not in self._eval_cache:
      t, f = self.config.train, self.facts
      batch = eval_batch_size(t.eval_batch_size, f.num_eval_examples, self.num_devices)
      rows = self._batch(batch)
      mask = self._array((batch,), jnp.float32, True)
      m = self._analyse(make_eval_step(self.parts.model, self.parts.task), self.state.params,
                        self.state.model_state, rows, mask)
      eval_params = _per_device_bytes((self.state.params, self.state.model_state))
      eval_batch = _per_device_bytes((rows, mask))
      # The rest of the state (optimizer, counters) stays live beside the eval step.
      beside = self.state_bytes - eval_params
      if f.on_device:
        beside += (_per_device_bytes(self._train_split(self.base_plan.max_batch_size)) +
                   self._train_split_bytes() +
                   self._eval_cache_bytes() - eval_batch)
      else:  # the next streamed eval batch is built while the step runs
        beside += self._prefetched_bytes(max_batch_size) + eval_batch
      self._eval_cache[key] = (m.argument_size_in_bytes + m.output_size_in_bytes +
                               m.temp_size_in_bytes + beside)
    return self._eval_cache[key]


def _workload(config_or_workload) -> Workload:
  if isinstance(config_or_workload, Workload):
    return config_or_workload
  return resolve(config_or_workload)


def memory_of_step(config: config_lib.Config | Workload, per_device_batch: int, *,
                   num_micro_batches: int = 1, accumulation: str = 'unrolled', mesh=None,
                   facts: DataFacts | None = None) -> StepMemory:
  """Predicted per-device bytes of the config's train step at `per_device_batch` examples
  per device and micro-batch, from the compiled step's memory analysis (nothing runs)."""
  mesh = mesh if mesh is not None else make_mesh()
  workload = _workload(config)
  compiler = _StepCompiler(workload, facts or DataFacts.of(workload), mesh)
  batch = per_device_batch * num_micro_batches * compiler.num_devices
  return compiler.train_step(StepShape(batch, num_micro_batches, accumulation))


def memory_budget(budget_bytes: int | None, memory_fraction: float, devices) -> tuple[int, str]:
  """(bytes per device, where it came from): the stated budget, else a fraction of the
  allocator's limit (`memory_stats()['bytes_limit']`) of the smallest device."""
  if budget_bytes is not None:
    return int(budget_bytes), 'stated'
  limits = [(d.memory_stats() or {}).get('bytes_limit') for d in devices]
  if not limits or None in limits:
    platform = devices[0].platform
    raise config_lib.ConfigError(
        f'autobatch: the {platform} devices report no memory limit to take a fraction of; '
        'state a budget per device, e.g. --budget 2GiB (mbx autobatch) or '
        'train.autobatch_budget=2GiB (with train.micro_batch_size=auto)')
  if not 0 < memory_fraction <= 1:
    raise config_lib.ConfigError(f'--memory-fraction={memory_fraction}: must be in (0, 1]')
  return (int(memory_fraction * min(limits)),
          f'{memory_fraction:g} x bytes_limit {format_bytes(min(limits))} of {devices[0].device_kind}')


def _largest_fitting(fits: Callable[[int], bool], guess: int, upper: int,
                     resolution: int = 1) -> tuple[int, int | None]:
  """(m, m + 1) with fits(m) and not fits(m + 1), or (upper, None) when `upper` fits; m is 0
  when nothing fits. Gallops from `guess` (steps r, 2r, 4r, ... for resolution r) to bracket
  a boundary, then bisects until the bracket (m, m') is at most r wide. If fits is not
  monotone, m is a boundary, not necessarily the largest fit.
  """
  guess = min(max(guess, 1), upper)
  step = resolution = max(int(resolution), 1)
  if fits(guess):
    lo = guess
    while True:
      hi = min(lo + step, upper)
      if hi == lo:
        return lo, None
      if not fits(hi):
        break
      lo, step = hi, 2 * step
  else:
    hi = guess
    while True:
      lo = max(hi - step, 0)
      if lo == 0 or fits(lo):
        break
      hi, step = lo, 2 * step
  while hi - lo > resolution:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo, hi


def _secant_guess(memory: Callable[[int], int], budget: int, upper: int,
                  iterations: int = 3) -> int:
  """Where memory reaches the budget, by secant steps from batches 16 and 256. Memory is
  close to affine in the batch, so this lands within a few examples of the boundary."""
  a, b = min(16, upper), min(256, upper)
  if a == b or memory(a) > budget:
    return a
  for _ in range(iterations):
    slope = (memory(b) - memory(a)) / (b - a)
    if slope <= 0:
      return b if b > a else upper
    guess = min(max(int(a + (budget - memory(a)) / slope), 1), upper)
    # Between nearby batches memory jitters with XLA's per-shape choices: a slope taken
    # there measures the jitter, so stop once within 5%.
    if abs(guess - b) <= max(1, b // 20):
      return guess
    a, b = b, guess
  return b


def _divisors(n: int) -> list[int]:
  small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
  return sorted(set(small + [n // d for d in small]))


@dataclasses.dataclass(frozen=True)
class AutoBatchPlan:
  """The largest per-device batch under the budget, and the configured global batch as
  micro-batch x accumulation steps. Byte counts are per device."""
  name: str
  budget_bytes: int
  budget_source: str
  backend: str
  num_devices: int
  data_on_device: bool
  # Fits, and one more example per device does not. Memory is not strictly monotone in the
  # batch (XLA chooses layouts and fusions per shape), so a larger batch may fit as well.
  largest_per_device_batch: int    # one micro-batch per step
  limited_by: str                  # 'memory', or 'training set size' (no batch exceeds it)
  largest: StepMemory
  next_larger: StepMemory | None   # the first larger candidate, which does not fit
  global_batch_size: int
  micro_batch_size: int            # global: train.micro_batch_size
  num_micro_batches: int           # accumulation steps per optimizer step (largest phase)
  accumulation: str
  resolved: config_lib.Config      # the config with this micro-batch (and accumulation)
  chosen: StepMemory               # the step of the largest batch phase
  eval_bytes: int
  compiles: int
  compile_seconds: float

  @property
  def per_device_micro_batch(self) -> int:
    return self.micro_batch_size // self.num_devices

  def describe(self) -> str:
    n = self.num_devices
    lines = [f'AutoBatch for {self.name}: {n} {self.backend} device(s), data on '
             f'{"device" if self.data_on_device else "host"}; all bytes per device',
             f'budget: {format_bytes(self.budget_bytes)} ({self.budget_bytes:,} bytes, '
             f'{self.budget_source})',
             f'largest per-device batch that fits: {self.largest_per_device_batch} '
             f'(limited by {self.limited_by})',
             f'  at {self.largest_per_device_batch}: {self.largest.describe()}']
    if self.next_larger is not None:
      over = self.next_larger.total_bytes
      lines.append(f'  at {self.next_larger.per_device_batch}: {format_bytes(over)} '
                   f'({over:,} bytes), over the budget')
    accumulation = (f'{self.num_micro_batches} accumulation steps ({self.accumulation})'
                    if self.num_micro_batches > 1 else 'no accumulation')
    lines += [f'configured global batch {self.global_batch_size} = {n} device(s) x '
              f'{self.per_device_micro_batch} examples x {accumulation}',
              f'  step: {self.chosen.describe()}',
              f'  eval step peak: {format_bytes(self.eval_bytes)}',
              f'train.micro_batch_size={self.micro_batch_size}' + (
                  f' train.accumulation={self.accumulation}' if self.num_micro_batches > 1 and
                  self.resolved.train.accumulation != 'auto' else ''),
              f'{self.compiles} compiles in {self.compile_seconds:.1f} s; nothing was run']
    return '\n'.join(lines)


def autobatch(config: config_lib.Config | Workload, budget_bytes: int | None = None,
              memory_fraction: float = config_lib.DEFAULT_MEMORY_FRACTION, *, mesh=None,
              facts: DataFacts | None = None) -> AutoBatchPlan:
  """The largest per-device batch whose compiled step fits the budget, and the largest
  micro-batch (a divisor of the per-device global batch) whose accumulation plan fits.

  Secant steps give a guess (memory is close to affine in the batch); galloping from it
  brackets the boundary and bisection finds it. Every answer is a compiled candidate:
  the guess only saves compiles. Raises ConfigError when no budget can be found or nothing fits.
  """
  workload = _workload(config)
  config = workload.config
  mesh = mesh if mesh is not None else make_mesh()
  budget, source = memory_budget(budget_bytes, memory_fraction, list(mesh.devices.flat))
  facts = facts or DataFacts.of(workload)
  compiler = _StepCompiler(workload, facts, mesh)
  n, num_train = compiler.num_devices, facts.num_train_examples

  granule = workload.batch_granule  # the search runs over multiples of it
  upper = num_train // n // granule
  total = lambda units: compiler.single_step(units * granule).total_bytes
  units, units_over = _largest_fitting(lambda units: total(units) <= budget,
                                       _secant_guess(total, budget, upper), upper)
  if units == 0:
    one = compiler.single_step(granule)
    raise config_lib.ConfigError(
        f'autobatch: even {granule} example(s) per device need {one.describe()}, over the '
        f'budget of {format_bytes(budget)} ({source})')
  largest = units * granule
  first_over = units_over * granule if units_over is not None else None

  # Largest micro-batch first (fewest accumulation steps). XLA:CPU's buffer assignment
  # keeps every unrolled micro-batch's activations (unrolled temp ~ the whole batch's), so
  # when the configured mode is 'auto' a scan over micro-batches is the fallback.
  modes = [config.train.accumulation] + (['scan'] if config.train.accumulation == 'auto' else [])
  per_device = config.train.batch_size // n
  chosen = None
  for m in sorted((d for d in _divisors(per_device) if d <= largest), reverse=True):
    for mode in modes:
      candidate = _with_micro_batch(config, m * n, accumulation=mode)
      try:
        plan = make_plan(candidate, n, num_train, compiler.backend, **workload.plan_options)
      except config_lib.ConfigError:
        break  # e.g. noise-scale groups that this micro-batch cannot form
      shapes = {shape for _, shape in plan.phases}
      worst = max((compiler.train_step(s) for s in shapes), key=lambda s: s.total_bytes)
      if worst.total_bytes <= budget:
        chosen = (candidate, worst, max(shapes, key=lambda s: s.batch_size), plan.max_batch_size)
        break
    if chosen is not None:
      break
  if chosen is None:
    raise config_lib.ConfigError(
        f'autobatch: no micro-batch of train.batch_size={config.train.batch_size} fits in '
        f'{format_bytes(budget)} per device on {n} device(s) (the largest single batch that '
        f'fits is {largest} per device)')
  resolved, worst, shape, max_batch = chosen
  eval_bytes = compiler.eval_step(max_batch)
  if eval_bytes > budget:
    raise config_lib.ConfigError(
        f'autobatch: evaluation alone needs {format_bytes(eval_bytes)} per device, over the '
        f'budget of {format_bytes(budget)}; lower train.eval_batch_size='
        f'{config.train.eval_batch_size}')
  return AutoBatchPlan(
      name=config.name, budget_bytes=budget, budget_source=source, backend=compiler.backend,
      num_devices=n, data_on_device=facts.on_device, largest_per_device_batch=largest,
      limited_by='memory' if first_over is not None else 'training set size',
      largest=compiler.single_step(largest),
      next_larger=compiler.single_step(first_over) if first_over is not None else None,
      global_batch_size=config.train.batch_size,
      micro_batch_size=resolved.train.micro_batch_size,
      num_micro_batches=shape.num_micro_batches, accumulation=shape.accumulation,
      resolved=resolved, chosen=worst, eval_bytes=eval_bytes, compiles=compiler.compiles,
      compile_seconds=compiler.compile_seconds)


def config_budget(config: config_lib.Config) -> int | None:
  budget = config.train.autobatch_budget
  return None if budget is None else config_lib.parse_bytes(budget, 'train.autobatch_budget')


def resolve_auto_micro_batch(workload: Workload, num_devices: int, *,
                             num_train_examples: int | None = None,
                             on_device: bool | None = None, quiet: bool = False) -> config_lib.Config:
  """The workload's config with train.micro_batch_size='auto' replaced by AutoBatch's choice
  over the first `num_devices` devices (unchanged when it is not 'auto'). For the plan only:
  the run's config.json keeps 'auto', so a resumed run resolves it again."""
  config = workload.config
  if config.train.micro_batch_size != 'auto':
    return config
  facts = DataFacts.of(workload, num_train_examples=num_train_examples, on_device=on_device)
  plan = autobatch(workload, config_budget(config),
                   mesh=make_mesh(jax.devices()[:num_devices]), facts=facts)
  if not quiet and jax.process_index() == 0:
    print(f'autobatch: train.micro_batch_size={plan.micro_batch_size} '
          f'({plan.num_micro_batches} x {plan.per_device_micro_batch} per device, '
          f'{plan.accumulation}, predicted '
          f'{format_bytes(plan.chosen.total_bytes)} of {format_bytes(plan.budget_bytes)})',
          file=sys.stderr)
  return plan.resolved


# ------------------------------------------------------------- the fastest split, by timing
FASTEST_MAX_CANDIDATES = 6
FASTEST_TIMED_STEPS = 5


def time_micro_batches(workload: Workload, num_devices: int, *, num_train_examples: int,
                       on_device: bool, steps: int = FASTEST_TIMED_STEPS,
                       max_candidates: int = FASTEST_MAX_CANDIDATES) -> list[dict]:
  """Seconds per step of the loop's own step for each way to split the configured batch into
  2^j equal micro-batches (no split first), on zero data, median of 3 x `steps` steps after a
  warm-up. Candidates whose compiled step exceeds a known memory budget are left out."""
  config = workload.config
  facts = DataFacts.of(workload, num_train_examples=num_train_examples, on_device=on_device)
  compiler = _StepCompiler(workload, facts, make_mesh(jax.devices()[:num_devices]))
  n, granule = compiler.num_devices, workload.batch_granule
  per_device = config.train.batch_size // n
  splits = [k for k in (2 ** j for j in range(16)) if k <= per_device and per_device % k == 0
            and (per_device // k) % granule == 0][:max_candidates]
  try:
    budget, _ = memory_budget(config_budget(config), config_lib.DEFAULT_MEMORY_FRACTION,
                              list(compiler.mesh.devices.flat))
  except config_lib.ConfigError:
    budget = None  # CPU without a budget: every split is timed
  parts, rows = compiler.parts, []
  state = init_train_state(parts.model, parts.optimizer.transform(), workload.sample_inputs(),
                           seed=config.train.seed, mesh=compiler.mesh, task=parts.task,
                           probes=parts.probes)
  for k in splits:
    micro = per_device // k * n
    plan = make_plan(_with_micro_batch(config, micro), n, facts.num_train_examples,
                     compiler.backend, **workload.plan_options)
    shape = plan.shape_at(0)
    if budget is not None and compiler.train_step(shape).total_bytes > budget:
      rows.append({'micro_batch_size': micro, 'seconds_per_step': math.inf, 'fits': False})
      continue
    step, args, _ = compiler.train_program(shape)
    data = jax.tree.map(zeros_like, args[1:])
    seconds, state = seconds_per_step(step, state, data, steps=steps, repeats=3)
    rows.append({'micro_batch_size': micro, 'seconds_per_step': seconds, 'fits': True})
  return rows


def resolve_fastest_micro_batch(workload: Workload, num_devices: int, *,
                                num_train_examples: int, on_device: bool,
                                quiet: bool = False) -> config_lib.Config:
  """The workload's config with train.micro_batch_size='fastest' replaced by 'fastest=<m>',
  m the quickest split measured here (unchanged otherwise: an int, or an already recorded
  'fastest=<m>', which a resumed run and a re-run from config.json reuse, bitwise)."""
  config = workload.config
  if config.train.micro_batch_size != config_lib.FASTEST:
    return config
  rows = time_micro_batches(workload, num_devices, num_train_examples=num_train_examples,
                            on_device=on_device)
  best = min(rows, key=lambda r: r['seconds_per_step'])
  if not math.isfinite(best['seconds_per_step']):
    raise config_lib.ConfigError('train.micro_batch_size=fastest: no split of train.batch_size='
                                 f'{config.train.batch_size} fits the memory budget')
  if not quiet and jax.process_index() == 0:
    timed = ', '.join(f'{r["micro_batch_size"]}: {r["seconds_per_step"] * 1e3:.2f} ms'
                      for r in rows if r['fits'])
    print(f'fastest split: train.micro_batch_size={best["micro_batch_size"]} '
          f'(per step, by micro-batch: {timed})', file=sys.stderr)
  return dataclasses.replace(config, train=dataclasses.replace(
      config.train, micro_batch_size=f'{config_lib.FASTEST}={best["micro_batch_size"]}'))


# ------------------------------------------------- checking against real out-of-memory errors
def _probe(config_json: str, per_device_batch: int) -> None:
  """Runs two real steps at `per_device_batch` with everything the run keeps beside them
  allocated; prints {"fits": bool}. Meant for a fresh process (an empty allocator)."""
  workload = resolve(config_lib.from_dict(json.loads(config_json)))
  compiler = _StepCompiler(workload, DataFacts.of(workload), make_mesh())
  parts = compiler.parts
  try:
    step, args, beside = compiler.train_program(
        StepShape(per_device_batch * compiler.num_devices, 1, 'unrolled'))
    state = init_train_state(parts.model, parts.optimizer.transform(), workload.sample_inputs(),
                             seed=workload.config.train.seed, mesh=compiler.mesh,
                             task=parts.task, probes=parts.probes)
    data = jax.tree.map(zeros_like, args[1:])
    kept = zeros_like(jax.ShapeDtypeStruct((beside,), jnp.uint8, sharding=compiler.replicated))
    for _ in range(2):
      state, _ = step(state, *data)
    jax.block_until_ready((state, kept))
    print(json.dumps({'fits': True}))
  except Exception as error:  # pylint: disable=broad-except
    text = str(error)
    if 'RESOURCE_EXHAUSTED' not in text and 'out of memory' not in text.lower():
      raise
    print(json.dumps({'fits': False, 'error': text[:300]}))


def verify_oom(config: config_lib.Config, *, timeout: float = 600,
               relative_resolution: float = 0.0) -> dict:
  """Compares AutoBatch at 100% of the allocator's limit with the real out-of-memory
  boundary, found by galloping and bisection over probes that run the step (each in a fresh
  process); relative_resolution > 0 stops the bisection once the boundary is bracketed that
  finely (fewer probes: 0.02 brackets it within 2% of the prediction).

  GPU/TPU only. UNTESTED on a GPU: written in sessions without one.
  """
  if jax.default_backend() == 'cpu':
    raise config_lib.ConfigError('--verify-oom needs a GPU or TPU: on CPU an oversized '
                                 'allocation swaps or is killed rather than failing cleanly')
  predicted = autobatch(config, memory_fraction=1.0)
  config_json = json.dumps(config_lib.to_dict(config))
  probes: dict[int, bool] = {}

  def runs(per_device_batch: int) -> bool:
    if per_device_batch not in probes:
      code = f'from mbx.training.autobatch import _probe; _probe({config_json!r}, {per_device_batch})'
      result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                              timeout=timeout, check=False)
      if result.returncode != 0:
        raise RuntimeError(f'probe at {per_device_batch} failed:\n{result.stderr[-3000:]}')
      probes[per_device_batch] = json.loads(result.stdout.strip().splitlines()[-1])['fits']
    return probes[per_device_batch]

  upper = DataFacts.of(_workload(config)).num_train_examples // predicted.num_devices
  real, real_over = _largest_fitting(
      runs, predicted.largest_per_device_batch, upper,
      resolution=round(relative_resolution * predicted.largest_per_device_batch))
  return {'device': jax.devices()[0].device_kind, 'budget_bytes': predicted.budget_bytes,
          'predicted': predicted.largest_per_device_batch, 'real': real,
          'real_first_oom': real_over, 'probes': dict(sorted(probes.items())),
          'ratio': predicted.largest_per_device_batch / real if real else float('nan')}
