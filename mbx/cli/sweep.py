"""`mbx sweep`, `mbx analyze cbs` and `mbx analyze local-cbs`.

    mbx sweep --config configs/cbs_mnist1d_cnn.py [--sweep-dir DIR] [--worker i --num-workers n]
    mbx analyze cbs sweeps/cbs_mnist1d_cnn            # tables + figures in <sweep>/analysis
    mbx analyze cbs sweeps/cbs_mnist1d_cnn --zhang-b0 16   # Zhang's 20% CBS from B0 = 16
    mbx analyze local-cbs RUN_DIR --step 400 --factors 1,2,4,8,16

The parsers and the sweep file's checks import no JAX; the runner loads it, and the analysis
pandas and matplotlib, inside the commands, so `--help` and config errors answer at once
(`mbx analyze cbs` never loads JAX).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

from mbx import config as config_lib
from mbx.cli import directories
from mbx.sweep import grid
from mbx.sweep import submit as submit_lib


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'sweep', help='run a batch-size sweep (re-run to resume; split with --worker)',
      description='Trains every trial of a sweep config (configs/<study>.py defining '
                  'get_sweep()) as a run directory under SWEEP_DIR/trials, skipping '
                  'finished ones, and writes SWEEP_DIR/trials.csv.')
  parser.add_argument('--config', required=True,
                      help='configs/<study>.py with get_sweep(), or a JSON/YAML grid')
  parser.add_argument('--sweep-dir', default=None, help='default: sweeps/<sweep name>')
  parser.add_argument('--worker', type=int, default=0, help='this worker, 0-based '
                      '(e.g. $SLURM_ARRAY_TASK_ID)')
  parser.add_argument('--num-workers', type=int, default=1, help='workers sharing the sweep')
  parser.add_argument('--pack', action=argparse.BooleanOptionalAction, default=None,
                      help='train trials that share a pack key as one program '
                           '(default: the sweep config\'s `pack`)')
  parser.add_argument('--no-compilation-cache', action='store_true',
                      help="don't use JAX's persistent compilation cache in SWEEP_DIR/jax_cache")
  submit = parser.add_argument_group(
      'job array', 'submit the --num-workers shards as one job array through submitit '
      '(docs/multi_host.md); options default to the sweep config\'s `submit` mapping')
  submit.add_argument('--submit', choices=submit_lib.CLUSTERS, default=None,
                      help='slurm: submit and return (add --wait to block); local: the same '
                           'jobs as processes of this machine, waited for')
  submit.add_argument('--wait', action='store_true', help='wait for the jobs, then write the table')
  submit.add_argument('--partition', default=None)
  submit.add_argument('--time', default=None, help='per task, e.g. 4:00:00 or minutes')
  submit.add_argument('--gpus-per-task', type=int, default=None)
  submit.add_argument('--cpus-per-task', type=int, default=None)
  parser.add_argument('--list', action='store_true',
                      help="print this worker's trials and their status; train nothing")
  parser.add_argument('overrides', nargs='*',
                      help='sweep.<field>=value (e.g. sweep.seeds=0,1) or section.field=value '
                           'for the base config')
  parser.set_defaults(run=_sweep)


def _sweep(args) -> None:
  sweep = grid.load_sweep(args.config, args.overrides)
  from mbx.sweep import runner  # pylint: disable=import-outside-toplevel  (jax)
  sweep_dir = pathlib.Path(args.sweep_dir or pathlib.Path('sweeps') / sweep.name)
  if args.list:
    pack = sweep.pack if args.pack is None else args.pack
    for unit in runner.assign(grid.expand(sweep), args.worker, args.num_workers, pack,
                              sweep.pack_max_batch_size):
      for trial in unit:
        status = runner.read_status(runner.trial_dir(sweep_dir, trial)).get('status', 'pending')
        print(f'{trial.id}\t{status}')
    return
  if args.submit:
    _submit(args, sweep, sweep_dir)
    return
  progress = runner.run_sweep(sweep, sweep_dir, worker=args.worker,
                              num_workers=args.num_workers, pack=args.pack,
                              compilation_cache=not args.no_compilation_cache)
  table = runner.load_table(sweep_dir, refresh=False)
  counts = runner.outcome_counts(table)
  print(f'{sweep_dir}: worker {args.worker}/{args.num_workers} trained '
        f'{len(progress.trained)}, skipped {len(progress.skipped)} finished and '
        f'{len(progress.locked)} locked by another process, {len(progress.failed)} failed; '
        f'sweep: {len(table)} trials, ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
  print(f'table: {sweep_dir / runner.TABLE_FILE}')
  if progress.failed:
    sys.exit(1)


def _submit(args, sweep, sweep_dir: pathlib.Path) -> None:
  given = {'partition': args.partition, 'time': args.time, 'gpus_per_task': args.gpus_per_task,
           'cpus_per_task': args.cpus_per_task}
  options = submit_lib.SubmitOptions.from_mapping(
      {**sweep.submit, **{k: v for k, v in given.items() if v is not None}}, 'sweep.submit')
  if args.worker:
    raise config_lib.ConfigError('--worker: not with --submit, which submits every worker')
  jobs = submit_lib.submit(sweep, sweep_dir, cluster=args.submit, num_workers=args.num_workers,
                           options=options)
  print(f'{sweep_dir}: submitted {len(jobs)} worker job(s) to {args.submit}: '
        f'{", ".join(str(job.job_id) for job in jobs)}; logs in {sweep_dir / submit_lib.LOG_DIR}')
  if args.submit == 'slurm' and not args.wait:
    print(f'when they finish: mbx sweep --config {args.config} --sweep-dir {sweep_dir} --list, '
          f'and mbx analyze cbs {sweep_dir}')
    return
  failures = submit_lib.wait(jobs, sweep_dir)
  from mbx.sweep import runner  # pylint: disable=import-outside-toplevel  (jax)
  table = runner.load_table(sweep_dir, refresh=False)
  print(f'{sweep_dir}: {len(table)} trials, ' + ', '.join(
      f'{k} {v}' for k, v in runner.outcome_counts(table).items()))
  print(f'table: {sweep_dir / runner.TABLE_FILE}')
  for failure in failures:
    print(f'mbx sweep: {failure}', file=sys.stderr)
  if failures:
    sys.exit(1)


def add_analyze_parsers(subparsers) -> None:
  """`mbx analyze cbs` and `mbx analyze local-cbs`."""
  cbs = subparsers.add_parser(
      'cbs', help='critical batch size of a sweep: Shallue S(B), McCandlish fit, Zhang CBS',
      description='Per batch size the minimum steps-to-target and best LR; the fit '
                  'S = S_min (1 + B_crit / B) with a bootstrap interval; Zhang et al.\'s '
                  '20%% CBS; the run-averaged noise-scale estimators the trials logged; every '
                  'definition side by side (cbs_definitions.csv); CSVs and figures.')
  cbs.add_argument('sweep_dir')
  cbs.add_argument('--out', default=None, help='default: SWEEP_DIR/analysis')
  cbs.add_argument('--bootstrap', type=int, default=2000, help='bootstrap samples')
  cbs.add_argument('--bootstrap-method', choices=('residuals', 'seeds'), default='residuals')
  cbs.add_argument('--confidence', type=float, default=0.9)
  cbs.add_argument('--target', type=float, default=None,
                   help="another target value than the sweep's, from the same evaluations "
                        "(no harder than the sweep's when its trials stopped at the target)")
  cbs.add_argument('--zhang-b0', type=int, default=None, metavar='B0',
                   help="the reference batch B0 of Zhang et al.'s 20%% CBS, S(B) B / (S(B0) B0) = "
                        '1.2: a batch size of the sweep at which every optimizer reached the '
                        'target (default: the smallest that did)')
  cbs.add_argument('--no-figures', action='store_true')
  cbs.set_defaults(run=_analyze_cbs)

  local = subparsers.add_parser(
      'local-cbs', help="Merrill et al. 2025's local critical batch size at a checkpoint",
      description='Branches RUN_DIR at --step with k x B for each factor (LR scaled by the '
                  'rule) on the same window of data; the local CBS is the largest k B whose '
                  'final metric stays within --tolerance of k = 1.')
  local.add_argument('run_dir')
  local.add_argument('--step', type=int, required=True, help='a checkpointed step of RUN_DIR')
  local.add_argument('--factors', default='1,2,4,8,16,32,64', help='comma-separated k')
  local.add_argument('--window', default='2 epochs', help='data per branch, e.g. "8000 examples"')
  local.add_argument('--lr-scaling', choices=('linear', 'sqrt', 'none'), default=None,
                     help='default: linear for SGD-type, sqrt for Adam-type optimizers')
  local.add_argument('--tolerance', type=float, default=0.01)
  local.add_argument('--metric', default='eval_loss',
                     help='eval_<metric> of the run\'s task, or train_loss (default %(default)s)')
  local.add_argument('--seeds', default='0', help='comma-separated data seeds per branch')
  local.add_argument('--workdir', default=None,
                     help='branch runs (default RUN_DIR/local_cbs/step<N>)')
  local.add_argument('--out', default=None, help='CSV/JSON/PNG here (default: the workdir)')
  local.set_defaults(run=_analyze_local_cbs)


def _analyze_cbs(args) -> None:
  directories.require(args.sweep_dir, 'sweep', 'mbx analyze cbs')
  # pylint: disable=import-outside-toplevel  (pandas, matplotlib)
  import pandas as pd

  from mbx.figures import critical_batch as figures
  from mbx.sweep import critical_batch, trials
  table = trials.trial_table(args.sweep_dir, args.target)
  per_b = critical_batch.steps_to_result(table)
  # A bad --zhang-b0 stops here, before anything is written.
  critical_batch.check_zhang_reference_batch(per_b, args.zhang_b0, '--zhang-b0')
  analysis = critical_batch.analyze(table, num_samples=args.bootstrap, confidence=args.confidence,
                                    bootstrap=args.bootstrap_method,
                                    zhang_reference_batch=args.zhang_b0)
  if args.target is None:
    trials.write_table(args.sweep_dir, table)
  out = pathlib.Path(args.out or pathlib.Path(args.sweep_dir) / 'analysis')
  out.mkdir(parents=True, exist_ok=True)
  analysis.per_batch_size.to_csv(out / 'per_batch_size.csv', index=False)
  analysis.summary.to_csv(out / 'cbs_summary.csv', index=False)
  definitions = critical_batch.definitions_table([analysis])
  definitions.to_csv(out / 'cbs_definitions.csv', index=False)
  names = ['b_simple', *[n for n in analysis.estimators if n != 'b_simple']]
  shown = critical_batch.with_estimate_text(analysis.per_batch_size, names)
  with pd.option_context('display.width', 160, 'display.max_columns', 20,
                         'display.max_colwidth', 200):
    print(f'target: {analysis.target_metric} {analysis.target_value}')
    print(shown[['optimizer', 'batch_size', 'steps_to_target', 'examples_to_target',
                 'learning_rate', 'momentum', 'num_reached', 'num_not_reached', 'num_infeasible',
                 'num_incomplete', *names]].to_string(index=False))
  for _, row in analysis.summary.iterrows():
    print(_summary_line(row, args.confidence))
  print(f'the critical batch size, every definition ({out / "cbs_definitions.csv"}):')
  for _, row in definitions.iterrows():
    print(f'  {row["optimizer"]}, target {row["target"]}:')
    for column in definitions.columns[2:]:
      print(f'    {column}: {row[column]}')
  for optimizer, table in analysis.sensitivity.items():
    table.insert(0, 'optimizer', optimizer)
  if analysis.sensitivity:
    sensitivity = pd.concat(analysis.sensitivity.values(), ignore_index=True)
    sensitivity.to_csv(out / 'fit_sensitivity.csv', index=False)
    for optimizer, group in sensitivity.groupby('optimizer'):
      print(f'{optimizer}: B_crit with batch sizes left out: {group["b_crit"].min():.4g} to '
            f'{group["b_crit"].max():.4g} ({out / "fit_sensitivity.csv"})')
  (out / 'warnings.txt').write_text(''.join(f'{w}\n' for w in analysis.warnings))
  for warning in analysis.warnings:
    print(f'warning: {warning}')
  if not args.no_figures:
    for path in figures.save_all(analysis, out):
      print(f'figure: {path}')
  print(f'tables: {out / "per_batch_size.csv"}, {out / "cbs_summary.csv"}, '
        f'{out / "cbs_definitions.csv"}')


def _summary_line(row, confidence: float) -> str:
  """The fit's numbers and the best-LR exponent (the CBS definitions follow as a block)."""
  text = f'{row["optimizer"]}: '
  if 'b_crit' in row and not math.isnan(row.get('b_crit', math.nan)):
    text += (f'B_crit = {row["b_crit"]:.1f} [{row["b_crit_lo"]:.1f}, {row["b_crit_hi"]:.1f}] '
             f'({confidence:.0%} CI), S_min = {row["s_min"]:.1f} [{row["s_min_lo"]:.1f}, '
             f'{row["s_min_hi"]:.1f}], E_min = {row["e_min"]:.4g} [{row["e_min_lo"]:.4g}, '
             f'{row["e_min_hi"]:.4g}]')
  else:
    text += 'no fit (fewer than 3 batch sizes reached the target)'
  if math.isfinite(row.get('lr_exponent', math.nan)):
    text += (f'; best (effective) LR ∝ B^p, p = {row["lr_exponent"]:.2f} '
             f'[{row["lr_exponent_lo"]:.2f}, {row["lr_exponent_hi"]:.2f}] '
             f'({confidence:.0%} CI, {row["lr_exponent_n"]} batch sizes)')
  return text


def _analyze_local_cbs(args) -> None:
  directories.require(args.run_dir, 'run', 'mbx analyze local-cbs')
  # pylint: disable=import-outside-toplevel  (jax, matplotlib)
  from mbx.figures import critical_batch as figures
  from mbx.sweep import local_cbs
  factors = [int(k) for k in args.factors.split(',') if k.strip()]
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  per_factor, summary = local_cbs.local_cbs(
      args.run_dir, args.step, factors=factors, window=args.window,
      lr_scaling=args.lr_scaling, tolerance=args.tolerance, metric=args.metric,
      seeds=seeds, workdir=args.workdir, quiet=False)
  out = pathlib.Path(args.out or args.workdir or
                     pathlib.Path(args.run_dir) / 'local_cbs' / f'step{args.step}')
  out.mkdir(parents=True, exist_ok=True)
  per_factor.to_csv(out / 'local_cbs.csv', index=False)
  (out / 'local_cbs.json').write_text(json.dumps(summary, indent=2) + '\n')
  print(per_factor.to_string(index=False))
  capped = (' (every factor tried stayed within tolerance: a lower bound)'
            if summary['capped'] else '')
  print(f'local CBS at step {args.step} of {args.run_dir} (trained at B = '
        f'{summary["batch_size"]}): {local_cbs.local_cbs_text(summary)}{capped}')
  figures.local_cbs(per_factor, summary, out / 'local_cbs.png')
  print(f'written: {out / "local_cbs.csv"}, {out / "local_cbs.json"}, {out / "local_cbs.png"}')
