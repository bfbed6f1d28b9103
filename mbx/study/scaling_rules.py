"""How far do LR scaling rules, warmup and layer-wise optimizers carry a fixed epoch budget
towards full batch? (Goyal et al. 2017; Hoffer et al. 2017; You et al. 2017, 2020)

Every batch size B = B0 × ratio^k up to the training set (and the full set itself) trains for
the same number of epochs, with step decay ×0.1 at 1/3, 2/3 and 8/9 of them (Goyal et al.'s
30/60/80 of 90). A method is an optimizer, a rule that scales its base LR from B0 to B
(linear: × B/B0, Goyal; sqrt: × √(B/B0), Hoffer), optionally a linear warmup that starts at the
base LR (Goyal), and a fraction of the tuned base LR. Each optimizer's base LR is the best of a
grid at B0 on the validation split (one tuning seed). A method holds at B while the mean over
seeds of its final test accuracy (or the task's metric) stays within `tolerance` of its own at
B0; reported: the largest B up to which it holds, the seeds' spread, and with two or more
seeds the paired difference from B0 (95% t-interval, paired t-test). Runs that stop learning
(final training loss ≥ `stalled_fraction` × the loss at initialisation) or diverge are marked.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mbx import config as config_lib
from mbx import registry
from mbx.optim import declared
from mbx.study import context

TITLE = 'LR scaling rules, warmup, LARS and LAMB at a fixed epoch budget ({name})'

RULES = ('linear', 'sqrt', 'none')
DEFAULT_METHODS = ('momentum-linear', 'momentum-linear-warmup', 'momentum-linear-warmup@0.25',
                   'momentum-sqrt-warmup', 'lars-linear-warmup', 'lamb-sqrt-warmup',
                   'adam-sqrt-warmup')
# The base-LR grid of an optimizer whose reference LR differs from the config's optimizer's is
# centred on its own (mbx.optim.declared: 0.1 for SGD, 1e-3 for Adam and LAMB, 1 for LARS).
GOYAL_WARMUP_EPOCHS = 5.0


@dataclasses.dataclass(frozen=True)
class Options:
  methods: tuple[str, ...] = DEFAULT_METHODS   # optimizer-rule[-warmup][@fraction of the base LR]
  base_batch: int | None = None                # B0; None: the config's train.batch_size
  batch_ratio: int = 2                         # B = B0 × ratio^k below the training set
  batch_sizes: tuple[int, ...] = ()            # an explicit grid instead (its smallest is B0)
  full_batch: bool = True                      # also B = the whole training set
  epochs: float | None = None                  # the budget at every B; None: the config's
  milestones: tuple[float, ...] = (1 / 3, 2 / 3, 8 / 9)  # LR × decay_factor at these fractions
  decay_factor: float = 0.1                    # of the budget; (): the config's own schedule
  warmup_epochs: float | None = None           # None: 5 (Goyal), at most 1/12 of the budget
  learning_rates: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # optimizer ->
                                               # its base-LR grid at B0, instead of the factors
  learning_rate_factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)  # × the config's LR
                                               # (same reference LR), else × its reference LR
  seeds: tuple[int, ...] = (0,)  # train.seed of each reported run (initialisation and data order)
  tuning_seed: int | None = None               # None: seeds[0] (its B0 runs are then reused)
  metric: str | None = None                    # None: accuracy if the task reports it, else loss
  tolerance: float = 0.01                      # in the metric's units: 0.01 = 1 accuracy point
  stalled_fraction: float = 0.9                # final train loss ≥ this × the initial loss


QUICK = dict(learning_rate_factors=(1.0,), batch_ratio=8)


@dataclasses.dataclass(frozen=True)
class Method:
  spec: str
  optimizer: str
  rule: str
  warmup: bool
  fraction: float

  @property
  def label(self) -> str:
    text = f'{label(self.optimizer)}, {self.rule}' + (' + warmup' if self.warmup else '')
    return text + (f', {self.fraction:g}× LR' if self.fraction != 1 else '')


@dataclasses.dataclass(frozen=True)
class Plan:
  """The grids and budgets the options give for one config and training set."""
  num_train: int
  base_batch: int
  batch_sizes: tuple[int, ...]
  epochs: float
  warmup_epochs: float
  milestones: tuple[float, ...]                # in epochs; (): the config's own schedule
  decay_factor: float
  methods: tuple[Method, ...]
  grids: dict[str, tuple[float, ...]]          # optimizer -> base LRs tried at B0
  grid_source: dict[str, str]                  # optimizer -> how its grid was derived
  metric: str                                  # e.g. 'accuracy'
  better: str                                  # 'max' or 'min'
  select: str                                  # eval_<metric>: picks the base LR
  report: str                                  # test_<metric> (eval_ without a test split)
  eval_split: str
  report_split: str
  tuning_seed: int


# ------------------------------------------------------------------ the grids
def label(optimizer: str) -> str:
  return declared.of_name(optimizer).label or optimizer


def reference_lr(optimizer: str) -> float | None:
  return declared.of_name(optimizer).reference_lr


def parse_methods(specs: Sequence[str]) -> tuple[Method, ...]:
  """'momentum-linear-warmup@0.25' -> Method; one-line errors with a did-you-mean."""
  names = [f'{o}-{r}{w}' for o in declared.BUILTIN for r in RULES
           for w in ('', '-warmup')]
  methods = []
  for spec in (s.strip() for text in specs for s in str(text).split(',') if s.strip()):
    name, at, fraction_text = spec.partition('@')
    parts = name.split('-')
    if name not in names:
      close = difflib.get_close_matches(name, names, n=1)
      raise config_lib.ConfigError(
          f'study.methods: {spec!r} is not optimizer-rule[-warmup][@fraction]'
          + (f'; did you mean {close[0] + at + fraction_text!r}?' if close else '')
          + f' (optimizers: {", ".join(declared.BUILTIN)}; rules: {", ".join(RULES)})')
    try:
      fraction = float(fraction_text) if at else 1.0
    except ValueError:
      fraction = math.nan
    if not (math.isfinite(fraction) and fraction > 0):
      raise config_lib.ConfigError(f'study.methods: {spec!r}: the part after @ is the fraction '
                                   'of the tuned base LR, a positive number (e.g. @0.25)')
    if parts[1] == 'none' and len(parts) == 3:
      raise config_lib.ConfigError(f'study.methods: {spec!r}: warmup starts at the base LR, '
                                   'so with rule none it does nothing; drop -warmup')
    methods.append(Method(spec, parts[0], parts[1], len(parts) == 3, fraction))
  if not methods:
    raise config_lib.ConfigError('study.methods=(): name at least one method, e.g. '
                                 'momentum-linear-warmup')
  if len({m.spec for m in methods}) < len(methods):
    raise config_lib.ConfigError(f'study.methods: a method is named twice in {specs}')
  return tuple(methods)


def base_lr_grids(config: config_lib.Config, options: Options, optimizers: Sequence[str],
                  base_batch: int) -> tuple[dict[str, tuple[float, ...]], dict[str, str]]:
  """Per optimizer, the base LRs tried at B0 and how they were derived."""
  explicit = dict(options.learning_rates or {})
  for key, values in explicit.items():
    if key not in optimizers:
      raise config_lib.ConfigError(f'study.learning_rates: {key!r} is not an optimizer of '
                                   f'study.methods; {registry.suggest(str(key), optimizers)}')
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
      raise config_lib.ConfigError(f'study.learning_rates[{key!r}]={values!r}: expected '
                                   'positive learning rates')
    explicit[key] = tuple(float(v) for v in values)
  factors = tuple(options.learning_rate_factors)
  if not factors or not all(f > 0 for f in factors):
    raise config_lib.ConfigError(f'study.learning_rate_factors={factors!r}: expected positive '
                                 'factors')
  own = _config_lr(config, base_batch)
  grids, source = {}, {}
  for optimizer in optimizers:
    if optimizer in explicit:
      grids[optimizer], source[optimizer] = explicit[optimizer], 'given'
      continue
    if optimizer == config.optim.name or (
        reference_lr(optimizer) is not None and
        reference_lr(optimizer) == reference_lr(config.optim.name)):
      center, source[optimizer] = own, f'the config\'s LR {own:.3g} (at B0)'
    else:
      center = reference_lr(optimizer)
      if center is None:
        raise config_lib.ConfigError(f'study.methods: {optimizer} declares no reference_lr; '
                                     f'give study.learning_rates[{optimizer!r}]')
      source[optimizer] = f'its reference LR {center:g}'
    grids[optimizer] = tuple(float(f'{center * f:.4g}') for f in sorted(factors))
    source[optimizer] += ' × ' + ', '.join(f'{f:g}' for f in sorted(factors))
  return grids, source


def _config_lr(config: config_lib.Config, batch_size: int) -> float:
  """The LR the config trains with at `batch_size` (its own scaling rule applied)."""
  optim = config.optim
  ratio = batch_size / (optim.base_batch_size or config.train.batch_size)
  return optim.learning_rate * {'none': 1.0, 'linear': ratio,
                                'sqrt': math.sqrt(ratio)}[optim.lr_scaling]


def batch_grid(base_batch: int, ratio: int, num_train: int, full_batch: bool) -> tuple[int, ...]:
  """B0, B0·ratio, B0·ratio², ... up to the training set, and the training set itself."""
  sizes, b = [], base_batch
  while b <= num_train:
    sizes.append(b)
    b *= ratio
  if full_batch and sizes[-1] != num_train:
    sizes.append(num_train)
  return tuple(sizes)


def _budget_epochs(config: config_lib.Config, num_train: int, tokens_per_example: int) -> float:
  duration = config_lib.parse_duration(config.train.duration, 'train.duration')
  examples = duration.to_examples(config.train.batch_size, num_train, tokens_per_example)
  return float(f'{examples / num_train:.4g}')


def _check_options(options: Options) -> tuple[Method, ...]:
  """What can be checked without the data."""
  methods = parse_methods(options.methods)
  if not options.seeds:
    raise config_lib.ConfigError('study.seeds=(): at least one seed')
  if len(set(options.seeds)) < len(options.seeds):
    raise config_lib.ConfigError(f'study.seeds={options.seeds}: a seed is named twice')
  if not (isinstance(options.batch_ratio, int) and options.batch_ratio >= 2):
    raise config_lib.ConfigError(f'study.batch_ratio={options.batch_ratio!r}: an integer >= 2')
  if options.epochs is not None and not options.epochs > 0:
    raise config_lib.ConfigError(f'study.epochs={options.epochs}: must be positive')
  if not all(0 < f < 1 for f in options.milestones) or list(options.milestones) != sorted(
      options.milestones):
    raise config_lib.ConfigError(f'study.milestones={options.milestones}: increasing fractions '
                                 'of the budget strictly between 0 and 1; () keeps the config\'s '
                                 'schedule')
  if not 0 < options.decay_factor <= 1:
    raise config_lib.ConfigError(f'study.decay_factor={options.decay_factor}: in (0, 1]')
  if not options.tolerance >= 0:
    raise config_lib.ConfigError(f'study.tolerance={options.tolerance}: must be >= 0 (in the '
                                 'metric\'s units: 0.01 = 1 point of accuracy)')
  if not 0 < options.stalled_fraction <= 1:
    raise config_lib.ConfigError(f'study.stalled_fraction={options.stalled_fraction}: in (0, 1]')
  if options.warmup_epochs is not None and not options.warmup_epochs > 0:
    raise config_lib.ConfigError(f'study.warmup_epochs={options.warmup_epochs}: must be '
                                 'positive (None: 5 epochs, at most 1/12 of the budget)')
  return methods


def make_plan(config: config_lib.Config, options: Options, num_train: int, eval_split: str,
              test_split: str | None, tokens_per_example: int = 1) -> Plan:
  """The batch sizes, budget, LR grids and metrics of the study; one-line errors."""
  methods = _check_options(options)
  metrics = context.task_metrics(config)
  metric = options.metric or ('accuracy' if 'accuracy' in metrics else 'loss')
  if metric not in metrics:
    raise config_lib.ConfigError(f'study.metric={metric!r}: the task reports '
                                 f'{", ".join(metrics)}; choose one of them')
  base = options.base_batch or config.train.batch_size
  if options.batch_sizes:
    sizes = tuple(sorted(set(options.batch_sizes)))
    base = sizes[0]
    field = 'study.batch_sizes'
  else:
    sizes = ()
    field = 'study.base_batch' if options.base_batch else 'train.batch_size'
  if not 1 <= base <= num_train:
    raise config_lib.ConfigError(f'{field}={base}: B0 outside 1 … {num_train} (the training '
                                 'set)' + ('; set study.base_batch' if field[0] == 't' else ''))
  if options.base_batch and options.batch_sizes and options.base_batch != base:
    raise config_lib.ConfigError(f'study.base_batch={options.base_batch}: study.batch_sizes '
                                 f'starts at {base}; B0 is the smallest batch size')
  for b in sizes:
    if not 1 <= b <= num_train:
      raise config_lib.ConfigError(f'study.batch_sizes: {b} outside 1 … {num_train} (the '
                                   'training set)')
  sizes = sizes or batch_grid(base, options.batch_ratio, num_train, options.full_batch)
  if len(sizes) < 2:
    raise config_lib.ConfigError(f'B0 = {base} with a training set of {num_train}: no larger '
                                 'batch size to scale to; lower study.base_batch')
  epochs = options.epochs or _budget_epochs(config, num_train, tokens_per_example)
  warmup = (options.warmup_epochs if options.warmup_epochs is not None
            else min(GOYAL_WARMUP_EPOCHS, float(f'{epochs / 12:.3g}')))
  if any(m.warmup for m in methods) and not warmup < epochs:
    raise config_lib.ConfigError(f'study.warmup_epochs={warmup:g}: not below the budget of '
                                 f'{epochs:g} epochs')
  optimizers = list(dict.fromkeys(m.optimizer for m in methods))
  grids, source = base_lr_grids(config, options, optimizers, base)
  return Plan(num_train=num_train, base_batch=base, batch_sizes=sizes, epochs=epochs,
              warmup_epochs=warmup,
              milestones=tuple(float(f'{epochs * f:.4g}') for f in options.milestones),
              decay_factor=options.decay_factor, methods=methods, grids=grids, grid_source=source,
              metric=metric, better=metrics[metric], select=f'eval_{metric}',
              report=f'test_{metric}' if test_split else f'eval_{metric}',
              eval_split=eval_split, report_split=test_split or eval_split,
              tuning_seed=options.seeds[0] if options.tuning_seed is None
              else options.tuning_seed)


def plan_of(config: config_lib.Config, options: Options) -> Plan:
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  _check_options(options)  # the data is not loaded for an error it cannot change
  workload = resolve(config)
  return make_plan(config, options, workload.dataset.num_examples(workload.train_split),
                   workload.eval_split, workload.test_split, workload.tokens_per_example)


def point_config(config: config_lib.Config, plan: Plan, optimizer: str, base_lr: float,
                 rule: str, warmup: bool, batch_size: int, seed: int) -> config_lib.Config:
  """The run of one point. At B0 every rule and warmup give the same run (shared)."""
  scaled = batch_size != plan.base_batch and rule != 'none'
  ratio = batch_size / plan.base_batch
  factor = {'linear': ratio, 'sqrt': math.sqrt(ratio), 'none': 1.0}[rule]
  optim = dict(name=optimizer, learning_rate=float(base_lr),
               lr_scaling=rule if scaled else 'none',
               base_batch_size=plan.base_batch if scaled else None,
               warmup=f'{plan.warmup_epochs:g} epochs' if warmup and scaled else '0 steps',
               warmup_start_factor=float(f'{1 / factor:.6g}') if warmup and scaled else 0.0)
  if plan.milestones:
    optim.update(schedule='step', milestones=plan.milestones, milestone_unit='epochs',
                 decay_factor=plan.decay_factor)
  train = dict(batch_size=batch_size, duration=f'{plan.epochs:g} epochs', seed=seed,
               log_every=f'{min(1.0, plan.epochs / 10):g} epochs',
               eval_every=f'{plan.epochs / 10:g} epochs', checkpoint_every=None,
               stop_at_target=False, batch_size_milestones=(), batch_policy='none')
  optim_config = declared.for_optimizer(config.optim, optimizer)
  return dataclasses.replace(config, optim=dataclasses.replace(optim_config, **optim),
                             train=dataclasses.replace(config.train, **train))


def check(config: config_lib.Config, options: Options) -> None:
  """Every error the options, the config and its data can raise, before anything is written:
  the plan, then every run's config validated."""
  plan = plan_of(config, options)
  for method in plan.methods:
    for lr in plan.grids[method.optimizer]:
      for b in plan.batch_sizes:
        declared.validate(point_config(config, plan, method.optimizer, lr * method.fraction,
                                         method.rule, method.warmup, b, plan.tuning_seed))


# ------------------------------------------------------------------ decisions
def _finite(value) -> bool:
  return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def choose_base_lr(rows: Sequence[Mapping[str, Any]], select: str, better: str) -> float | None:
  """The LR of the finished (not diverged) run with the best `select` value; ties: the smaller
  LR. None when every run diverged."""
  candidates = [r for r in rows if r['status'] == 'done' and _finite(r.get(select))]
  if not candidates:
    return None
  sign = 1 if better == 'max' else -1
  return max(candidates, key=lambda r: (sign * r[select], -r['learning_rate']))['learning_rate']


def mean_of(values: Sequence[float]) -> float:
  """The mean over seeds; NaN if any seed has none (a diverged seed fails the batch size)."""
  values = [float(v) for v in values]
  return sum(values) / len(values) if values and all(map(math.isfinite, values)) else math.nan


def within(value: float, reference: float, tolerance: float, better: str) -> bool:
  """`value` no worse than `reference` by more than `tolerance` (up to rounding: accuracies
  are counts over the split, and 0.929 must pass 0.939 − 0.01)."""
  if not (math.isfinite(value) and math.isfinite(reference)):
    return False
  slack = tolerance + 1e-9
  return value >= reference - slack if better == 'max' else value <= reference + slack


def holds_to(values: Mapping[int, Sequence[float]], tolerance: float,
             better: str = 'max') -> tuple[int | None, int | None]:
  """(the largest B up to which every B from B0 has a seed mean within `tolerance` of B0's,
  the first B that is not); B0 = the smallest key. (None, B0) if B0 itself has no value."""
  sizes = sorted(values)
  reference = mean_of(values[sizes[0]])
  if not math.isfinite(reference):
    return None, sizes[0]
  held = sizes[0]
  for b in sizes[1:]:
    if not within(mean_of(values[b]), reference, tolerance, better):
      return held, b
    held = b
  return held, None


def lr_ceiling(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """Of one optimizer's runs ('peak_lr', 'held', 'failed' each): the largest peak LR of a run
  that held, the smallest of a run that failed, and how many runs at or above it failed."""
  failed = [r['peak_lr'] for r in runs if r['failed']]
  if not failed:
    return None
  bad = min(failed)
  above = [r for r in runs if r['peak_lr'] >= bad]
  held = [r['peak_lr'] for r in runs if r['held']]
  return {'largest_held': max(held) if held else math.nan, 'smallest_failed': bad,
          'failed_at_or_above': sum(r['failed'] for r in above), 'at_or_above': len(above)}


# ------------------------------------------------------------------ rows
def _initial_loss(run) -> float:
  frame = run.eval_metrics
  if frame is None or frame.empty or 'eval_loss' not in frame or frame['step'].iloc[0] != 0:
    return math.nan
  return float(frame['eval_loss'].iloc[0])


def _parameter_norms(run) -> tuple[float, float]:
  """(largest L2 norm of a 1-D parameter: biases, norm scales; of a larger one: kernels)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  if not run.checkpoint_steps:
    return math.nan, math.nan
  leaves = [np.asarray(p, np.float64) for p in jax.tree.leaves(run.params())]
  norm = lambda ps: max((float(np.linalg.norm(p)) for p in ps), default=math.nan)
  return norm(p for p in leaves if p.ndim == 1), norm(p for p in leaves if p.ndim > 1)


def run_row(run, plan: Plan, stalled_fraction: float, norms: bool = True, **labels) -> dict:
  """One flat row: the run's point, outcome, metrics and final parameter norms."""
  from mbx.optim import scaled_learning_rate  # pylint: disable=import-outside-toplevel
  status, config = run.status, run.config
  done = status['status'] == 'done'
  train = run.train_metrics
  final_loss = float(train['loss'].iloc[-1]) if train is not None and len(train) else math.nan
  initial = _initial_loss(run)
  row = {**labels, 'batch_size': config.train.batch_size, 'seed': config.train.seed,
         'learning_rate': config.optim.learning_rate,
         'peak_lr': scaled_learning_rate(config.optim, config.train.batch_size),
         'status': status['status'], plan.select: status.get(plan.select, math.nan)
         if done else math.nan}
  row[plan.report] = status.get(plan.report, math.nan) if done else math.nan
  row.update(final_train_loss=final_loss, initial_loss=initial,
             stalled=done and math.isfinite(initial) and not final_loss < stalled_fraction
             * initial, steps=status.get('step'), train_time_s=status.get('train_time'),
             wall_time_s=status.get('wall_time'), trial=run.workdir.name)
  if norms:
    row['max_norm_1d'], row['max_norm_nd'] = _parameter_norms(run)
  return row


# ------------------------------------------------------------------ text
@dataclasses.dataclass(frozen=True)
class _Units:
  """How the reported metric is written: accuracies in percent and points."""
  metric: str
  tolerance: float

  @property
  def scale(self) -> float:
    return 100.0 if self.metric == 'accuracy' else 1.0

  @property
  def percent(self) -> bool:
    return self.scale == 100

  def value(self, v: float) -> str:
    return 'NaN' if not math.isfinite(v) else (f'{v * self.scale:.1f}%' if self.percent
                                               else f'{v:.4g}')

  def spread(self, values: Sequence[float]) -> str:
    """One seed: its value; several: mean ± std (n − 1), NaN if a seed diverged."""
    from mbx.study import statistics  # pylint: disable=import-outside-toplevel
    if len(values) == 1 or not all(map(math.isfinite, values)):
      return self.value(mean_of(values))
    mean, std = statistics.mean_std([v * self.scale for v in values])
    return (f'{mean:.1f} ± {std:.1f}%' if self.percent else f'{mean:.4g} ± {std:.2g}')

  @property
  def tolerance_text(self) -> str:
    return (f'{self.tolerance * 100:g} point{"s" * (self.tolerance != 0.01)}' if self.percent
            else f'{self.tolerance:g}')


def _cell(rows: Sequence[Mapping[str, Any]], column: str, units: _Units) -> str:
  """A table cell of one (method, B) over seeds: †: a seed stopped learning; NaN: diverged."""
  finite = [r[column] for r in rows if math.isfinite(r[column])]
  diverged = sum(r['status'] == 'diverged' for r in rows)
  if not finite:
    return 'NaN'
  text = units.spread(finite).removesuffix('%')
  text += '†' if any(r['stalled'] for r in rows) else ''
  return text + (f' ({diverged}/{len(rows)} NaN)' if diverged else '')


def _difference(b0_rows, rows, report: str, units: _Units) -> dict[str, Any]:
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  by_seed = {r['seed']: r[report] for r in b0_rows}
  pairs = [(by_seed[r['seed']], r[report]) for r in rows if r['seed'] in by_seed]
  return statistics.paired([a for a, _ in pairs], [b for _, b in pairs], 'difference',
                           units.scale)


def _holds_sentence(method: Method, plan: Plan, by_batch, held, failed, units: _Units,
                    seeds: int) -> str:
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  values = {b: [r[plan.report] for r in rows] for b, rows in by_batch.items()}
  b0 = plan.base_batch
  what = f'{plan.report_split} {plan.metric}'
  if held is None:
    return f'{method.label}: no {what} at B0 = {b0} (diverged); nothing to hold.'
  text = (f'{method.label}: holds {what} within {units.tolerance_text} of its B0 = {b0} value '
          f'({units.spread(values[b0])}) ')
  text += (f'up to B = {held} ({units.spread(values[held])})' if held != b0 else
           'at no larger batch size')
  if failed is None:
    return text + f', the largest batch size tried (n = {seeds} seed{"s" * (seeds > 1)}).'
  outcome = [r['status'] for r in by_batch[failed]]
  note = ('; diverged' if 'diverged' in outcome else
          '; stopped learning' if any(r['stalled'] for r in by_batch[failed]) else '')
  text += f'; at B = {failed}: {units.spread(values[failed])}{note}'
  if seeds > 1:
    diff = _difference(by_batch[b0], by_batch[failed], plan.report, units)
    if diff['n'] >= 2:
      text += (f', {statistics.interval_text(diff)}{" points" if units.percent else ""} '
               f'from B0 (n = {diff["n"]} paired seeds, 95% t-interval, paired t p = '
               f'{diff["p_t"]:.2g})')
  return text + f' (n = {seeds} seed{"s" * (seeds > 1)}).'


def _best_at_largest(rows, plan: Plan, units: _Units, seeds: int) -> str | None:
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  largest = plan.batch_sizes[-1]
  sign = 1 if plan.better == 'max' else -1
  means = {m.label: mean_of([r[plan.report] for r in rows
                             if r['spec'] == m.spec and r['batch_size'] == largest])
           for m in plan.methods}
  ranked = sorted((v, k) for k, v in means.items() if math.isfinite(v))
  if not ranked:
    return f'At the largest batch size, B = {largest}, every method diverged.'
  ranked = ranked[::-1] if sign > 0 else ranked
  best = ranked[0][1]
  b0 = mean_of([r[plan.report] for r in rows
                if r['method'] == best and r['batch_size'] == plan.base_batch])
  text = (f'At the largest batch size, B = {largest}'
          + (' (the whole training set)' if largest == plan.num_train else '')
          + f', the best {plan.report_split} {plan.metric} is {best}\'s, '
          f'{units.value(ranked[0][0])} (mean of {seeds} seed{"s" * (seeds > 1)}; '
          f'{units.value(b0)} at B0 = {plan.base_batch}, with '
          f'{largest / plan.base_batch:.3g}× fewer updates)')
  if len(ranked) > 1:
    second = ranked[1][1]
    text += f'; next: {second}, {units.value(ranked[1][0])}'
    if seeds > 1:
      pick = lambda label: [r for r in rows if r['method'] == label and r['batch_size'] == largest]
      diff = _difference(pick(second), pick(best), plan.report, units)
      if diff['n'] >= 2:
        text += (f' (difference {statistics.interval_text(diff)}, n = {diff["n"]} paired '
                 f'seeds, paired t p = {diff["p_t"]:.2g})')
  return text + '.'


def _ceiling_sentences(rows, plan: Plan, units: _Units, reference) -> list[str]:
  out = []
  for optimizer in dict.fromkeys(m.optimizer for m in plan.methods):
    runs = []
    for r in (r for r in rows if r['optimizer'] == optimizer):
      failed = r['stalled'] or r['status'] == 'diverged'
      runs.append({'peak_lr': r['peak_lr'], 'failed': failed, 'held': not failed and within(
          r[plan.report], reference[r['spec']], units.tolerance, plan.better)})
    ceiling = lr_ceiling(runs)
    if ceiling is None:
      continue
    held = ceiling['largest_held']
    out.append(
        f'{label(optimizer)} (all its methods): '
        + (f'the largest peak LR of a run within {units.tolerance_text} of its method\'s B0 '
           f'value was {held:.3g}; ' if math.isfinite(held) else
           'no run stayed within the tolerance of its method\'s B0 value; ')
        + f'the smallest peak LR of a run that stopped learning or diverged was '
        f'{ceiling["smallest_failed"]:.3g}, and {ceiling["failed_at_or_above"]} of the '
        f'{ceiling["at_or_above"]} runs at or above it did.')
  return out


# ------------------------------------------------------------------ the study
def run(ctx) -> None:
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from mbx.figures import schedules as figures  # pylint: disable=import-outside-toplevel
  config, options = ctx.config, ctx.options
  plan = plan_of(config, options)
  units = _Units(plan.metric, options.tolerance)
  seeds, b0 = tuple(options.seeds), plan.base_batch
  seeds_text = f'{len(seeds)} seed{"s" * (len(seeds) > 1)}'
  ctx.protocol += [
      f'Model and data: `{config.model.name}` on `{config.data.name}` ({plan.num_train} '
      f'training examples), task `{config.task.name}`; the config\'s momentum, Adam betas, '
      f'trust coefficient and weight decay ({config.optim.weight_decay:g}); its LR scaling, '
      'warmup, schedule, stop and batch-size schedule are replaced as below.',
      f'Batch sizes: {", ".join(map(str, plan.batch_sizes))} (B0 = {b0}'
      + ('' if options.batch_sizes else f' × {options.batch_ratio}^k'
         + (', then the whole training set' if options.full_batch else '')) + ').',
      f'Budget: {plan.epochs:g} epochs at every batch size '
      + ('(the config\'s duration)' if options.epochs is None else '(study.epochs)')
      + f', so {math.ceil(plan.epochs * plan.num_train / b0)} updates at B0 and '
      f'{math.ceil(plan.epochs * plan.num_train / plan.batch_sizes[-1])} at B = '
      f'{plan.batch_sizes[-1]}; '
      + (f'LR × {plan.decay_factor:g} at epochs {", ".join(f"{m:g}" for m in plan.milestones)} '
         f'(fractions {", ".join(f"{f:.3g}" for f in options.milestones)} of the budget, '
         'Goyal et al.\'s 30/60/80 of 90).' if plan.milestones else
         'the config\'s own LR schedule.'),
      'Base LR per optimizer at B0, seed '
      f'{plan.tuning_seed}: ' + '; '.join(
          f'{o}: {", ".join(f"{lr:g}" for lr in grid)} ({plan.grid_source[o]})'
          for o, grid in plan.grids.items())
      + f'. Kept: the run that did not diverge with the best final {plan.select} (the '
      f'`{plan.eval_split}` split; ties: the smaller LR).',
      'Methods: ' + '; '.join(f'`{m.spec}` = {m.label}' for m in plan.methods)
      + '. Linear: peak LR = base × B/B0 (Goyal et al. 2017); sqrt: × √(B/B0) (Hoffer et al. '
      f'2017); warmup: linear over the first {plan.warmup_epochs:g} epochs from the base LR to '
      'the peak (Goyal et al.). At B0 every method of an optimizer is the same run. Each '
      'point is a plain run of the config with these fields set: `trials/<id>/config.json`.',
      f'Holding: a method holds at B while the mean over seeds of its final '
      f'{plan.report_split} {plan.metric} stays within {units.tolerance_text} of its own at '
      'B0, for every batch size from B0 up to B; a diverged seed fails its batch size. Seeds: '
      f'{list(seeds)} (initialisation and data order). '
      + ('With n ≥ 2 seeds, differences from B0 are paired by seed: mean with a 95% '
         't-interval and a paired t-test.' if len(seeds) > 1 else
         'One seed: no spread and no test; differences of a point or two at one batch size '
         'are within what a single run can move.'),
      f'Stopped learning (†): final training loss ≥ {options.stalled_fraction:g} × the loss '
      'at initialisation (the step-0 evaluation). NaN: the loss became NaN (status '
      '`diverged`).']

  optimizers = list(plan.grids)
  tuned = ctx.train({(o, lr): point_config(config, plan, o, lr, 'none', False, b0,
                                           plan.tuning_seed)
                     for o in optimizers for lr in plan.grids[o]}, 'base LR at B0')
  chosen, tuning_rows = {}, []
  for o in optimizers:
    group = [run_row(tuned[(o, lr)], plan, options.stalled_fraction, norms=False, optimizer=o)
             for lr in plan.grids[o]]
    chosen[o] = choose_base_lr(group, plan.select, plan.better)
    if chosen[o] is None:
      raise config_lib.ConfigError(
          f'{o}: every base LR of {plan.grids[o]} diverged at B0 = {b0}; lower '
          'study.learning_rates or study.learning_rate_factors')
    for r in group:
      r['chosen'] = r['learning_rate'] == chosen[o]
    tuning_rows += group
  edges = [o for o, lr in chosen.items()
           if len(plan.grids[o]) > 1 and lr in (min(plan.grids[o]), max(plan.grids[o]))]
  ctx.table('base_lr', [{'optimizer': r['optimizer'], 'base LR': f'{r["learning_rate"]:g}',
                         f'{plan.eval_split} {plan.metric}': _cell([r], plan.select, units),
                         f'{plan.report_split} {plan.metric}': _cell([r], plan.report, units),
                         'final train loss': f'{r["final_train_loss"]:.3g}',
                         'status': r['status'], 'chosen': '✓' if r['chosen'] else ''}
                        for r in tuning_rows],
            title=f'Base LR at B0 = {b0} (seed {plan.tuning_seed}), chosen on '
                  f'{plan.eval_split} {plan.metric}',
            note=('Chosen at the edge of its grid: ' + ', '.join(edges)
                  + ' (widen study.learning_rates).') if edges else None)

  points = {(m.spec, b, s): point_config(config, plan, m.optimizer, chosen[m.optimizer]
                                         * m.fraction, m.rule, m.warmup, b, s)
            for m in plan.methods for b in plan.batch_sizes for s in seeds}
  trained = ctx.train(points, 'methods × batch sizes')
  rows, cache = [], {}
  with ctx.timed('parameter norms'):
    for (spec, b, s), run_ in trained.items():
      method = next(m for m in plan.methods if m.spec == spec)
      if run_.workdir.name not in cache:
        cache[run_.workdir.name] = run_row(run_, plan, options.stalled_fraction)
      rows.append({'method': method.label, 'spec': spec, 'optimizer': method.optimizer,
                   'rule': method.rule, 'warmup': method.warmup, 'fraction': method.fraction,
                   **cache[run_.workdir.name]})

  group = lambda m, b: [r for r in rows if r['spec'] == m.spec and r['batch_size'] == b]
  header = lambda b: f'B={b}'
  ctx.table('accuracy', [{'method': m.label, **{header(b): _cell(group(m, b), plan.report, units)
                                                 for b in plan.batch_sizes}}
                         for m in plan.methods],
            title=f'Final {plan.report_split} {plan.metric}'
                  + (' (%)' if units.percent else '')
                  + (f', mean ± std over {seeds_text}' if len(seeds) > 1 else
                     f', {seeds_text} ({seeds[0]})'),
            note=f'†: stopped learning (final training loss ≥ {options.stalled_fraction:g} × '
                 'the initial loss); NaN: diverged. Per-run rows: `runs.csv`.')
  figure = ctx.figure(
      'accuracy_vs_batch_size',
      f'final {plan.report_split} {plan.metric} against batch size'
      + (f' (mean over {seeds_text}, band = min … max)' if len(seeds) > 1 else ''))
  figures.accuracy_vs_batch_size(
      pd.DataFrame(rows), figure, column=plan.report, scale=units.scale,
      ylabel=f'final {plan.report_split} {plan.metric}' + (' (%)' if units.percent else ''),
      title=f'{config.name}: {plan.epochs:g} epochs at every batch size ({seeds_text})')
  ctx.table('peak_lr', [{'method': m.label, **{header(b): f'{group(m, b)[0]["peak_lr"]:.3g}'
                                                for b in plan.batch_sizes}}
                        for m in plan.methods], title='Peak learning rate')

  holds, holds_rows, reference = {}, [], {}
  for m in plan.methods:
    by_batch = {b: group(m, b) for b in plan.batch_sizes}
    values = {b: [r[plan.report] for r in rs] for b, rs in by_batch.items()}
    held, failed = holds_to(values, options.tolerance, plan.better)
    holds[m.label] = {'holds_to': held, 'first_failure': failed}
    reference[m.spec] = mean_of(values[b0])
    row = {'method': m.label, 'base LR': f'{chosen[m.optimizer] * m.fraction:g}',
           f'at B0 = {b0}': units.spread(values[b0]),
           'holds to B': '—' if held is None else held,
           'there': units.spread(values[held]) if held is not None else '—',
           'first B that fails': '—' if failed is None else failed,
           'at that B': '—' if failed is None else units.spread(values[failed])}
    if len(seeds) > 1 and failed is not None and held is not None:
      from mbx.study import statistics  # pylint: disable=import-outside-toplevel
      diff = _difference(by_batch[b0], by_batch[failed], plan.report, units)
      row['difference from B0 [95% CI]'] = statistics.interval_text(diff)
      row['paired t p'] = f'{diff["p_t"]:.2g}'
    holds_rows.append(row)
    ctx.findings.append(_holds_sentence(m, plan, by_batch, held, failed, units, len(seeds)))
  ctx.table('holds', holds_rows,
            title=f'How far each method holds (within {units.tolerance_text} of its B0 value)')

  first = [r for r in rows if r['seed'] == seeds[0]]
  norm = lambda rs: ('—' if not rs or not math.isfinite(rs[0].get('max_norm_1d', math.nan))
                     else f'{rs[0]["max_norm_1d"]:.3g} / {rs[0]["max_norm_nd"]:.3g}')
  ctx.table('parameter_norms',
            [{'method': m.label, **{header(b): norm([r for r in first if r['spec'] == m.spec
                                                     and r['batch_size'] == b])
                                    for b in plan.batch_sizes}} for m in plan.methods],
            title=f'Largest parameter norms at the end (seed {seeds[0]}): 1-D / ≥ 2-D',
            note='1-D parameters are biases and normalisation scales, which LARS and LAMB '
                 'leave out of their trust ratio (they get the raw LR); ≥ 2-D are kernels.')
  ctx.table('runs', rows)

  best = _best_at_largest(rows, plan, units, len(seeds))
  if best:
    ctx.findings.append(best)
  ctx.findings += _ceiling_sentences(rows, plan, units, reference)
  ctx.findings.append(
      'Base LRs at B0 (chosen on ' + f'{plan.eval_split} {plan.metric}): ' + '; '.join(
          f'{o} {lr:g}' for o, lr in chosen.items()) + '.'
      + (f' At the edge of its grid: {", ".join(edges)}.' if edges else ''))
  distinct = list(cache.values())
  ctx.findings.append(
      f'Of the {len(distinct)} distinct runs behind the accuracy table, '
      f'{sum(r["stalled"] for r in distinct)} stopped learning (†) and '
      f'{sum(r["status"] == "diverged" for r in distinct)} diverged (NaN).')
  ctx.results.update(batch_sizes=list(plan.batch_sizes), epochs=plan.epochs,
                     warmup_epochs=plan.warmup_epochs, base_lr_grids=plan.grids,
                     base_lrs=chosen, holds=holds, metric=plan.report)
