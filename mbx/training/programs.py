"""The programs every trial of a config shares: its Setup and the compiled steps.

Trials that differ only in config.TRIAL_FIELDS reuse one compiled step (a process-wide
cache, `_STEPS`); `hyper` (step.HYPER_FIELDS) carries what they differ in.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbx import config as config_lib
from mbx.optim import scaled_learning_rate
from mbx.optim.optimizers import place_hyperparameters
from mbx.training.components import step_arguments
from mbx.training.evaluation import Evaluator
from mbx.training.plan import Plan, Segment
from mbx.training.step import (StepParts, TrainState, init_train_state, make_step, replicated,
                               trial_hyperparameters)
from mbx.training.workload import Workload


def data_seed(config: config_lib.Config) -> int:
  return config.train.seed if config.train.data_seed is None else config.train.data_seed


@dataclasses.dataclass
class Setup:
  """What every trial of a config shares: workload, mesh, data, plan and the step's parts."""
  workload: Workload
  mesh: Any
  num_train: int
  on_device: bool
  train_rows: dict[str, np.ndarray] | None
  source: Any
  plan: Plan
  parts: StepParts
  evaluator: Evaluator
  micro_batch_size: int | str | None = None  # as resolved ('fastest' -> 'fastest=<m>')
  replan: Any = None  # segments -> Plan: the plan after a batch policy's decisions

  @property
  def config(self) -> config_lib.Config:
    return self.workload.config


_STEPS: dict = {}  # steps shared by the trials of a sweep in this process


def _step_key(s: Setup, shape, packed: bool):
  return (config_lib.trial_key(s.config), shape, s.on_device, packed,
          tuple(d.id for d in s.mesh.devices.flat), id(s.workload.module))


def trial_step(s: Setup, shape, packed: bool = False):
  """(jitted step(state, hyper, ...), reference peak LR, compiled cache) for the trial key.

  Trials that differ only in config.TRIAL_FIELDS reuse one compiled program; `hyper`
  carries their learning-rate scale (relative to the reference peak), momentum and
  data seed. With packed=True the step is vmapped over stacked trial states.
  """
  key = _step_key(s, shape, packed)
  if key not in _STEPS:
    if len(_STEPS) >= 32:
      _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = (make_step(s.parts, shape, s.mesh, on_device_data=s.on_device, packed=packed),
                   scaled_learning_rate(s.config.optim, s.plan.initial_batch_size), {})
  return _STEPS[key]


def hyperparameters(config: config_lib.Config, reference_peak: float, batch_size: int,
                    segment: Segment | None = None):
  """The step's per-trial inputs; under a batch policy, with the current decision's LR factor
  and schedule progress."""
  scale = scaled_learning_rate(config.optim, batch_size) / reference_peak
  if segment is None:
    return trial_hyperparameters(scale, config.optim.momentum, data_seed(config))
  return trial_hyperparameters(scale * segment.lr_factor, config.optim.momentum,
                               data_seed(config),
                               (segment.progress, segment.rate, segment.first_step))


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      tree)


def compiled_steps(s: Setup, shapes, state, configs: Sequence[config_lib.Config],
                   segment: Segment | None = None):
  """[(compiled step, hyper)] for the shapes of a phase, compiled ahead of time; one trial
  runs the plain step, several the vmapped one over their stacked states (segment: a batch
  policy's current decision)."""
  plan, mesh, packed = s.plan, s.mesh, len(configs) > 1
  results = []
  for shape in shapes:
    step_fn, reference_peak, compiled = trial_step(s, shape, packed=packed)
    hyper = np.stack([hyperparameters(c, reference_peak, plan.initial_batch_size, segment)
                      for c in configs])
    hyper = jax.device_put(hyper if packed else hyper[0], replicated(mesh))
    _, *batch_args = step_arguments(s.workload, shape, mesh, on_device=s.on_device,
                                    num_train_examples=s.num_train,
                                    max_batch_size=plan.max_batch_size,
                                    num_trials=len(configs))
    abstract = (_abstract(state), _abstract(hyper), *batch_args)
    signature = (str(jax.tree.structure(abstract)),
                 tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(abstract)))
    if signature not in compiled:
      compiled[signature] = step_fn.lower(*abstract).compile()
    results.append((compiled[signature], hyper))
  return results


def initial_state(s: Setup, seed: int) -> TrainState:
  """The freshly initialised state of a trial of `s.config` (compiled once per sweep)."""
  key = (config_lib.trial_key(s.config), tuple(d.id for d in s.mesh.devices.flat),
         id(s.workload.module))
  return init_train_state(s.parts.model, s.parts.optimizer.transform(),
                          s.workload.sample_inputs(), seed=seed, mesh=s.mesh,
                          task=s.parts.task, probes=s.parts.probes, cache_key=key)


def sync_every_step(config: config_lib.Config, mesh) -> bool:
  """Whether the loop waits for each step before dispatching the next."""
  if config.train.sync_every_step is not None:
    return config.train.sync_every_step
  # Multi-device XLA:CPU can deadlock in all-reduce rendezvous when many sharded
  # steps are in flight (docs/performance.md, jax-ml/jax#25861).
  return jax.default_backend() == 'cpu' and mesh.devices.size > 1


@jax.jit
def copy_state(state: TrainState) -> TrainState:
  """A scratch copy of the train state (same shardings), for timing and branching: the steps
  donate their input, so the run's own state must not enter them. Compiled once per state
  layout, not once per decision."""
  return jax.tree.map(jnp.copy, state)


def rule_hyperparameters(s: Setup, step: int, plan: Plan | None = None) -> dict[str, float]:
  """The optimizer hyperparameters besides the LR (which the schedule carries) that a batch rule
  sets for the steps from `step` on: a policy's decision, or train.batch_size_rule at a
  batch-size milestone ({} when none)."""
  plan, t = plan or s.plan, s.config.train
  segment = plan.segment_at(step)
  if segment is not None:
    return dict(segment.hyperparameters)
  if t.batch_size_milestones and t.batch_size_rule != 'none':
    ratio = plan.shape_at(step).batch_size / plan.initial_batch_size
    return s.workload.optimizer.changed_by(t.batch_size_rule, ratio, 'train.batch_size_rule')
  return {}


def with_rule_hyperparameters(s: Setup, state: TrainState, step: int, plan: Plan | None = None
                              ) -> TrainState:
  """`state` with `rule_hyperparameters` placed in the optimizer state; idempotent, so a resumed
  run agrees with one that never stopped."""
  values = rule_hyperparameters(s, step, plan)
  if not values:
    return state
  return state.replace(opt_state=place_hyperparameters(state.opt_state, values))
