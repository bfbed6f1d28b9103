"""`mbx study NAME --config MY_CONFIG.py`: a whole study on your own model, data and task.

    mbx study sharp-minima --config configs/mnist1d_cnn.py --out studies/sharp --quick
    mbx study cbs --config my_config.py --workers 2 study.seeds=0,1
    mbx study cbs --config configs/cbs_mnist1d_cnn.py     # a sweep file: its grid as given
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from mbx import config as config_lib
from mbx import study as study_lib

STUDY_HELP = {
    'cbs': 'critical batch size: steps to target vs B, McCandlish fit, local CBS (Shallue 2019)',
    'sharp-minima': 'small vs large vs full batch at equal training loss: test gap, '
                    'eps-sharpness, lambda_max, tr(H), interpolation (Keskar 2017)',
    'increase-batch': 'decay the LR vs increase the batch vs hybrid, equal epochs (Smith 2018)',
    'small-batch': 'best batch size by validation and the good-LR range per B '
                   '(Masters & Luschi 2018)',
    'scaling-rules': 'largest batch at which linear/sqrt/warmup/LARS/LAMB hold accuracy '
                     '(Goyal 2017, You 2017/2019)',
    'adaptive': 'batch policies (warmup, AdaScale, noise scale, goodput) vs the best fixed '
                'batch on one target',
}


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'study', help='run a whole study (cbs, sharp-minima, ...) on your config',
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description='Runs a study on any config `mbx train` accepts and writes one directory: '
                  'tables (CSV and Markdown), figures, summary.json and a README with the '
                  'command, machine, wall time and findings with their statistics. Re-running '
                  'reuses finished runs; adding seeds, learning rates or batch sizes trains '
                  'only the new ones.',
      epilog='studies:\n' + '\n'.join(f'  {name:15s} {text}' for name, text in STUDY_HELP.items())
             + '\n\nstudy options: `mbx study NAME --options` lists them with their defaults.')
  parser.add_argument('name', metavar='NAME',
                      help=', '.join(study_lib.STUDIES) + ', or your own study file '
                           '(my_study.py, docs/studies.md)')
  parser.add_argument('--config', default=None,
                      help="configs/<name>.py (get_config), a run's config.json; for cbs also "
                           'a sweep file (get_sweep)')
  parser.add_argument('--out', default=None, help='default: studies/<NAME>/<config name>')
  parser.add_argument('--runs', default=None,
                      help='where the run directories go (default: --out, under trials/)')
  parser.add_argument('--quick', action='store_true', help='a smoke-sized version')
  parser.add_argument('--workers', type=int, default=1, help='local worker processes per phase')
  parser.add_argument('--submit', choices=('slurm', 'local'), default=None,
                      help='each phase as a job array of --workers shards (submitit), waited for')
  parser.add_argument('--options', action='store_true',
                      help="list the study's options and their defaults; run nothing")
  parser.add_argument('overrides', nargs='*',
                      help='study.<option>=value, or section.field=value for the config')
  parser.set_defaults(run=_study)


def _load(path: str, overrides: list[str]):
  """(config, the sweep grid if the file defines get_sweep)."""
  if pathlib.Path(path).suffix == '.py' and 'def get_sweep' in pathlib.Path(path).read_text():
    from mbx.sweep import grid  # pylint: disable=import-outside-toplevel
    sweep = grid.load_sweep(path, overrides)  # sweep.<field>=value or section.field=value
    return sweep.base, sweep
  return config_lib.load_config(path, overrides), None


def _study(args) -> None:
  if args.options:
    print('\n'.join(study_lib.describe_options(args.name)))
    return
  if not args.config:
    raise config_lib.ConfigError('--config: required (configs/<name>.py or a config.json)')
  if args.workers < 1:
    raise config_lib.ConfigError(f'--workers={args.workers}: must be at least 1')
  study_overrides = [o for o in args.overrides if o.startswith('study.')]
  config_overrides = [o for o in args.overrides if not o.startswith('study.')]
  config, sweep = _load(args.config, config_overrides)
  values = {'grid': sweep} if sweep is not None else {}
  if sweep is not None and args.name != 'cbs':
    raise config_lib.ConfigError(f'--config {args.config}: a sweep file (get_sweep) serves '
                                 f'only the cbs study; give {args.name} a training config')
  options = study_lib.options_of(args.name, study_overrides, quick=args.quick, **values)
  study_name = pathlib.Path(args.name).stem
  out = pathlib.Path(args.out or pathlib.Path('studies') / study_name / config.name)
  command = 'mbx ' + ' '.join(sys.argv[1:]) if sys.argv[1:2] == ['study'] else None
  summary = study_lib.run(args.name, config, out, options=options, quick=args.quick,
                          workers=args.workers, submit=args.submit, runs=args.runs,
                          command=command)
  print('\n'.join(f'- {f}' for f in summary['findings']))
  last = summary['invocations'][-1]
  print(f'{out}: {last["trained_runs"]} runs trained, {last["reused_runs"]} reused, '
        f'{last["wall_time_s"]:.0f} s; README: {out / "README.md"}')

