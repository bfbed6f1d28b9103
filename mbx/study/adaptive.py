"""Does adapting the batch size during training beat the best fixed batch?

On one target (the config's train.target_metric / target_value), every run stopped there:
fixed batches on the ladder B0 × factor^k ≤ B_max, each at its own learning rate tuned on a seed
no reported run uses (the fewest steps to the target over a grid around the config's LR moved
by the optimizer's declared batch rule: square root for Adam-type, linear for SGD-type), and the batch policies of
`train.batch_policy` (docs/adaptive_batch.md), which start at B0 with B0's tuned LR: batch-size
warmup (Merrill et al. 2025), AdaScale (Johnson et al. 2020; at B* with B0's LR scaled by its
gain), the noise-scale policy (McCandlish et al. 2018; B = B_simple on the ladder) and goodput
(Pollux, Qiao et al. 2021). The best fixed batch B* is the rung nearest the critical batch
size B_crit = E_min / S_min of McCandlish's fit to the tuned S(B). Per policy and seed: steps,
examples and wall time to the target; each against fixed B* paired by seed (a seed sets the
initialisation and data order of every run): the geometric-mean ratio with a 95% t-interval,
the paired t-test and the exact Wilcoxon signed-rank test.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mbx import config as config_lib
from mbx import registry
from mbx.optim import batch_rules, declared
from mbx.study import context

TITLE = ('Adaptive batch size: warmup, AdaScale, noise scale and goodput against fixed batches '
         '({name})')
POLICIES = tuple(p for p in config_lib.BATCH_POLICIES if p != 'none')
AXES = (('steps_to_target', 'steps'), ('examples_to_target', 'examples'),
        ('wall_time_to_target', 'wall time (s)'))
DEFAULT_MAX_FACTOR = 64   # B_max defaults to the largest rung <= 64 B0 and the training set
DEFAULT_EVAL_GROWTH = 1.05


@dataclasses.dataclass(frozen=True)
class Options:
  policies: tuple[str, ...] = POLICIES  # the train.batch_policy values compared
  base_batch_size: int | None = None           # B0; None: the config's train.batch_size
  max_batch_size: int | None = None            # B_max; None: the config's train.max_batch_size,
                                               # else the largest rung <= 64 B0 and the
                                               # training set
  best_batch_size: int | None = None           # B*; None: the rung nearest the fitted B_crit
  learning_rate_factors: tuple[float, ...] = (0.5, 1.0, 2.0)  # × the config's LR moved to B
  lr_scaling_power: float | None = None        # LR(B) = LR (B / B_lr)^power; None: the
                                               # optimizer's declared rule (sqrt 0.5, linear 1)
  tuning_seed: int = 100                       # tunes the LR per B; no reported run uses it
  seeds: tuple[int, ...] = (0, 1, 2)  # train.seed of each reported run (initialisation and data order)
  fixed_grid_seeds: bool = True                # every fixed rung at every seed (the frontier);
                                               # False: only B0 and B*
  target_metric: str | None = None             # None: the config's train.target_metric
  target_value: float | None = None            # None: the config's train.target_value
  budget: str | None = None                    # per run; None: the config's train.duration
                                               # (steps become examples at B0)
  eval_growth: float | None = None             # geometric evaluations; None: the config's,
                                               # else 1.05


QUICK = dict(seeds=(0, 1), learning_rate_factors=(1.0,), fixed_grid_seeds=False)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The study's grid, derived from the config and the options (`plan`)."""
  base_batch_size: int
  max_batch_size: int
  ladder: tuple[int, ...]
  reference_batch_size: int       # the batch the config's LR is taken to be tuned at
  lr_power: float
  target_metric: str
  target_value: float
  budget: str
  eval_growth: float
  num_train: int


# ------------------------------------------------------------------ checks
def _target(config: config_lib.Config, options: Options) -> tuple[str, float]:
  metric = options.target_metric or config.train.target_metric
  value = options.target_value if options.target_value is not None else config.train.target_value
  if metric is None or value is None:
    raise config_lib.ConfigError(
        f'study.target_metric={metric!r}, study.target_value={value!r}: the study needs a '
        'target; set train.target_metric and train.target_value in the config or give both, '
        'e.g. study.target_metric=eval_accuracy study.target_value=0.85')
  metrics = context.task_metrics(config)
  prefix, _, name = metric.partition('_')
  if prefix != 'eval' or name not in metrics:
    field = 'study.target_metric' if options.target_metric else 'train.target_metric'
    raise config_lib.ConfigError(
        f'{field}={metric!r}: not an evaluation metric of task {config.task.name!r}; '
        f'allowed: {", ".join(f"eval_{m}" for m in metrics)}')
  return metric, float(value)


def _check_policies(policies: Sequence[str]) -> None:
  if not policies:
    raise config_lib.ConfigError(f'study.policies=(): give at least one of {", ".join(POLICIES)}')
  for policy in policies:
    if policy not in POLICIES:
      raise config_lib.ConfigError(f'study.policies: {policy!r} is not a batch policy; '
                                   f'{registry.suggest(str(policy), POLICIES)}')
  if len(set(policies)) != len(policies):
    raise config_lib.ConfigError(f'study.policies={tuple(policies)}: a policy is listed twice')


def plan(config: config_lib.Config, options: Options, num_train: int) -> Plan:
  """B0, B_max, the ladder, the LR rule, the target and the budget; ConfigError (one line,
  naming the study.<field>) for any the config cannot answer."""
  metric, value = _target(config, options)
  factor = config.train.batch_policy_factor
  b0 = options.base_batch_size or config.train.batch_size
  if not (isinstance(b0, int) and 1 <= b0 <= num_train // factor):
    raise config_lib.ConfigError(
        f'study.base_batch_size={b0}: B0 must be an integer in 1 … {num_train // factor} (the '
        f'training set has {num_train} examples and the ladder needs a rung of {factor} B0)')
  if options.max_batch_size is not None:
    b_max, field = options.max_batch_size, 'study.max_batch_size'
  elif config.train.max_batch_size is not None:
    b_max, field = config.train.max_batch_size, 'train.max_batch_size'
  else:
    b_max, field = min(DEFAULT_MAX_FACTOR * b0, num_train), None
  if field and b_max > num_train:
    raise config_lib.ConfigError(f'{field}={b_max}: above the training set ({num_train} '
                                 'examples); B_max must fit in one epoch')
  ladder = config_lib.batch_ladder(b0, b_max, factor)
  if len(ladder) < 2:
    raise config_lib.ConfigError(f'{field or "study.max_batch_size"}={b_max}: the ladder '
                                 f'{b0} × {factor}^k needs at least two rungs (B_max >= '
                                 f'{b0 * factor})')
  if options.best_batch_size is not None and options.best_batch_size not in ladder:
    raise config_lib.ConfigError(f'study.best_batch_size={options.best_batch_size}: not on the '
                                 f'ladder {list(ladder)}')
  context.check_seeds(options.seeds, options.tuning_seed)
  if not options.learning_rate_factors or min(options.learning_rate_factors) <= 0:
    raise config_lib.ConfigError(f'study.learning_rate_factors={options.learning_rate_factors}: '
                                 'give at least one positive factor')
  budget = options.budget or config.train.duration
  duration = config_lib.parse_duration(budget, 'study.budget' if options.budget else
                                       'train.duration')
  if duration.unit == 'steps':  # the policies change B: a budget in data, the same for all
    budget = f'{round(duration.amount * b0)} examples'
  growth = options.eval_growth or config.train.eval_growth or DEFAULT_EVAL_GROWTH
  if growth <= 1:
    raise config_lib.ConfigError(f'study.eval_growth={growth}: must be > 1')
  power = options.lr_scaling_power
  if power is None:
    rule = declared.of_name(config.optim.name).batch_rule
    if rule is None:
      raise config_lib.ConfigError(str(declared.undeclared(
          config.optim.name, 'batch_rule', 'the adaptive study (or set study.lr_scaling_power)')))
    power = batch_rules.lr_power(rule, 'batch_rule')
  return Plan(base_batch_size=b0, max_batch_size=ladder[-1], ladder=ladder,
              reference_batch_size=config.optim.base_batch_size or config.train.batch_size,
              lr_power=float(power), target_metric=metric, target_value=value, budget=budget,
              eval_growth=float(growth), num_train=num_train)


def check(config: config_lib.Config, options: Options) -> None:
  _check_policies(options.policies)
  _target(config, options)
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  workload = resolve(config)
  grid = plan(config, options, workload.dataset.num_examples(workload.train_split))
  for label, trial in example_trials(config, options, grid).items():
    try:
      config_lib.validate(trial)
    except config_lib.ConfigError as error:
      raise config_lib.ConfigError(f'{label}: {error}') from None


# ------------------------------------------------------------------ the runs
def learning_rates(config: config_lib.Config, options: Options, grid: Plan,
                   batch_size: int) -> tuple[float, ...]:
  """The LR grid at B: the config's LR moved from its batch to B by (B / B_lr)^power, times
  each factor."""
  centre = config.optim.learning_rate * (batch_size / grid.reference_batch_size) ** grid.lr_power
  return tuple(float(f'{centre * f:.6g}') for f in sorted(options.learning_rate_factors))


def trial_config(config: config_lib.Config, grid: Plan, *, batch_size: int,
                 learning_rate: float, seed: int, policy: str = 'none',
                 base_batch_size: int | None = None) -> config_lib.Config:
  """One run: the user's config at (B, LR, seed, policy), stopped at the target."""
  ladder = (dict(min_batch_size=grid.base_batch_size, max_batch_size=grid.max_batch_size)
            if policy not in ('none', 'adascale') else
            dict(min_batch_size=None, max_batch_size=None))
  train = dataclasses.replace(
      config.train, batch_size=batch_size, seed=seed, data_seed=None, duration=grid.budget,
      eval_growth=grid.eval_growth, noise_scale=True, target_metric=grid.target_metric,
      target_value=grid.target_value, stop_at_target=True, checkpoint_every=None,
      batch_size_milestones=(), batch_policy=policy, **ladder)
  optim = dataclasses.replace(config.optim, learning_rate=float(learning_rate),
                              lr_scaling='none', base_batch_size=base_batch_size or batch_size)
  return dataclasses.replace(config, train=train, optim=optim)


def policy_configs(config, grid: Plan, policies: Sequence[str], *, seed: int, lr0: float,
                   best: int) -> dict[str, config_lib.Config]:
  """Each policy from B0 at B0's LR; AdaScale at B* with B0's LR, scaled by its gain."""
  return {p: trial_config(config, grid, batch_size=best if p == 'adascale' else
                          grid.base_batch_size, learning_rate=lr0, seed=seed, policy=p,
                          base_batch_size=grid.base_batch_size) for p in policies}


def example_trials(config, options: Options, grid: Plan) -> dict[str, config_lib.Config]:
  """One config of each kind the study trains (checked before anything is written)."""
  lr0 = config.optim.learning_rate
  out = {f'fixed B = {b}': trial_config(config, grid, batch_size=b, learning_rate=lr0,
                                        seed=options.seeds[0])
         for b in (grid.ladder[0], grid.ladder[-1])}
  out.update(policy_configs(config, grid, options.policies, seed=options.seeds[0], lr0=lr0,
                            best=options.best_batch_size or grid.ladder[-1]))
  return out


# ------------------------------------------------------------------ decisions
def choose_learning_rates(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
  """Per batch size, the LR of the tuning runs with the fewest steps to the target (ties: the
  smaller LR), and whether it sits at an end of that B's grid. Batch sizes where no LR
  reached the target are left out."""
  chosen = {}
  for b in sorted({int(r['batch_size']) for r in rows}):
    group = [r for r in rows if int(r['batch_size']) == b]
    lrs = sorted(float(r['learning_rate']) for r in group)
    reached = [r for r in group if _finite(r.get('steps_to_target'))]
    if not reached:
      continue
    best = min(reached, key=lambda r: (float(r['steps_to_target']), float(r['learning_rate'])))
    lr = float(best['learning_rate'])
    chosen[b] = {'learning_rate': lr, 'steps_to_target': float(best['steps_to_target']),
                 'at_edge': len(lrs) > 1 and lr in (lrs[0], lrs[-1])}
  return chosen


def nearest_rung(b_crit: float, rungs: Sequence[int]) -> int:
  """The rung nearest b_crit in log2 (ties: the smaller)."""
  return min(sorted(rungs), key=lambda b: abs(math.log2(b) - math.log2(b_crit)))


def _finite(value) -> bool:
  try:
    return value is not None and math.isfinite(float(value))
  except (TypeError, ValueError):
    return False


def _float(value) -> float:
  return float(value) if _finite(value) else math.nan


def run_row(label: str, run, metric: str) -> dict[str, Any]:
  """One run's outcome. Wall time to the target leaves out compile_time (compilation and a
  policy's own decisions): the runs of one process share compiled steps, so only the first
  run of a shape would pay for them."""
  s = run.status
  name = metric.partition('_')[2]
  logs = run.train_metrics
  reached = 'steps_to_target' in s
  upto = logs[logs['step'] <= s['steps_to_target']] if reached and 'step' in logs else logs
  b_simple = upto['b_simple'].dropna() if 'b_simple' in upto.columns else []
  batches = logs['batch_size'] if 'batch_size' in logs else None
  wall = s.get('wall_time_to_target')
  return {'policy': label, 'seed': run.config.train.seed,
          'batch_size': run.config.train.batch_size,
          'learning_rate': run.config.optim.learning_rate, 'status': s.get('status'),
          'reached': reached, 'steps_to_target': _float(s.get('steps_to_target')),
          'examples_to_target': _float(s.get('examples_to_target')),
          'wall_time_to_target': (wall - s.get('compile_time', 0.0)) if _finite(wall)
                                 else math.nan,
          'compile_time': _float(s.get('compile_time')),
          'validation': _float(s.get(f'eval_{name}')), 'test': _float(s.get(f'test_{name}')),
          'largest_batch_size': int(batches.max()) if batches is not None and len(batches)
                                else run.config.train.batch_size,
          'final_batch_size': int(batches.iloc[-1]) if batches is not None and len(batches)
                              else run.config.train.batch_size,
          'b_simple_median': float(b_simple.median()) if len(b_simple) else math.nan,
          'trial': run.workdir.name}


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per policy: seeds run and reaching the target; mean and std (n − 1) of steps, examples
  and wall time over the seeds that reached it, of the rest over all seeds."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  out = []
  for label in dict.fromkeys(r['policy'] for r in rows):
    group = [r for r in rows if r['policy'] == label]
    reached = [r for r in group if r['reached']]
    entry = {'policy': label, 'n': len(group), 'reached': len(reached)}
    for column in ('steps_to_target', 'examples_to_target', 'wall_time_to_target',
                   'largest_batch_size', 'b_simple_median', 'validation', 'test'):
      source = reached if column.endswith('target') else group
      values = [float(r[column]) for r in source if _finite(r[column])]
      mean, std = statistics.mean_std(values)
      entry[f'{column}_mean'], entry[f'{column}_std'] = mean, std if len(values) > 1 else math.nan
    seconds = [r['wall_time_to_target'] / r['steps_to_target'] for r in reached
               if _finite(r['wall_time_to_target']) and r['steps_to_target'] > 0]
    entry['seconds_per_step_mean'] = statistics.mean_std(seconds)[0]
    out.append(entry)
  return out


def paired_rows(rows: Sequence[Mapping[str, Any]], reference: str) -> list[dict[str, Any]]:
  """Every other policy against `reference`, paired by seed, per axis: the geometric-mean
  ratio other / reference over the seeds where both reached the target."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  by_seed = {r['seed']: r for r in rows if r['policy'] == reference}
  out = []
  for label in dict.fromkeys(r['policy'] for r in rows):
    if label == reference:
      continue
    group = [r for r in rows if r['policy'] == label and r['seed'] in by_seed]
    for column, axis in AXES:
      result = statistics.paired([by_seed[r['seed']][column] for r in group],
                                 [r[column] for r in group], 'ratio')
      out.append({'policy': label, 'against': reference, 'axis': axis, 'column': column,
                  **result})
  return out


def pm(mean: float, std: float, digits: int = 3) -> str:
  if not _finite(mean):
    return '—'
  return f'{mean:.{digits}g}' + (f' ± {std:.2g}' if _finite(std) and std > 0 else
                                 ' ± 0' if _finite(std) else '')


def findings(rows, summary, paired, reference: str, base: str, grid: Plan) -> list[str]:
  """Sentences computed from the tables, each with its statistics."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  lines = []
  entries = {e['policy']: e for e in summary}
  for label in entries:
    if label == reference:
      continue
    parts = []
    for column, axis in AXES:
      s = next(p for p in paired if p['policy'] == label and p['column'] == column)
      if s['n']:
        parts.append(f'{axis.split(" (")[0]} {statistics.interval_text(s)}'
                     + (f' (paired t p = {s["p_t"]:.2g})' if _finite(s['p_t']) else ''))
    if parts:
      n = max(p['n'] for p in paired if p['policy'] == label)
      lines.append(f'{label} ÷ {reference}, paired by seed (n = {n}; geometric mean [95% CI]): '
                   + '; '.join(parts) + '.')
  complete = [e for e in summary if e['reached'] == e['n']]
  for column, axis in AXES:
    if not complete:
      break
    winner = min(complete, key=lambda e: e[f'{column}_mean'])
    least = 'Least' if column.startswith('wall') else 'Fewest'
    value = pm(winner[f'{column}_mean'], winner[f'{column}_std'])
    lines.append(f'{least} {axis.split(" (")[0]} to the target of {base}, {reference} and the '
                 f'policies (mean over seeds, every seed reached): {winner["policy"]}, {value}'
                 f'{" s" if column.startswith("wall") else ""} (mean ± std, n = {winner["n"]}).')
  for e in summary:
    if e['reached'] < e['n']:
      lines.append(f'{e["policy"]} missed the target in {e["n"] - e["reached"]} of {e["n"]} '
                   'seeds within the budget.')
  base_rows = {r['seed']: r for r in rows if r['policy'] == base}
  for label in entries:
    group = [r for r in rows if r['policy'] == label]
    if label in (base, reference) or not group or any(
        r['largest_batch_size'] != grid.base_batch_size or r['batch_size'] !=
        grid.base_batch_size for r in group):
      continue
    same = all(r['seed'] in base_rows and r['steps_to_target'] == base_rows[r['seed']][
        'steps_to_target'] and r['examples_to_target'] == base_rows[r['seed']][
            'examples_to_target'] for r in group)
    lines.append(f'{label} never left B0 = {grid.base_batch_size} in any of {len(group)} seeds'
                 + (f'; its steps and examples to the target equal {base}\'s in every seed.'
                    if same else '.'))
  return lines


# ------------------------------------------------------------------ the study
def run(ctx) -> None:
  from mbx.figures import adaptive_batch as figures  # pylint: disable=import-outside-toplevel
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  from mbx.sweep.critical_batch import fit_pareto  # pylint: disable=import-outside-toplevel
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  config, options = ctx.config, ctx.options
  workload = resolve(config)
  grid = plan(config, options, workload.dataset.num_examples(workload.train_split))
  b0, ladder, metric = grid.base_batch_size, grid.ladder, grid.target_metric
  better = workload.task.metrics[metric.partition('_')[2]]
  direction = '≥' if better == 'max' else '≤'
  seeds = options.seeds
  ctx.protocol += [
      f'Model and data: `{config.model.name}` on `{config.data.name}` ({grid.num_train} '
      f'training examples), optimizer `{config.optim.name}` with the config\'s schedule '
      f'(`{config.optim.schedule}`). Target: {metric} {direction} {grid.target_value:g} on the '
      f'evaluation split; every run stops at the first evaluation that reaches it (evaluations '
      f'at the config\'s train.eval_every and at steps ⌈{grid.eval_growth:g}^i⌉); budget '
      f'{grid.budget} per run; the test split is evaluated once, at the stop.',
      f'Batches: B0 = {b0} (study.base_batch_size; default the config\'s batch size), the ladder '
      f'B0 × {config.train.batch_policy_factor}^k up to B_max = {grid.max_batch_size} '
      f'(study.max_batch_size; default the config\'s train.max_batch_size, else the largest '
      f'rung ≤ {DEFAULT_MAX_FACTOR} B0 and the training set): {list(ladder)}.',
      f'LR tuning: at every rung B, LR = {config.optim.learning_rate:g} × (B / '
      f'{grid.reference_batch_size})^{grid.lr_power:g} × {list(options.learning_rate_factors)} '
      f'(study.learning_rate_factors, study.lr_scaling_power), seed {options.tuning_seed}; kept: '
      'the LR with the fewest steps to the target (ties: the smaller). Its steps S(B) give '
      'McCandlish\'s fit S = S_min + E_min / B (least squares on log S, 90% residual-bootstrap '
      'interval); B* is the rung nearest B_crit = E_min / S_min in log2 (study.best_batch_size '
      'overrides).',
      f'Compared, seeds {list(seeds)} (a seed sets the initialisation and the data order of '
      f'every run): fixed B0 and fixed B* at their tuned LRs'
      + (', and every other rung at its tuned LR (the frontier)' if options.fixed_grid_seeds
         else '') + '; the policies ' + ', '.join(options.policies) + ' from B0 at B0\'s '
      f'tuned LR on the ladder {b0} … {grid.max_batch_size} (AdaScale: at B* with B0\'s LR, '
      'base batch B0, the LR scaled by its gain), with the config\'s train.batch_policy_lr '
      f'(`{config.train.batch_policy_lr}`) and decisions at its train.batch_policy_every or '
      f'log steps (`{config.train.batch_policy_every or config.train.log_every}`). Every run '
      'measures the noise scale (train.noise_scale) and has no fixed LR scaling '
      '(optim.lr_scaling = none).',
      'Per policy: steps, examples and wall time to the target, mean ± std (n − 1) over the '
      'seeds that reached it; wall time is the loop\'s to the stop less compile_time '
      '(compilation and the time a policy spends deciding: goodput\'s timings, branch tests), '
      'on a machine that may be shared. Each against fixed B*, paired by seed: the '
      'geometric-mean ratio with a 95% t-interval, the paired t-test on log ratios and the '
      'exact Wilcoxon signed-rank test.']

  # ---- the LR of every rung, tuned on a seed no reported run uses
  grids = {b: learning_rates(config, options, grid, b) for b in ladder}
  tuning = ctx.train({(b, lr): trial_config(config, grid, batch_size=b, learning_rate=lr,
                                            seed=options.tuning_seed)
                      for b in ladder for lr in grids[b]}, 'LR tuning')
  tuning_rows = [run_row(f'B = {b}', tuning[(b, lr)], metric) for b in ladder
                 for lr in grids[b]]
  chosen = choose_learning_rates(tuning_rows)
  for r in tuning_rows:
    r['chosen'] = chosen.get(r['batch_size'], {}).get('learning_rate') == r['learning_rate']
  if b0 not in chosen:
    raise config_lib.ConfigError(
        f'B0 = {b0}: no learning rate of {grids[b0]} reached {metric} {direction} '
        f'{grid.target_value:g} within {grid.budget}; ease study.target_value, raise '
        'study.budget or widen study.learning_rate_factors')
  reached = sorted(chosen)
  fit = None
  if len(reached) >= 3:
    fit = fit_pareto(reached, [chosen[b]['steps_to_target'] for b in reached])
  if options.best_batch_size is not None:
    best, how = options.best_batch_size, 'study.best_batch_size'
  elif fit is not None:
    best, how = nearest_rung(fit.b_crit, reached), 'the rung nearest B_crit'
  else:
    raise config_lib.ConfigError(
        f'LR tuning: only {len(reached)} rung(s) ({reached}) reached the target; the fit for '
        'B_crit needs 3; give study.best_batch_size or ease study.target_value')
  if best not in chosen:
    raise config_lib.ConfigError(f'study.best_batch_size={best}: no LR reached the target '
                                 'there in the tuning runs')
  ctx.results.update(base_batch_size=b0, best_batch_size=best, best_batch_size_rule=how,
                     learning_rates={b: c['learning_rate'] for b, c in chosen.items()},
                     ladder=list(ladder), budget=grid.budget, target_metric=metric,
                     target_value=grid.target_value)
  if fit is not None:
    ctx.results['fit'] = {'s_min': fit.s_min, 'e_min': fit.e_min, 'b_crit': fit.b_crit,
                          'b_crit_ci': list(fit.b_crit_ci), 'confidence': fit.confidence,
                          'num_points': fit.num_points, 'rms_log_residual': fit.rms_log_residual}
  edges = [b for b, c in chosen.items() if c['at_edge']]
  ctx.table('tuning', [{k: r[k] for k in ('batch_size', 'learning_rate', 'status', 'reached',
                                          'steps_to_target', 'examples_to_target', 'chosen')}
                       for r in tuning_rows])

  # ---- fixed batches and the policies, per seed
  base, reference = f'fixed B0 = {b0}', f'fixed B* = {best}'
  fixed_sizes = [b for b in ladder if b in chosen and (options.fixed_grid_seeds
                                                        or b in (b0, best))]
  fixed = ctx.train({(b, s): trial_config(config, grid, batch_size=b,
                                          learning_rate=chosen[b]['learning_rate'], seed=s)
                     for b in fixed_sizes for s in seeds}, 'fixed batches')
  lr0 = chosen[b0]['learning_rate']
  policies = ctx.train({(p, s): c for s in seeds for p, c in policy_configs(
      config, grid, options.policies, seed=s, lr0=lr0, best=best).items()}, 'batch policies')
  rows = [run_row(base, fixed[(b0, s)], metric) for s in seeds]
  rows += [run_row(reference, fixed[(best, s)], metric) for s in seeds]
  rows += [run_row(p, policies[(p, s)], metric) for p in options.policies for s in seeds]
  fixed_rows = [run_row(f'fixed B = {b}', fixed[(b, s)], metric)
                for b in fixed_sizes for s in seeds]

  with ctx.timed('analysis'):
    summary = summarize(rows)
    paired = paired_rows(rows, reference)
    fixed_summary = {e['policy']: e for e in summarize(fixed_rows)}
    ladder_rows = []
    for b in ladder:
      entry = fixed_summary.get(f'fixed B = {b}', {})
      ladder_rows.append({
          'batch_size': b, 'learning_rate': chosen.get(b, {}).get('learning_rate'),
          'lr_at_grid_edge': chosen.get(b, {}).get('at_edge'),
          'tuning_steps': chosen.get(b, {}).get('steps_to_target', math.nan),
          'fit_steps': float(fit.steps(b)) if fit is not None else math.nan,
          'seeds': entry.get('n', 0), 'reached': entry.get('reached', 0),
          **{f'{c}_{k}': entry.get(f'{c}_{k}', math.nan) for c in
             ('steps_to_target', 'examples_to_target', 'wall_time_to_target')
             for k in ('mean', 'std')}})
    ctx.table('fixed_batches', ladder_rows, title='Fixed batches: the LR tuned per B and the '
              'steps-examples frontier', markdown=_ladder_markdown(ladder_rows, b0, best, seeds),
              note=(f'LR tuned on seed {options.tuning_seed}; "tuning S" is that run\'s steps, '
                    '"fit S" McCandlish\'s fit to them'
                    + (f'; B_crit = {fit.b_crit:.3g} [{fit.b_crit_ci[0]:.3g}, '
                       f'{fit.b_crit_ci[1]:.3g}] ({fit.confidence:.0%} bootstrap)' if fit else '')
                    + f'; B* = {best} ({how}).'
                    + (f' The best LR is at an end of its grid at B = '
                       f'{", ".join(map(str, edges))}: widen study.learning_rate_factors.'
                       if edges else '')))
    ctx.table('policies', summary, title=f'Policies and fixed batches (seeds {list(seeds)})',
              markdown=_summary_markdown(summary, metric),
              note='Steps, examples and wall time: mean ± std over the seeds that reached the '
                   'target; the rest over all seeds. B_simple: the median of each run\'s logged '
                   'noise scale up to the stop. Per-run rows: `runs.csv`.')
    ctx.table('runs', rows + [r for r in fixed_rows if r['batch_size'] not in (b0, best)])
    ctx.table('paired', paired, title=f'Against {reference}, paired by seed',
              markdown=_paired_markdown(paired))
    first = seeds[0]
    shown = {base: fixed[(b0, first)], reference: fixed[(best, first)],
             **{p: policies[(p, first)] for p in options.policies}}
    figures.decisions(shown, ctx.figure('decisions', f'What each policy decided, seed {first}: '
                                        'B, LR, B_simple and the AdaScale gain against '
                                        'examples seen'))
    figures.metric_curves(shown, ctx.figure('metric', f'{metric} against steps and examples, '
                                            f'seed {first}; dotted: the target'),
                          metric=metric, target=grid.target_value)
    figures.frontier(fixed_rows, rows, ctx.figure(
        'frontier', 'Steps against examples to the target: fixed batches (small dots: seeds; '
        'labels: B) with the fit from the tuning runs, and each policy\'s mean ± std'),
        fit=fit, title=f'{config.name}: {metric} {direction} {grid.target_value:g}')

  if fit is not None:
    ctx.findings.append(
        f'Fixed batches, LR tuned per B on seed {options.tuning_seed}: McCandlish\'s fit to S(B) '
        f'at {fit.num_points} batch sizes gives B_crit = {fit.b_crit:.3g} '
        f'[{fit.b_crit_ci[0]:.3g}, {fit.b_crit_ci[1]:.3g}] ({fit.confidence:.0%} bootstrap), '
        f'S_min = {fit.s_min:.3g}, E_min = {fit.e_min:.3g}; B* = {best} ({how}).')
  else:
    ctx.findings.append(f'B* = {best} ({how}).')
  ctx.findings += findings(rows, summary, paired, reference, base, grid)
  b_simple = [r['b_simple_median'] for r in rows if r['policy'] == base
              and _finite(r['b_simple_median'])]
  mean, std = statistics.mean_std(b_simple)
  if b_simple and fit is not None and mean > 0:
    ctx.findings.append(f'B_simple (median of each {base} run\'s log up to the stop): '
                        f'{pm(mean, std if len(b_simple) > 1 else math.nan)} over '
                        f'{len(b_simple)} seed(s) (mean ± std), B_crit / B_simple = '
                        f'{fit.b_crit / mean:.2g}.')
  if len(seeds) < 5:
    ctx.findings.append(f'Only {len(seeds)} seeds: with n < 5 pairs no two-sided exact '
                        f'Wilcoxon p falls below {2 / 2 ** len(seeds):.3g}; read the intervals.')


def _ladder_markdown(rows, b0: int, best: int, seeds) -> list[str]:
  lines = [f'| B | LR | tuning S | fit S | reached | steps (seeds {list(seeds)}) | examples | '
           'wall time (s) |', '|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    tag = ' (B0)' if r['batch_size'] == b0 else ' (B*)' if r['batch_size'] == best else ''
    lr = '—' if r['learning_rate'] is None else f'{r["learning_rate"]:.3g}' + (
        ' (edge)' if r['lr_at_grid_edge'] else '')
    lines.append(
        f'| {r["batch_size"]}{tag} | {lr} | {pm(r["tuning_steps"], math.nan)} | '
        f'{pm(r["fit_steps"], math.nan)} | {r["reached"]}/{r["seeds"]} | '
        f'{pm(r["steps_to_target_mean"], r["steps_to_target_std"])} | '
        f'{pm(r["examples_to_target_mean"], r["examples_to_target_std"])} | '
        f'{pm(r["wall_time_to_target_mean"], r["wall_time_to_target_std"])} |')
  return lines


def _summary_markdown(summary, metric: str) -> list[str]:
  name = metric.partition('_')[2]
  lines = ['| policy | reached | steps | examples | wall time (s) | s / step | largest B | '
           f'B_simple | validation {name} | test {name} |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for e in summary:
    lines.append(
        f'| {e["policy"]} | {e["reached"]}/{e["n"]} | '
        f'{pm(e["steps_to_target_mean"], e["steps_to_target_std"])} | '
        f'{pm(e["examples_to_target_mean"], e["examples_to_target_std"])} | '
        f'{pm(e["wall_time_to_target_mean"], e["wall_time_to_target_std"])} | '
        f'{pm(e["seconds_per_step_mean"], math.nan)} | '
        f'{pm(e["largest_batch_size_mean"], e["largest_batch_size_std"])} | '
        f'{pm(e["b_simple_median_mean"], e["b_simple_median_std"])} | '
        f'{pm(e["validation_mean"], e["validation_std"], 4)} | '
        f'{pm(e["test_mean"], e["test_std"], 4)} |')
  return lines


def _paired_markdown(paired) -> list[str]:
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  lines = ['| policy | axis | n | ratio [95% CI] | paired t p | Wilcoxon p | seeds higher / '
           'lower |', '|---|---|---:|---|---:|---:|---|']
  for s in paired:
    lines.append(f'| {s["policy"]} | {s["axis"]} | {s["n"]} | {statistics.interval_text(s)} | '
                 f'{s["p_t"]:.2g} | {s["p_wilcoxon"]:.2g} | {s["higher"]} / {s["lower"]} |')
  return lines
