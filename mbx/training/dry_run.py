"""Build and compile one real train step from a config, on abstract input: no data, no training.

For configs meant for datasets and accelerators this machine does not have (the
papers' own setups), a dry run checks that the model, optimizer, LR schedule,
batch split and augmentation all fit together, using the same `make_train_step`
as `mbx train`. Nothing is initialised or run: shapes come from `jax.eval_shape`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mbx import config as config_lib
from mbx import data as data_lib
from mbx.training.components import build_components
from mbx.training.plan import StepShape, make_plan, step_shape
from mbx.training.step import batch_sharded, init_train_state, make_mesh, make_train_step

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
    """Arguments + outputs - aliases + temporaries of the compiled step (MEASURED.md)."""
    analysis = self.compiled.memory_analysis() if self.compiled is not None else None
    if analysis is None:
      return None
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes -
            analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)


def compile_one_step(config: config_lib.Config, *, batch_size: int | None = None,
                     input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                     examples_per_epoch: int | None = None, compile: bool = True,
                     compiler_options: dict | None = None) -> DryRun:
  """Lowers (and compiles) the config's train step for one global batch of `batch_size`.

  Args:
    config: validated here; its data section is used only for shapes and augmentation.
    batch_size: the global batch to compile (default train.batch_size); micro-batching
      follows the config (train.micro_batch_size / max_device_batch_size).
    input_shape: one example's shape (default: the dataset's, e.g. 224x224x3); a small
      one keeps the compile cheap while building the same network.
    num_classes: default: the dataset's.
    examples_per_epoch: for epoch units in the schedule (default: the dataset's
      canonical train-split size, whether prepared or not).
    compile: False only lowers (traces and emits the program, no XLA compile).
    compiler_options: passed to XLA, e.g. FAST_COMPILE when only checking that it compiles.
  """
  config_lib.validate(config)
  spec = data_lib.catalog.spec(config.data.name)
  batch_size = batch_size or config.train.batch_size
  input_shape = tuple(input_shape or spec.input_shape)
  num_classes = num_classes or spec.num_classes
  examples_per_epoch = examples_per_epoch or spec.num_examples[
      config.data.train_split.split('[')[0].split('+')[0]]

  mesh = make_mesh()
  shape = step_shape(config, batch_size, mesh.devices.size, jax.default_backend())
  plan = make_plan(config, mesh.devices.size, examples_per_epoch, jax.default_backend())
  c = build_components(config, plan, num_classes=num_classes, mesh=mesh)
  model, optimizer, t = c.model, c.optimizer, config.train
  step = make_train_step(model, optimizer, c.lr_schedule, shape, mesh, on_device_data=False,
                         noise_scale=t.noise_scale, noise_scale_ema=t.noise_scale_ema,
                         data_seed=t.data_seed if t.data_seed is not None else t.seed,
                         augment=c.augment)
  sample_x = jnp.zeros((1, *input_shape), jnp.float32)
  state = jax.eval_shape(lambda: init_train_state(model, optimizer, sample_x, seed=t.seed,
                                                  mesh=mesh, noise_scale=t.noise_scale))
  sharding = batch_sharded(mesh)
  x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32, sharding=sharding)
  y = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)
  lowered = step.lower(state, x, y)
  compiled = lowered.compile(compiler_options) if compile else None
  return DryRun(shape=shape, compiled=compiled, lowered=lowered)
