"""`mbx analyze sharpness|interpolate|landscape|noise-scale`: analyses of checkpoints in run
directories.

    mbx analyze sharpness runs/sb [--step 3000]  # -> runs/sb/analysis/sharpness_step3000.*
    mbx analyze interpolate runs/sb runs/lb      # -> runs/sb/analysis/interpolation_sb_lb.*
    mbx analyze landscape runs/sb --dims 2       # -> runs/sb/analysis/landscape2d_step3000.*
    mbx analyze noise-scale runs/sb --steps 500,1000 --examples 512  # -> .../noise_scale.json

Each writes a JSON summary (numbers with the data, evaluation mode and estimator settings that
produced them) and its figures; `--out DIR` puts them elsewhere. The analyses load JAX when
they start, not when the parsers are built.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from mbx.cli import directories


def _common(parser) -> None:
  parser.add_argument('--out', default=None, help='output directory (default RUN_DIR/analysis)')
  parser.add_argument('--subset', type=int, default=None,
                      help='use the first N training examples (default: all of them)')
  parser.add_argument('--batch-size', type=int, default=None,
                      help='examples per evaluation batch (default: the run\'s eval batch size)')


def add_analyze_parsers(analyze_subparsers) -> None:
  p = analyze_subparsers.add_parser(
      'sharpness', help='eps-sharpness (Keskar et al. 2017) and Hessian curvature of a checkpoint')
  p.add_argument('run_dir')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  p.add_argument('--epsilons', type=float, nargs='+', default=[1e-3, 5e-4])
  p.add_argument('--subspace-dim', type=int, default=100,
                 help='p of the random n x p matrix A (0: full space only)')
  p.add_argument('--subspace-std', type=float, default=1.0,
                 help='standard deviation of the entries of A (1/sqrt(n): unit-norm columns)')
  p.add_argument('--maxiter', type=int, default=10, help='L-BFGS-B iterations per start')
  p.add_argument('--starts', type=int, default=4,
                 help='L-BFGS-B starts: y = 0, the sign(gradient) vertex, random vertices')
  p.add_argument('--top-k', type=int, default=5, help='top Hessian eigenvalues (0: skip)')
  p.add_argument('--lanczos-steps', type=int, default=None)
  p.add_argument('--trace-samples', type=int, default=100, help='Hutchinson samples (0: skip)')
  p.add_argument('--trace-sketch', type=int, default=0, help='> 0: Hutch++ with this sketch')
  p.add_argument('--density-runs', type=int, default=5, help='SLQ runs (0: skip)')
  p.add_argument('--density-steps', type=int, default=80, help='Lanczos steps per SLQ run')
  p.add_argument('--seed', type=int, default=0)
  _common(p)
  p.set_defaults(run=_sharpness)

  p = analyze_subparsers.add_parser(
      'interpolate', help='loss/accuracy along a*theta_B + (1-a)*theta_A (Keskar Fig. 3)')
  p.add_argument('run_a')
  p.add_argument('run_b')
  p.add_argument('--step-a', type=int, default=None)
  p.add_argument('--step-b', type=int, default=None)
  p.add_argument('--alphas', type=float, nargs=3, default=[-1.0, 2.0, 25],
                 metavar=('START', 'STOP', 'NUM'), help='np.linspace(START, STOP, NUM)')
  _common(p)
  p.set_defaults(run=_interpolate)

  p = analyze_subparsers.add_parser(
      'landscape', help='loss along filter-normalised random directions (Li et al. 2018)')
  p.add_argument('run_dir')
  p.add_argument('--step', type=int, default=None)
  p.add_argument('--dims', type=int, choices=(1, 2), default=1)
  p.add_argument('--span', type=float, default=1.0)
  p.add_argument('--points', type=int, default=None, help='per axis (default 51 in 1-D, 21 in 2-D)')
  p.add_argument('--seed', type=int, default=0)
  _common(p)
  p.set_defaults(run=_landscape)
  add_noise_scale_parser(analyze_subparsers)


def add_noise_scale_parser(analyze_subparsers) -> None:
  p = analyze_subparsers.add_parser(
      'noise-scale', help='the gradient noise-scale estimators of checkpoints, with bootstrap '
      'intervals over batches (docs/science.md §20)')
  p.add_argument('run_dir')
  p.add_argument('--steps', default=None,
                 help='checkpoint steps, comma-separated (default: every saved one)')
  p.add_argument('--examples', type=int, default=512, help='training examples per draw')
  p.add_argument('--groups', type=int, default=8, help='gradient groups each draw is split into')
  p.add_argument('--draws', type=int, default=20, help='draws per step (the bootstrap resamples '
                 'them)')
  p.add_argument('--estimators', default=None, help='comma-separated (default: every one the '
                 'optimizer supports, and trace_per_example)')
  p.add_argument('--per-example', type=int, default=64,
                 help='examples differentiated one by one for trace_per_example')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default=None, help='output directory (default RUN_DIR/analysis)')
  p.set_defaults(run=_noise_scale)


def _noise_scale(args) -> None:
  directories.require(args.run_dir, 'run', 'mbx analyze noise-scale')
  from mbx import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    steps = ([int(s) for s in args.steps.split(',') if s.strip()] if args.steps else None)
  except ValueError:
    raise config_lib.ConfigError(f'--steps {args.steps}: expected comma-separated integers') \
        from None
  names = [n.strip() for n in args.estimators.split(',')] if args.estimators else None
  # pylint: disable=import-outside-toplevel  (jax)
  from mbx.measure import noise_scale
  from mbx.training.records import load_run
  run = load_run(args.run_dir)
  summary = noise_scale.noise_scale_analysis(
      run, steps, examples=args.examples, groups=args.groups, draws=args.draws,
      estimators=names, per_example=args.per_example, seed=args.seed)
  out = _out_dir(args, args.run_dir)
  _write_json(out / 'noise_scale.json', summary)
  for row in summary['results']:
    print(noise_scale.text(row))


def _out_dir(args, run_dir) -> pathlib.Path:
  out = pathlib.Path(args.out) if args.out else pathlib.Path(run_dir) / 'analysis'
  out.mkdir(parents=True, exist_ok=True)
  return out


def _write_json(path: pathlib.Path, value) -> None:
  path.write_text(json.dumps(value, indent=2) + '\n')
  print(f'wrote {path}')


def _sharpness(args) -> None:
  directories.require(args.run_dir, 'run', 'mbx analyze sharpness')
  # pylint: disable=import-outside-toplevel  (jax, matplotlib)
  from mbx.figures import sharpness as figures
  from mbx.measure import analysis, hessian
  from mbx.training.records import load_run
  run = load_run(args.run_dir)
  summary = analysis.sharpness_analysis(
      run, args.step, epsilons=args.epsilons, subspace_dim=args.subspace_dim,
      subspace_std=args.subspace_std,
      maxiter=args.maxiter, num_starts=args.starts, top_k=args.top_k, lanczos_steps=args.lanczos_steps,
      trace_samples=args.trace_samples, trace_sketch=args.trace_sketch,
      density_runs=args.density_runs, density_steps=args.density_steps, subset=args.subset,
      batch_size=args.batch_size, seed=args.seed, quiet=False)
  out = _out_dir(args, args.run_dir)
  step = summary['run']['step']
  _write_json(out / f'sharpness_step{step}.json', summary)
  if 'density' in summary['hessian']:
    density = summary['hessian']['density']
    grid = hessian.density_on_grid(density['nodes'], density['weights'])
    path = figures.density_plot({f'{run.config.name} step {step}': grid},
                                out / f'hessian_density_step{step}.png')
    print(f'wrote {path}')
  print(_sharpness_line(summary))


def _sharpness_line(summary: dict) -> str:
  parts = [f'train loss {summary["train"]["loss"]:.4g}', f'test loss {summary["test"]["loss"]:.4g}']
  if 'accuracy' in summary['train']:
    parts += [f'train acc {summary["train"]["accuracy"]:.4f}',
              f'test acc {summary["test"]["accuracy"]:.4f}']
  for r in summary['sharpness']['results']:
    parts.append(f'sharpness({r["space"]}, eps={r["epsilon"]:g}) {r["sharpness"]:.4g}')
  curvature = summary['hessian']
  if 'top_eigenvalues' in curvature:
    parts.append(f'lambda_max {curvature["top_eigenvalues"]["eigenvalues"][0]:.4g}')
  if 'trace' in curvature:
    parts.append(f'trace {curvature["trace"]["trace"]:.4g} ± {curvature["trace"]["stderr"]:.2g}')
  return '; '.join(parts) + f'  [{summary["mode"]}]'


def _interpolate(args) -> None:
  directories.require(args.run_a, 'run', 'mbx analyze interpolate')
  directories.require(args.run_b, 'run', 'mbx analyze interpolate')
  # pylint: disable=import-outside-toplevel  (jax, matplotlib)
  from mbx.figures import sharpness as figures
  from mbx.measure import analysis
  from mbx.training.records import load_run
  run_a, run_b = load_run(args.run_a), load_run(args.run_b)
  start, stop, num = args.alphas
  summary = analysis.interpolation_analysis(
      run_a, run_b, args.step_a, args.step_b,
      alphas=np.linspace(start, stop, int(num)).tolist(), subset=args.subset,
      batch_size=args.batch_size)
  if not summary['same_initialization']:
    print('warning: the runs do not start from the same initialisation (model, train.seed or '
          'train.init_from differ); Keskar et al. interpolate between runs that do')
  out = _out_dir(args, args.run_a)
  name = f'interpolation_{run_a.workdir.name}_{run_b.workdir.name}'
  _write_json(out / f'{name}.json', summary)
  path = figures.parametric_plot([summary['rows']], out / f'{name}.png',
                                 label_a=run_a.workdir.name, label_b=run_b.workdir.name)
  print(f'wrote {path}')


def _landscape(args) -> None:
  directories.require(args.run_dir, 'run', 'mbx analyze landscape')
  # pylint: disable=import-outside-toplevel  (jax, matplotlib)
  from mbx.figures import sharpness as figures
  from mbx.measure import analysis
  from mbx.training.records import load_run
  run = load_run(args.run_dir)
  summary = analysis.landscape_analysis(run, args.step, dims=args.dims, span=args.span,
                                        points=args.points, subset=args.subset,
                                        batch_size=args.batch_size, seed=args.seed)
  out = _out_dir(args, args.run_dir)
  name = f'landscape{args.dims}d_step{summary["run"]["step"]}'
  _write_json(out / f'{name}.json', summary)
  if args.dims == 1:
    path = figures.landscape_1d_plot({run.config.name: summary['rows']}, out / f'{name}.png')
  else:
    path = figures.landscape_2d_plot(summary['grid'], out / f'{name}.png')
  print(f'wrote {path}')
