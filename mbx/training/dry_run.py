"""Build and compile one real train step from a config, on abstract input: no data, no training.

For configs meant for datasets and accelerators this machine does not have (the
papers' own setups), a dry run checks that the model, optimizer, LR schedule,
batch split and augmentation all fit together, using the same `step.make_step`
as `mbx train`. Nothing is initialised or run: shapes come from `jax.eval_shape`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from mbx import config as config_lib
from mbx.training.components import abstract_state, step_arguments, step_parts
from mbx.training.plan import StepShape, make_plan, step_shape
from mbx.training.step import make_mesh, make_step
from mbx.training.workload import resolve

# Unoptimised XLA:CPU code, about half the compile time of ResNet-50's step: enough to know
# that it compiles, not to measure its speed or memory.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@dataclasses.dataclass(frozen=True)
class DryRun:
  shape: StepShape
  compiled: jax.stages.Compiled | None  # None when only lowered
  lowered: jax.stages.Lowered

  @property
  def memory_bytes(self) -> int | None:
    """Arguments + outputs - aliases + temporaries of the compiled step (docs/performance.md)."""
    analysis = self.compiled.memory_analysis() if self.compiled is not None else None
    if analysis is None:
      return None
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes -
            analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)


def compile_one_step(config: config_lib.Config, *, batch_size: int | None = None,
                     input_shape: Sequence[int] | None = None,
                     examples_per_epoch: int | None = None, compile: bool = True,
                     compiler_options: dict | None = None) -> DryRun:
  """Lowers (and compiles) the config's train step for one global batch of `batch_size`.

  Args:
    config: resolved here (metadata only: catalog datasets need not be prepared).
    batch_size: the global batch to compile (default train.batch_size); micro-batching
      follows the config (train.micro_batch_size / max_device_batch_size).
    input_shape: one example's input shape (default: the dataset's, e.g. 224x224x3); a small
      one keeps the compile cheap while building the same network.
    examples_per_epoch: for epoch units in the schedule (default: the dataset's train split).
    compile: False only lowers (traces and emits the program, no XLA compile).
    compiler_options: passed to XLA, e.g. FAST_COMPILE when only checking that it compiles.
  """
  workload = resolve(config)
  if input_shape is not None:
    spec = dict(workload.info.element_spec)
    spec['inputs'] = (tuple(input_shape), spec['inputs'][1])
    workload = dataclasses.replace(workload, info=dataclasses.replace(workload.info,
                                                                      element_spec=spec))
  config = workload.config
  batch_size = batch_size or config.train.batch_size
  examples_per_epoch = examples_per_epoch or workload.info.splits[
      config.data.train_split.split('[')[0].split('+')[0]]
  mesh = make_mesh()
  options = dict(probe_groups=workload.probe_groups, batch_granule=workload.batch_granule,
                 accumulates=workload.update_rule.accumulates)
  shape = step_shape(config, batch_size, mesh.devices.size, jax.default_backend(), **options)
  plan = make_plan(config, mesh.devices.size, examples_per_epoch, jax.default_backend(),
                   **workload.plan_options)
  parts = step_parts(workload, plan, mesh)
  step = make_step(parts, shape, mesh, on_device_data=False)
  args = step_arguments(workload, shape, mesh, on_device=False,
                        num_train_examples=examples_per_epoch, max_batch_size=batch_size)
  lowered = step.lower(abstract_state(workload, parts, mesh), *args)
  compiled = lowered.compile(compiler_options) if compile else None
  return DryRun(shape=shape, compiled=compiled, lowered=lowered)
