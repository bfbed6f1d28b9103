"""Do large batches find sharper minima that generalise worse? (Keskar et al. 2017)

Small (SB), large (LB, default 10% of the training set) and full batch (FB), each with its own
learning rate tuned on the validation split with a seed no reported run uses; then `seeds`
runs per regime, SB/LB/FB of one seed sharing initialisation and data order, every run
stopped at the same training loss (checked every ~`check_examples` examples on the whole
training split). Per run: ε-sharpness in the full space and a random subspace (Keskar eq. 3),
λ_max (Lanczos), tr(H) (Hutchinson), the generalisation gap; per seed the parametric plot
θ(α) = α θ_other + (1 − α) θ_SB. LB and FB are compared with SB paired over seeds: mean
difference (or geometric-mean ratio) with a 95% t-interval, paired t-test, exact Wilcoxon.

With `sam_rhos`, the large (and full) batch also train with SAM (Foret et al. 2021; the
update rule `sam`) at their tuned LR, ρ tuned on validation with the tuning seed; 'LB+SAM'
is compared with SB and with LB, paired by seed, in every measure and in what it costs
(steps to the stop, gradient evaluations, training time).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from typing import Any

from mbx import config as config_lib
from mbx.study import context

TITLE = 'Sharp minima: small, large and full batch at equal training loss ({name})'


@dataclasses.dataclass(frozen=True)
class Options:
  small_batch: int = 256  # SB (Keskar et al.'s small batch)
  large_batch: int | None = None  # LB; None: 10% of the training set (Keskar's)
  full_batch: bool = True  # also FB = the whole training set
  learning_rate_factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)  # LR grid: these ×
                                                                          # optim.learning_rate
  learning_rates: tuple[float, ...] = ()  # an explicit LR grid instead of the factors
  tuning_seed: int = 100  # the seed the LR is tuned with; no reported run uses it
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # paired seeds (initialisation and data order)
  stop_metric: str = 'train_loss'  # every run stops when this reaches stop_value
  stop_value: float = 0.01  # the common stopping point (on the whole training split)
  check_examples: int = 2048  # the stop is checked about every this many examples
  max_epochs: float = 300  # cap on each run
  select_metric: str | None = None  # tuning keeps the best eval_<metric>; None: eval_accuracy
                                    # if the task has it, else eval_loss
  grid: tuple[int, ...] = ()  # more batch sizes (seed seeds[0]) for sharpness vs B
  epsilons: tuple[float, ...] = (1e-3, 5e-4)  # ε of the ε-sharpness box
  subspace_dim: int = 100  # p of the random n × p subspace
  maxiter: int = 10  # L-BFGS-B iterations per start
  top_k: int = 5  # top Hessian eigenvalues by Lanczos
  lanczos_steps: int = 40  # Lanczos iterations for the top eigenvalues
  trace_samples: int = 100  # Hutchinson probes for tr(H) of the SB/LB/FB runs
  grid_trace_samples: int = 50  # Hutchinson probes for the grid's runs
  density_runs: int = 3  # SLQ runs for the eigenvalue density (first seed only)
  density_steps: int = 80  # Lanczos steps per SLQ run
  unit_column_subspace: bool = True  # also φ in a subspace with unit-norm columns
  sam_rhos: tuple[float, ...] = ()  # SAM's ρ grid, tuned on validation; (): no SAM runs
  sam_regimes: tuple[str, ...] = ('LB', 'FB')  # the regimes that also train with SAM
  sam_timing_steps: int = 40  # steps per side-by-side timing run of plain vs SAM (0: none)
  sam_timing_rounds: int = 3  # alternating rounds of that timing

QUICK = dict(seeds=(0, 1), learning_rate_factors=(0.3, 1.0, 3.0), lanczos_steps=20,
             trace_samples=20, grid_trace_samples=20, density_runs=1, density_steps=40)


def check(config: config_lib.Config, options: Options) -> None:
  context.check_metric(options.stop_metric, 'study.stop_metric', config, ('train',))
  if options.select_metric is not None:
    context.check_metric(options.select_metric, 'study.select_metric', config, ('eval',))
  context.check_seeds(options.seeds, options.tuning_seed)
  if not (options.learning_rates or options.learning_rate_factors):
    raise config_lib.ConfigError('study.learning_rates and study.learning_rate_factors: '
                                 'give at least one learning rate')
  if any(not (isinstance(r, (int, float)) and r > 0) for r in options.sam_rhos):
    raise config_lib.ConfigError(f'study.sam_rhos={tuple(options.sam_rhos)}: each ρ must be a '
                                 'number > 0')
  unknown = [r for r in options.sam_regimes if r not in ('SB', 'LB', 'FB')]
  if unknown:
    raise config_lib.ConfigError(f'study.sam_regimes: {unknown[0]!r} is not a regime; allowed: '
                                 'SB, LB, FB')
  if options.sam_rhos and config.optim.update_rule != 'plain':
    raise config_lib.ConfigError(f'study.sam_rhos: the config already trains with '
                                 f'optim.update_rule={config.optim.update_rule!r}; SAM runs '
                                 'replace it, so give a config with the plain rule')


def _select_metric(config, options) -> str:
  if options.select_metric:
    return options.select_metric
  return 'eval_accuracy' if 'accuracy' in context.task_metrics(config) else 'eval_loss'


def regimes(options: Options, num_train: int) -> dict[str, int]:
  large = options.large_batch or max(1, round(0.1 * num_train))
  out = {'SB': options.small_batch, 'LB': large}
  if options.full_batch:
    out['FB'] = num_train
  for name, b in out.items():
    if not 1 <= b <= num_train:
      raise config_lib.ConfigError(f'{name} = {b}: outside 1 … {num_train} (the training set)')
  if not options.small_batch < large:
    raise config_lib.ConfigError(f'study.small_batch={options.small_batch} must be below the '
                                 f'large batch {large}')
  return out


def trial_config(config, options: Options, batch_size: int, seed: int, learning_rate: float,
                 sam_rho: float | None = None):
  """The run of one (B, seed, LR): the user's config, stopped at the common training loss;
  with `sam_rho`, trained by SAM with that ρ."""
  check_every = max(1, round(options.check_examples / batch_size))
  train = dataclasses.replace(
      config.train, batch_size=batch_size, seed=seed, duration=f'{options.max_epochs:g} epochs',
      eval_every=f'{check_every} steps', eval_on_train=True, target_metric=options.stop_metric,
      target_value=options.stop_value, stop_at_target=True, checkpoint_every=None)
  optim = dataclasses.replace(config.optim, learning_rate=float(learning_rate))
  if sam_rho is not None:
    optim = dataclasses.replace(optim, update_rule='sam',
                                update_rule_options={'rho': float(sam_rho)})
  return dataclasses.replace(config, train=train, optim=optim)


def sharpness_key(space: str, epsilon: float) -> str:
  return f'sharpness_{space}_{epsilon:g}'


def row_of(run, summary: dict, **labels) -> dict[str, Any]:
  """One flat row: the run, its metrics on every split, the gap and every sharpness measure."""
  status = run.status
  row = {**labels, 'batch_size': run.config.train.batch_size, 'seed': run.config.train.seed,
         'learning_rate': run.config.optim.learning_rate, 'steps': status['step'],
         'epochs': status['epoch'], 'reached_stop': 'steps_to_target' in status,
         'wall_time': status.get('wall_time'), 'train_time': status.get('train_time'),
         'gradient_evaluations': status['step'] * (
             2 if run.config.optim.update_rule == 'sam' else 1)}
  for split in ('train', 'validation', 'test'):
    for name, value in summary.get(split, {}).items():
      row[f'{split}_{name}'] = value
  for name, value in summary['generalization_gap'].items():
    row[f'gap_{name}'] = value
  for result in summary['sharpness']['results']:
    row[sharpness_key(result['space'], result['epsilon'])] = result['sharpness']
  if 'sharpness_unit_columns' in summary:
    row['sharpness_subspace_unit_0.001'] = summary['sharpness_unit_columns']
  curvature = summary['hessian']
  if 'top_eigenvalues' in curvature:
    row['lambda_max'] = curvature['top_eigenvalues']['eigenvalues'][0]
  if 'trace' in curvature:
    row['trace'] = curvature['trace']['trace']
    row['trace_stderr'] = curvature['trace']['stderr']
  return row


class Analyses:
  """`analysis.sharpness_analysis`, reusing an earlier analysis (analyses.json) of the same run,
  checkpoint, parameters and settings: a re-run redoes only what changed. Keyed by run,
  checkpoint step and settings, so one run analysed at two settings keeps both."""

  def __init__(self, path):
    self.path = path
    self.cached = json.loads(path.read_text()) if path.exists() else {}
    self.reused = self.computed = 0

  def __call__(self, run, unit_columns: bool = False, **settings) -> dict:
    from mbx.measure import analysis  # pylint: disable=import-outside-toplevel
    bound = inspect.signature(analysis.sharpness_analysis).bind(run, **settings)
    bound.apply_defaults()
    recorded = json.loads(json.dumps({k: v for k, v in bound.arguments.items()
                                      if k not in ('run', 'step', 'data', 'quiet')}))
    step = run.checkpoint_steps[-1]
    key = f'{run.workdir.name}@{step} {json.dumps(recorded, sort_keys=True)}'
    fingerprint = analysis.checkpoint_sha256(run, step)
    summary = self.cached.get(key)
    if summary is None or summary['run'].get('parameters_sha256') != fingerprint:
      summary = analysis.sharpness_analysis(run, **settings)
      self.computed += 1
    else:
      self.reused += 1
    if unit_columns and 'sharpness_unit_columns' not in summary:
      summary['sharpness_unit_columns'] = _unit_column_sharpness(run)
    self.cached[key] = summary
    self.path.write_text(json.dumps(self.cached, indent=1) + '\n')
    return summary


def _unit_column_sharpness(run, epsilon: float = 1e-3) -> float:
  """φ in a random 100-dim subspace whose A has unit-norm columns (N(0, 1/n) entries): how much
  the subspace variant depends on A's scale, which Keskar et al. leave unstated."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mbx.measure import loss_fn, sharpness  # pylint: disable=import-outside-toplevel
  loss, _ = loss_fn.from_run(run)
  theta = np.asarray(jax.device_get(loss.theta), np.float64)
  a = sharpness.random_subspace(loss.dim, 100, seed=0, std=1 / np.sqrt(loss.dim))
  return sharpness.epsilon_sharpness(loss.value_and_grad, theta, epsilon,
                                     projection=a)['sharpness']


def tune(ctx, batch_sizes, learning_rates, select: str) -> tuple[dict[int, float], list[dict]]:
  """Per B, the LR whose tuning-seed run reached the stop with the best `select` metric on
  validation (ties: the smaller LR)."""
  options = ctx.options
  runs = ctx.train({(b, lr): trial_config(ctx.config, options, b, options.tuning_seed, lr)
                    for b in batch_sizes for lr in learning_rates}, 'LR tuning on validation')
  return _choose(ctx, {b: {lr: runs[(b, lr)] for lr in learning_rates} for b in batch_sizes},
                 'learning_rate', select,
                 'widen study.learning_rate_factors or raise study.max_epochs')


def tune_sam(ctx, regimes_lr: dict[str, tuple[int, float]], select: str):
  """Per SAM regime (its B and tuned LR), the ρ whose tuning-seed run reached the stop with the
  best `select` metric on validation (ties: the smaller ρ)."""
  options, rhos = ctx.options, tuple(ctx.options.sam_rhos)
  runs = ctx.train({(regime, rho): trial_config(ctx.config, options, b, options.tuning_seed,
                                                lr, sam_rho=rho)
                    for regime, (b, lr) in regimes_lr.items() for rho in rhos},
                   'SAM ρ tuning on validation')
  chosen, rows = _choose(ctx, {regime: {rho: runs[(regime, rho)] for rho in rhos}
                               for regime in regimes_lr}, 'rho', select,
                         'widen study.sam_rhos or raise study.max_epochs')
  for r in rows:
    r['batch_size'], r['learning_rate'] = regimes_lr[r.pop('setting')]
  return chosen, rows


def _choose(ctx, runs: dict, name: str, select: str, remedy: str):
  """Per setting, the value of `name` whose run reached the stop with the best `select`."""
  options, metrics = ctx.options, context.task_metrics(ctx.config)
  better_is_max = metrics[select.partition('_')[2]] == 'max'
  chosen, rows = {}, []
  for setting, by_value in runs.items():
    group = []
    for value, trained in by_value.items():
      status = trained.status
      group.append({'setting' if name == 'rho' else 'batch_size': setting, name: value,
                    'status': status['status'], 'reached_stop': 'steps_to_target' in status,
                    'epochs': status.get('epoch'), select: status.get(select, math.nan)})
    candidates = [r for r in group if r['reached_stop'] and math.isfinite(r[select])]
    if not candidates:
      what = f'{setting}' if name == 'rho' else f'B={setting}'
      raise config_lib.ConfigError(
          f'{what}: no {name.replace("_", " ")} of {tuple(by_value)} reached '
          f'{options.stop_metric} <= {options.stop_value} within {options.max_epochs:g} '
          f'epochs; {remedy}')
    best = max(candidates, key=lambda r: ((1 if better_is_max else -1) * r[select], -r[name]))
    chosen[setting] = best[name]
    for r in group:
      r['chosen'] = r[name] == chosen[setting]
    rows += group
  return chosen, rows


REGIME_MEASURES = [  # (column, header, scale) for the side-by-side table
    ('train_accuracy', 'train acc (%)', 100), ('validation_accuracy', 'val acc (%)', 100),
    ('test_accuracy', 'test acc (%)', 100), ('gap_accuracy', 'gap (pts)', 100),
    ('train_loss', 'train loss', 1), ('test_loss', 'test loss', 1), ('gap_loss', 'loss gap', 1),
    ('train_grad_norm', '‖∇f‖ at the stop', 1), ('steps', 'steps to the stop', 1),
    ('gradient_evaluations', 'gradient evaluations', 1), ('train_time', 'training time (s)', 1)]
RATIO_MEASURES = ('sharpness', 'lambda', 'trace', 'steps', 'gradient_evaluations', 'train_time')


def time_side_by_side(ctx, plain: dict[str, tuple[int, float]], rhos: dict[str, float]
                      ) -> list[dict]:
  """Seconds per step of each regime's plain and SAM runs, alternating, on the same machine
  at the same time (compile time excluded): the wall-time cost of SAM per step."""
  import shutil  # pylint: disable=import-outside-toplevel
  import statistics as stats  # pylint: disable=import-outside-toplevel
  from mbx.training.loop import train  # pylint: disable=import-outside-toplevel
  options, config = ctx.options, ctx.config
  rows = []
  for regime, (batch_size, learning_rate) in plain.items():
    per_step = {'plain': [], 'sam': []}
    for round_ in range(options.sam_timing_rounds):
      for kind, rho in (('plain', None), ('sam', rhos[regime])):
        trial = trial_config(config, options, batch_size, options.seeds[0], learning_rate,
                             sam_rho=rho)
        trial = dataclasses.replace(trial, train=dataclasses.replace(
            trial.train, duration=f'{options.sam_timing_steps} steps', stop_at_target=False,
            target_metric=None, target_value=None,
            eval_every=f'{10 * options.sam_timing_steps} steps', eval_on_train=False))
        workdir = ctx.runs / 'sam_timing' / f'{regime}-{kind}-{round_}'
        shutil.rmtree(workdir, ignore_errors=True)
        status = train(trial, workdir, quiet=True).status
        per_step[kind].append(status['train_time'] / status['step'])
    ratios = [s / p for s, p in zip(per_step['sam'], per_step['plain'])]
    rows.append({'regime': regime, 'batch': batch_size,
                 'plain_seconds_per_step': stats.median(per_step['plain']),
                 'sam_seconds_per_step': stats.median(per_step['sam']),
                 'time_ratio': stats.median(ratios), 'min': min(ratios), 'max': max(ratios),
                 'rounds': len(ratios)})
  return rows


def _measures(rows, options) -> list[tuple[str, str, float]]:
  sharp = [(sharpness_key(space, e), f'φ {space} ε={e:g}', 1)
           for space in ('full', 'subspace') for e in options.epsilons]
  unit = [('sharpness_subspace_unit_0.001', 'φ subspace ε=0.001, unit-norm columns of A', 1)]
  out = REGIME_MEASURES + sharp + unit + [('lambda_max', 'λ_max', 1), ('trace', 'tr(H)', 1)]
  return [m for m in out if any(m[0] in r for r in rows)]


def comparisons(regime_sizes) -> list[tuple[str, str]]:
  """(other, baseline): every regime against SB; a SAM regime also against its plain one."""
  out = [(r, 'SB') for r in regime_sizes if r != 'SB']
  return out + [(r, r.removesuffix('+SAM')) for r in regime_sizes
                if r.endswith('+SAM') and r.removesuffix('+SAM') in regime_sizes]


def paired_rows(rows, options, regime_sizes) -> list[dict]:
  """Each comparison (`comparisons`), paired by seed, for every measure (differences for
  accuracies and losses, geometric-mean ratios for sharpness, curvature and costs)."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  out = []
  for other, baseline in comparisons(regime_sizes):
    for key, label, scale in _measures(rows, options):
      kind = 'ratio' if key.startswith(RATIO_MEASURES) else 'difference'
      by_seed = {r['seed']: r for r in rows if r['regime'] == baseline}
      pairs = [(by_seed[r['seed']].get(key, math.nan), r.get(key, math.nan))
               for r in rows if r['regime'] == other and r['seed'] in by_seed]
      result = statistics.paired([a for a, _ in pairs], [b for _, b in pairs], kind, scale)
      out.append({'comparison': f'{other} vs {baseline}', 'measure': label, 'column': key,
                  **result})
  return out


def run(ctx) -> None:
  from mbx.figures import sharpness as figures  # pylint: disable=import-outside-toplevel
  from mbx.measure import analysis, hessian  # pylint: disable=import-outside-toplevel
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  config, options = ctx.config, ctx.options
  workload = resolve(config)
  num_train = workload.dataset.num_examples(workload.train_split)
  sizes = regimes(options, num_train)
  for b in options.grid:
    if not 1 <= b <= num_train:
      raise config_lib.ConfigError(f'study.grid: {b} outside 1 … {num_train} (the training set)')
  select = _select_metric(config, options)
  learning_rates = options.learning_rates or tuple(
      config.optim.learning_rate * f for f in options.learning_rate_factors)
  seeds = options.seeds
  ctx.protocol += [
      f'Model and data: `{config.model.name}` on `{config.data.name}` ({num_train} training '
      f'examples), optimizer `{config.optim.name}`, the config\'s schedule; every run stops at '
      f'the first check with {options.stop_metric} ≤ {options.stop_value:g} on the whole '
      f'training split (checked every round({options.check_examples}/B) steps; cap '
      f'{options.max_epochs:g} epochs). Equal training loss makes the minima comparable.',
      f'Regimes: ' + ', '.join(f'{k} = {v}' for k, v in sizes.items())
      + f'; seeds {list(seeds)}, each setting initialisation and data order for every regime.',
      f'LR tuning: {", ".join(f"{lr:.3g}" for lr in learning_rates)} per batch size with seed '
      f'{options.tuning_seed}; kept: the LR whose run reached the stop with the best {select}.',
      f'ε-sharpness (Keskar eq. 3), ε ∈ {list(options.epsilons)}, full space and a random '
      f'{options.subspace_dim}-dim subspace, L-BFGS-B {options.maxiter} iterations from 4 '
      f'starts; λ_max by Lanczos ({options.lanczos_steps} steps); tr(H) by Hutchinson '
      f'({options.trace_samples} probes); all on the whole training split in float32.',
      'Paired comparisons (other − SB per seed; ratios as geometric means of other / SB): 95% '
      't-interval, paired t-test, exact Wilcoxon signed-rank (n pairs = seeds).']
  if options.sam_rhos:
    ctx.protocol.append(
        f'SAM (Foret et al. 2021, update rule `sam`: the gradient at θ + ρ g/‖g‖ per gradient '
        f'group, two gradient evaluations per step) for {", ".join(options.sam_regimes)} at '
        f'that regime\'s tuned LR, ρ ∈ {list(options.sam_rhos)} tuned on {select} with seed '
        f'{options.tuning_seed}; each `+SAM` regime is compared with SB and with its plain '
        'regime, paired by seed, including its cost (steps, gradient evaluations and '
        'training time to the stop; training times were measured on a shared machine).')

  batch_sizes = sorted(set(sizes.values()) | set(options.grid))
  chosen, tuning_rows = tune(ctx, batch_sizes, learning_rates, select)
  edges = [b for b, lr in chosen.items() if lr in (min(learning_rates), max(learning_rates))]
  ctx.table('tuning', tuning_rows, title='LR tuning on validation',
            note='Best LR at the edge of the grid for B = ' + ', '.join(map(str, edges))
            + ': widen study.learning_rate_factors.' if edges else None)
  runs = ctx.train({(regime, seed): trial_config(config, options, b, seed, chosen[b])
                    for seed in seeds for regime, b in sizes.items()}, 'SB/LB/FB runs')
  rhos = {}
  if options.sam_rhos:
    plain = {r: (sizes[r], chosen[sizes[r]]) for r in options.sam_regimes if r in sizes}
    rhos, sam_tuning = tune_sam(ctx, plain, select)
    edges = [r for r, rho in rhos.items() if len(options.sam_rhos) > 1
             and rho in (min(options.sam_rhos), max(options.sam_rhos))]
    ctx.table('sam_tuning', sam_tuning, title='SAM ρ tuning on validation (at the regime\'s '
              'tuned LR)', note='Best ρ at the edge of the grid for ' + ', '.join(edges)
              + ': widen study.sam_rhos.' if edges else None)
    runs.update(ctx.train({(f'{regime}+SAM', seed): trial_config(
        config, options, sizes[regime], seed, chosen[sizes[regime]], sam_rho=rhos[regime])
                           for seed in seeds for regime in plain}, 'SAM runs'))
    sizes = {**sizes, **{f'{regime}+SAM': sizes[regime] for regime in plain}}
    if options.sam_timing_steps:
      with ctx.timed('SAM timing'):
        timing = time_side_by_side(ctx, plain, rhos)
      ctx.table('sam_cost', timing, title='SAM\'s time per step, measured side by side',
                note=f'{options.sam_timing_rounds} alternating rounds of '
                f'{options.sam_timing_steps} steps of the plain and the SAM run of each regime '
                '(seed 0, compile time excluded), run one after the other so that both see the '
                'same machine load; the paired training times below were measured when each run '
                'trained, at whatever load the machine had then.')
      for row in timing:
        ctx.findings.append(
            f'{row["regime"]}+SAM takes {row["time_ratio"]:.2f}× [{row["min"]:.2f}, '
            f'{row["max"]:.2f}] the time per step of {row["regime"]} (side by side, '
            f'{row["rounds"]} rounds): two gradient evaluations a step.')

  analyze = Analyses(ctx.out / 'analyses.json')
  settings = dict(epsilons=tuple(options.epsilons), subspace_dim=options.subspace_dim,
                  maxiter=options.maxiter, top_k=options.top_k,
                  lanczos_steps=options.lanczos_steps, trace_samples=options.trace_samples)
  rows, densities = [], {}
  with ctx.timed('sharpness and curvature'):
    for (regime, seed), trained in runs.items():
      density = (dict(density_runs=options.density_runs, density_steps=options.density_steps)
                 if seed == seeds[0] else dict(density_runs=0))
      summary = analyze(trained, unit_columns=options.unit_column_subspace, **settings,
                        **density)
      rows.append(row_of(trained, summary, regime=regime))
      if 'density' in summary['hessian']:
        quadrature = summary['hessian']['density']
        densities[f'{regime} (B={sizes[regime]})'] = hessian.density_on_grid(
            quadrature['nodes'], quadrature['weights'])
  measures = _measures(rows, options)
  side_by_side = []
  for regime, b in sizes.items():
    group = [r for r in rows if r['regime'] == regime]
    rho = rhos.get(regime.removesuffix('+SAM')) if regime.endswith('+SAM') else None
    cell = {'regime': regime, 'batch': b, 'LR': f'{chosen[b]:.3g}',
            **({'SAM ρ': '—' if rho is None else f'{rho:g}'} if rhos else {}),
            'epochs': _pm([r['epochs'] for r in group])}
    for key, header, scale in measures:
      cell[header] = _pm([r[key] * scale for r in group if key in r])
    side_by_side.append(cell)
  ctx.table('table', side_by_side, title=f'SB vs LB vs FB (mean ± std over {len(seeds)} '
            'seed(s))', note='φ = ε-sharpness (Keskar eq. 3); gap = train − test. Per-run rows: '
            '`runs.csv`.')
  ctx.table('runs', rows)
  stats = paired_rows(rows, options, sizes)
  ctx.table('paired', stats, title=f'Paired comparisons (n = {len(seeds)} seeds)',
            markdown=_paired_markdown(stats))

  interpolation_rows = []
  with ctx.timed('interpolation and density'):
    for other in [r for r in sizes if r != 'SB']:
      curves = [analysis.interpolation_analysis(runs[('SB', s)], runs[(other, s)])['rows']
                for s in seeds]
      interpolation_rows += [barrier_row(curve, other, s) for curve, s in zip(curves, seeds)]
      figures.parametric_plot(
          curves, ctx.figure(f'parametric_sb_{other.lower().replace("+", "_")}',
                             f'θ(α) = α·θ_{other} + (1−α)·θ_SB, {len(seeds)} seed(s)'),
          label_a=f'SB (B={sizes["SB"]})', label_b=f'{other} (B={sizes[other]})',
          title=f'θ(α) = α·θ_{other} + (1−α)·θ_SB, {config.name}')
    if densities:
      figures.density_plot(densities, ctx.figure('hessian_density', 'Hessian eigenvalue '
                                                 f'density (SLQ), seed {seeds[0]}'),
                           title=f'Hessian eigenvalue density, seed {seeds[0]}')

  ctx.table('interpolation', interpolation_rows,
            title='Along θ(α) = α·θ_other + (1−α)·θ_SB (per seed)',
            note='barrier: the highest training loss for α in (0, 1) minus the larger of the '
            'two ends; beyond: training loss at α = 2 (past the other end) and α = −1 (past SB).')
  grid_rows = []
  if options.grid:
    grid_runs = ctx.train({b: trial_config(config, options, b, seeds[0], chosen[b])
                           for b in options.grid}, 'batch-size grid')
    with ctx.timed('batch-size grid analyses'):
      for b, trained in grid_runs.items():
        summary = analyze(trained, **{**settings, 'trace_samples': options.grid_trace_samples,
                                      'density_runs': 0})
        grid_rows.append(row_of(trained, summary, regime='grid'))
    grid_table = [{'batch': r['batch_size'], 'LR': f'{r["learning_rate"]:.3g}',
                   'epochs': f'{r["epochs"]:.3g}',
                   **{h: f'{r[k] * s:.4g}' for k, h, s in measures if k in r}}
                  for r in sorted(grid_rows, key=lambda r: r['batch_size'])]
    ctx.table('batch_size_grid', grid_table,
              title=f'Across batch sizes (seed {seeds[0]}, one run per B, LR tuned per B)')
    headline = [m for m in measures if m[0] in (sharpness_key('full', options.epsilons[0]),
                                                'lambda_max', 'gap_accuracy', 'test_accuracy')]
    figures.versus_batch_size(grid_rows, ctx.figure('sharpness_vs_batch_size',
                                                    'sharpness and generalisation vs B'),
                              metrics=[(k, h) for k, h, _ in headline],
                              title=f'{config.name}: LR tuned per B, stopped at '
                                    f'{options.stop_metric} {options.stop_value:g}')

  ctx.results.update(regimes=sizes, learning_rates=chosen, select_metric=select, sam_rhos=rhos,
                     analyses_reused=analyze.reused, analyses_computed=analyze.computed)
  key_measures = ('test_accuracy', 'test_loss', 'gap_accuracy',
                  sharpness_key('full', options.epsilons[0]), 'lambda_max', 'trace',
                  options.stop_metric)
  costs = ('steps', 'gradient_evaluations', 'train_time')
  for s in stats:
    if s['n'] and (s['column'] in key_measures
                   or (s['column'] in costs and s['comparison'].endswith('vs LB'))):
      ctx.findings.append(
          f'{s["comparison"]}, {s["measure"]}: {statistics.interval_text(s)} (n = {s["n"]} '
          f'paired seeds; t p = {s["p_t"]:.2g}, Wilcoxon p = {s["p_wilcoxon"]:.2g}; higher in '
          f'{s["higher"]} of {s["n"]}).')
  for other in sorted({r['other'] for r in interpolation_rows}):
    group = [r for r in interpolation_rows if r['other'] == other]
    steeper = sum(r['train_loss_alpha_2'] > r['train_loss_alpha_-1'] for r in group)
    ctx.findings.append(
        f'SB–{other} interpolation: a training-loss barrier of '
        f'{_pm([r["barrier"] for r in group])} between the two minima; the loss past the '
        f'{other} end (α = 2) exceeds the loss past the SB end (α = −1) in {steeper} of '
        f'{len(group)} seeds.')
  if len(grid_rows) >= 4:
    import scipy.stats  # pylint: disable=import-outside-toplevel
    for key, label, _ in headline:
      result = scipy.stats.spearmanr([r['batch_size'] for r in grid_rows],
                                     [r.get(key, math.nan) for r in grid_rows])
      ctx.findings.append(
          f'Across the batch-size grid (one run per B, {len(grid_rows)} sizes): Spearman '
          f'ρ(B, {label}) = {result.statistic:+.2f} (p = {result.pvalue:.2g}).')
  reached = sum(r['reached_stop'] for r in rows + grid_rows)
  ctx.findings.append(f'{reached} of {len(rows) + len(grid_rows)} analysed runs reached the '
                      f'stop ({options.stop_metric} ≤ {options.stop_value:g}).')
  if len(seeds) < 5:
    ctx.findings.append(f'Only {len(seeds)} seeds: with n < 5 pairs no two-sided exact '
                        'Wilcoxon p can fall below 0.0625; read the intervals.')


def barrier_row(curve: list[dict], other: str, seed: int) -> dict:
  """The loss barrier between the two minima along the interpolation, and the losses past
  either end (Keskar et al.'s Fig. 3 read as numbers)."""
  by_alpha = {round(r['alpha'], 6): r['train_loss'] for r in curve}
  ends = max(by_alpha.get(0.0, math.nan), by_alpha.get(1.0, math.nan))
  inside = [v for a, v in by_alpha.items() if 0 < a < 1]
  return {'other': other, 'seed': seed,
          'barrier': (max(inside) - ends) if inside else math.nan,
          'train_loss_alpha_-1': by_alpha.get(-1.0, math.nan),
          'train_loss_alpha_2': by_alpha.get(2.0, math.nan)}


def _pm(values) -> str:
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return '—'
  mean, std = statistics.mean_std(values)
  return f'{mean:.3g} ± {std:.2g}' if len(values) > 1 else f'{mean:.3g}'


def _paired_markdown(stats: list[dict]) -> list[str]:
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  lines = ['| comparison | measure | n | estimate [95% CI] | paired t p | Wilcoxon p | '
           'seeds higher / lower |', '|---|---|---:|---|---:|---:|---|']
  for s in stats:
    lines.append(f'| {s["comparison"]} | {s["measure"]} | {s["n"]} | '
                 f'{statistics.interval_text(s)} | {s["p_t"]:.2g} | {s["p_wilcoxon"]:.2g} | '
                 f'{s["higher"]} / {s["lower"]} |')
  return lines
