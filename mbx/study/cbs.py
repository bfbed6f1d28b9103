"""What is my critical batch size? (Shallue et al. 2019; McCandlish et al. 2018; Zhang et al.
2024; Merrill et al. 2025)

A sweep of batch sizes × a learning-rate search × seeds, every trial stopped at a target;
steps-to-target at the best LR per batch size; McCandlish's fit S = S_min (1 + B_crit / B)
with a bootstrap interval, its sensitivity to which batch sizes were measured and its lack of
fit; Zhang's 20% CBS from a reference batch B0 (study.zhang_reference_batch); the run-averaged
noise-scale estimators the trials logged (B_simple, and those of mbx.training.estimators
whose probes ran); optionally a second, easier target from the same evaluations; and
Merrill's local CBS, branching the best trial at one batch size at points of its training.
The README sets every definition side by side, per optimizer and target.

Given a training config, the grid derives from it by the rules in `derive_sweep` (stated in
the README); given a sweep file (get_sweep), its grid is used as written.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from mbx import config as config_lib
from mbx.optim import batch_rules, declared

TITLE = 'Critical batch size ({name})'


@dataclasses.dataclass(frozen=True)
class Options:
  grid: Any = None  # a SweepConfig used as given (a sweep file); None: derived by the rules below
  batch_sizes: tuple[int, ...] = ()  # (): 1, 2, 4, ... up to the training set, and the set
  learning_rate_range: float = 8.0  # the LR search spans optim.learning_rate ÷/× this at
                                    # train.batch_size
  num_learning_rates: int = 6  # log-spaced points of the LR search per batch size
  lr_scaling_power: float | None = None  # the search range moves as B^p; None: the optimizer's
                                         # declared batch rule (linear 1, sqrt 0.5)
  seeds: tuple[int, ...] = (0, 1)  # train.seed of each trial (initialisation and data order)
  target_metric: str | None = None  # None: train.target_metric of the config
  target_value: float | None = None  # None: train.target_value of the config
  budget_scale: float = 2.0  # budget(B) = max(budget_scale × the config's train.duration in
                             # examples / B, min_budget_steps) steps
  min_budget_steps: int = 200  # the smallest budget of any batch size, in steps
  eval_growth: float = 1.05  # evaluations at ceil(g^i): steps-to-target at most g× too high
  noise_scale: bool = True  # log B_simple in every trial whose batch allows it
  second_target: float | None = None  # another, easier target read from the same evaluations
  zhang_reference_batch: int | None = None  # B0 of Zhang's 20% CBS, a batch size of the grid;
                                           # None: the smallest that reached the target
  bootstrap: int = 2000  # bootstrap samples of the fit's interval
  confidence: float = 0.9  # level of the fit's intervals
  local_cbs: bool = True  # measure Merrill et al.'s local CBS by branching
  local_cbs_batch_size: int | None = None  # branch the best trial at this B; None: 16 if in
                                           # the grid, else the smallest B above 1
  local_cbs_fractions: tuple[float, ...] = (1.0,)  # branch points, × its steps to target
  local_cbs_window: str = '2 epochs'  # data per branch; 'first quarter': what the source saw
                                      # in the first quarter of its training
  local_cbs_max_factor: int | None = None  # branches at k·B, k = 1, 2, 4, … up to this
                                           # (None: up to the training set)
  local_cbs_tolerance: float = 0.02  # a branch keeps up when its metric is within this of k = 1
  local_cbs_metric: str = 'eval_loss'  # what the branches are compared on
  local_cbs_seeds: tuple[int, ...] = (0, 1)  # data seeds per branch

QUICK = dict(num_learning_rates=3, learning_rate_range=2.0, seeds=(0,), local_cbs_seeds=(0,),
             bootstrap=200)
QUICK_BATCH_SIZES = 5  # --quick keeps this many batch sizes, spread over the grid


def _declared_lr_power(optimizer: str) -> float:
  """The exponent of LR ∝ B^p the optimizer's declared batch rule implies (1 SGD-type, 0.5
  Adam-type)."""
  rule = declared.of_name(optimizer).batch_rule
  if rule is None:
    raise config_lib.ConfigError(str(declared.undeclared(
        optimizer, 'batch_rule', 'the cbs study\'s LR range (or set study.lr_scaling_power)')))
  return batch_rules.lr_power(rule, 'batch_rule')


def derive_sweep(config: config_lib.Config, options: Options, num_train: int, quick: bool):
  """The sweep a training config implies, by the rules named in Options."""
  from mbx.sweep import grid  # pylint: disable=import-outside-toplevel
  b0, lr = config.train.batch_size, config.optim.learning_rate
  power = options.lr_scaling_power
  if power is None:
    power = _declared_lr_power(config.optim.name)
  search = grid.SearchSpace(
      config.optim.name, learning_rate=(lr / options.learning_rate_range,
                                        lr * options.learning_rate_range),
      num_learning_rates=options.num_learning_rates, sampling='grid', lr_scaling_power=power,
      reference_batch_size=b0)
  sizes = tuple(options.batch_sizes) or grid.default_batch_sizes(num_train)
  if quick and not options.batch_sizes:
    sizes = tuple(b for b in sizes if b >= 4) or sizes  # B = 1, 2 take the most steps
    picks = sorted({round(i * (len(sizes) - 1) / (QUICK_BATCH_SIZES - 1))
                    for i in range(QUICK_BATCH_SIZES)})
    sizes = tuple(sizes[i] for i in picks)
  examples = config_lib.parse_duration(config.train.duration, 'train.duration').to_examples(
      b0, num_train)
  budgets = {b: f'{max(math.ceil(options.budget_scale * examples / b), options.min_budget_steps)} steps'
             for b in sizes}
  return grid.SweepConfig(
      base=config, search=(search,), batch_sizes=sizes, seeds=tuple(options.seeds),
      budget=budgets[sizes[0]], budgets=budgets,
      target_metric=options.target_metric or config.train.target_metric,
      target_value=(options.target_value if options.target_value is not None
                    else config.train.target_value),
      stop_at_target=True, eval_growth=options.eval_growth, noise_scale=options.noise_scale,
      name=config.name)


ZHANG_FIELD = 'study.zhang_reference_batch'


def check_zhang_reference_batch(options: Options, batch_sizes) -> None:
  """B0 must be a batch size of the grid (whether it reaches the target is checked once the
  trials have trained)."""
  b0 = options.zhang_reference_batch
  if b0 is not None and b0 not in tuple(batch_sizes):
    raise config_lib.ConfigError(
        f'{ZHANG_FIELD}={b0}: not a batch size of the grid; allowed: '
        f'{", ".join(str(b) for b in sorted(batch_sizes))} (or None: the smallest batch size '
        'that reached the target)')


def check(config: config_lib.Config, options: Options) -> None:
  b0 = options.zhang_reference_batch
  if b0 is not None and (isinstance(b0, bool) or not isinstance(b0, int) or b0 < 1):
    raise config_lib.ConfigError(f'{ZHANG_FIELD}={b0!r}: a batch size of the grid (an integer '
                                 '>= 1), or None for the smallest that reached the target')
  if options.grid is not None:
    from mbx.study import context  # pylint: disable=import-outside-toplevel
    context.check_metric(options.grid.target_metric, 'sweep.target_metric', options.grid.base)
    check_zhang_reference_batch(options, options.grid.batch_sizes)
    return
  if options.batch_sizes:
    check_zhang_reference_batch(options, options.batch_sizes)
  metric = options.target_metric or config.train.target_metric
  value = options.target_value if options.target_value is not None else config.train.target_value
  if metric is None or value is None:
    raise config_lib.ConfigError(
        'study.target_metric / study.target_value: the cbs study needs a target (e.g. '
        'study.target_metric=eval_accuracy study.target_value=0.9, or train.target_metric and '
        'train.target_value in the config)')
  from mbx.study import context  # pylint: disable=import-outside-toplevel
  context.check_metric(metric, 'study.target_metric' if options.target_metric
                       else 'train.target_metric', config)
  if options.num_learning_rates < 2 or options.learning_rate_range <= 1:
    raise config_lib.ConfigError(
        f'study.num_learning_rates={options.num_learning_rates}, study.learning_rate_range='
        f'{options.learning_rate_range}: the search needs >= 2 learning rates over a range > 1')
  if not options.seeds:
    raise config_lib.ConfigError('study.seeds=(): at least one seed')


def _sweep_of(ctx):
  from mbx.sweep import grid  # pylint: disable=import-outside-toplevel
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  options = ctx.options
  if options.grid is not None:
    sweep = options.grid
    if isinstance(sweep, dict):
      sweep = grid.from_dict(sweep)
    if ctx.quick:
      sweep = quick_sweep(sweep)
    return sweep, None
  workload = resolve(ctx.config)
  num_train = workload.dataset.num_examples(workload.train_split)
  sweep = derive_sweep(ctx.config, options, num_train, ctx.quick)
  for b in sweep.batch_sizes:
    if not 1 <= b <= num_train:
      raise config_lib.ConfigError(f'study.batch_sizes: {b} outside 1 … {num_train} (the '
                                   'training set)')
  return sweep, num_train


def quick_sweep(sweep):
  """A smoke-sized version of a given grid: the middle three LRs of each search, one seed,
  five batch sizes from 4 up spread over the grid."""
  sizes = tuple(b for b in sweep.batch_sizes if b >= 4) or sweep.batch_sizes
  if len(sizes) > QUICK_BATCH_SIZES:
    picks = sorted({round(i * (len(sizes) - 1) / (QUICK_BATCH_SIZES - 1))
                    for i in range(QUICK_BATCH_SIZES)})
    sizes = tuple(sizes[i] for i in picks)
  search = tuple(dataclasses.replace(
      s, learning_rate=(s.learning_rate[0] * 2, s.learning_rate[1] / 2),
      num_learning_rates=min(3, s.num_learning_rates)) for s in sweep.search)
  return dataclasses.replace(sweep, search=search, batch_sizes=sizes, seeds=sweep.seeds[:1],
                             budgets={b: sweep.budgets[b] for b in sizes if b in sweep.budgets},
                             name=f'{sweep.name}_quick')


def _rules(sweep, derived: bool, options: Options) -> list[str]:
  search = sweep.search[0]
  sizes = ', '.join(str(b) for b in sweep.batch_sizes)
  budgets = ', '.join(f'{b}: {sweep.budgets.get(b, sweep.budget).split()[0]}'
                      for b in sweep.batch_sizes)
  lines = [
      f'Grid: optimizers {", ".join(s.optimizer for s in sweep.search)}; B = {sizes}; seeds '
      f'{", ".join(map(str, sweep.seeds))}; target {sweep.target_metric} = '
      f'{sweep.target_value:g}, each trial stopped when it reaches it; evaluations at '
      f'ceil({sweep.eval_growth}^i) steps, so steps-to-target is at most '
      f'{(sweep.eval_growth - 1) * 100:.0f}% high.',
      f'Learning rates: {search.num_learning_rates} per B ({search.sampling}), '
      f'{search.learning_rate[0]:.3g} … {search.learning_rate[1]:.3g} at B = '
      f'{search.reference_batch_size}, the range moving as B^{search.lr_scaling_power:g}.',
      f'Budgets (steps): {budgets}.']
  if derived:
    lines += [f'Derived from the config: the LR range is optim.learning_rate ÷/× '
              f'{options.learning_rate_range:g} at train.batch_size, moved as B^p (p = 1 for '
              'SGD-type updates, 0.5 for Adam-type; study.lr_scaling_power); budget(B) = '
              f'max({options.budget_scale:g} × the config\'s train.duration in examples / B, '
              f'{options.min_budget_steps}) steps; B = powers of two up to the training set '
              '(study.batch_sizes).']
  return lines


def _fit_rows(analysis, target) -> list[dict]:
  rows = []
  summary = analysis.summary.set_index('optimizer')
  estimator_keys = [f'{name}{suffix}' for name in analysis.estimators
                    for suffix in ('_median', '_min', '_max', '_measurable', '_not_measurable',
                                   '_reason')] + [f'b_crit_over_{n}' for n in analysis.estimators]
  for optimizer, row in summary.iterrows():
    out = {'optimizer': optimizer, 'target': target}
    for key in ('b_crit', 'b_crit_lo', 'b_crit_hi', 's_min', 's_min_lo', 's_min_hi', 'e_min',
                'e_min_lo', 'e_min_hi', 'b_crit_leave_out_min', 'b_crit_leave_out_max',
                'b_crit_without_largest', 'lack_of_fit_f', 'lack_of_fit_p', 'zhang_cbs',
                'zhang_cbs_fit', 'zhang_reference_batch', 'b_simple_median', 'b_simple_min',
                'b_simple_max', 'b_crit_over_b_simple', *estimator_keys, 'lr_exponent',
                'lr_exponent_lo', 'lr_exponent_hi', 'num_batch_sizes'):
      if key in row:
        out[key] = row[key]
    rows.append(out)
  return rows


def _side_by_side(analyses, fit_rows, local: dict | None):
  """Every CBS definition side by side (critical_batch.definitions_table), then how far the
  fit can be trusted: S_min, E_min, B_crit with one B left out, lack of fit, the best-LR
  exponent and the batch sizes that reached the target."""
  from mbx.figures.readme import fmt  # pylint: disable=import-outside-toplevel
  from mbx.sweep import critical_batch  # pylint: disable=import-outside-toplevel
  frame = critical_batch.definitions_table(analyses, local=local)
  fitted = [math.isfinite(r.get('b_crit', math.nan)) for r in fit_rows]
  frame['S_min'] = [fmt(r['s_min']) if f else '—' for r, f in zip(fit_rows, fitted)]
  frame['E_min'] = [fmt(r['e_min']) if f else '—' for r, f in zip(fit_rows, fitted)]
  frame['B_crit, one B left out'] = [
      f'{fmt(r.get("b_crit_leave_out_min"))} – {fmt(r.get("b_crit_leave_out_max"))}' if f
      else '—' for r, f in zip(fit_rows, fitted)]
  frame['lack of fit F (p)'] = [
      f'{fmt(r.get("lack_of_fit_f"))} ({fmt(r.get("lack_of_fit_p"), 2)})' if f else '—'
      for r, f in zip(fit_rows, fitted)]
  frame['best-LR exponent p [CI]'] = [
      f'{fmt(r.get("lr_exponent"), 2)} [{fmt(r.get("lr_exponent_lo"), 2)}, '
      f'{fmt(r.get("lr_exponent_hi"), 2)}]' for r in fit_rows]
  frame['batch sizes reaching it'] = [int(r['num_batch_sizes']) for r in fit_rows]
  return frame


def local_cbs_batch_size(options: Options, sizes) -> int | None:
  if options.local_cbs_batch_size is not None:
    return options.local_cbs_batch_size
  if 16 in sizes:
    return 16
  return next((b for b in sorted(sizes) if b > 1), None)


def _branch(args) -> tuple:
  """One branch point (a process of its own when the study has workers)."""
  from mbx.sweep import local_cbs  # pylint: disable=import-outside-toplevel
  source, step, factors, options, workdir = args
  return local_cbs.local_cbs(
      source, step, factors=factors, window=options['window'],
      tolerance=options['tolerance'], metric=options['metric'], seeds=options['seeds'],
      workdir=workdir)


def branch_steps(reached: int, fractions) -> tuple[int, list[int]]:
  """(checkpoint unit, branch steps): each fraction of the steps to target, on a grid of
  eighths of it so that a source run keeps few checkpoints."""
  unit = max(1, reached // 8)
  return unit, sorted({max(unit, round(f * reached / unit) * unit) for f in fractions})


def _source_run(ctx, trial_dir, reached: int, optimizer: str):
  """The best trial again, checkpointed at the branch points (None: branch the trial itself,
  which ends at the target)."""
  from mbx.training.loop import train  # pylint: disable=import-outside-toplevel
  from mbx.training.records import load_run  # pylint: disable=import-outside-toplevel
  if tuple(ctx.options.local_cbs_fractions) == (1.0,):
    return trial_dir, [reached]
  unit, steps = branch_steps(reached, ctx.options.local_cbs_fractions)
  config = load_run(trial_dir).config
  schedule = dataclasses.replace(
      config.train, duration=f'{steps[-1]} steps', stop_at_target=False,
      checkpoint_every=f'{unit} steps', keep_checkpoints=steps[-1] // unit + 2,
      eval_growth=None, eval_every=f'{unit} steps', log_every=f'{max(1, unit // 4)} steps')
  source = ctx.runs / 'local_cbs' / optimizer / 'source'
  train(dataclasses.replace(config, train=schedule, name=f'{config.name}-source'), source,
        quiet=True)
  return source, steps


def _window(options: Options, source_b: int, steps: list[int]) -> str:
  if options.local_cbs_window == 'first quarter':  # the data the source saw in its first
    return f'{max(1, steps[-1] // 4) * source_b} examples'  # quarter of training
  return options.local_cbs_window


def _along_training(local, source, metric: str):
  """One row per branch point: the source's metric and B_simple there, the local CBS."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from mbx.training.records import load_run  # pylint: disable=import-outside-toplevel
  run = load_run(source)
  evals, train = run.eval_metrics.set_index('step'), run.train_metrics
  rows = []
  for step, group in local.groupby('branch_step'):
    window = train[(train['step'] <= step) & (train['step'] > step - max(1, step // 4))]
    noise = window['b_simple'] if 'b_simple' in window else pd.Series(dtype=float)
    cbs = group['local_cbs'].iloc[0]
    rows.append({'step': int(step), f'source_{metric}': float(evals.loc[step, metric]),
                 'local_cbs': None if pd.isna(cbs) else int(cbs),
                 'capped': bool(group['capped'].iloc[0]),
                 'upper_bound': not pd.isna(cbs) and int(cbs) == int(
                     group.loc[group['factor'] == 1, 'batch_size'].iloc[0]),
                 'b_simple_before': float(noise.mean()) if noise.notna().any() else np.nan})
  return pd.DataFrame(rows), run


def _local_cbs(ctx, sweep, analysis, num_train: int) -> tuple[list[dict], dict[str, str]]:
  """Merrill's local CBS from the best trial at one batch size, at fractions of its steps to
  the target (a fraction 1 alone branches the trial's own final checkpoint)."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from mbx.figures import critical_batch as figures  # pylint: disable=import-outside-toplevel
  options = ctx.options
  source_b = local_cbs_batch_size(options, sweep.batch_sizes)
  rows, text = [], {}
  per_b, trials = analysis.per_batch_size, analysis.trials
  for optimizer in analysis.summary['optimizer']:
    best = per_b[(per_b['optimizer'] == optimizer) & (per_b['batch_size'] == source_b)]
    if best.empty or not math.isfinite(best['steps_to_target'].iloc[0]):
      text[optimizer] = f'— (B = {source_b} did not reach the target)'
      continue
    trial = trials[(trials['optimizer'] == optimizer) & (trials['batch_size'] == source_b) &
                   (trials['learning_rate'] == best['learning_rate'].iloc[0]) &
                   (trials['outcome'] == 'reached')].sort_values('seed').iloc[0]
    with ctx.timed('local CBS'):
      source, steps = _source_run(ctx, ctx.runs / trial['run_dir'],
                                  int(trial['steps_to_target']), optimizer)
      largest = min(num_train / source_b, options.local_cbs_max_factor or math.inf)
      factors = [2**i for i in range(int(math.log2(largest)) + 1)]
      if ctx.quick:
        factors = factors[::2]
      settings = {'window': _window(options, source_b, steps),
                  'tolerance': options.local_cbs_tolerance, 'metric': options.local_cbs_metric,
                  'seeds': tuple(options.local_cbs_seeds)}
      jobs = [(str(source), step, factors, settings,
               ctx.runs / 'local_cbs' / optimizer / f'step{step}') for step in steps]
      if ctx.workers > 1 and len(jobs) > 1:
        import multiprocessing  # pylint: disable=import-outside-toplevel
        with multiprocessing.get_context('spawn').Pool(min(ctx.workers, len(jobs))) as pool:
          results = pool.map(_branch, jobs, chunksize=1)
      else:
        results = [_branch(job) for job in jobs]
    points, found = [], []
    for per_factor, summary in results:
      suffix = f'_step{summary["step"]}' if len(steps) > 1 else ''
      figures.local_cbs(per_factor, summary, ctx.figure(
          f'local_cbs_{optimizer}{suffix}', f'local CBS of {optimizer} at step '
          f'{summary["step"]}: the branches\' {options.local_cbs_metric} after '
          f'{settings["window"]} vs k·B'))
      per_factor.insert(0, 'optimizer', optimizer)
      per_factor['branch_step'] = summary['step']
      per_factor['local_cbs'] = summary['local_cbs']
      per_factor['capped'] = summary['capped']
      per_factor['lr_scaling'] = summary['lr_scaling']
      per_factor['window'] = settings['window']
      per_factor['branched_from'] = trial['trial_id']
      found.append(per_factor)
      value = ('noise-limited' if summary['local_cbs'] is None or pd.isna(summary['local_cbs'])
               else f'{"≥ " if summary["capped"] else ""}{int(summary["local_cbs"])}')
      points.append(f'{value} at step {summary["step"]}')
    rows += found
    text[optimizer] = '; '.join(points) + f' (from B = {source_b})'
    if len(steps) > 1:
      along, run = _along_training(pd.concat(found, ignore_index=True), source,
                                   options.local_cbs_metric)
      ctx.table(f'local_cbs_along_training_{optimizer}', along,
                title=f'Local CBS along training ({optimizer}, source B = {source_b})')
      figures.local_cbs_along_training(
          along, run.train_metrics, run.eval_metrics,
          ctx.figure(f'local_cbs_along_training_{optimizer}', 'local CBS at each branch '
                     'point beside the source run\'s B_simple and loss'),
          metric=options.local_cbs_metric)
  frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
  return frame, text


def run(ctx) -> None:
  from mbx.figures import critical_batch as figures  # pylint: disable=import-outside-toplevel
  from mbx.figures.readme import fmt  # pylint: disable=import-outside-toplevel
  from mbx.sweep import critical_batch, grid, runner  # pylint: disable=import-outside-toplevel
  from mbx.sweep import submit as submit_lib  # pylint: disable=import-outside-toplevel
  options = ctx.options
  sweep, num_train = _sweep_of(ctx)
  check_zhang_reference_batch(options, sweep.batch_sizes)  # the derived or --quick grid
  trials = grid.expand(sweep)
  for trial in trials:
    declared.validate(trial.config)
  if num_train is None:
    from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
    workload = resolve(sweep.base)
    num_train = workload.dataset.num_examples(workload.train_split)
  ctx.protocol += _rules(sweep, options.grid is None, options)

  finished = sum(runner.is_finished(ctx.runs, t) for t in trials)
  with ctx.timed('sweep'):
    if ctx.submit:
      runner.write_spec(ctx.runs, sweep, trials)
      jobs = submit_lib.submit(sweep, ctx.runs, cluster=ctx.submit, num_workers=ctx.workers,
                               options=submit_lib.SubmitOptions.from_mapping(sweep.submit,
                                                                             'sweep.submit'))
      submit_lib.wait(jobs, ctx.runs)
    else:
      runner.in_processes(runner.run_sweep, (sweep, str(ctx.runs)), ctx.workers)
  ctx.reused += finished
  ctx.trained += sum(runner.is_finished(ctx.runs, t) for t in trials) - finished

  with ctx.timed('analysis and figures'):
    table = runner.load_table(ctx.runs)
    ctx.table('trials', table)
    counts = runner.outcome_counts(table)
    critical_batch.check_zhang_reference_batch(critical_batch.steps_to_result(table),
                                               options.zhang_reference_batch, ZHANG_FIELD)
    analysis = critical_batch.analyze(table, num_samples=options.bootstrap,
                                      confidence=options.confidence,
                                      zhang_reference_batch=options.zhang_reference_batch)
    figures.save_all(analysis, ctx.out)
  local, local_text = ([], {})
  sections, shown = len(ctx.sections), len(ctx.shown)
  if options.local_cbs:
    local, local_text = _local_cbs(ctx, sweep, analysis, num_train)
  # The local CBS's figures and tables go after the fit's in the README and report.
  local_sections, local_shown = ctx.sections[sections:], ctx.shown[shown:]
  del ctx.sections[sections:], ctx.shown[shown:]
  fit_rows = _fit_rows(analysis, sweep.target_value)
  analyses = [analysis]
  if options.second_target is not None:
    with ctx.timed('analysis and figures'):
      second_table = runner.trial_table(ctx.runs, options.second_target)
      critical_batch.check_zhang_reference_batch(critical_batch.steps_to_result(second_table),
                                                 options.zhang_reference_batch, ZHANG_FIELD)
      analyses.append(critical_batch.analyze(
          second_table, num_samples=options.bootstrap, confidence=options.confidence,
          zhang_reference_batch=options.zhang_reference_batch))
    fit_rows += _fit_rows(analyses[-1], options.second_target)
  side_by_side = _side_by_side(analyses, fit_rows, local_text if options.local_cbs else None)
  ctx.table('cbs_definitions', side_by_side,
            title='Critical batch size, every definition side by side',
            note='McCandlish: the fit S = S_min(1 + B_crit/B) to the per-B minimum steps, '
            f'{options.confidence:.0%} bootstrap of the log residuals (scatter under the assumed '
            'curve); "one B left out" and "lack of fit" show how much the fit depends on the '
            'curve and on which batch sizes were measured. Zhang: the B where S(B)·B first '
            'exceeds S(B0)·B0 by 20% (on the measured curve; "on the fit": (1.2 B0 + 0.2 '
            'B_crit)). The noise-scale estimators (mbx.training.estimators), each averaged over '
            'the best trial of each B up to the target (numerator and denominator separately); '
            'a negative or undefined average is not a batch size and is reported as not '
            'measurable, with why. Merrill: the local CBS by branching. The numbers: '
            '`cbs_summary.csv`.')
  ctx.table('cbs_summary', fit_rows)  # the numbers of the table above (files, summary.json)
  per_b = analysis.per_batch_size
  names = ['b_simple', *[n for n in analysis.estimators if n != 'b_simple']]
  shown = critical_batch.with_estimate_text(per_b, names)
  ctx.table('per_batch_size', per_b.drop(columns=[c for c in ('seed_steps',) if c in per_b]),
            title='Steps to target per batch size (minimum over the LR search)',
            markdown=['| optimizer | B | steps S | examples E | best LR | lr/(1−m) | reached / '
                      'not / diverged | '
                      + ' | '.join(critical_batch.short_label(n) for n in names) + ' |',
                      '|---|---:|---:|---:|---:|---:|---|' + '---:|' * len(names),
                      *[f'| {r["optimizer"]} | {r["batch_size"]} | {fmt(r["steps_to_target"], 4)}'
                        f' | {fmt(r["examples_to_target"], 4)} | {fmt(r["learning_rate"])} | '
                        f'{fmt(r.get("effective_learning_rate"))} | {r["num_reached"]} / '
                        f'{r["num_not_reached"]} / {r["num_infeasible"]} | '
                        + ' | '.join(shown.loc[i, n].replace('|', '\\|') for n in names) + ' |'
                        for i, r in per_b.iterrows()]])
  if analysis.sensitivity:
    import pandas as pd  # pylint: disable=import-outside-toplevel
    ctx.table('fit_sensitivity', pd.concat([t.assign(optimizer=o) for o, t in
                                            analysis.sensitivity.items()], ignore_index=True))
  if len(local):
    ctx.table('local_cbs', local)
  for name, caption in (('steps_vs_batch_size', figures.steps_caption(analysis)),
                        ('pareto', 'steps vs examples to target with the fitted hyperbola'),
                        ('best_learning_rate', 'best LR per B against linear and √ scaling '
                         '(pale bars: the searched range)'),
                        ('lr_heatmap', 'steps to target over LR × B')):
    if (ctx.out / f'{name}.png').exists():
      ctx.figure(name, caption)
  ctx.sections += local_sections
  ctx.shown += local_shown
  ctx.section('Warnings from the analysis', [f'- {w}' for w in analysis.warnings] or ['- none'])

  ctx.results.update(trials=len(table), outcomes=counts, spec_hash=grid.spec_hash(sweep),
                     warnings=analysis.warnings)
  zhang = next(c for c in side_by_side.columns if c.startswith('Zhang'))
  labels = [c.partition(', run-averaged')[0] for c in side_by_side.columns
            if c.endswith(', run-averaged: median [min, max] over B')]
  for (_, d), r in zip(side_by_side.iterrows(), fit_rows):
    what = f'{r["optimizer"]}, target {r["target"]:g}: '
    if math.isfinite(r.get('b_crit', math.nan)):
      what += (f'B_crit = {fmt(r["b_crit"])} [{fmt(r["b_crit_lo"])}, {fmt(r["b_crit_hi"])}] '
               f'({options.confidence:.0%} CI), {fmt(r.get("b_crit_leave_out_min"))}–'
               f'{fmt(r.get("b_crit_leave_out_max"))} with any batch size left out, '
               f'lack-of-fit p = {fmt(r.get("lack_of_fit_p"), 2)}; S_min = {fmt(r["s_min"])}')
    else:
      what += 'no fit (fewer than 3 batch sizes reached the target)'
    what += f'; {zhang} {d[zhang]}'
    for label in labels:
      what += f'; run-averaged {label} {d[f"{label}, run-averaged: median [min, max] over B"]}'
      if d[f'B_crit / {label}'] != '—':
        what += f' (B_crit/{label} = {d[f"B_crit / {label}"]})'
    if options.local_cbs and r['target'] == sweep.target_value:
      what += f'; local CBS {local_text.get(r["optimizer"], "not measured")}'
    ctx.findings.append(what + '.')
  ctx.findings.append(f'{len(table)} trials: ' + ', '.join(f'{v} {k}' for k, v in counts.items())
                      + f'; {len(analysis.warnings)} warning(s) from the analysis.')
