"""A config resolved into what training needs: dataset, model, task, probes and update rule,
checked together.

    workload = resolve(config)                                  # names and import paths
    workload = resolve(config, data=ArrayDataset(...), model=MyModule(hidden=64))  # from Python

Every name is resolved and every combination checked here, before anything compiles: the
dataset has the splits asked for, the model's options fit its fields, the model's output (traced
with jax.eval_shape, not compiled) fits the task's targets, the target metric is one the task
reports. `workload.config` is the resolved config that a run records in config.json: the model
as an import path with its `num_classes`, so any later process rebuilds the same model.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbx import config as config_lib
from mbx import data as data_lib
from mbx import models as models_lib
from mbx import registry
from mbx.optim import declared as optim_declared
from mbx.optim.optimizers import Optimizer, resolve_optimizer
from mbx.optim.update_rules import PLAIN, recorded_name, resolve_update_rule
from mbx.tasks import Task, resolve_task
from mbx.training import estimators
from mbx.training.noise_scale import estimator_probes
from mbx.training.probes import check_probes, resolve_probe
from mbx.training.step import batch_norm_axis_name

IN_MEMORY_PREFIX = 'in-memory:'


@dataclasses.dataclass(frozen=True)
class Workload:
  config: config_lib.Config     # resolved; what config.json records
  dataset: Any                  # mbx.data.Dataset
  info: data_lib.DatasetInfo
  task: Task
  probes: tuple                 # in-step probes (the noise scale first, when on)
  optimizer: Optimizer          # the factory, its options and what it declares
  module: nn.Module | None = None  # a module instance given from Python, else built by name
  update_rule: Any = PLAIN      # optim.update_rule, built (mbx.optim.update_rules)

  def model(self, mesh=None, *, float32: bool = False) -> nn.Module:
    """The model for a step over `mesh` (BatchNorm's axis), in model.dtype or float32."""
    m = self.config.model
    dtype = jnp.float32 if float32 else jnp.dtype(m.dtype)
    axis = batch_norm_axis_name(mesh) if mesh is not None else None
    if self.module is not None:
      replace = {k: v for k, v in (('dtype', dtype), ('batch_norm_axis_name', axis))
                 if hasattr(self.module, k)}
      return self.module.clone(**replace) if replace else self.module
    return models_lib.build_model(m.name, options=m.options, dtype=dtype,
                                  batch_norm_axis_name=axis)

  @property
  def train_split(self) -> str:
    return self.config.data.train_split

  @property
  def eval_split(self) -> str:
    return self.config.data.eval_split or self.info.eval_split

  @property
  def test_split(self) -> str | None:
    """Evaluated once at the end: data.test_split, else 'test' when it is a separate split."""
    split = self.config.data.test_split
    if split == 'none':
      return None
    if split is not None:
      return split
    return 'test' if 'test' in self.info.splits and self.eval_split != 'test' else None

  @property
  def probe_groups(self) -> int:
    """The most gradient groups a probe needs (0: no probes)."""
    return max((p.min_groups for p in self.probes), default=0)

  @property
  def batch_granule(self) -> int:
    """Per-device micro-batches must be multiples of this: ghost BN's virtual batch, else 1."""
    model = self.model()
    if getattr(model, 'norm', None) == 'ghost':
      return int(model.ghost_batch_size)
    return 1

  @property
  def tokens_per_example(self) -> int:
    """Target positions per example (seq_len for text windows, 1 for a label)."""
    shape = self.info.element_spec.get('targets', ((), None))[0]
    return max(1, math.prod(shape))

  @property
  def plan_options(self) -> dict:
    """What `make_plan` needs to know of the workload beyond the config."""
    return dict(probe_groups=self.probe_groups, batch_granule=self.batch_granule,
                tokens_per_example=self.tokens_per_example,
                accumulates=self.update_rule.accumulates)

  def augment(self):
    return self.dataset.augment() if self.config.data.augment else None

  def sample_inputs(self, batch: int = 1) -> jax.Array:
    shape, dtype = self.info.element_spec['inputs']
    return jnp.zeros((batch, *shape), jnp.dtype(dtype))

  def batch_spec(self, batch: int, sharding=None) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract arrays of a batch of `batch` examples, as the feeds deliver them."""
    return {key: jax.ShapeDtypeStruct((batch, *shape), jnp.dtype(dtype), sharding=sharding)
            for key, (shape, dtype) in self.info.element_spec.items()}


def config_error(error: Exception) -> config_lib.ConfigError | None:
  """`error` told as bad input in one line, or None when it is not (a bug: re-raise it as is).

  An exception raised inside the user's code names the field that pointed there and the line
  (registry.user_code_error), and stays the cause (the CLI prints its traceback when MBX_DEBUG=1);
  a ValueError or FileNotFoundError of mbx's checks has its lines joined (e.g. the prepare
  command of a dataset).
  """
  line = registry.user_code_error(error)
  if line is not None:
    converted = config_lib.ConfigError(line)
    converted.__cause__ = error
    return converted
  if not isinstance(error, (ValueError, FileNotFoundError)):
    return None
  text = ' '.join(line.strip() for line in str(error).splitlines() if line.strip())
  converted = config_lib.ConfigError(text or repr(error))
  converted.__suppress_context__ = True
  return converted


def _resolve_model(config: config_lib.Config, info, module):
  """(resolved ModelConfig, module or None)."""
  m = config.model
  if module is not None:
    if not isinstance(module, nn.Module):
      raise ValueError(f'model={module!r}: expected a flax.linen.Module instance')
    name, options = models_lib.describe_module(module)
    if 'num_classes' in options and info.num_classes is not None and \
        options['num_classes'] != info.num_classes:
      raise ValueError(f'model.num_classes={options["num_classes"]}: the dataset has '
                       f'{info.num_classes} classes')
    return dataclasses.replace(m, name=name, options=options), module
  options = models_lib.resolve_options(m.name, m.options, info.num_classes)
  # An import path is recorded as one that any process resolves: the module's name when it is
  # installed or under the working directory, else its file (see registry.import_path).
  name = m.name if not registry.is_import_path(m.name) else registry.import_path(
      models_lib.model_target(m.name))
  return dataclasses.replace(m, name=name, options=options), None


def _check_outputs(workload: Workload) -> None:
  """Traces (never compiles) the model on a batch of 2 and lets the task check its output."""
  model = workload.model()
  sample = workload.sample_inputs(2)
  takes_train = models_lib.call_takes_train(model)
  kwargs = {'train': False} if takes_train else {}
  try:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, **kwargs))
    outputs = jax.eval_shape(lambda v: model.apply(v, sample, **kwargs), variables)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'model.name={workload.config.model.name!r}: applying it to inputs of '
                     f'shape {tuple(sample.shape[1:])} ({sample.dtype}) per example failed: '
                     f'{type(error).__name__}: {str(error).splitlines()[0]}') from None
  if not isinstance(outputs, jax.ShapeDtypeStruct):
    raise ValueError(f'model.name={workload.config.model.name!r}: returns '
                     f'{type(outputs).__name__}, expected one array of outputs')
  workload.task.check(outputs, workload.info)


def _check_target(config: config_lib.Config, task: Task) -> None:
  t = config.train
  if t.target_metric is None:
    return
  prefix, _, metric = t.target_metric.partition('_')
  allowed = [f'{p}_{m}' for p in ('eval', 'train') for m in task.metrics]
  if metric not in task.metrics:
    close = registry.close_names(metric, task.metrics)  # eval_f1 is not close to eval_loss
    hint = (registry.did_you_mean(f'{prefix}_{m}' for m in close) if close
            else f'allowed: {", ".join(allowed)}')
    raise ValueError(f'train.target_metric={t.target_metric!r}: not a metric of task '
                     f'{config.task.name!r}; {hint}')
  if prefix == 'train' and not t.eval_on_train:
    raise ValueError(f'train.target_metric={t.target_metric!r}: train_* targets need '
                     'train.eval_on_train=true')


def _check_estimators(config: config_lib.Config, optimizer) -> None:
  """A preconditioned estimator needs the optimizer's declared diagonal preconditioner."""
  for name in config.train.noise_scale_estimators:
    if name in estimators.ESTIMATORS and estimators.ESTIMATORS[name].needs_preconditioner \
        and optimizer.declared.preconditioner is None:
      raise optim_declared.undeclared(config.optim.name, 'preconditioner',
                       f'train.noise_scale_estimators={name}')


def _check_update_rule(config: config_lib.Config, rule) -> None:
  """A rule that cannot run per micro-batch against a split AutoBatch would choose; fixed splits
  are checked by the plan (plan.step_shape), which knows the devices."""
  micro = config.train.micro_batch_size
  if not rule.accumulates and micro in ('auto', config_lib.FASTEST):
    raise config_lib.ConfigError(
        f'optim.update_rule={config.optim.update_rule!r}: cannot run per micro-batch '
        f'(accumulates=False), but train.micro_batch_size={micro!r} may choose micro-batches; '
        'leave train.micro_batch_size unset')


def resolve(config: config_lib.Config, *, data=None, model: nn.Module | None = None,
            needs_data: bool = False) -> Workload:
  """The workload of `config`; ConfigError (one line, naming the field) on any mismatch.

  data: an mbx.data.ArrayDataset (or Dataset) instead of `data.name`; the run then records
  data.name='in-memory:<name>', which a later process cannot load again.
  model: a flax.linen.Module instance instead of `model.name`; recorded by its import path.
  needs_data: the data will be read (training), so data that are not there and may not be
  fetched (a catalog dataset not prepared) are said first, before the model is checked against
  their metadata; False (a dry run, reading a run's model) needs metadata only.
  """
  optim_declared.validate(config)
  if data is None and config.data.name.startswith(IN_MEMORY_PREFIX):
    raise config_lib.ConfigError(
        f'data.name={config.data.name!r}: this run\'s data were given from Python '
        '(mbx.train(config, data=...)); pass them again with data=..., or name a function '
        'that returns them: data.name=package.module:function')
  try:
    dataset = data_lib.resolve_dataset(config.data, data)
    info = dataset.info()
    dataset.check_split(config.data.train_split, 'data.train_split')
    if config.data.eval_split is not None:
      dataset.check_split(config.data.eval_split, 'data.eval_split')
    if config.data.test_split not in (None, 'none'):
      dataset.check_split(config.data.test_split, 'data.test_split')
    if needs_data and hasattr(dataset, 'check_available'):
      dataset.check_available()
    task = resolve_task(config.task.name, config.task.options)
    if hasattr(task, 'check_targets'):  # before a model is fitted to targets it cannot score
      task.check_targets(info)
    model_config, module = _resolve_model(config, info, model)
    probes = estimator_probes(config.train) + tuple(resolve_probe(path)
                                                    for path in config.train.probes)
    check_probes(probes)
    optimizer = resolve_optimizer(config)
    _check_estimators(config, optimizer)
    update_rule = resolve_update_rule(config.optim.update_rule, config.optim.update_rule_options)
    _check_update_rule(config, update_rule)
    optim_config = dataclasses.replace(config.optim, name=optimizer.name,
                                       update_rule=recorded_name(config.optim.update_rule))
    data_config = config.data
    if data is not None:
      data_config = dataclasses.replace(data_config, name=IN_MEMORY_PREFIX + dataset.name)
    resolved = dataclasses.replace(config, data=data_config, model=model_config,
                                   optim=optim_config)
    workload = Workload(config=resolved, dataset=dataset, info=info, task=task,
                        probes=probes, optimizer=optimizer, module=module,
                        update_rule=update_rule)
    _check_outputs(workload)
    _check_target(resolved, task)
  except config_lib.ConfigError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (re-raised unless bad input)
    raise config_error(error) or error
  return workload
