"""Are the best results at small batch sizes, and does the range of good learning rates narrow
as the batch grows? (Masters & Luschi 2018, arXiv 1804.07612)

At every batch size from `min_batch_size` (× `batch_size_factor`) up to the whole training set,
the same log grid of learning rates, every trial trained for the same number of epochs (equal
computation, their protocol) with each of `seeds`; once per model variant (by default without
and with BatchNorm when the model's `norm` option takes 'none' and 'batch'). Per B the LR with
the best mean validation metric over seeds is chosen, and its held-out (test) metric, which the
choice never reads, is reported beside it. Good learning rates at a B: every seed trained
without diverging and the mean validation metric is within `tolerance` of the best at that B
(their "range of learning rates that give good results"), also in their units, the base LR
η/B. Per variant: the best B by validation (mean ± std over seeds), the batch sizes within
`tolerance` of it, and the best setting with B ≤ `small_batch_max` against the best with
B > `small_batch_max` on the held-out metric (Welch's t over seeds); with several variants,
each against the first at every B (Welch).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mbx import config as config_lib
from mbx.optim import declared as optim_declared
from mbx.study import context

TITLE = 'Small-batch training: the best batch size and the good-LR range per B ({name})'


@dataclasses.dataclass(frozen=True)
class Options:
  batch_sizes: tuple[int, ...] = ()            # (): min_batch_size × factor^k below the
                                               # training set, then the whole set
  min_batch_size: int = 2                      # Masters & Luschi's smallest
  batch_size_factor: int = 2  # batch sizes grow by this factor
  learning_rates: tuple[float, ...] = ()  # explicit grid; (): num_learning_rates log-spaced
                                          # points over the config's LR × learning_rate_span
  learning_rate_span: tuple[float, ...] = (0.01, 30.0)  # (low, high) × the config's LR
  num_learning_rates: int = 10  # points of the LR grid, the same at every B
  epochs: float | None = None                  # None: the config's train.duration, in epochs
                                               # at its own batch size
  seeds: tuple[int, ...] = (0, 1)  # train.seed of each reported run (initialisation and data order)
  variants: Mapping[str, Sequence[str]] | None = None  # {label: config overrides}; None: no BN
                                               # and BN if the model's norm option takes 'none'
                                               # and 'batch', else the config alone
  select_metric: str | None = None             # None: eval_accuracy if the task has it, else
                                               # eval_loss
  tolerance: float = 0.02                      # good LR / batch: within this of the best (the
                                               # metric's units: 0.02 = 2 points of accuracy)
  small_batch_max: int = 32                    # "small" is B ≤ this (their best: B = 2–32)
  pack_max_batch_size: int | None = 64         # trials at B ≤ this train as one vmapped
                                               # program per variant and B; None: one by one


QUICK = dict(batch_size_factor=16, num_learning_rates=5, learning_rate_span=(0.1, 10.0),
             seeds=(0,))


# ------------------------------------------------------------------ the grid
def select_metric(config: config_lib.Config, options: Options) -> str:
  metrics = context.task_metrics(config)
  if options.select_metric is None:
    return 'eval_accuracy' if 'accuracy' in metrics else 'eval_loss'
  prefix, _, name = options.select_metric.partition('_')
  if prefix != 'eval' or name not in metrics:
    raise config_lib.ConfigError(
        f'study.select_metric={options.select_metric!r}: not a metric of the task; allowed: '
        + ', '.join(f'eval_{m}' for m in metrics))
  return options.select_metric


def batch_sizes(options: Options, num_train: int) -> tuple[int, ...]:
  """study.batch_sizes, else min_batch_size × factor^k below the training set, then all of it."""
  if options.batch_sizes:
    return tuple(sorted(set(options.batch_sizes)))
  sizes, b = [], options.min_batch_size
  while b < num_train:
    sizes.append(b)
    b *= options.batch_size_factor
  return (*sizes, num_train)


def learning_rates(config: config_lib.Config, options: Options) -> tuple[float, ...]:
  """study.learning_rates, else num_learning_rates points, evenly spaced in log, from the
  config's LR × learning_rate_span[0] to × learning_rate_span[1]."""
  if options.learning_rates:
    return tuple(sorted(set(float(lr) for lr in options.learning_rates)))
  low, high = (math.log(config.optim.learning_rate * f) for f in options.learning_rate_span)
  n = options.num_learning_rates
  return tuple(float(f'{math.exp(low + i * (high - low) / (n - 1)):.6g}') for i in range(n))


def epochs(config: config_lib.Config, options: Options, num_train: int) -> float:
  """study.epochs, else the config's duration at its own batch size, in epochs."""
  if options.epochs is not None:
    return float(options.epochs)
  duration = config_lib.parse_duration(config.train.duration, 'train.duration')
  if duration.unit == 'tokens':
    raise config_lib.ConfigError(f'study.epochs=None: train.duration={config.train.duration!r}'
                                 ' is in tokens; give the budget as study.epochs=N')
  return duration.to_examples(config.train.batch_size, num_train) / num_train


def variants(config: config_lib.Config, options: Options) -> dict[str, tuple[str, ...]]:
  """{label: config overrides}: study.variants, else without and with BatchNorm when the model
  takes norm='none' and norm='batch', else the config alone ({'config': ()})."""
  if options.variants is not None:
    chosen = {str(k): (v,) if isinstance(v, str) else tuple(v)
              for k, v in dict(options.variants).items()}
    return chosen or {'config': ()}
  from mbx import models  # pylint: disable=import-outside-toplevel
  try:
    if 'norm' in models.model_options(config.model.name):
      for norm in ('none', 'batch'):
        models.validate_model(config.model.name, {**config.model.options, 'norm': norm})
      # Quoted: an unquoted none would be read as None.
      return {'no BN': ("model.options.norm='none'",), 'BN': ('model.options.norm=batch',)}
  except ValueError:
    pass
  return {'config': ()}


def trial_config(config: config_lib.Config, overrides: Sequence[str], batch_size: int,
                 learning_rate: float, seed: int, num_epochs: float) -> config_lib.Config:
  """One run of the grid: the user's config (with the variant's overrides) at this B, raw LR
  (no LR scaling rule) and seed, trained for `num_epochs` without stopping early."""
  if overrides:
    config = config_lib.apply_overrides(config, overrides)
  train = dataclasses.replace(config.train, batch_size=batch_size, seed=seed,
                              duration=f'{num_epochs:g} epochs', stop_at_target=False)
  optim = dataclasses.replace(config.optim, learning_rate=float(learning_rate),
                              lr_scaling='none')
  return dataclasses.replace(config, train=train, optim=optim)


def _num_train(config: config_lib.Config) -> int:
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  workload = resolve(config)
  return workload.dataset.num_examples(workload.train_split)


def grid(config: config_lib.Config, options: Options, num_train: int) -> dict[tuple, Any]:
  """{(variant, B, LR, seed): config}, B outermost so that workers share the small-B packs."""
  labels = variants(config, options)
  num_epochs = epochs(config, options, num_train)
  return {(label, b, lr, seed): trial_config(config, labels[label], b, lr, seed, num_epochs)
          for b in batch_sizes(options, num_train) for label in labels
          for lr in learning_rates(config, options) for seed in options.seeds}


def check(config: config_lib.Config, options: Options) -> None:
  """One-line errors for anything the study cannot answer, before a file is written."""
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  select_metric(config, options)
  if not options.seeds or len(set(options.seeds)) != len(options.seeds):
    raise config_lib.ConfigError(f'study.seeds={options.seeds}: give at least one seed, each '
                                 'once')
  if options.learning_rates:
    if len(set(options.learning_rates)) < 2 or min(options.learning_rates) <= 0:
      raise config_lib.ConfigError(
          f'study.learning_rates={options.learning_rates}: give at least 2 distinct positive '
          'learning rates (one LR cannot show a range of good ones)')
  else:
    if options.num_learning_rates < 2:
      raise config_lib.ConfigError(f'study.num_learning_rates={options.num_learning_rates}: '
                                   'at least 2 (one LR cannot show a range of good ones)')
    span = options.learning_rate_span
    if len(span) != 2 or not 0 < span[0] < span[1]:
      raise config_lib.ConfigError(f'study.learning_rate_span={span}: expected (low, high) '
                                   'factors of optim.learning_rate with 0 < low < high')
  if options.tolerance < 0:
    raise config_lib.ConfigError(f'study.tolerance={options.tolerance}: must be >= 0')
  if options.epochs is not None and not options.epochs > 0:
    raise config_lib.ConfigError(f'study.epochs={options.epochs}: must be > 0')
  if options.pack_max_batch_size is not None and options.pack_max_batch_size < 1:
    raise config_lib.ConfigError(f'study.pack_max_batch_size={options.pack_max_batch_size}: '
                                 'a positive batch size, or None (no packing)')
  t = config.train
  if t.batch_policy != 'none' or t.batch_size_milestones:
    raise config_lib.ConfigError(
        f'train.batch_policy={t.batch_policy!r}, train.batch_size_milestones='
        f'{t.batch_size_milestones}: the small-batch study holds each B fixed for the whole '
        'run; use train.batch_policy=none and no milestones')
  num_train = _num_train(config)
  if options.batch_sizes:
    outside = [b for b in options.batch_sizes if not 1 <= b <= num_train]
    if outside:
      raise config_lib.ConfigError(
          f'study.batch_sizes={options.batch_sizes}: {outside[0]} is outside 1 … {num_train} '
          f'(the training set of {config.data.name})')
  elif not (1 <= options.min_batch_size < num_train and options.batch_size_factor >= 2):
    raise config_lib.ConfigError(
        f'study.min_batch_size={options.min_batch_size}, study.batch_size_factor='
        f'{options.batch_size_factor}: need 1 <= min_batch_size < {num_train} (the training '
        'set) and factor >= 2')
  sizes = batch_sizes(options, num_train)
  if len(sizes) < 2:
    raise config_lib.ConfigError(f'study.batch_sizes={sizes}: at least 2 batch sizes')
  if not sizes[0] <= options.small_batch_max < sizes[-1]:
    raise config_lib.ConfigError(
        f'study.small_batch_max={options.small_batch_max}: the grid {sizes} needs batch sizes '
        'on both sides of it (small: B <= small_batch_max, large: B > it)')
  labels = variants(config, options)
  for label, overrides in labels.items():
    if not label or not all(isinstance(o, str) and '=' in o for o in overrides):
      raise config_lib.ConfigError(
          f'study.variants={dict(options.variants or {})}: expected {{label: [section.field='
          f'value, ...]}}, e.g. {{"bn": ["model.options.norm=batch"]}}')
    try:
      resolve(config_lib.apply_overrides(config, overrides) if overrides else config)
    except config_lib.ConfigError as error:
      raise config_lib.ConfigError(f'study.variants[{label!r}]: {error}') from None
  num_epochs = epochs(config, options, num_train)
  for key, trial in grid(config, options, num_train).items():
    try:
      optim_declared.validate(trial)
    except config_lib.ConfigError as error:
      raise config_lib.ConfigError(f'the trial variant={key[0]!r}, B={key[1]}, LR={key[2]:g} '
                                   f'({num_epochs:g} epochs): {error}') from None


# ------------------------------------------------------------------ statistics
def _within(value: float, best: float, tolerance: float, maximize: bool) -> bool:
  slack = tolerance + 1e-12  # a value exactly `tolerance` from the best counts
  return value >= best - slack if maximize else value <= best + slack


def _best(rows: list[dict], key: str, maximize: bool, tie: str) -> dict:
  """The row with the best `key`; ties go to the smaller `tie` (the smaller LR or B)."""
  return max(rows, key=lambda r: ((1 if maximize else -1) * r[key], -r[tie]))


def settings_rows(rows: Sequence[dict]) -> list[dict]:
  """One row per (variant, B, LR) from per-run rows (variant, batch_size, learning_rate, seed,
  diverged, validation, test): seed means and sample stds. A setting with a diverged or
  unfinished seed has NaN means: it can be neither chosen nor good."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r['variant'], r['batch_size'], r['learning_rate']), []).append(r)
  out = []
  for (variant, b, lr), group in groups.items():
    group = sorted(group, key=lambda r: r['seed'])
    diverged = sum(bool(r['diverged']) for r in group)
    complete = not diverged and all(math.isfinite(r['validation']) for r in group)
    row = {'variant': variant, 'batch_size': b, 'learning_rate': lr,
           'base_learning_rate': lr / b, 'seeds': len(group), 'diverged': diverged}
    for key in ('validation', 'test'):
      values = [r[key] for r in group]
      mean, std = statistics.mean_std(values) if complete else (math.nan, math.nan)
      row.update({key: mean, f'{key}_std': std if len(group) > 1 else math.nan,
                  f'{key}_per_seed': values})
    out.append(row)
  return out


def batch_size_rows(settings: Sequence[dict], tolerance: float, maximize: bool) -> list[dict]:
  """Per (variant, B): the LR with the best mean validation metric (ties: the smaller LR),
  whether it is an end of the grid, and the good LRs: no seed diverged and the mean within
  `tolerance` of that best (count, range, and range in base-LR units η/B)."""
  groups: dict[tuple, list[dict]] = {}
  for s in settings:
    groups.setdefault((s['variant'], s['batch_size']), []).append(s)
  out = []
  for (variant, b), group in groups.items():
    grid_lrs = sorted(s['learning_rate'] for s in group)
    row = {'variant': variant, 'batch_size': b, 'grid_points': len(grid_lrs),
           'diverged_lrs': sum(s['diverged'] > 0 for s in group)}
    candidates = [s for s in group if math.isfinite(s['validation'])]
    if not candidates:
      out.append({**row, 'best_learning_rate': math.nan, 'good_lrs': 0})
      continue
    best = _best(candidates, 'validation', maximize, 'learning_rate')
    good = sorted(s['learning_rate'] for s in candidates
                  if _within(s['validation'], best['validation'], tolerance, maximize))
    row.update(
        best_learning_rate=best['learning_rate'],
        best_at_grid_edge=best['learning_rate'] in (grid_lrs[0], grid_lrs[-1]),
        **{k: best[k] for k in ('validation', 'validation_std', 'test', 'test_std',
                                'validation_per_seed', 'test_per_seed')},
        good_lrs=len(good), good_lr_min=good[0], good_lr_max=good[-1],
        good_base_lr_min=good[0] / b, good_base_lr_max=good[-1] / b)
    out.append(row)
  return out


def variant_rows(batch_rows: Sequence[dict], tolerance: float, maximize: bool,
                 small_batch_max: int, held_out: str = 'test', scale: float = 1.0) -> list[dict]:
  """Per variant: the best B by mean validation metric (ties: the smaller B), the batch sizes
  within `tolerance` of it and the largest of them, and the best setting with
  B ≤ small_batch_max against the best with B > it on `held_out` per seed (Welch; difference
  small − large, × scale)."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  out = []
  for variant in dict.fromkeys(r['variant'] for r in batch_rows):
    ok = [r for r in batch_rows if r['variant'] == variant and math.isfinite(
        r.get('validation', math.nan))]
    if not ok:
      out.append({'variant': variant, 'best_batch_size': None})
      continue
    best = _best(ok, 'validation', maximize, 'batch_size')
    holding = sorted(r['batch_size'] for r in ok
                     if _within(r['validation'], best['validation'], tolerance, maximize))
    row = {'variant': variant, 'best_batch_size': best['batch_size'],
           'best_learning_rate': best['best_learning_rate'],
           'validation': best['validation'], 'validation_std': best['validation_std'],
           'test': best['test'], 'test_std': best['test_std'],
           'seeds': len(best['validation_per_seed']), 'batch_sizes_within_tolerance': holding,
           'largest_batch_within_tolerance': holding[-1]}
    small = [r for r in ok if r['batch_size'] <= small_batch_max]
    large = [r for r in ok if r['batch_size'] > small_batch_max]
    if small and large:
      best_small = _best(small, 'validation', maximize, 'batch_size')
      best_large = _best(large, 'validation', maximize, 'batch_size')
      welch = statistics.welch(best_large[f'{held_out}_per_seed'],
                               best_small[f'{held_out}_per_seed'], scale)
      row.update(best_small_batch=best_small['batch_size'],
                 best_large_batch=best_large['batch_size'], small=best_small[held_out],
                 large=best_large[held_out], difference=welch['estimate'],
                 ci_low=welch['ci_low'], ci_high=welch['ci_high'], p=welch['p'],
                 n_small=welch['n_b'], n_large=welch['n_a'])
    out.append(row)
  return out


def variant_differences(batch_rows: Sequence[dict], held_out: str = 'test',
                        scale: float = 1.0) -> list[dict]:
  """Every variant after the first against the first, per B, each at its own chosen LR:
  difference other − first of `held_out` (× scale), Welch interval and p over seeds."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  labels = list(dict.fromkeys(r['variant'] for r in batch_rows))
  by_key = {(r['variant'], r['batch_size']): r for r in batch_rows}
  out = []
  for other in labels[1:]:
    for b in sorted({r['batch_size'] for r in batch_rows}):
      first, second = by_key.get((labels[0], b)), by_key.get((other, b))
      if not first or not second or not math.isfinite(first.get('validation', math.nan)) \
          or not math.isfinite(second.get('validation', math.nan)):
        continue
      welch = statistics.welch(first[f'{held_out}_per_seed'], second[f'{held_out}_per_seed'],
                               scale)
      out.append({'comparison': f'{other} − {labels[0]}', 'batch_size': b,
                  'first': first[held_out], 'other': second[held_out],
                  'difference': welch['estimate'], 'ci_low': welch['ci_low'],
                  'ci_high': welch['ci_high'], 'p': welch['p'], 'n_first': welch['n_a'],
                  'n_other': welch['n_b']})
  return out


def runs_of(counts: Sequence[tuple[int, int]]) -> str:
  """'2 at B = 2–32, 1 at B = 64–4000' from (B, count) in order of B."""
  parts, start = [], 0
  for i in range(1, len(counts) + 1):
    if i == len(counts) or counts[i][1] != counts[start][1]:
      low, high = counts[start][0], counts[i - 1][0]
      parts.append(f'{counts[start][1]} at B = {low}' + (f'–{high}' if high != low else ''))
      start = i
  return ', '.join(parts)


# ------------------------------------------------------------------ the study
@dataclasses.dataclass(frozen=True)
class _Format:
  """Numbers of the selection metric as printed: accuracies in %, their differences in points."""
  percent: bool

  def value(self, v: float) -> str:
    if not math.isfinite(v):
      return '—'
    return f'{100 * v:.1f}' if self.percent else f'{v:.4g}'

  def pm(self, mean: float, std: float, sign: str = '') -> str:
    return (self.value(mean) + (f' ± {self.value(std)}' if math.isfinite(std) else '')
            + (sign if self.percent and math.isfinite(mean) else ''))

  @property
  def header(self) -> str:
    return ' (%)' if self.percent else ''

  @property
  def unit(self) -> str:
    return ' points' if self.percent else ''

  def difference(self, r: Mapping[str, Any], ci: str = '') -> str:
    """'+3.2 [−1.0, +7.4]': a difference (already scaled) with its interval, if any."""
    number = (lambda v: f'{v:+.1f}') if self.percent else (lambda v: f'{v:+.3g}')
    if not math.isfinite(r.get('difference', math.nan)):
      return '—'
    text = number(r['difference'])
    if math.isfinite(r.get('ci_low', math.nan)):
      text += f' [{ci}{number(r["ci_low"])}, {number(r["ci_high"])}]'
    return text


def _run_row(key: tuple, run, select: str, held_out_key: str) -> dict[str, Any]:
  status = run.status
  done = status.get('status') == 'done'
  value = lambda k: float(status.get(k, math.nan)) if done else math.nan
  variant, b, lr, seed = key
  return {'variant': variant, 'batch_size': b, 'learning_rate': lr, 'seed': seed,
          'status': status.get('status'), 'diverged': status.get('status') == 'diverged',
          'validation': value(select), 'test': value(held_out_key),
          'steps': status.get('step'), 'epochs': status.get('epoch'),
          'wall_time': status.get('wall_time'), 'reason': status.get('reason'),
          'trial': run.workdir.name}


def run(ctx) -> None:
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  config, options = ctx.config, ctx.options
  workload = resolve(config)
  num_train = workload.dataset.num_examples(workload.train_split)
  select = select_metric(config, options)
  name = select.partition('_')[2]
  maximize = context.task_metrics(config)[name] == 'max'
  held_out = 'test' if workload.test_split is not None else 'validation'
  form = _Format(percent='accuracy' in name)
  scale = 100.0 if form.percent else 1.0
  labels = variants(config, options)
  sizes, lrs = batch_sizes(options, num_train), learning_rates(config, options)
  num_epochs = epochs(config, options, num_train)
  tolerance = f'{options.tolerance * scale:g}{form.unit}'
  ctx.protocol += _protocol(config, options, num_train, sizes, lrs, labels, num_epochs, select,
                            held_out, tolerance)

  runs = ctx.train(grid(config, options, num_train), 'training',
                   pack_max_batch_size=options.pack_max_batch_size)
  order = {label: i for i, label in enumerate(labels)}
  rows = sorted((_run_row(key, r, select, f'test_{name}' if held_out == 'test' else select)
                 for key, r in runs.items()),
                key=lambda r: (order[r['variant']], r['batch_size'], r['learning_rate'],
                               r['seed']))
  settings = settings_rows(rows)
  per_b = batch_size_rows(settings, options.tolerance, maximize)
  best = variant_rows(per_b, options.tolerance, maximize, options.small_batch_max, held_out,
                      scale)
  differences = variant_differences(per_b, held_out, scale) if len(labels) > 1 else []

  several = len(labels) > 1
  _tables(ctx, per_b, settings, rows, best, differences, form, select, held_out, tolerance,
          several)
  _figures(ctx, per_b, form, name, held_out, num_epochs, select, tolerance, several)
  ctx.results.update(batch_sizes=sizes, learning_rates=lrs, epochs=num_epochs, variants=labels,
                     select_metric=select, held_out=f'{held_out}_{name}')
  _findings(ctx, per_b, best, differences, rows, lrs, form, name, held_out, tolerance, several)


def _protocol(config, options, num_train, sizes, lrs, labels, num_epochs, select, held_out,
              tolerance) -> list[str]:
  name = select.partition('_')[2]
  steps = lambda b: math.ceil(num_epochs * num_train / b)
  budget = ('study.epochs' if options.epochs is not None else
            f'the config\'s train.duration {config.train.duration!r} at its batch size '
            f'{config.train.batch_size}')
  variant_text = '; '.join(f'{label}: ' + (', '.join(f'`{o}`' for o in overrides)
                                           or 'the config as given')
                           for label, overrides in labels.items())
  return [
      f'Model and data: `{config.model.name}` on `{config.data.name}` ({num_train} training '
      f'examples), optimizer `{config.optim.name}` with the config\'s '
      f'`{config.optim.schedule}` schedule. Every trial trains {num_epochs:g} epochs ({budget}), '
      f'the same computation at every B: B = {sizes[-1]} makes {steps(sizes[-1])} updates, '
      f'B = {sizes[0]} makes {steps(sizes[0])}. No run stops early.',
      'Batch sizes: ' + ', '.join(map(str, sizes)) + (
          ' (study.batch_sizes).' if options.batch_sizes else
          f' (study.min_batch_size × {options.batch_size_factor}^k below the training set, '
          'then the whole set).'),
      ('Learning rates: ' + ', '.join(f'{lr:.3g}' for lr in lrs) + ' (study.learning_rates)'
       if options.learning_rates else
       f'Learning rates: {len(lrs)} points evenly spaced in log from {lrs[0]:.3g} to '
       f'{lrs[-1]:.3g} (the config\'s LR {config.optim.learning_rate:g} × '
       f'study.learning_rate_span {tuple(options.learning_rate_span)})')
      + ', the same raw LRs at every B (no LR scaling rule); seeds '
      + ', '.join(map(str, options.seeds)) + ', each setting initialisation and data order.',
      f'Variants: {variant_text}' + (
          ' (study.variants).' if options.variants is not None else
          ' (the model\'s norm option takes none and batch).' if len(labels) > 1 else '.'),
      f'Choice per B: the LR with the best mean final {select} over seeds (the validation '
      'split; ties: the smaller LR). A setting in which a seed diverged (a non-finite training '
      f'loss, or one above train.max_loss = {config.train.max_loss}) cannot be chosen. '
      + (f'Reported beside it: that LR\'s test_{name}, evaluated once at the end, which the '
         'choice never reads.' if held_out == 'test' else
         f'The dataset has no split apart from the one {select} reads: the numbers reported are '
         'those the choice was made on, biased upwards.'),
      f'Good LRs at a B: no seed diverged and the mean {select} within {tolerance} '
      '(study.tolerance) of the best at that B; given as η and as the base LR η/B (Masters & '
      'Luschi\'s units). A batch size is within tolerance of the best B by the same rule.',
      f'Statistics: mean ± sample std over seeds. The best setting with B ≤ '
      f'{options.small_batch_max} (study.small_batch_max) against the best with B > '
      f'{options.small_batch_max}, and each variant against the first at every B, on the '
      f'{held_out} {name} per seed: Welch\'s t, the difference with its 95% interval and p.']


def _tables(ctx, per_b, settings, rows, best, differences, form, select, held_out, tolerance,
            several) -> None:
  name = select.partition('_')[2]
  seeds = len(ctx.options.seeds)
  small = ctx.options.small_batch_max
  lead = lambda r: [r['variant']] if several else []
  header = lambda cells: ['| ' + ' | '.join((['variant'] if several else []) + cells) + ' |',
                          '|' + '---|' * (len(cells) + several)]
  lines = header(['B', 'chosen LR', f'validation{form.header}', f'{held_out}{form.header}',
                  f'{held_out} per seed', 'good LRs', 'good / grid', 'good η/B',
                  'LRs with a divergence'])
  for r in per_b:
    if math.isfinite(r['best_learning_rate']):
      cells = [f'{r["best_learning_rate"]:.3g}' + (' (edge)' if r['best_at_grid_edge'] else ''),
               form.pm(r['validation'], r['validation_std']),
               form.pm(r[held_out], r[f'{held_out}_std']),
               ', '.join(map(form.value, r[f'{held_out}_per_seed'])),
               f'{r["good_lr_min"]:.3g} – {r["good_lr_max"]:.3g}',
               f'{r["good_lrs"]} / {r["grid_points"]}',
               f'{r["good_base_lr_min"]:.2g} – {r["good_base_lr_max"]:.2g}',
               str(r['diverged_lrs'])]
    else:  # every LR had a diverged or unfinished seed
      cells = ['—'] * 5 + [f'0 / {r["grid_points"]}', '—', str(r['diverged_lrs'])]
    lines.append('| ' + ' | '.join(lead(r) + [str(r['batch_size'])] + cells) + ' |')
  ctx.table('batch_sizes', per_b, markdown=lines,
            title=f'Per batch size: the LR chosen on validation (mean ± std over {seeds} '
                  'seed(s))',
            note=f'Good LRs: no seed diverged and mean {select} within {tolerance} of the best '
                 'at that B. (edge): the chosen LR is an end of the grid. Every (B, LR): '
                 '`settings.csv`; every run: `trials.csv`.')
  ctx.table('settings', settings)
  ctx.table('trials', rows)

  lines = header(['best B', 'its LR', f'validation{form.header}', f'{held_out}{form.header}',
                  f'B within {tolerance}', f'best B ≤ {small} ({held_out})',
                  f'best B > {small} ({held_out})',
                  f'small − large{form.unit} [95% CI]', 'Welch p', 'seeds'])
  for r in best:
    if r['best_batch_size'] is None:
      continue
    compared = 'difference' in r
    lines.append('| ' + ' | '.join(lead(r) + [
        str(r['best_batch_size']), f'{r["best_learning_rate"]:.3g}',
        form.pm(r['validation'], r['validation_std']), form.pm(r[held_out], r[f'{held_out}_std']),
        ', '.join(map(str, r['batch_sizes_within_tolerance'])),
        f'{r["best_small_batch"]} ({form.value(r["small"])})' if compared else '—',
        f'{r["best_large_batch"]} ({form.value(r["large"])})' if compared else '—',
        form.difference(r) if compared else '—',
        f'{r["p"]:.2g}' if compared and math.isfinite(r['p']) else '—',
        str(r['seeds'])]) + ' |')
  ctx.table('best_batch_size', best, title='The best batch size, and small against large',
            markdown=lines)
  if differences:
    lines = [f'| comparison | B | {best[0]["variant"]}{form.header} | other{form.header} | '
             f'difference{form.unit} [95% CI] | Welch p |', '|---|---:|---:|---:|---|---:|']
    for d in differences:
      lines.append(f'| {d["comparison"]} | {d["batch_size"]} | {form.value(d["first"])} | '
                   f'{form.value(d["other"])} | {form.difference(d)} | '
                   + (f'{d["p"]:.2g}' if math.isfinite(d['p']) else '—') + ' |')
    ctx.table('variants', differences, markdown=lines,
              title=f'Variants against each other at every B ({held_out} {name} at each one\'s '
                    'chosen LR, Welch over seeds)')


def _figures(ctx, per_b, form, name, held_out, num_epochs, select, tolerance, several) -> None:
  from mbx.figures import schedules, sharpness  # pylint: disable=import-outside-toplevel
  scale = 100.0 if form.percent else 1.0
  chosen = [r for r in per_b if math.isfinite(r['best_learning_rate'])]
  plotted = [{'variant': r['variant'], 'batch_size': r['batch_size'],
              **{k: r[k] * scale for k in ('validation', 'test')},
              **{k: r[k] * scale for k in ('validation_std', 'test_std') if math.isfinite(r[k])}}
             for r in chosen]
  metrics = [('validation', f'validation {name}{form.header}')]
  if held_out == 'test':
    metrics.append(('test', f'test {name}{form.header}'))
  seeds = len(ctx.options.seeds)
  sharpness.versus_batch_size(
      plotted, ctx.figure(f'{name}_vs_batch_size', f'{name} at the LR chosen per B, mean ± std '
                          f'over {seeds} seed(s)'),
      metrics=metrics, series='variant' if several else None,
      title=f'{ctx.config.name}: LR chosen per B on validation, {num_epochs:g} epochs each')
  schedules.learning_rate_ranges(
      chosen, ctx.figure('good_learning_rates', 'the good LRs per B (band) and the chosen one '
                         '(dots), as η and as the base LR η/B'),
      series='variant' if several else None,
      title=f'LRs whose mean {select} is within {tolerance} of the best at that B, no divergence')


def _findings(ctx, per_b, best, differences, rows, lrs, form, name, held_out, tolerance,
              several) -> None:
  """Per variant: the best B and those within tolerance, small against large, the good LRs,
  grid edges and divergences; then the variants against each other."""
  small = ctx.options.small_batch_max
  for r in best:
    variant = r['variant']
    prefix = f'{variant}: ' if several else ''
    if r['best_batch_size'] is None:
      ctx.findings.append(f'{prefix}every setting had a diverged or unfinished seed.')
      continue
    within = r['batch_sizes_within_tolerance']
    ctx.findings.append(
        f'{prefix}the best batch size by mean validation {name} is B = {r["best_batch_size"]} '
        f'(LR {r["best_learning_rate"]:.3g}): validation '
        f'{form.pm(r["validation"], r["validation_std"], "%")}'
        + (f', test {form.pm(r["test"], r["test_std"], "%")}' if held_out == 'test' else '')
        + f' (mean ± std over n = {r["seeds"]} seed(s)). Within {tolerance} of it: B = '
        + ', '.join(map(str, within)) + f'; the largest is {within[-1]}.')
    if 'difference' in r:
      test = (f', Welch p = {r["p"]:.2g}' if math.isfinite(r['p']) else
              '; no test: fewer than 2 seeds a side, or no spread')
      ctx.findings.append(
          f'{prefix}the best setting with B ≤ {small} (B = {r["best_small_batch"]}, {held_out} '
          f'{form.pm(r["small"], math.nan, "%")}) against the best with B > {small} (B = '
          f'{r["best_large_batch"]}, {form.pm(r["large"], math.nan, "%")}): '
          f'{form.difference(r, "95% CI ")}{form.unit} (n = {r["n_small"]} and '
          f'{r["n_large"]} seeds{test}).')
    mine = [b for b in per_b if b['variant'] == variant]
    chosen = [b for b in mine if math.isfinite(b['best_learning_rate'])]
    first, last = chosen[0], chosen[-1]
    ctx.findings.append(
        f'{prefix}good LRs (of {len(lrs)}) per B: '
        + runs_of([(b['batch_size'], b['good_lrs']) for b in mine])
        + f'. As base LRs η/B the good range is {first["good_base_lr_min"]:.2g} – '
        f'{first["good_base_lr_max"]:.2g} at B = {first["batch_size"]} and '
        f'{last["good_base_lr_min"]:.2g} – {last["good_base_lr_max"]:.2g} at B = '
        f'{last["batch_size"]}.')
    edges = [b['batch_size'] for b in chosen if b['best_at_grid_edge']]
    runs = [x for x in rows if x['variant'] == variant]
    diverged = sorted({x['learning_rate'] for x in runs if x['diverged']})
    ctx.findings.append(
        (f'{prefix}the chosen LR is an end of the grid ({lrs[0]:.3g} … {lrs[-1]:.3g}) at B = '
         + ', '.join(map(str, edges)) + ': the optimum there may lie outside it. '
         if edges else f'{prefix}no chosen LR is an end of the grid ({lrs[0]:.3g} … '
         f'{lrs[-1]:.3g}). ')
        + f'{sum(x["diverged"] for x in runs)} of {len(runs)} runs diverged'
        + (' (at LR ' + ', '.join(f'{lr:.3g}' for lr in diverged) + ').' if diverged else '.'))
  for comparison in dict.fromkeys(d['comparison'] for d in differences):
    mine = [d for d in differences if d['comparison'] == comparison]
    low = min(mine, key=lambda d: d['difference'])
    high = max(mine, key=lambda d: d['difference'])
    significant = [str(d['batch_size']) for d in mine if d['p'] < 0.05]
    tested = any(math.isfinite(d['p']) for d in mine)
    ctx.findings.append(
        f'{comparison}, {held_out} {name} at each one\'s chosen LR: from '
        f'{form.difference(low)}{form.unit} (B = {low["batch_size"]}) to '
        f'{form.difference(high)}{form.unit} (B = {high["batch_size"]}); '
        + (f'Welch p < 0.05 at B = {", ".join(significant) or "none"} ({len(mine)} tests, '
           'not corrected for multiplicity' if tested else 'no test (fewer than 2 seeds a side')
        + f'; n = {mine[0]["n_first"]} and {mine[0]["n_other"]} seeds).')
  seeds = len(ctx.options.seeds)
  if seeds == 1:
    ctx.findings.append('With 1 seed per setting every number is a single run: nothing here is '
                        'tested against the seed-to-seed spread.')
  elif seeds < 3:
    ctx.findings.append(
        f'With {seeds} seeds per setting a Welch test has at most {2 * seeds - 2} degrees of '
        'freedom: its interval is wide and its p rough, and differences inside the seed spread '
        'are unresolved.')
