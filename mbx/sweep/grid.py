"""Sweep grids: batch sizes x optimizers x learning-rate (and momentum) search x seeds.

A sweep file `configs/<study>.py` defines `get_sweep()` returning a `SweepConfig`;
`expand(sweep)` turns it into `Trial`s, each an ordinary mbx config. The search
follows Shallue et al. 2019 (arXiv 1811.03600, Sec. 3.3): at every batch size an
independent search over a log-scaled learning rate (a grid, or a quasi-random
log-uniform sequence) and optionally 1 - momentum, log-scaled too. Since the best
learning rate moves with the batch size, the search range can move with it:
range(B) = range(reference) x (min(B, max_scaled_batch_size) / reference)^power.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mbx import config as config_lib
from mbx import registry
from mbx.optim import declared

SAMPLINGS = ('grid', 'quasirandom')


def momentum_of(optim: config_lib.OptimConfig) -> float | None:
  """The value of the optimizer's declared momentum option (b1 for Adam-type), None if none."""
  setting = declared.momentum_setting(optim.name)
  if setting is None:
    return None
  section, name = setting
  if section == 'optim':
    return getattr(optim, name)
  if name in optim.options:
    return optim.options[name]
  # The factory's default: loads optax (a built-in) or the user's module (an import path).
  from mbx.optim.optimizers import option_default  # pylint: disable=import-outside-toplevel
  return option_default(optim.name, name)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The per-batch-size metaparameter search of one optimizer (an entry of `sweep.search`)."""
  optimizer: str
  """The optimizer searched (optim.name of its trials)."""
  learning_rate: tuple[float, float]
  """(low, high): the learning-rate range at reference_batch_size, searched on a log scale."""
  num_learning_rates: int = 6
  """Learning rates per batch size (grid sampling: per momentum value too)."""
  sampling: str = 'grid'
  """'grid': log-spaced, both ends included; 'quasirandom': a scrambled Halton sequence,
  log-uniform."""
  lr_scaling_power: float = 0.0
  """The range moves with the batch size as B^power (1: linear, 0.5: square root, 0: fixed)."""
  reference_batch_size: int = 1
  """The batch size at which learning_rate is the range."""
  max_scaled_batch_size: int | None = None
  """The range stops moving above this batch size; None: it always moves."""
  one_minus_momentum: tuple[float, float] | None = None
  """(low, high): 1 - momentum (Adam: 1 - b1) searched on a log scale; None: momentum fixed."""
  num_momenta: int = 1
  """Momentum values per batch size (grid sampling only)."""
  momentum: float | None = None
  """The fixed momentum (Adam: b1); None: the base config's."""
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """optim.options of this optimizer's trials (another optimizer's are dropped)."""


# SearchSpace's fields with a closed set of values (checked by `validate`).
SEARCH_CHOICES = {'sampling': SAMPLINGS}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """A batch-size study: trials are batch sizes x search points x seeds, per optimizer."""
  base: config_lib.Config
  """The config every trial starts from; a trial sets its optimizer, learning rate, momentum,
  batch size, seed, budget and target."""
  search: tuple[SearchSpace, ...]
  """One search per optimizer (fields below, as sweep.search[i].<field>)."""
  batch_sizes: tuple[int, ...] = ()
  """The batch sizes; (): powers of two below the training-set size, then the full batch."""
  seeds: tuple[int, ...] = (0,)
  """train.seed of each trial (initialisation and data order)."""
  budget: str = '8000 steps'
  """Each trial's train.duration: steps, epochs or examples."""
  budgets: Mapping[int, str] = dataclasses.field(default_factory=dict)
  """Per batch size, a budget instead of `budget`."""
  target_metric: str = 'eval_accuracy'
  """The metric whose first crossing of target_value gives steps-to-target."""
  target_value: float = 0.9
  """The value target_metric has to reach."""
  stop_at_target: bool = True
  """End a trial once it reaches the target; False: run on to the budget."""
  eval_growth: float | None = 1.05
  """Trials also evaluate at steps ceil(g^i), bounding the steps-to-target error at g - 1."""
  noise_scale: bool = False
  """Log B_simple in the trials whose batch splits into train.probe_groups (default 2) equal
  groups."""
  pack: bool = False
  """Train trials that share a pack key (differ only in LR, momentum or seed) as one vmapped
  program."""
  pack_max_batch_size: int | None = 64
  """Pack only batch sizes up to this (packing pays on XLA:CPU at small batch only,
  results/bench_packed.md); None: every batch size."""
  search_seed: int = 0
  """Seed of the quasi-random sequence."""
  name: str = 'sweep'
  """The sweep's name (its default directory is sweeps/<name>); 'sweep': the config file's
  name."""
  submit: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """Job options of `mbx sweep --submit slurm` (fields below, as sweep.submit.<field>)."""


@dataclasses.dataclass(frozen=True)
class Trial:
  """One point of the grid: its parameters, its id and its full config."""
  optimizer: str
  batch_size: int
  learning_rate: float
  momentum: float | None                 # heavy-ball momentum or Adam's b1; None for sgd
  seed: int
  budget: str
  config: config_lib.Config

  @classmethod
  def of(cls, config: config_lib.Config) -> 'Trial':
    """The trial that trains `config` as it is (the studies build their grids this way)."""
    optim = config.optim
    return cls(optim.name, config.train.batch_size, optim.learning_rate, momentum_of(optim),
               config.train.seed, config.train.duration, config)

  @property
  def id(self) -> str:
    """Readable and unique: parameters, then a hash of the whole resolved config."""
    momentum = '' if self.momentum is None else f'-m{self.momentum:.4g}'
    # An import path names its factory (the hash keeps ids of different files apart).
    optimizer = re.sub(r'[^A-Za-z0-9_.]', '_', self.optimizer.rpartition(':')[2])
    return (f'{optimizer}-b{self.batch_size:05d}-lr{self.learning_rate:.4e}{momentum}'
            f'-s{self.seed}-{config_lib.config_hash(self.config)[:6]}')

  @property
  def effective_learning_rate(self) -> float:
    """lr / (1 - momentum) for heavy-ball momentum (Shallue Sec. 3.2), else lr."""
    if self.momentum is not None and declared.is_heavy_ball(self.optimizer):
      return self.learning_rate / (1 - self.momentum)
    return self.learning_rate

  def row(self) -> dict[str, Any]:
    return {'trial_id': self.id, 'optimizer': self.optimizer, 'batch_size': self.batch_size,
            'learning_rate': self.learning_rate, 'momentum': self.momentum,
            'effective_learning_rate': self.effective_learning_rate, 'seed': self.seed,
            'budget': self.budget}


# ------------------------------------------------------------------- search
def default_batch_sizes(num_train_examples: int) -> tuple[int, ...]:
  """1, 2, 4, ... below the training-set size, then the full batch."""
  sizes = [2**i for i in range(int(math.log2(num_train_examples)) + 1)]
  if sizes[-1] != num_train_examples:
    sizes.append(num_train_examples)
  return tuple(sizes)


def _unit_points(space: SearchSpace, seed: int) -> np.ndarray:
  """Points in [0, 1]^d (d = 1, or 2 with momentum), the same at every batch size."""
  searched_momentum = space.one_minus_momentum is not None
  if space.sampling == 'grid':
    lrs = np.linspace(0, 1, space.num_learning_rates) if space.num_learning_rates > 1 else [0.5]
    if not searched_momentum:
      return np.asarray(lrs)[:, None]
    ms = np.linspace(0, 1, space.num_momenta) if space.num_momenta > 1 else [0.5]
    return np.array([(a, b) for a in lrs for b in ms])
  from scipy.stats import qmc  # pylint: disable=import-outside-toplevel  (slow to import)
  dims = 2 if searched_momentum else 1
  return qmc.Halton(d=dims, scramble=True, seed=seed).random(space.num_learning_rates)


def _log_interpolate(bounds: tuple[float, float], u: float) -> float:
  low, high = bounds
  return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))


def search_points(space: SearchSpace, batch_size: int, base_momentum: float,
                  seed: int = 0) -> list[tuple[float, float | None]]:
  """(learning rate, momentum) pairs to try at `batch_size`; momentum None for sgd."""
  scaled = batch_size if space.max_scaled_batch_size is None else min(
      batch_size, space.max_scaled_batch_size)
  factor = (scaled / space.reference_batch_size) ** space.lr_scaling_power
  lr_range = (space.learning_rate[0] * factor, space.learning_rate[1] * factor)
  points = []
  for u in _unit_points(space, seed):
    lr = float(f'{_log_interpolate(lr_range, u[0]):.6g}')  # ids and tables stay readable
    if declared.momentum_setting(space.optimizer) is None:  # plain SGD: no momentum
      momentum = None
    elif space.one_minus_momentum is not None:
      momentum = float(f'{1 - _log_interpolate(space.one_minus_momentum, u[1]):.6g}')
    else:
      momentum = space.momentum if space.momentum is not None else base_momentum
    points.append((lr, momentum))
  return points


# ------------------------------------------------------------------- trials
def _replace(config: config_lib.Config, section: str, **fields) -> config_lib.Config:
  return dataclasses.replace(config, **{section: dataclasses.replace(
      getattr(config, section), **fields)})


def noise_scale_fits(config: config_lib.Config, batch_size: int) -> bool:
  """On one device the noise scale splits the batch into >= 2 equal groups."""
  groups = config.train.probe_groups or 2
  return batch_size >= groups and batch_size % groups == 0


def trial_config(sweep: SweepConfig, optimizer: str, batch_size: int, learning_rate: float,
                 momentum: float | None, seed: int, budget: str,
                 options: Mapping[str, Any] | None = None) -> config_lib.Config:
  config = sweep.base
  optim = declared.for_optimizer(config.optim, optimizer)
  if options:
    optim = dataclasses.replace(optim, options={**optim.options, **options})
  config = dataclasses.replace(config, optim=optim)
  optim = dict(name=optimizer, learning_rate=learning_rate)
  setting = declared.momentum_setting(optimizer, 'sweep.search.optimizer')
  if momentum is not None and setting is not None:
    section, name = setting
    if section == 'optim':
      optim[name] = momentum
    else:
      optim['options'] = {**config.optim.options, name: momentum}
  config = _replace(config, 'optim', **optim)
  train = dict(batch_size=batch_size, seed=seed, duration=budget,
               target_metric=sweep.target_metric, target_value=sweep.target_value,
               stop_at_target=sweep.stop_at_target,
               noise_scale=sweep.noise_scale and noise_scale_fits(config, batch_size))
  if sweep.eval_growth is not None:
    train['eval_growth'] = sweep.eval_growth
  config = _replace(config, 'train', **train)
  return dataclasses.replace(config, name=f'{sweep.name}-{optimizer}-b{batch_size}')


def resolved_batch_sizes(sweep: SweepConfig) -> tuple[int, ...]:
  if sweep.batch_sizes:
    return tuple(sweep.batch_sizes)
  # The training stack (jax) loads only here: a sweep file is read and checked without it.
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  workload = resolve(sweep.base)
  return default_batch_sizes(workload.dataset.num_examples(workload.train_split))


def expand(sweep: SweepConfig) -> list[Trial]:
  """Every trial of the sweep in a fixed order (optimizer, batch size, search point, seed)."""
  validate(sweep)
  trials = []
  for space in sweep.search:
    base_momentum = momentum_of(dataclasses.replace(sweep.base.optim, name=space.optimizer))
    for batch_size in resolved_batch_sizes(sweep):
      budget = sweep.budgets.get(batch_size, sweep.budget)
      for lr, momentum in search_points(space, batch_size, base_momentum, sweep.search_seed):
        for seed in sweep.seeds:
          config = trial_config(sweep, space.optimizer, batch_size, lr, momentum, seed, budget,
                                space.options)
          trials.append(Trial(space.optimizer, batch_size, lr, momentum, seed, budget, config))
  ids = [t.id for t in trials]
  if len(set(ids)) != len(ids):
    duplicate = next(i for i in ids if ids.count(i) > 1)
    raise config_lib.ConfigError(f'the sweep has the trial {duplicate} twice (repeated batch '
                                 'sizes, seeds or search points?)')
  return trials


# --------------------------------------------------------------- validation
def _check(condition: bool, field: str, value: Any, allowed: str) -> None:
  if not condition:
    raise config_lib.ConfigError(f'{field}={value!r}: {allowed}')


def _check_choice(value: Any, choices: tuple[str, ...], field: str) -> None:
  _check(value in choices, field, value, registry.suggest(value, choices))


COARSEST_LR_STEP = 4.0  # adjacent learning rates further apart cannot place an optimum


def coarse_grid_warnings(sweep: SweepConfig) -> list[str]:
  """One line per search whose learning rates are too few or too far apart to locate an
  optimum: with 2 points the best is always an end of the range."""
  lines = []
  for i, space in enumerate(sweep.search):
    low, high = space.learning_rate
    n = space.num_learning_rates
    step = (high / low) ** (1 / (n - 1)) if n > 1 and low > 0 else math.inf
    if n < 3 or step > COARSEST_LR_STEP:
      lines.append(f'sweep.search[{i}] ({space.optimizer}): {n} learning rate(s) over '
                   f'[{low:.3g}, {high:.3g}], adjacent ones {step:.3g}x apart: too coarse to '
                   f'locate an optimum (use >= 3, at most {COARSEST_LR_STEP:g}x apart)')
  return lines


def _check_target(sweep: SweepConfig) -> None:
  """The target is a metric the task declares, on a split the trials evaluate: eval_<metric>
  (the evaluation split) always, train_<metric> (the train split) with train.eval_on_train."""
  from mbx.tasks import resolve_task  # pylint: disable=import-outside-toplevel  (jax)
  try:
    task = resolve_task(sweep.base.task.name, sweep.base.task.options)
  except ValueError as error:
    raise config_lib.ConfigError(str(error)) from None
  splits = ('eval', 'train') if sweep.base.train.eval_on_train else ('eval',)
  allowed = ', '.join(f'{split}_{name}' for split in splits for name in task.metrics)
  metric = sweep.target_metric
  prefix, _, name = metric.partition('_') if isinstance(metric, str) else ('', '', '')
  if prefix == 'train' and name in task.metrics and 'train' not in splits:
    raise config_lib.ConfigError(
        f'sweep.target_metric={metric!r}: the train split is evaluated only with '
        f'train.eval_on_train=true; set it, or use one of: {allowed}')
  _check(prefix in splits and name in task.metrics, 'sweep.target_metric', metric,
         f'not a metric of task {sweep.base.task.name!r}; allowed: {allowed}')


def validate(sweep: SweepConfig) -> None:
  """Checks the sweep's own fields; each trial's config is validated before it trains."""
  _check(isinstance(sweep.base, config_lib.Config), 'sweep.base', type(sweep.base).__name__,
         'must be an mbx.Config')
  _check(len(sweep.search) > 0, 'sweep.search', sweep.search, 'needs at least one SearchSpace')
  for i, space in enumerate(sweep.search):
    field = f'sweep.search[{i}]'
    try:
      declared.check_name(space.optimizer, f'{field}.optimizer')
    except ValueError as error:
      raise config_lib.ConfigError(str(error)) from None
    low, high = space.learning_rate
    _check(0 < low <= high, f'{field}.learning_rate', space.learning_rate,
           'must be (low, high) with 0 < low <= high')
    _check(space.num_learning_rates >= 1, f'{field}.num_learning_rates',
           space.num_learning_rates, 'must be >= 1')
    _check_choice(space.sampling, SEARCH_CHOICES['sampling'], f'{field}.sampling')
    _check(space.reference_batch_size >= 1, f'{field}.reference_batch_size',
           space.reference_batch_size, 'must be >= 1')
    if space.one_minus_momentum is not None:
      low, high = space.one_minus_momentum
      _check(0 < low <= high <= 1, f'{field}.one_minus_momentum', space.one_minus_momentum,
             'must be (low, high) with 0 < low <= high <= 1')
      _check(declared.momentum_setting(space.optimizer, f'{field}.optimizer') is not None,
             f'{field}.one_minus_momentum', space.one_minus_momentum,
             f'{space.optimizer} has no momentum (or declares none); use momentum or nesterov')
    _check(space.num_momenta >= 1, f'{field}.num_momenta', space.num_momenta, 'must be >= 1')
  _check(sweep.pack_max_batch_size is None or (isinstance(sweep.pack_max_batch_size, int)
                                               and sweep.pack_max_batch_size >= 1),
         'sweep.pack_max_batch_size', sweep.pack_max_batch_size,
         'must be a positive integer or None (pack every batch size)')
  _check(all(isinstance(b, int) and b >= 1 for b in sweep.batch_sizes), 'sweep.batch_sizes',
         sweep.batch_sizes, 'must be positive integers')
  _check(len(sweep.seeds) > 0 and all(isinstance(s, int) and s >= 0 for s in sweep.seeds),
         'sweep.seeds', sweep.seeds, 'must be non-negative integers (at least one)')
  for text in (sweep.budget, *sweep.budgets.values()):
    config_lib.parse_duration(text, 'sweep.budget')
  _check_target(sweep)
  if sweep.eval_growth is not None:
    _check(sweep.eval_growth > 1, 'sweep.eval_growth', sweep.eval_growth, 'must be > 1')
  _check(bool(sweep.name) and '/' not in sweep.name, 'sweep.name', sweep.name,
         'must be a non-empty name without "/"')


# ------------------------------------------------------------ serialisation
def to_dict(sweep: SweepConfig) -> dict[str, Any]:
  """JSON-ready; `from_dict(to_dict(s)) == s`."""
  values = {f.name: getattr(sweep, f.name) for f in dataclasses.fields(sweep)}
  values['base'] = config_lib.to_dict(sweep.base)
  # A search without options is written as before they existed (its sweep's identity kept).
  values['search'] = [{k: v for k, v in dataclasses.asdict(s).items()
                       if k != 'options' or v} for s in sweep.search]
  values['budgets'] = {str(k): v for k, v in sorted(sweep.budgets.items())}
  return json.loads(json.dumps(values))


def from_dict(values: Mapping[str, Any]) -> SweepConfig:
  values = dict(values)
  values['base'] = config_lib.from_dict(values['base'])
  values['search'] = tuple(SearchSpace(**{k: tuple(v) if isinstance(v, list) and k != 'options'
                                          else v
                                          for k, v in s.items()}) for s in values['search'])
  values['budgets'] = {int(k): v for k, v in values.get('budgets', {}).items()}
  for key in ('batch_sizes', 'seeds'):
    if key in values:
      values[key] = tuple(values[key])
  return SweepConfig(**values)


# Fields that change how trials run, not what they are.
HOW_FIELDS = ('pack', 'pack_max_batch_size', 'submit')
# The grid: changing these adds trials (and may leave some out); every other field is part of
# what each trial is.
GRID_FIELDS = ('batch_sizes', 'seeds', 'search', 'budgets')
# Within a SearchSpace, the points searched; the other fields say how points are placed.
SEARCH_GRID_FIELDS = ('learning_rate', 'num_learning_rates', 'one_minus_momentum',
                      'num_momenta', 'momentum')


def spec_hash(sweep: SweepConfig) -> str:
  """Identity of the grid; packing and job options only change how trials run, not what
  they are."""
  values = to_dict(sweep)
  values['base'] = config_lib.identity(sweep.base)  # stable when mbx adds config fields
  for how in HOW_FIELDS:
    values.pop(how)
  return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def grid_of(sweep: SweepConfig) -> dict[str, Any]:
  """The grid fields of `sweep`, JSON-ready (what a sweep directory's history records)."""
  values = to_dict(sweep)
  return {name: values[name] for name in GRID_FIELDS}


def trial_changing_field(old: SweepConfig, new: SweepConfig) -> tuple[str, Any, Any] | None:
  """(field, old value, new value) of the first change between two sweeps that alters trials
  both could hold, or None when `new` differs from `old` only in its grid (and in how trials
  run).

  The grid may grow or shrink: batch sizes, seeds, optimizers (search spaces appended) and the
  points of a search (learning-rate range and count, momenta). Everything that enters a
  trial's config or places its search points may not: the base config, the budget of a
  batch size both grids have, the target, evaluations, noise scale, the name, the search's
  sampling, seed and learning-rate scaling. A trial's id hashes its config, so an unchanged
  point of the grid keeps its id and its run directory.
  """
  for field in dataclasses.fields(SweepConfig):
    name = field.name
    if name not in (*HOW_FIELDS, *GRID_FIELDS, 'base') and getattr(old, name) != getattr(
        new, name):
      return f'sweep.{name}', getattr(old, name), getattr(new, name)
  # The base as every trial sees it: fields each trial sets (optimizer, learning rate, batch
  # size, seed, budget, target) are the same placeholder in both.
  placeholder = dict(optimizer='sgd', batch_size=1, learning_rate=1.0, momentum=None, seed=0,
                     budget='1 steps')
  change = config_lib.first_difference(config_lib.to_dict(trial_config(old, **placeholder)),
                                       config_lib.to_dict(trial_config(new, **placeholder)))
  if change:
    return change
  earlier = dict(_keyed(old.search))
  for i, (key, space) in enumerate(_keyed(new.search)):
    if key not in earlier:  # an optimizer added to the study
      continue
    for field in dataclasses.fields(SearchSpace):
      a, b = getattr(earlier[key], field.name), getattr(space, field.name)
      if field.name not in SEARCH_GRID_FIELDS and a != b:
        return f'sweep.search[{i}].{field.name}', a, b
  for b in sorted({*old.budgets, *new.budgets}):  # a batch size (possibly) in both grids
    if all(not s.batch_sizes or b in s.batch_sizes for s in (old, new)):
      was, wanted = old.budgets.get(b, old.budget), new.budgets.get(b, new.budget)
      if was != wanted:
        return f'sweep.budgets[{b}]', was, wanted
  return None


def _keyed(spaces) -> list[tuple[tuple[str, int], SearchSpace]]:
  """Each space keyed by (optimizer, how many earlier spaces share it): a study's searches
  pair up by optimizer, whatever their order."""
  seen: dict[str, int] = {}
  keyed = []
  for space in spaces:
    keyed.append(((space.optimizer, seen.get(space.optimizer, 0)), space))
    seen[space.optimizer] = seen.get(space.optimizer, 0) + 1
  return keyed


NOT_OVERRIDDEN = ('base', 'search', 'budgets', 'submit')  # structured: the sweep file sets them


def apply_overrides(sweep: SweepConfig, overrides: list[str]) -> SweepConfig:
  """'sweep.seeds=0,1' sets a sweep field; 'train.log_every=...' (any section) the base."""
  base_overrides, values = [], to_dict(sweep)
  for item in overrides:
    key, sep, text = item.partition('=')
    section = key.partition('.')[0]
    if section not in ('sweep', *config_lib.SECTIONS, 'name'):
      raise config_lib.ConfigError(f'unknown section {section} in {key}; '
                                   f'{registry.suggest(section, ("sweep", *config_lib.SECTIONS))}')
    if section != 'sweep':
      base_overrides.append(item)
      continue
    field = key[len('sweep.'):]
    if field in NOT_OVERRIDDEN:
      raise config_lib.ConfigError(f'{key}: set in the sweep file, not by an override')
    allowed = sorted({f.name for f in dataclasses.fields(SweepConfig)} - set(NOT_OVERRIDDEN))
    if field not in allowed:
      raise config_lib.ConfigError(f'unknown sweep field {key}; '
                                   f'{registry.suggest(field, allowed, prefix="sweep.")}')
    if not sep:
      raise config_lib.ConfigError(f'override {item!r}: expected sweep.field=value')
    value = text if field in ('budget', 'name', 'target_metric') else _literal(text)
    if field in ('batch_sizes', 'seeds') and not isinstance(value, (tuple, list)):
      value = (value,)
    values[field] = value
  sweep = from_dict(values)
  if base_overrides:
    sweep = dataclasses.replace(sweep, base=config_lib.apply_overrides(sweep.base,
                                                                       base_overrides))
  return sweep


def _literal(text: str) -> Any:
  """'0,1' -> (0, 1), 'true' -> True, '1e-3' -> 0.001, 'none' -> None."""
  lowered = text.strip().lower()
  if lowered in ('true', 'false', 'none', 'null'):
    return {'true': True, 'false': False}.get(lowered)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


GRID_FILE_SUFFIXES = ('.json', '.yaml', '.yml')


def sweep_from_mapping(values: Mapping[str, Any], where: str) -> SweepConfig:
  """A SweepConfig from plain data (a JSON or YAML grid): `base` is a config as nested
  sections (partial: defaults fill the rest), `search` a list of SearchSpace fields."""
  if not isinstance(values, Mapping):
    raise config_lib.ConfigError(f'{where}: expected a mapping of sweep fields at the top')
  allowed = sorted(f.name for f in dataclasses.fields(SweepConfig))
  unknown = sorted(set(values) - set(allowed))
  if unknown:
    raise config_lib.ConfigError(f'{where}: unknown sweep field {unknown[0]!r}; '
                                 f'{registry.suggest(unknown[0], allowed)}')
  if not values.get('search'):
    raise config_lib.ConfigError(f'{where}: `search` must list at least one optimizer\'s '
                                 'search (optimizer, learning_rate: [low, high], ...)')
  space_fields = sorted(f.name for f in dataclasses.fields(SearchSpace))
  for i, space in enumerate(values['search']):
    extra = sorted(set(space) - set(space_fields)) if isinstance(space, Mapping) else ['?']
    if extra:
      raise config_lib.ConfigError(f'{where}: search[{i}]: unknown field {extra[0]!r}; '
                                   f'{registry.suggest(extra[0], space_fields)}')
  values = dict(values)
  values['base'] = config_lib.to_dict(config_lib.from_dict(values.get('base', {})))
  return from_dict(values)


def _yaml_loader():
  """yaml.SafeLoader that also reads 1e-3 as a float (YAML 1.1 wants 1.0e-3)."""
  import yaml  # pylint: disable=import-outside-toplevel

  class Loader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    pass

  Loader.add_implicit_resolver(
      'tag:yaml.org,2002:float',
      re.compile(r'^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+\.\d*$'),
      list('-+0123456789.'))
  return Loader


def _read_grid_file(path: pathlib.Path) -> SweepConfig:
  import yaml  # pylint: disable=import-outside-toplevel  (YAML is a superset of JSON)
  try:
    values = yaml.load(path.read_text(), Loader=_yaml_loader())  # nosec: a SafeLoader
  except yaml.YAMLError as error:
    mark = getattr(error, 'problem_mark', None)
    at = f':{mark.line + 1}' if mark is not None else ''
    raise config_lib.ConfigError(f'--config {path}{at}: not valid '
                                 f'{"JSON" if path.suffix == ".json" else "YAML"}') from None
  return sweep_from_mapping(values, f'--config {path}')


def load_sweep(path, overrides: list[str] = ()) -> SweepConfig:
  """Imports configs/<study>.py and calls get_sweep(), or reads a JSON/YAML grid; applies
  overrides."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise config_lib.ConfigError(f'--config {path}: no such file')
  if path.suffix in GRID_FILE_SUFFIXES:
    sweep = _read_grid_file(path)
    if sweep.name == 'sweep':
      sweep = dataclasses.replace(sweep, name=path.stem)
    sweep = apply_overrides(sweep, list(overrides))
    validate(sweep)
    return sweep
  try:
    module = registry.module_from_file(path)
  except SyntaxError as error:
    raise config_lib.ConfigError(f'--config {error.filename}:{error.lineno}: syntax error '
                                 f'({error.msg})') from None
  if not hasattr(module, 'get_sweep'):
    raise config_lib.ConfigError(f'--config {path}: defines no get_sweep()')
  sweep = module.get_sweep()
  if not isinstance(sweep, SweepConfig):
    raise config_lib.ConfigError(f'--config {path}: get_sweep() must return '
                                 'mbx.sweep.SweepConfig')
  if sweep.name == 'sweep':
    sweep = dataclasses.replace(sweep, name=path.stem)
  sweep = apply_overrides(sweep, list(overrides))
  validate(sweep)
  return sweep
