"""Can the batch grow instead of the learning rate decaying? (Smith, Kindermans, Ying & Le 2018)

Smith et al. (arXiv 1711.00489, Figs. 1-2) lower the SGD noise scale g = εN/(B(1−m)) by a
factor k at the same epoch milestones in three ways, and train each for the same epochs:
  decaying LR       B fixed, the LR ÷ k at each milestone;
  increasing batch  the LR fixed, B × k at each milestone while B stays within the cap (the
                    training set unless given); at a milestone past the cap the LR ÷ k instead;
  hybrid            B × k at the first `hybrid_increases` milestones, then the LR ÷ k.
Every schedule runs `seeds` (a seed sets initialisation and data order, shared by the three)
for every budget. Reported: the final metric (on the test split if the data has one, else the
evaluation split) as mean ± std; increasing batch − decaying LR and hybrid − decaying LR paired
by seed (mean with a 95% t-interval, paired t-test, exact Wilcoxon signed-rank); the parameter
updates of each; per phase B, LR, updates, g and the exact g = ε(N/B − 1)/(1−m); the schedules,
and the evaluation metric against epochs and against parameter updates.

From the config, each overridable: the budget (train.duration in epochs), the milestones (a
step schedule's milestones as fractions of its duration, else Smith's 30%, 60%, 80%), k (1 / a
step schedule's decay_factor when that is an integer, else Smith's 5), the cap (its
train.max_batch_size, else the training set), and B0 and the LR (train.batch_size,
optim.learning_rate).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from mbx import config as config_lib
from mbx.optim import declared

TITLE = 'Increase the batch instead of decaying the learning rate ({name})'
SCHEDULES = ('decaying LR', 'hybrid', 'increasing batch')
SMITH_FRACTIONS = (0.3, 0.6, 0.8)  # Smith et al.'s epochs 60, 120 and 160 of 200
SMITH_FACTOR = 5


@dataclasses.dataclass(frozen=True)
class Options:
  budgets: tuple[float, ...] = ()             # epochs per run; (): train.duration in epochs
  milestone_fractions: tuple[float, ...] = ()  # of each budget; (): a step schedule's
                                              # milestones / its duration, else (0.3, 0.6, 0.8)
  factor: int | None = None                   # k; None: 1 / optim.decay_factor of a step
                                              # schedule when an integer >= 2, else 5
  max_batch_size: int | None = None           # increasing batch's cap; None: the config's
                                              # train.max_batch_size, else the training set
  hybrid_increases: int = 1                   # hybrid: B x k this many times, then LR / k;
                                              # 0: no hybrid
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # train.seed of each reported run (initialisation and data order)
  metric: str | None = None                   # compared; None: accuracy if the task has it,
                                              # else loss
  evaluations: int = 100                      # per run, evenly spaced in epochs (the curves)
  budget_scale: float = 1.0                   # every budget x this (--quick: 0.1)


QUICK = dict(seeds=(0, 1), budget_scale=0.1)


@dataclasses.dataclass(frozen=True)
class Design:
  """What the options resolve to on one config; `*_rule` says where each value came from."""
  num_train: int
  batch_size: int
  budgets: tuple[float, ...]
  budget_rule: str
  fractions: tuple[float, ...]
  milestone_rule: str
  factor: int
  factor_rule: str
  cap: int
  cap_rule: str
  hybrid_increases: int
  metric: str            # the task's metric, e.g. 'accuracy'
  column: str            # where a run's final value is: 'test_<metric>' or 'eval_<metric>'
  split: str             # the split that column reads
  higher_is_better: bool

  @property
  def schedules(self) -> tuple[str, ...]:
    return tuple(s for s in SCHEDULES if s != 'hybrid' or self.hybrid_increases)

  @property
  def scale(self) -> float:
    """Accuracies are compared in points (×100); other metrics as they are."""
    return 100.0 if self.metric == 'accuracy' else 1.0

  @property
  def unit(self) -> str:
    return ' points' if self.scale == 100 else ''

  @property
  def label(self) -> str:
    return f'{self.split} {self.metric}' + (' (%)' if self.scale == 100 else '')

  def cap_of(self, schedule: str) -> int:
    if schedule == 'decaying LR':
      return self.batch_size
    if schedule == 'hybrid':
      return self.batch_size * self.factor ** self.hybrid_increases
    return self.cap

  def milestones(self, budget: float) -> tuple[float, ...]:
    return tuple(float(f'{f * budget:.10g}') for f in self.fractions)


# ------------------------------------------------------------------ the design
def phase_batches(batch_size: int, factor: int, milestones: int,
                  cap: int) -> list[tuple[int, float]]:
  """(B, LR multiplier) of each phase, before the first milestone and after each: B × factor
  at a milestone while that stays ≤ cap, else the LR ÷ factor (the rule of train.max_batch_size
  in mbx/training/plan.py; decaying LR is cap = batch_size)."""
  batch, lr, out = batch_size, 1.0, [(batch_size, 1.0)]
  for _ in range(milestones):
    if batch * factor <= cap:
      batch *= factor
    else:
      lr /= factor
    out.append((batch, lr))
  return out


def increases(phases: list[tuple[int, float]]) -> int:
  return sum(b1 != b0 for (b0, _), (b1, _) in zip(phases, phases[1:]))


def duration_epochs(config: config_lib.Config, num_train: int) -> float:
  """train.duration in epochs (steps count at train.batch_size); tokens are refused."""
  duration = config_lib.parse_duration(config.train.duration, 'train.duration')
  if duration.unit == 'tokens':
    raise config_lib.ConfigError(
        f'train.duration={config.train.duration!r}: the increase-batch study compares schedules '
        'at equal epochs; give the duration in epochs, examples or steps, or set '
        'study.budgets=EPOCHS')
  return duration.to_examples(config.train.batch_size, num_train) / num_train


def _milestone_fractions(config, options, num_train) -> tuple[tuple[float, ...], str]:
  if options.milestone_fractions:
    return tuple(options.milestone_fractions), 'study.milestone_fractions'
  o = config.optim
  if o.schedule == 'step' and o.milestones and o.milestone_unit != 'tokens':
    try:
      total = duration_epochs(config, num_train)
    except config_lib.ConfigError:
      total = 0.0
    per_epoch = lambda m: config_lib.Duration(m, o.milestone_unit).to_examples(
        config.train.batch_size, num_train) / num_train
    fractions = tuple(float(f'{per_epoch(m) / total:.10g}') for m in o.milestones) if total else ()
    if fractions and all(0 < f < 1 for f in fractions):
      return fractions, (f'the config\'s step schedule: milestones '
                         f'{", ".join(f"{m:g}" for m in o.milestones)} {o.milestone_unit} of '
                         f'{config.train.duration}')
  return SMITH_FRACTIONS, 'Smith et al.\'s epochs 60, 120 and 160 of 200'


def _factor(config, options) -> tuple[int, str]:
  if options.factor is not None:
    return options.factor, 'study.factor'
  o = config.optim
  if o.schedule == 'step' and o.milestones and 0 < o.decay_factor < 1:
    k = round(1 / o.decay_factor)
    if k >= 2 and abs(k * o.decay_factor - 1) < 1e-6:
      return k, f'1 / the config\'s optim.decay_factor={o.decay_factor:g}'
  return SMITH_FACTOR, 'Smith et al.\'s 5'


def design(config: config_lib.Config, options: Options, num_train: int, has_test: bool,
           eval_split: str, metrics: dict[str, str]) -> Design:
  """The budgets, milestones, factor, caps and metric on this config; ConfigError when the
  config and options cannot answer the question."""
  metric = options.metric or ('accuracy' if 'accuracy' in metrics else 'loss')
  if metric not in metrics:
    raise config_lib.ConfigError(f'study.metric={metric!r}: not a metric of the task '
                                 f'{config.task.name!r} (allowed: {", ".join(metrics)})')
  if options.budgets:
    budgets, budget_rule = tuple(options.budgets), 'study.budgets'
  else:
    budgets = (duration_epochs(config, num_train),)
    budget_rule = f'train.duration={config.train.duration!r}'
  budgets = tuple(float(f'{b * options.budget_scale:.6g}') for b in budgets)
  if options.budget_scale != 1:
    budget_rule += f' × study.budget_scale={options.budget_scale:g}'
  fractions, milestone_rule = _milestone_fractions(config, options, num_train)
  factor, factor_rule = _factor(config, options)
  b0 = config.train.batch_size
  if options.max_batch_size is not None:
    cap, cap_rule = options.max_batch_size, 'study.max_batch_size'
  elif config.train.max_batch_size is not None:
    cap, cap_rule = config.train.max_batch_size, 'the config\'s train.max_batch_size'
  else:
    cap, cap_rule = num_train, 'the training set'
  if cap > num_train:
    field = 'study.max_batch_size' if options.max_batch_size is not None else \
        'train.max_batch_size'
    raise config_lib.ConfigError(f'{field}={cap}: exceeds the {num_train} training examples '
                                 f'(allowed: {b0 * factor} … {num_train})')
  if b0 * factor > cap:
    raise config_lib.ConfigError(
        f'study.factor={factor}: train.batch_size={b0} × {factor} = {b0 * factor} exceeds the '
        f'cap {cap} ({cap_rule}), so the increasing-batch schedule could never grow the batch; '
        'lower train.batch_size or study.factor')
  grows = increases(phase_batches(b0, factor, len(fractions), cap))
  if options.hybrid_increases >= grows and options.hybrid_increases:
    raise config_lib.ConfigError(
        f'study.hybrid_increases={options.hybrid_increases}: the increasing-batch schedule '
        f'itself grows the batch {grows} time(s) within the cap {cap}, so the hybrid would equal '
        f'it (allowed: 0 … {grows - 1}; 0 leaves the hybrid out)')
  return Design(num_train=num_train, batch_size=b0, budgets=budgets, budget_rule=budget_rule,
                fractions=fractions, milestone_rule=milestone_rule, factor=factor,
                factor_rule=factor_rule, cap=cap, cap_rule=cap_rule,
                hybrid_increases=options.hybrid_increases, metric=metric,
                column=f'{"test" if has_test else "eval"}_{metric}',
                split='test' if has_test else eval_split,
                higher_is_better=metrics[metric] == 'max')


def schedule_config(config: config_lib.Config, plan: Design, schedule: str, budget: float,
                    seed: int, evaluations: int) -> config_lib.Config:
  """One run: the user's config with the schedule's milestones, `budget` epochs, evaluated and
  logged `evaluations` times; the config's own LR schedule and batch milestones are replaced."""
  every = f'{budget / evaluations:.6g} epochs'
  milestones = plan.milestones(budget)
  train = dataclasses.replace(
      config.train, seed=seed, duration=f'{budget:g} epochs', log_every=every, eval_every=every,
      checkpoint_every=None, stop_at_target=False, batch_size_milestones=(),
      batch_size_milestone_unit='epochs', batch_size_factor=1, max_batch_size=None)
  optim = dataclasses.replace(config.optim, schedule='constant', milestones=(),
                              milestone_unit='epochs')
  if schedule == 'decaying LR':
    optim = dataclasses.replace(optim, schedule='step', milestones=milestones,
                                decay_factor=1 / plan.factor)
  else:
    train = dataclasses.replace(train, batch_size_milestones=milestones,
                                batch_size_factor=plan.factor, max_batch_size=plan.cap_of(schedule))
  return dataclasses.replace(config, train=train, optim=optim)


def _workload_facts(config: config_lib.Config) -> tuple[Any, dict]:
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  workload = resolve(config)
  facts = dict(num_train=workload.dataset.num_examples(workload.train_split),
               has_test=workload.test_split is not None, eval_split=workload.eval_split,
               metrics=dict(workload.task.metrics))
  return workload, facts


def check(config: config_lib.Config, options: Options) -> None:
  if not options.seeds or len(set(options.seeds)) != len(options.seeds):
    raise config_lib.ConfigError(f'study.seeds={options.seeds}: give at least one seed, each once')
  if options.factor is not None and not (isinstance(options.factor, int) and options.factor >= 2):
    raise config_lib.ConfigError(f'study.factor={options.factor!r}: an integer >= 2 (the batch '
                                 'grows by whole multiples)')
  fractions = options.milestone_fractions
  if fractions and not (all(0 < f < 1 for f in fractions)
                        and list(fractions) == sorted(set(fractions))):
    raise config_lib.ConfigError(f'study.milestone_fractions={fractions}: increasing fractions '
                                 'of the budget, each in (0, 1)')
  if any(not b > 0 for b in options.budgets) or not options.budget_scale > 0:
    raise config_lib.ConfigError(f'study.budgets={options.budgets}, study.budget_scale='
                                 f'{options.budget_scale}: epochs must be positive')
  if not (isinstance(options.evaluations, int) and options.evaluations >= 1):
    raise config_lib.ConfigError(f'study.evaluations={options.evaluations!r}: an integer >= 1')
  if not (isinstance(options.hybrid_increases, int) and options.hybrid_increases >= 0):
    raise config_lib.ConfigError(f'study.hybrid_increases={options.hybrid_increases!r}: an '
                                 'integer >= 0 (0: no hybrid)')
  momentum = declared.of_name(config.optim.name).momentum
  if momentum is None:  # its noise scale g = εN/(B(1 − m)) is the study's x axis
    raise config_lib.ConfigError(str(declared.undeclared(
        config.optim.name, 'momentum', 'the increase-batch study (g = εN/(B(1 − m)))')))
  if config.optim.lr_scaling != 'none':
    raise config_lib.ConfigError(
        f'optim.lr_scaling={config.optim.lr_scaling!r}: would scale the LR with the growing '
        'batch and undo the schedule; set optim.lr_scaling=none and the LR you want at '
        'train.batch_size')
  if config.train.batch_policy != 'none':
    raise config_lib.ConfigError(f'train.batch_policy={config.train.batch_policy!r}: the study '
                                 'sets the batch schedule itself; set train.batch_policy=none')
  workload, facts = _workload_facts(config)
  plan = design(config, options, **facts)
  _check_plans(config, options, plan, workload)


def _check_plans(config, options, plan: Design, workload) -> None:
  """Plans every schedule and budget as training will (devices, micro-batches, warmup)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mbx.training.plan import make_plan  # pylint: disable=import-outside-toplevel
  for budget in plan.budgets:
    for schedule in plan.schedules:
      run_config = schedule_config(config, plan, schedule, budget, options.seeds[0],
                                   options.evaluations)
      try:
        config_lib.validate(run_config)
        make_plan(run_config, jax.device_count(), plan.num_train, jax.default_backend(),
                  **workload.plan_options)
      except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f'{schedule}, {budget:g} epochs: {error}') from None


# ------------------------------------------------------------------ the analyses
def run_row(run, budget: float, schedule: str, plan: Design) -> dict[str, Any]:
  """One run: its final metric, updates, final B and LR, times."""
  status, train = run.status, run.train_metrics
  row = {'budget_epochs': budget, 'schedule': schedule, 'seed': run.config.train.seed,
         'status': status['status'], plan.column: status.get(plan.column, math.nan)}
  if plan.column != f'eval_{plan.metric}':
    row[f'eval_{plan.metric}'] = status.get(f'eval_{plan.metric}', math.nan)
  row.update(updates=status['step'], final_batch_size=int(train['batch_size'].iloc[-1]),
             final_learning_rate=float(train['learning_rate'].iloc[-1]),
             final_train_loss=float(train['loss'].iloc[-1]),
             train_time_s=status.get('train_time'), wall_time_s=status.get('wall_time'),
             trial=run.workdir.name)
  return row


def _groups(rows, budget, schedule) -> list[dict]:
  return sorted((r for r in rows if r['budget_epochs'] == budget and r['schedule'] == schedule),
                key=lambda r: r['seed'])


def _mean(values) -> float:
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  return sum(values) / len(values) if values else math.nan


def summary_rows(rows: list[dict], column: str, scale: float) -> list[dict]:
  """Per budget and schedule: the final metric over seeds (× scale; mean, std, t-interval),
  the updates and how many times fewer than decaying LR's, final B and LR, mean times."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  out = []
  for budget in dict.fromkeys(r['budget_epochs'] for r in rows):
    decay = _mean(r['updates'] for r in _groups(rows, budget, 'decaying LR'))
    for schedule in [s for s in SCHEDULES if _groups(rows, budget, s)]:
      group = _groups(rows, budget, schedule)
      values = [r[column] * scale for r in group]
      updates = _mean(r['updates'] for r in group)
      out.append({'budget_epochs': budget, 'schedule': schedule,
                  **statistics.mean_ci(values),
                  'per_seed': ', '.join(f'{v:.4g}' for v in values),
                  'updates': updates, 'fewer_updates_than_decaying_lr': decay / updates,
                  'final_batch_size': group[0]['final_batch_size'],
                  'final_learning_rate': group[0]['final_learning_rate'],
                  'train_time_s': _mean(r['train_time_s'] for r in group),
                  'wall_time_s': _mean(r['wall_time_s'] for r in group)})
  return out


def paired_rows(rows: list[dict], column: str, scale: float) -> list[dict]:
  """Per budget, increasing batch and hybrid against decaying LR, paired by seed: the
  difference of the final metric (× scale) with its t-interval, paired t-test and Wilcoxon p,
  and the updates of both."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  out = []
  for budget in dict.fromkeys(r['budget_epochs'] for r in rows):
    base = {r['seed']: r for r in _groups(rows, budget, 'decaying LR')}
    for other in ('increasing batch', 'hybrid'):
      group = [r for r in _groups(rows, budget, other) if r['seed'] in base]
      if not group:
        continue
      result = statistics.paired([base[r['seed']][column] for r in group],
                                 [r[column] for r in group], 'difference', scale)
      updates = _mean(r['updates'] for r in group)
      decay = _mean(base[r['seed']]['updates'] for r in group)
      out.append({'budget_epochs': budget, 'comparison': f'{other} − decaying LR', **result,
                  'updates': updates, 'decaying_lr_updates': decay,
                  'fewer_updates': decay / updates})
  return out


def phases(train, milestones: tuple[float, ...], budget: float,
           num_train: int) -> list[dict[str, Any]]:
  """The phases between milestones of one run, from its train log (whose rows end wherever the
  batch or a step of the LR changes): epochs, B, LR, updates, the logged noise scale
  g = εN/(B(1−m)), the exact g·(1 − B/N) = ε(N/B − 1)/(1−m), and the training loss of the
  phase's last log row (its mean over that row's interval)."""
  out, start, first_step = [], 0.0, 0
  bounds = list(milestones) + [budget]
  for i, end in enumerate(bounds):
    later = train[train['epoch'] >= end - 1e-9]
    row = later.iloc[0] if i + 1 < len(bounds) and len(later) else train.iloc[-1]
    batch, g = int(row['batch_size']), float(row['sgd_noise_scale'])
    out.append({'start_epoch': start, 'end_epoch': end, 'batch_size': batch,
                'learning_rate': float(row['learning_rate']), 'updates': int(row['step']) - first_step,
                'g': g, 'g_exact': g * (1 - batch / num_train), 'train_loss': float(row['loss']),
                'logged_epoch': float(row['epoch'])})
    start, first_step = end, int(row['step'])
  return out


def value_at(runs, epoch: float, column: str) -> float:
  """Mean over runs of `column` at the last evaluation at or before `epoch`."""
  values = []
  for run in runs:
    evals = run.eval_metrics[run.eval_metrics['epoch'] <= epoch + 1e-9]
    values.append(float(evals[column].iloc[-1]) if len(evals) else math.nan)
  return _mean(values)


# ------------------------------------------------------------------ the study
def run(ctx) -> None:
  from mbx.figures import schedules as figures  # pylint: disable=import-outside-toplevel
  from mbx.optim.optimizers import resolve_optimizer  # pylint: disable=import-outside-toplevel
  config, options = ctx.config, ctx.options
  _, facts = _workload_facts(config)
  plan = design(config, options, **facts)
  momentum = resolve_optimizer(config).momentum('the increase-batch study (g = εN/(B(1−m)))')
  seeds, b0, k = options.seeds, plan.batch_size, plan.factor
  sequence = lambda schedule: _sequence_text(
      phase_batches(b0, k, len(plan.fractions), plan.cap_of(schedule)), k)
  ctx.protocol += [
      f'Model and data: `{config.model.name}` on `{config.data.name}` (N = {plan.num_train} '
      f'training examples), optimizer `{config.optim.name}` (m = {momentum:g} in g), '
      f'B0 = {b0} and ε = {config.optim.learning_rate:g} from the config'
      + (f', warmup {config.optim.warmup}' if not config.optim.warmup.startswith('0 ') else '')
      + '; the config\'s LR schedule and batch milestones are replaced by the three below. '
      f'Seeds {list(seeds)}: a seed sets initialisation and data order, shared by the '
      'three schedules.',
      f'Budgets: {", ".join(f"{b:g}" for b in plan.budgets)} epochs ({plan.budget_rule}), '
      'equal for the three schedules. Milestones at '
      f'{", ".join(f"{f:g}" for f in plan.fractions)} of each budget ({plan.milestone_rule}): '
      + '; '.join(f'epochs {", ".join(f"{m:g}" for m in plan.milestones(b))} of {b:g}'
                  for b in plan.budgets) + '.',
      f'Factor k = {k} ({plan.factor_rule}). Decaying LR: {sequence("decaying LR")}. '
      f'Increasing batch (cap {plan.cap}, {plan.cap_rule}): {sequence("increasing batch")}.'
      + (f' Hybrid (B × k at the first {plan.hybrid_increases} milestone'
         f'{"s" * (plan.hybrid_increases > 1)}, then the LR ÷ k): '
         f'{sequence("hybrid")}.' if plan.hybrid_increases else ' No hybrid.'),
      f'Compared: the final {plan.split} {plan.metric}, measured once at the end of each run; '
      'increasing batch − decaying LR and hybrid − decaying LR paired by seed: mean with a '
      '95% t-interval, paired t-test, exact Wilcoxon signed-rank (n pairs = seeds). Curves: '
      f'the {facts["eval_split"]} split, {options.evaluations} evaluations per run. '
      'g = εN/(B(1−m)) as logged (sgd_noise_scale); exact g = ε(N/B − 1)/(1−m).']

  runs = {}
  for budget in plan.budgets:
    runs.update(ctx.train({(budget, schedule, seed): schedule_config(
        config, plan, schedule, budget, seed, options.evaluations)
        for schedule in plan.schedules for seed in seeds}, f'{budget:g} epochs'))
  rows = [run_row(trained, *key[:2], plan) for key, trained in runs.items()]
  ctx.table('runs', rows)
  summary = summary_rows(rows, plan.column, plan.scale)
  ctx.table('schedules', summary,
            title=f'Final {plan.label} per schedule (mean ± std over {len(seeds)} seed(s))',
            markdown=_summary_markdown(summary, plan),
            note='Updates: parameter updates per run. Training time is the loop alone '
                 '(status.json `train_time`); wall time per run adds startup, data, one '
                 'compile per batch size, the evaluations and the final checkpoint. Per-run '
                 'rows: `runs.csv`.')
  paired = paired_rows(rows, plan.column, plan.scale)
  ctx.table('paired', paired, title=f'Against decaying LR, paired by seed (n = {len(seeds)})',
            markdown=_paired_markdown(paired, plan))

  phase_rows = []
  with ctx.timed('figures'):
    for budget in plan.budgets:
      groups = {s: [runs[(budget, s, seed)] for seed in seeds] for s in plan.schedules}
      tag = f'{budget:g}ep'
      ctx.section(f'{budget:g} epochs', [])
      figures.schedules(groups, ctx.figure(f'schedules_{tag}', f'{budget:g} epochs: LR, batch '
                                           'size and noise scale (first seed)'),
                        title=f'{budget:g} epochs: ')
      for x, name in (('epoch', 'epochs'), ('step', 'updates')):
        figures.metric_curves(
            groups, ctx.figure(f'{plan.metric}_vs_{name}_{tag}', f'{budget:g} epochs: '
                               f'{facts["eval_split"]} {plan.metric} against {name}'),
            x=x, metric=f'eval_{plan.metric}', scale=plan.scale,
            ylabel=f'{facts["eval_split"]} {plan.metric}' + (' (%)' if plan.scale == 100 else ''),
            higher_is_better=plan.higher_is_better, title=f'{budget:g} epochs: ')
      for schedule, group in groups.items():
        for p in phases(group[0].train_metrics, plan.milestones(budget), budget, plan.num_train):
          phase_rows.append({'budget_epochs': budget, 'schedule': schedule, **p,
                             f'eval_{plan.metric}_mean': plan.scale * value_at(
                                 group, p['logged_epoch'], f'eval_{plan.metric}')})
  ctx.table('phases', phase_rows, title='Phases',
            markdown=_phases_markdown(phase_rows, plan, facts['eval_split']),
            note=f'Seed {seeds[0]}\'s B, LR, updates and training loss (the mean over the last '
                 f'log interval of the phase); {facts["eval_split"]} {plan.metric}: the mean over '
                 'seeds at the last evaluation of the phase. Exact g differs from g once B is '
                 'not small against N.')

  for budget in plan.budgets:
    cells = [f'{s["schedule"]} {_pm(s, plan)}' for s in summary if s['budget_epochs'] == budget]
    ctx.findings.append(f'{budget:g} epochs, final {plan.split} {plan.metric}'
                        + (' in %' if plan.scale == 100 else '') + ', mean ± std over '
                        f'{len(seeds)} seed(s): {"; ".join(cells)}.')
    for p in [p for p in paired if p['budget_epochs'] == budget]:
      ctx.findings.append(_paired_finding(p, plan))
  ctx.results.update(
      num_train=plan.num_train, budgets=plan.budgets, milestone_fractions=plan.fractions,
      factor=k, cap=plan.cap, hybrid_cap=plan.cap_of('hybrid') if plan.hybrid_increases else None,
      metric=plan.column, rules={'budgets': plan.budget_rule, 'milestones': plan.milestone_rule,
                                 'factor': plan.factor_rule, 'cap': plan.cap_rule})


def _sequence_text(phases_: list[tuple[int, float]], factor: int) -> str:
  """'B 100 → 500 → 2500, then LR ÷ 5 at the 3rd milestone'."""
  batches = list(dict.fromkeys(b for b, _ in phases_))
  text = 'B ' + ' → '.join(map(str, batches)) if len(batches) > 1 else f'B = {batches[0]}'
  decays = [i for i, ((_, a), (_, b)) in enumerate(zip(phases_, phases_[1:]), 1) if b != a]
  if decays:
    text += (', then ' if len(batches) > 1 else ', ') + f'the LR ÷ {factor} at milestone' + \
        ('s ' if len(decays) > 1 else ' ') + ', '.join(map(str, decays))
  return text


def _pm(s: dict, plan: Design) -> str:
  """'95.74 ± 0.60' for accuracies in percent, '0.0148 ± 0.0011' otherwise."""
  if not math.isfinite(s['mean']):
    return '—'
  spec = '.2f' if plan.scale == 100 else '.3g'
  return (f'{s["mean"]:{spec}} ± {s["std"]:{spec if plan.scale == 100 else ".2g"}}'
          if s['n'] > 1 else f'{s["mean"]:{spec}}')


def _interval(p: dict, plan: Design) -> str:
  """'+0.16 [-0.27, +0.59]' in points for accuracies; statistics.interval_text otherwise."""
  from mbx.study import statistics  # pylint: disable=import-outside-toplevel
  if plan.scale != 100 or not math.isfinite(p['estimate']):
    return statistics.interval_text(p)
  return f'{p["estimate"]:+.2f}' + (f' [{p["ci_low"]:+.2f}, {p["ci_high"]:+.2f}]'
                                    if math.isfinite(p['ci_low']) else '')


def _paired_finding(p: dict, plan: Design) -> str:
  text = f'{p["budget_epochs"]:g} epochs, {p["comparison"]}: '
  if p['n'] >= 2 and math.isfinite(p['ci_low']):
    contains = p['ci_low'] <= 0 <= p['ci_high']
    text += (f'{_interval(p, plan)}{plan.unit} in {plan.split} {plan.metric} (n = '
             f'{p["n"]} paired seeds; paired t p = {p["p_t"]:.2g}, Wilcoxon p = '
             f'{p["p_wilcoxon"]:.2g}; higher in {p["higher"]} of {p["n"]}): the 95% CI '
             + ('contains 0' if contains else 'excludes 0'))
  else:
    text += (f'{_interval(p, plan)}{plan.unit} in {plan.split} {plan.metric} '
             f'(n = {p["n"]} pair(s): no interval)')
  return text + (f'; {p["fewer_updates"]:.2f}× fewer parameter updates '
                 f'({p["updates"]:.0f} vs {p["decaying_lr_updates"]:.0f}).')


def _summary_markdown(summary: list[dict], plan: Design) -> list[str]:
  lines = [f'| budget (epochs) | schedule | {plan.label} mean ± std | per seed | updates | '
           'updates vs decaying LR | final B | final LR | training time (s) | wall time per run '
           '(s) |', '|---:|---|---:|---|---:|---:|---:|---:|---:|---:|']
  for s in summary:
    fewer = ('—' if s['schedule'] == 'decaying LR'
             else f'{s["fewer_updates_than_decaying_lr"]:.2f}× fewer')
    lines.append(f'| {s["budget_epochs"]:g} | {s["schedule"]} | {_pm(s, plan)} | {s["per_seed"]} | '
                 f'{s["updates"]:.0f} | {fewer} | {s["final_batch_size"]} | '
                 f'{s["final_learning_rate"]:.3g} | {s["train_time_s"]:.1f} | '
                 f'{s["wall_time_s"]:.1f} |')
  return lines


def _paired_markdown(paired: list[dict], plan: Design) -> list[str]:
  lines = [f'| budget (epochs) | comparison | n | difference in {plan.split} {plan.metric}'
           + (' (points)' if plan.scale == 100 else '') + ' [95% CI] | paired t p | Wilcoxon p | seeds higher / lower | updates '
           '(vs decaying LR) |', '|---:|---|---:|---|---:|---:|---|---|']
  for p in paired:
    lines.append(f'| {p["budget_epochs"]:g} | {p["comparison"]} | {p["n"]} | '
                 f'{_interval(p, plan)} | {p["p_t"]:.2g} | {p["p_wilcoxon"]:.2g} | '
                 f'{p["higher"]} / {p["lower"]} | {p["updates"]:.0f} vs '
                 f'{p["decaying_lr_updates"]:.0f} ({p["fewer_updates"]:.2f}× fewer) |')
  return lines


def _phases_markdown(rows: list[dict], plan: Design, eval_split: str) -> list[str]:
  column = f'eval_{plan.metric}_mean'
  lines = [f'| budget | schedule | epochs | B | LR | updates | g | exact g | training loss | '
           f'{eval_split} {plan.metric}' + (' (%)' if plan.scale == 100 else '') + ' |',
           '|---:|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["budget_epochs"]:g} | {r["schedule"]} | {r["start_epoch"]:g}–'
                 f'{r["end_epoch"]:g} | {r["batch_size"]} | {r["learning_rate"]:.3g} | '
                 f'{r["updates"]} | {r["g"]:.3g} | {r["g_exact"]:.3g} | '
                 f'{r["train_loss"]:.2g} | {r[column]:{".2f" if plan.scale == 100 else ".4g"}} |')
  return lines
