"""Frozen experiment configs, command-line overrides and validation.

A config is five frozen dataclasses (data, model, task, optim, train). `validate` checks
every field's value here, with no I/O; the names in `data.name`, `model.name`, `task.name`
and `train.probes` (built-in names or import paths, see `mbx.registry`) are resolved and
checked against each other by `mbx.training.workload.resolve`, still before anything is
compiled. Errors name the field, the value and what is allowed.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import pathlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from mbx import registry

DURATION_UNITS = ('steps', 'epochs', 'examples', 'tokens')  # tokens: target positions
SCHEDULES = ('constant', 'step', 'cosine', 'linear', 'polynomial')
ACCUMULATION_MODES = ('auto', 'unrolled', 'scan')
PLACEMENTS = ('auto', 'device', 'host')
DTYPES = ('float32', 'bfloat16')
TARGET_PREFIXES = ('eval_', 'train_')
BATCH_POLICIES = ('none', 'warmup', 'adascale', 'noise_scale', 'goodput')
WARMUP_CRITERIA = ('noise_scale', 'branch')
# The gradient noise-scale estimators (mbx.training.estimators), and the exact per-example tr(Σ).
NOISE_SCALE_ESTIMATORS = ('b_simple', 'b_simple_preconditioned', 'b_noise',
                          'b_noise_preconditioned')
PER_EXAMPLE_TRACE = 'trace_per_example'
# AutoBatch's budget without train.autobatch_budget: this fraction of the device allocator's
# limit (the runtime's own overhead and fragmentation are not in XLA's memory analysis).
DEFAULT_MEMORY_FRACTION = 0.9
# Field names of earlier versions, read from old config.json files and overrides.
RENAMED_FIELDS = {('train', 'noise_scale_every'): 'probe_every',
                  ('train', 'noise_scale_groups'): 'probe_groups'}


class ConfigError(ValueError):
  """A config field has a value that is not allowed."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` section: the dataset, its splits and how batches reach the devices."""
  name: str = 'mnist1d'
  """A catalog or text dataset, nqm (the noisy quadratic model), any tfds builder name, or an
  import path 'pkg.mod:Name' of a tfds.core.DatasetBuilder subclass or of a function returning
  mbx.data.ArrayDataset."""
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """Keyword arguments of the dataset (of the function an import path names)."""
  preprocess: str | None = None
  """Import path of fn(batch dict) -> batch dict, applied on the host."""
  data_dir: str | None = None
  """Where tfds data live; None: $MBX_DATA_DIR, else ~/tensorflow_datasets."""
  download: bool = False
  """Let tfds download and prepare the dataset (needs internet)."""
  train_split: str = 'train'
  """The split trained on (tfds slicing allowed, e.g. 'train[:90%]')."""
  eval_split: str | None = None
  """The split evaluated during training; None: the dataset's validation split, else test.
  Targets, sweeps and LR choice read this split only."""
  test_split: str | None = None
  """Evaluated once, when the run ends (summary test_<metric>); None: 'test' when it is not
  the eval split; 'none': never."""
  placement: str = 'auto'
  """'device': the whole split in device memory, batches sliced there; 'host': a prefetching
  reader; 'auto': device when the split is small."""
  augment: bool = True
  """Apply the dataset's standard augmentation, if it has one."""
  prefetch: int = 2
  """Batches prepared ahead by the host reader."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The `model` section: which network, with which options."""
  name: str = 'cnn1d'
  """A zoo name (mbx.models) or an import path 'pkg.mod:Name' of a flax.linen.Module class or
  of a factory returning one."""
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """The model's keyword arguments, checked against its fields (model.options.<key>=value)."""
  dtype: str = 'float32'
  """Compute dtype; parameters stay float32."""


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The `task` section: the loss and metrics (mbx.tasks)."""
  name: str = 'classification'
  """A built-in task or an import path 'pkg.mod:TaskClass'."""
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """The task's keyword arguments."""


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The `optim` section: the optimizer and its learning-rate schedule."""
  name: str = 'adam'
  """A built-in optimizer (sgd, momentum, nesterov, adam, adamw, lars, lamb, lion, muon) or an
  import path 'package.module:factory' of (learning_rate, **options) -> optax transform
  (docs/optimizers.md)."""
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """The optimizer's keyword arguments (an import path's all; a built-in's beyond the fields
  below)."""
  learning_rate: float = 1e-3
  """Peak learning rate, at base_batch_size."""
  lr_scaling: str = 'none'
  """The batch rule from base_batch_size to train.batch_size: none, linear, sqrt, adam_sde,
  beta2_half_life, adamw_timescale, or several joined by '+' (docs/batch_rules.md)."""
  base_batch_size: int | None = None
  """The batch size at which learning_rate holds; None: the initial train.batch_size."""
  momentum: float = 0.9
  """Momentum of momentum, nesterov and lars."""
  b1: float = 0.9
  """Adam's (adamw's, lamb's) first-moment decay."""
  b2: float = 0.999
  """Adam's (adamw's, lamb's) second-moment decay."""
  eps: float = 1e-8
  """Adam's (adamw's, lamb's, lars's) epsilon."""
  weight_decay: float = 0.0
  """Weight decay; never applied to biases or norm parameters."""
  trust_coefficient: float = 0.001
  """LARS's trust coefficient."""
  clip_grad_norm: float | None = None
  """Clip the gradient to this global norm; None: no clipping."""
  schedule: str = 'constant'
  """The LR schedule after warmup."""
  milestones: tuple[float, ...] = ()
  """The 'step' schedule's decay points, in milestone_unit."""
  milestone_unit: str = 'epochs'
  """The unit of milestones."""
  decay_factor: float = 0.1
  """'step' schedule: the LR is multiplied by this at each milestone."""
  end_lr_factor: float = 0.0
  """cosine, linear and polynomial schedules: the final LR / the peak LR."""
  power: float = 2.0
  """The polynomial schedule's decay power."""
  warmup: str = '0 steps'
  """Gradual linear warmup to the peak LR (Goyal et al. 2017), a duration."""
  warmup_start_factor: float = 0.0
  """The LR at step 0 / the peak LR (Goyal et al.: 1/k)."""
  update_rule: str = 'plain'
  """How each gradient group's gradient is computed (mbx.optim.update_rules): 'plain', 'sam'
  (Foret et al.'s sharpness-aware minimization, two gradient evaluations a step), or an import
  path 'pkg.mod:Rule' of an update-rule class, factory or instance."""
  update_rule_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """The update rule's keyword arguments, e.g. {"rho": 0.05} for sam
  (optim.update_rule_options.rho=0.05)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The `train` section: batch size, budget, evaluation, checkpoints, measurements."""
  batch_size: int = 128
  """Global batch, over all hosts and devices."""
  micro_batch_size: int | str | None = None
  """Global micro-batch (gradients accumulated over batch_size / micro_batch_size of them);
  'auto': the largest that fits (AutoBatch); 'fastest': the quickest split by timing, recorded
  in config.json as 'fastest=<micro-batch>'; None: no accumulation unless
  max_device_batch_size asks for it."""
  autobatch_budget: int | str | None = None
  """For micro_batch_size='auto': memory per device, e.g. '2GiB'; None: 0.9 of the device
  allocator's limit (required on CPU)."""
  max_device_batch_size: int | None = None
  """Accumulate gradients when the per-device batch exceeds this."""
  accumulation: str = 'auto'
  """How micro-batches are looped inside the jitted step: unrolled or with lax.scan; auto
  picks by backend and size."""
  duration: str = '8000 steps'
  """The training budget, e.g. '8000 steps' or '20 epochs'."""
  seed: int = 0
  """Parameter initialisation (and the data order when data_seed is None)."""
  data_seed: int | None = None
  """Data order and augmentation; None: seed."""
  log_every: str = '100 steps'
  """How often a training-metrics row is written, a duration."""
  eval_every: str = '1 epochs'
  """How often the eval split is evaluated, a duration."""
  eval_growth: float | None = None
  """Also evaluate at steps ceil(g^i), which bounds the steps-to-target error at g - 1."""
  eval_on_train: bool = False
  """Also evaluate on the whole train split (train_<metric> targets need it)."""
  eval_batch_size: int = 1000
  """Examples per evaluation batch."""
  checkpoint_every: str | None = '1000 steps'
  """How often a checkpoint is saved, a duration; None: only at the end."""
  keep_checkpoints: int = 2
  """Checkpoints kept (the newest)."""
  max_loss: float | None = None
  """A training loss above this ends the run as diverged (as NaN/Inf always does)."""
  noise_scale: bool = False
  """Log the gradient noise scale B_simple (McCandlish et al. 2018)."""
  probe_groups: int | None = None
  """Small batches each measured step is split into; None: devices x micro-batches (at
  least 2)."""
  noise_scale_ema: float = 0.99
  """Decay of the noise scale's moving averages."""
  noise_scale_estimators: tuple[str, ...] = ()
  """More estimators on the measuring steps (docs/science.md §20): b_simple_preconditioned,
  b_noise, b_noise_preconditioned (Hessian-vector products), trace_per_example (exact
  per-example tr(Σ) by vmap, beside the two-group estimate)."""
  curvature_every: int = 10
  """b_noise's HVPs and trace_per_example's per-example gradients on every n-th measuring
  step (the others cost nothing extra)."""
  per_example_count: int = 64
  """Examples (the first of each measuring batch) trace_per_example differentiates one by
  one."""
  probes: tuple[str, ...] = ()
  """Import paths of extra in-step probes (mbx.training.probes)."""
  probe_every: int | None = None
  """Measure on every n-th step; None: 1 when the step already has >= 2 gradient groups,
  else 10."""
  target_metric: str | None = None
  """eval_<metric> or train_<metric> whose first crossing of target_value is recorded."""
  target_value: float | None = None
  """The value target_metric has to reach."""
  stop_at_target: bool = False
  """End the run once the target is reached."""
  batch_size_milestones: tuple[float, ...] = ()
  """Smith et al. 2018: B is multiplied by batch_size_factor at each of these points."""
  batch_size_milestone_unit: str = 'epochs'
  """The unit of batch_size_milestones and batch_policy_milestones (not steps: a step count
  means different data once B changes)."""
  batch_size_factor: int = 1
  """The factor B is multiplied by at each batch-size milestone."""
  batch_size_rule: str = 'none'
  """The batch rule applied at each batch-size milestone (none: Smith et al.'s constant LR;
  docs/batch_rules.md)."""
  max_batch_size: int | None = None
  """Past it, batch-size milestones decay the LR instead; a batch policy's B_max."""
  batch_policy: str = 'none'
  """Adapt B during training (docs/adaptive_batch.md), on the ladder min_batch_size x
  batch_policy_factor^k <= max_batch_size."""
  batch_policy_every: str | None = None
  """When the policy decides, a duration; None: at every log step."""
  min_batch_size: int | None = None
  """B_min, the ladder's first rung; None: batch_size."""
  batch_policy_factor: int = 2
  """The ladder's ratio (an integer >= 2)."""
  batch_policy_lr: str = 'auto'
  """The hyperparameters on a change of B: adascale or a batch rule (docs/batch_rules.md);
  auto: adascale for adascale and goodput, else the optimizer's declared rule (sqrt for
  Adam-type, linear for SGD-type)."""
  batch_policy_multiple: float = 1.0
  """noise_scale: B = multiple x B_simple; warmup: grow while the next rung <= multiple x
  B_simple."""
  batch_policy_milestones: tuple[float, ...] = ()
  """warmup at these fixed points instead, in batch_size_milestone_unit."""
  goodput_min_gain: float = 0.05
  """goodput: switch only for this predicted gain or more."""
  batch_policy_estimator: str = 'b_simple'
  """The noise-scale estimator batch policies and AdaScale read (train.noise_scale for
  b_simple, else one of train.noise_scale_estimators)."""
  batch_policy_criterion: str = 'noise_scale'
  """When warmup without milestones grows: 'noise_scale' (the next rung <= multiple x
  B_simple) or 'branch' (Merrill et al.'s local-CBS test on a short branch)."""
  batch_policy_branch: str = '1000 examples'
  """The branch criterion's training length, a duration (not steps)."""
  batch_policy_tolerance: float = 0.0
  """The branch criterion: the next rung's eval loss may be at most (1 + tolerance) x the
  current one's."""
  sync_every_step: bool | None = None
  """Wait for each step before dispatching the next; None: on multi-device CPU (the
  all-reduce rendezvous deadlock, docs/performance.md)."""
  init_from: str | None = None
  """'RUN_DIR' or 'RUN_DIR@STEP' (default: its latest): start from that run's checkpoint, its
  parameters and model state, and its optimizer state when the optimizer is the same."""


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole experiment: five sections and a name."""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  name: str = 'run'
  """The run's name (its default directory is runs/<name>); 'run': the config file's name."""


SECTIONS = {'data': DataConfig, 'model': ModelConfig, 'task': TaskConfig,
            'optim': OptimConfig, 'train': TrainConfig}
MAPPING_FIELDS = (('data', 'options'), ('model', 'options'), ('task', 'options'),
                  ('optim', 'options'), ('optim', 'update_rule_options'))
# The fields with a closed set of values: `validate` checks them, docs/config_reference.md
# lists them.
CHOICES = {'data.placement': PLACEMENTS, 'model.dtype': DTYPES, 'optim.schedule': SCHEDULES,
           'optim.milestone_unit': DURATION_UNITS, 'train.accumulation': ACCUMULATION_MODES,
           'train.batch_size_milestone_unit': ('epochs', 'examples', 'tokens'),
           'train.batch_policy': BATCH_POLICIES,
           'train.batch_policy_criterion': WARMUP_CRITERIA}


# ----------------------------------------------------------------- durations
@dataclasses.dataclass(frozen=True)
class Duration:
  amount: float
  unit: str  # one of DURATION_UNITS

  def to_examples(self, batch_size: int, examples_per_epoch: int,
                  tokens_per_example: int = 1) -> int:
    """Examples in this duration; a token is one target position (seq_len per LM window)."""
    if self.unit == 'tokens':
      return int(round(self.amount / tokens_per_example))
    per_unit = {'steps': batch_size, 'epochs': examples_per_epoch, 'examples': 1}
    return int(round(self.amount * per_unit[self.unit]))

  def to_steps(self, batch_size: int, examples_per_epoch: int,
               tokens_per_example: int = 1) -> int:
    if self.unit == 'steps':
      return int(round(self.amount))
    return math.ceil(self.to_examples(batch_size, examples_per_epoch, tokens_per_example)
                     / batch_size)


def parse_duration(text: str, field: str) -> Duration:
  """'8000 steps', '20 epochs', '1e6 examples', '2e7 tokens' -> Duration."""
  parts = str(text).split()
  if len(parts) == 2 and parts[1].rstrip('s') + 's' in DURATION_UNITS:
    try:
      amount = float(parts[0])
    except ValueError:
      amount = float('nan')
    if math.isfinite(amount) and amount >= 0:
      return Duration(amount, parts[1].rstrip('s') + 's')
  raise ConfigError(f'{field}={text!r}: expected "<number> <unit>" with a '
                    f'non-negative number and unit in {DURATION_UNITS}, '
                    'e.g. "8000 steps" or "20 epochs"')


_BYTE_UNITS = {'b': 1, 'kb': 10**3, 'mb': 10**6, 'gb': 10**9, 'tb': 10**12,
               'kib': 2**10, 'mib': 2**20, 'gib': 2**30, 'tib': 2**40}


def parse_bytes(value: int | str, field: str) -> int:
  """2147483648, '2GiB', '1.5 GB' -> bytes."""
  match = re.fullmatch(r'\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*', str(value))
  try:
    amount = float(match.group(1)) * _BYTE_UNITS[match.group(2).lower() or 'b']
  except (AttributeError, KeyError, ValueError):
    amount = float('nan')
  if not (math.isfinite(amount) and amount >= 1):
    raise ConfigError(f'{field}={value!r}: expected a positive number of bytes, optionally with '
                      f'a unit in {", ".join(u for u in _BYTE_UNITS if u != "b")} (e.g. 2GiB)')
  return int(amount)


# ----------------------------------------------------------------- overrides
def _field_types(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, field: str) -> Any:
  """Converts a parsed value to the field's declared type, or raises."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, field)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(errors[0] if errors else f'{field}: bad value {value!r}')
  if hint is bool:
    if isinstance(value, bool):
      return value
    raise ConfigError(f'{field}={value!r}: expected true or false')
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not value.is_integer()):
      raise ConfigError(f'{field}={value!r}: expected an integer')
    return int(value)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f'{field}={value!r}: expected a number')
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f'{field}={value!r}: expected a string')
    return value
  if origin is tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      value = (value,)
    if isinstance(value, str) and args[0] is str:
      value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
      raise ConfigError(f'{field}={value!r}: expected a list of '
                        f'{"names" if args[0] is str else "numbers"}')
    return tuple(_coerce(v, args[0], field) for v in value)
  if origin in (Mapping, dict) or hint is Mapping:
    if not isinstance(value, Mapping):
      raise ConfigError(f'{field}={value!r}: expected a mapping')
    return dict(value)
  raise TypeError(f'unsupported config type {hint} for {field}')


def parse_value(text: str) -> Any:
  """'1e-3' -> 0.001, 'true' -> True, '30,60' -> (30, 60), 'adam' -> 'adam'."""
  lowered = text.strip().lower()
  if lowered in ('true', 'false'):
    return lowered == 'true'
  if lowered in ('none', 'null'):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _section_from_dict(cls, values: Mapping[str, Any], prefix: str):
  if not isinstance(values, Mapping):
    raise ConfigError(f'{prefix}={values!r}: expected a mapping of fields')
  values = {RENAMED_FIELDS.get((prefix, k), k): v for k, v in values.items()}
  types_by_name = _field_types(cls)
  unknown = sorted(set(values) - set(types_by_name))
  if unknown:
    raise _unknown_field(prefix, unknown[0])
  return cls(**{k: _coerce(v, types_by_name[k], f'{prefix}.{k}')
                for k, v in values.items()})


def _unknown_field(section: str, field: str) -> ConfigError:
  """Suggests the section's closest fields and a field of that name in another section
  (train.learning_rate: optim.learning_rate)."""
  fields = sorted(_field_types(SECTIONS[section]))
  close = [f'{section}.{f}' for f in registry.close_names(field, fields)] + [
      f'{other}.{field}' for other, cls in SECTIONS.items() if field in _field_types(cls)]
  hint = registry.did_you_mean(close) if close else f'allowed: {", ".join(fields)}'
  return ConfigError(f'unknown field {section}.{field}; {hint}')


def _unknown_section(section: str, where: str) -> ConfigError:
  return ConfigError(f'unknown config section {section}{where}; '
                     f'{registry.suggest(section, [*SECTIONS, "name"])}')


def from_dict(values: Mapping[str, Any]) -> Config:
  """Builds a Config from nested dicts (e.g. a saved config.json); strict: every value has its
  field's type, or ConfigError names the field."""
  allowed = f'{", ".join(sorted(SECTIONS))}, name'
  if not isinstance(values, Mapping):
    raise ConfigError(f'config={values!r}: expected a mapping of sections ({allowed})')
  unknown = sorted(str(k) for k in set(values) - set(SECTIONS) - {'name'})
  if unknown:
    raise _unknown_section(unknown[0], '')
  sections = {k: _section_from_dict(cls, values.get(k, {}), k)
              for k, cls in SECTIONS.items()}
  return Config(**sections, name=_coerce(values.get('name', 'run'), str, 'name'))


def read_config_json(path: pathlib.Path) -> Config:
  """A run's config.json; ConfigError naming the file and the field. Nothing in it is run (the
  import paths it names are resolved only when the run is trained or its model built)."""
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ConfigError(f'{path}:{error.lineno}: not valid JSON ({error.msg})') from None
  except (OSError, UnicodeDecodeError) as error:
    raise ConfigError(f'{path}: cannot be read ({error})') from None
  try:
    return from_dict(values)
  except ConfigError as error:
    raise ConfigError(f'{path}: {error}') from None


def to_dict(config: Config) -> dict[str, Any]:
  return json.loads(json.dumps(dataclasses.asdict(config)))


def first_difference(a: Any, b: Any, path: str = '') -> tuple[str, Any, Any] | None:
  """The first (dotted path, a, b) where two JSON-like values (e.g. to_dict of two configs)
  differ, or None."""
  if isinstance(a, dict) and isinstance(b, dict):
    for key in [*a, *(k for k in b if k not in a)]:
      change = first_difference(a.get(key), b.get(key), f'{path}.{key}' if path else key)
      if change:
        return change
    return None
  return None if a == b else (path, a, b)


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
  """Applies 'section.field=value' strings (model.options.key=value too)."""
  values = to_dict(config)
  for item in overrides:
    key, sep, text = item.partition('=')
    path = key.strip().split('.')
    if not sep or not path[0]:
      raise ConfigError(f'override {item!r}: expected section.field=value')
    if path == ['name']:
      values['name'] = text
      continue
    if path[0] not in SECTIONS:
      raise _unknown_section(path[0], f' in {key}' if len(path) > 1 else '')
    shape_error = ConfigError(f'{key}: expected section.field (or data|model|task.options.key, '
                              'optim.update_rule_options.key)')
    if len(path) not in (2, 3):
      raise shape_error
    section, field = path[0], RENAMED_FIELDS.get(tuple(path[:2]), path[1])
    if field not in _field_types(SECTIONS[section]):
      raise _unknown_field(section, path[1])
    if len(path) == 3:
      if (section, field) not in MAPPING_FIELDS:
        raise shape_error
      values[section][field][path[2]] = parse_value(text)
      continue
    hint = _field_types(SECTIONS[section])[field]
    parsed = parse_value(text)
    if hint in (str, str | None) and parsed is not None:
      parsed = text  # keep '1 epochs', '8000 steps' and names verbatim
    if hint == tuple[str, ...] and isinstance(parsed, str):
      parsed = tuple(p.strip() for p in text.split(',') if p.strip())
    values[section][field] = parsed
  return from_dict(values)


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> Config:
  """A configs/*.py file (its get_config()) or a run's config.json, with overrides applied."""
  path = pathlib.Path(path)
  if path.is_dir() and (path / 'config.json').is_file():
    path = path / 'config.json'
  if not path.is_file():
    raise ConfigError(f'--config {path}: no such file')
  if path.suffix == '.json':
    return apply_overrides(read_config_json(path), overrides)
  registry.remember_user_file(path, f'--config {path}')  # its exceptions are told in one line
  try:
    module = registry.module_from_file(path)
  except SyntaxError as error:
    raise ConfigError(f'--config {error.filename}:{error.lineno}: syntax error '
                      f'({error.msg})') from None
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'--config {path}: defines no get_config()')
  config = module.get_config()
  if not isinstance(config, Config):
    raise ConfigError(f'--config {path}: get_config() must return mbx.Config')
  if config.name == 'run':
    config = dataclasses.replace(config, name=path.stem)
  return apply_overrides(config, overrides)


# Fields in which trials may differ and still share one compiled train step (and be
# packed into one vmapped program): they enter the step as inputs, not constants.
TRIAL_FIELDS = (('optim', 'learning_rate'), ('optim', 'momentum'), ('train', 'seed'),
                ('train', 'data_seed'), ('name', None))


def trial_key(config: Config) -> str:
  """Configs with equal keys differ only in TRIAL_FIELDS."""
  blank, defaults = config, Config()
  for section, field in TRIAL_FIELDS:
    if field is None:
      blank = dataclasses.replace(blank, **{section: getattr(defaults, section)})
    else:
      blank = dataclasses.replace(blank, **{section: dataclasses.replace(
          getattr(blank, section), **{field: getattr(getattr(defaults, section), field)})})
  return config_hash(blank)


FASTEST = 'fastest'


def fastest_micro_batch_size(value) -> int | None:
  """The micro-batch a 'fastest=<n>' value records (None for anything else); ConfigError for a
  malformed one."""
  if not (isinstance(value, str) and value.startswith(FASTEST + '=')):
    return None
  text = value[len(FASTEST) + 1:]
  if not text.isdigit() or int(text) <= 0:
    raise ConfigError(f"train.micro_batch_size={value!r}: expected 'fastest' or "
                      "'fastest=<positive integer>' (the recorded choice)")
  return int(text)


def identity(config: Config) -> dict[str, Any]:
  """to_dict without the fields at their defaults: what a config's hash is taken over, so a
  field added to mbx later (with a default that keeps the old behaviour) leaves the hashes of
  existing runs and sweeps, and so their directories, unchanged."""
  values, defaults = to_dict(config), to_dict(Config())
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      changed = {k: v for k, v in value.items() if defaults[key].get(k) != v}
      if changed:
        out[key] = changed
    elif value != defaults[key]:
      out[key] = value
  return out


def config_hash(config: Config) -> str:
  return hashlib.sha1(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:10]


def parse_init_from(text: str) -> tuple[str, int | None]:
  """'runs/a' -> ('runs/a', None: latest); 'runs/a@400' -> ('runs/a', 400)."""
  path, sep, step = str(text).rpartition('@')
  if not sep:
    return str(text), None
  if not step.isdigit() or not path:
    raise ConfigError(f'train.init_from={text!r}: expected RUN_DIR or RUN_DIR@STEP '
                      'with a non-negative integer step')
  return path, int(step)


# ---------------------------------------------------------------- validation
def _check(condition: bool, field: str, value: Any, allowed: str) -> None:
  if not condition:
    raise ConfigError(f'{field}={value!r}: {allowed}')


def _check_choice(value: Any, field: str) -> None:
  _check(value in CHOICES[field], field, value, registry.suggest(value, CHOICES[field]))


def _check_positive_int(value: Any, field: str) -> None:
  _check(isinstance(value, int) and value > 0, field, value, 'must be a positive integer')


def batch_ladder(min_batch: int, max_batch: int, factor: int) -> tuple[int, ...]:
  """min_batch x factor^k for k = 0, 1, ... up to max_batch: the batches a policy may pick."""
  ladder, batch = [], min_batch
  while batch <= max_batch:
    ladder.append(batch)
    batch *= factor
  return tuple(ladder)


def uses_adascale(config: Config) -> bool:
  """Whether a batch policy scales the LR by AdaScale's gain (train.batch_policy_lr=adascale,
  or auto under the adascale and goodput policies, as Pollux)."""
  t = config.train
  if t.batch_policy == 'none':
    return False
  if t.batch_policy_lr != 'auto':
    return t.batch_policy_lr == 'adascale'
  return t.batch_policy in ('adascale', 'goodput')


def _validate_batch_policy(config: Config, duration: Duration) -> None:
  t, o = config.train, config.optim
  _check_choice(t.batch_policy, 'train.batch_policy')
  _check(isinstance(t.batch_policy_lr, str), 'train.batch_policy_lr', t.batch_policy_lr,
         'expected auto, adascale or a batch rule (docs/batch_rules.md)')
  if t.batch_policy == 'none':
    return
  policy = f'train.batch_policy={t.batch_policy}'
  _check(not t.batch_size_milestones, 'train.batch_size_milestones', t.batch_size_milestones,
         f'a fixed batch-size schedule cannot be combined with {policy}')
  _check(isinstance(t.batch_policy_factor, int) and t.batch_policy_factor >= 2,
         'train.batch_policy_factor', t.batch_policy_factor, 'must be an integer >= 2')
  if t.min_batch_size is not None:
    _check_positive_int(t.min_batch_size, 'train.min_batch_size')
    _check(t.max_batch_size is None or t.min_batch_size <= t.max_batch_size,
           'train.min_batch_size', t.min_batch_size,
           f'must be <= train.max_batch_size={t.max_batch_size}')
  if t.batch_policy != 'adascale':
    _check(t.max_batch_size is not None, 'train.max_batch_size', t.max_batch_size,
           f'required by {policy} (the largest batch it may choose)')
    ladder = list(batch_ladder(t.min_batch_size or t.batch_size, t.max_batch_size,
                               t.batch_policy_factor))
    _check(t.batch_size in ladder, 'train.batch_size', t.batch_size,
           f'must be on the ladder train.min_batch_size x train.batch_policy_factor^k = {ladder}')
  if t.batch_policy_every is not None:
    every = parse_duration(t.batch_policy_every, 'train.batch_policy_every')
    _check(every.amount > 0, 'train.batch_policy_every', t.batch_policy_every, 'must be positive')
  _check(t.batch_policy_multiple > 0, 'train.batch_policy_multiple', t.batch_policy_multiple,
         'must be > 0')
  _check(t.goodput_min_gain >= 0, 'train.goodput_min_gain', t.goodput_min_gain, 'must be >= 0')
  _check(all(x > 0 for x in t.batch_policy_milestones) and
         list(t.batch_policy_milestones) == sorted(set(t.batch_policy_milestones)),
         'train.batch_policy_milestones', t.batch_policy_milestones,
         'must be positive and strictly increasing')
  _check(t.batch_policy == 'warmup' or not t.batch_policy_milestones,
         'train.batch_policy_milestones', t.batch_policy_milestones,
         'only used by train.batch_policy=warmup')
  _check_choice(t.batch_policy_criterion, 'train.batch_policy_criterion')
  branch = parse_duration(t.batch_policy_branch, 'train.batch_policy_branch')
  _check(branch.amount > 0 and branch.unit != 'steps', 'train.batch_policy_branch',
         t.batch_policy_branch, 'must be positive, in epochs, examples or tokens')
  _check(t.batch_policy_tolerance >= 0, 'train.batch_policy_tolerance',
         t.batch_policy_tolerance, 'must be >= 0')
  adascale = uses_adascale(config)
  branches = (t.batch_policy == 'warmup' and not t.batch_policy_milestones
              and t.batch_policy_criterion == 'branch')
  _check(not branches or not adascale, 'train.batch_policy_lr', t.batch_policy_lr,
         'the branch criterion compares rungs at a fixed batch rule, not adascale')
  reads_noise = adascale or (t.batch_policy != 'warmup' or not
                                       t.batch_policy_milestones) and not branches
  _check(t.batch_policy_estimator in NOISE_SCALE_ESTIMATORS, 'train.batch_policy_estimator',
         t.batch_policy_estimator, f'one of {", ".join(NOISE_SCALE_ESTIMATORS)}')
  measured = (('b_simple',) if t.noise_scale else ()) + tuple(t.noise_scale_estimators)
  if t.batch_policy_estimator == 'b_simple':
    _check(t.noise_scale or not reads_noise, 'train.noise_scale', t.noise_scale,
           f'{policy} with batch_policy_lr={t.batch_policy_lr} reads the noise scale; set '
           'train.noise_scale=true')
  else:
    _check(not reads_noise or t.batch_policy_estimator in measured,
           'train.batch_policy_estimator', t.batch_policy_estimator,
           f'{policy} reads it, so it must be measured: add it to train.noise_scale_estimators '
           f'(measured: {", ".join(measured) or "none"})')
  _check(not adascale or o.lr_scaling == 'none', 'optim.lr_scaling', o.lr_scaling,
         'must be none with the adascale LR rule (the gain scales the LR)')
  _check(duration.unit != 'steps', 'train.duration', t.duration,
         f'give it in epochs, examples or tokens with {policy} (B changes)')
  _check(o.milestone_unit != 'steps' or not o.milestones, 'optim.milestone_unit',
         o.milestone_unit, f'use epochs, examples or tokens with {policy} (B changes)')
  warmup = parse_duration(o.warmup, 'optim.warmup')
  _check(warmup.unit != 'steps' or warmup.amount == 0, 'optim.warmup', o.warmup,
         f'give it in epochs, examples or tokens with {policy} (B changes)')


def validate(config: Config) -> None:
  """Checks every field; raises ConfigError naming the first bad one."""
  d, m, o, t = config.data, config.model, config.optim, config.train
  _check(isinstance(config.name, str), 'name', config.name, 'expected a string')
  for section, name in (('data', d.name), ('model', m.name), ('task', config.task.name)):
    _check(isinstance(name, str) and bool(name.strip()), f'{section}.name', name,
           'expected a built-in name or an import path "package.module:Name"')
  for section, field in MAPPING_FIELDS:
    value = getattr(getattr(config, section), field)
    _check(isinstance(value, Mapping), f'{section}.{field}', value, 'expected a mapping')
  _check(isinstance(d.train_split, str) and bool(d.train_split.strip()), 'data.train_split',
         d.train_split, 'expected a split name')
  for field in ('eval_split', 'test_split'):
    value = getattr(d, field)
    _check(value is None or (isinstance(value, str) and bool(value.strip())), f'data.{field}',
           value, "expected a split name" + (" or 'none'" if field == 'test_split' else ''))
  _check_choice(d.placement, 'data.placement')
  _check(d.prefetch >= 1, 'data.prefetch', d.prefetch, 'must be >= 1')
  _check_choice(m.dtype, 'model.dtype')

  _check(isinstance(o.name, str) and bool(o.name.strip()), 'optim.name', o.name,
         'expected a built-in optimizer or an import path "package.module:factory"')
  _check(isinstance(o.update_rule, str) and bool(o.update_rule.strip()), 'optim.update_rule',
         o.update_rule, "expected 'plain', 'sam' or an import path \"package.module:Rule\"")
  _check(o.learning_rate > 0 and math.isfinite(o.learning_rate),
         'optim.learning_rate', o.learning_rate, 'must be a positive number')
  _check(isinstance(o.lr_scaling, str), 'optim.lr_scaling', o.lr_scaling,
         'expected a batch rule (docs/batch_rules.md)')
  if o.base_batch_size is not None:
    _check_positive_int(o.base_batch_size, 'optim.base_batch_size')
  _check(0 <= o.momentum < 1, 'optim.momentum', o.momentum, 'must be in [0, 1)')
  _check(0 <= o.b1 < 1, 'optim.b1', o.b1, 'must be in [0, 1)')
  _check(0 <= o.b2 < 1, 'optim.b2', o.b2, 'must be in [0, 1)')
  _check(o.eps >= 0, 'optim.eps', o.eps, 'must be >= 0')
  _check(o.weight_decay >= 0, 'optim.weight_decay', o.weight_decay, 'must be >= 0')
  _check(o.trust_coefficient > 0, 'optim.trust_coefficient', o.trust_coefficient,
         'must be > 0')
  if o.clip_grad_norm is not None:
    _check(o.clip_grad_norm > 0, 'optim.clip_grad_norm', o.clip_grad_norm, 'must be > 0')
  _check_choice(o.schedule, 'optim.schedule')
  _check_choice(o.milestone_unit, 'optim.milestone_unit')
  _check(all(x > 0 for x in o.milestones), 'optim.milestones', o.milestones,
         'must be positive')
  _check(list(o.milestones) == sorted(set(o.milestones)), 'optim.milestones',
         o.milestones, 'must be strictly increasing')
  _check(o.schedule == 'step' or not o.milestones, 'optim.milestones', o.milestones,
         'only used by optim.schedule=step')
  _check(0 < o.decay_factor <= 1, 'optim.decay_factor', o.decay_factor, 'must be in (0, 1]')
  _check(0 <= o.end_lr_factor <= 1, 'optim.end_lr_factor', o.end_lr_factor,
         'must be in [0, 1]')
  _check(o.power > 0, 'optim.power', o.power, 'must be > 0')
  parse_duration(o.warmup, 'optim.warmup')
  _check(0 <= o.warmup_start_factor <= 1, 'optim.warmup_start_factor',
         o.warmup_start_factor, 'must be in [0, 1]')

  _check_positive_int(t.batch_size, 'train.batch_size')
  micro = fastest_micro_batch_size(t.micro_batch_size)
  if micro is None and t.micro_batch_size not in (None, 'auto', FASTEST):
    _check(isinstance(t.micro_batch_size, int) and t.micro_batch_size > 0,
           'train.micro_batch_size', t.micro_batch_size,
           "must be a positive integer, 'auto' or 'fastest'")
    micro = t.micro_batch_size
  if micro is not None:
    _check(t.batch_size % micro == 0, 'train.micro_batch_size',
           t.micro_batch_size, f'must divide train.batch_size={t.batch_size}')
  if t.autobatch_budget is not None:
    _check(t.micro_batch_size == 'auto', 'train.autobatch_budget', t.autobatch_budget,
           'only used by train.micro_batch_size=auto')
    parse_bytes(t.autobatch_budget, 'train.autobatch_budget')
  if t.max_device_batch_size is not None:
    _check_positive_int(t.max_device_batch_size, 'train.max_device_batch_size')
  _check(t.micro_batch_size is None or t.max_device_batch_size is None,
         'train.max_device_batch_size', t.max_device_batch_size,
         'set either train.micro_batch_size or train.max_device_batch_size, not both')
  _check_choice(t.accumulation, 'train.accumulation')
  duration = parse_duration(t.duration, 'train.duration')
  _check(duration.amount > 0, 'train.duration', t.duration, 'must be positive')
  # Seeds enter the compiled step as float32 inputs (trial_hyperparameters).
  _check(isinstance(t.seed, int) and 0 <= t.seed < 2**24, 'train.seed', t.seed,
         'must be an integer in [0, 2^24)')
  if t.data_seed is not None:
    _check(0 <= t.data_seed < 2**24, 'train.data_seed', t.data_seed,
           'must be an integer in [0, 2^24)')
  for name in ('log_every', 'eval_every'):
    every = parse_duration(getattr(t, name), f'train.{name}')
    _check(every.amount > 0, f'train.{name}', getattr(t, name), 'must be positive')
  if t.checkpoint_every is not None:
    every = parse_duration(t.checkpoint_every, 'train.checkpoint_every')
    _check(every.amount > 0, 'train.checkpoint_every', t.checkpoint_every,
           'must be positive (or none to save only the final step)')
  if t.eval_growth is not None:
    _check(t.eval_growth > 1, 'train.eval_growth', t.eval_growth, 'must be > 1')
  _check_positive_int(t.eval_batch_size, 'train.eval_batch_size')
  _check_positive_int(t.keep_checkpoints, 'train.keep_checkpoints')
  if t.max_loss is not None:
    _check(t.max_loss > 0, 'train.max_loss', t.max_loss, 'must be > 0')
  if t.probe_groups is not None:
    _check(isinstance(t.probe_groups, int) and t.probe_groups >= 2,
           'train.probe_groups', t.probe_groups, 'must be an integer >= 2')
  if t.probe_every is not None:
    _check_positive_int(t.probe_every, 'train.probe_every')
  _check(0 <= t.noise_scale_ema < 1, 'train.noise_scale_ema', t.noise_scale_ema,
         'must be in [0, 1)')
  for name in t.noise_scale_estimators:
    allowed = NOISE_SCALE_ESTIMATORS[1:] + (PER_EXAMPLE_TRACE,)
    _check(name in allowed, 'train.noise_scale_estimators', name,
           f'one of {", ".join(allowed)} (b_simple is train.noise_scale)')
  _check(len(set(t.noise_scale_estimators)) == len(t.noise_scale_estimators),
         'train.noise_scale_estimators', t.noise_scale_estimators, 'each estimator once')
  _check_positive_int(t.curvature_every, 'train.curvature_every')
  _check(isinstance(t.per_example_count, int) and t.per_example_count >= 2,
         'train.per_example_count', t.per_example_count, 'must be an integer >= 2')
  if t.target_metric is not None:  # the task's metrics are checked by workload.resolve
    _check(isinstance(t.target_metric, str) and t.target_metric.startswith(TARGET_PREFIXES),
           'train.target_metric', t.target_metric,
           'expected eval_<metric> or train_<metric>, e.g. eval_accuracy or eval_loss')
    _check(t.target_value is not None, 'train.target_value', t.target_value,
           'required when train.target_metric is set')
  _check(not t.stop_at_target or t.target_metric is not None, 'train.stop_at_target',
         t.stop_at_target, 'needs train.target_metric')
  _check(t.target_metric is not None or t.target_value is None, 'train.target_value',
         t.target_value, 'needs train.target_metric')
  _check(t.target_metric is None or 'eval' in t.target_metric or t.eval_on_train,
         'train.target_metric', t.target_metric, 'train_* targets need train.eval_on_train=true')
  if t.init_from is not None:
    parse_init_from(t.init_from)
  # Not steps: Smith et al. compare schedules at equal epochs, and once B changes a
  # step count means different amounts of data in different runs. A change after s
  # steps of batch B is s*B examples.
  _check(t.batch_size_milestone_unit in CHOICES['train.batch_size_milestone_unit'],
         'train.batch_size_milestone_unit', t.batch_size_milestone_unit,
         'allowed: epochs, examples, tokens (a change after s steps of batch B is s*B '
         'examples)')
  _check(all(x > 0 for x in t.batch_size_milestones), 'train.batch_size_milestones',
         t.batch_size_milestones, 'must be positive')
  _check(list(t.batch_size_milestones) == sorted(set(t.batch_size_milestones)),
         'train.batch_size_milestones', t.batch_size_milestones,
         'must be strictly increasing')
  _check_positive_int(t.batch_size_factor, 'train.batch_size_factor')
  _check(isinstance(t.batch_size_rule, str) and (t.batch_size_rule == 'none' or
                                                 bool(t.batch_size_milestones)),
         'train.batch_size_rule', t.batch_size_rule,
         'a batch rule, used only with train.batch_size_milestones')
  if t.max_batch_size is not None:
    _check(isinstance(t.max_batch_size, int) and t.max_batch_size >= t.batch_size,
           'train.max_batch_size', t.max_batch_size,
           f'must be an integer >= train.batch_size={t.batch_size}')
  if t.batch_size_milestones:
    _check(t.batch_size_factor > 1, 'train.batch_size_factor', t.batch_size_factor,
           'must be > 1 when train.batch_size_milestones is set')
    _check(duration.unit != 'steps', 'train.duration', t.duration,
           'give it in epochs, examples or tokens when the batch size changes')
    _check(o.milestone_unit != 'steps' or not o.milestones, 'optim.milestone_unit',
           o.milestone_unit, 'use epochs, examples or tokens when the batch size changes')
    _check(parse_duration(o.warmup, 'optim.warmup').unit != 'steps' or
           parse_duration(o.warmup, 'optim.warmup').amount == 0, 'optim.warmup',
           o.warmup, 'give it in epochs, examples or tokens when the batch size changes')
  _validate_batch_policy(config, duration)
