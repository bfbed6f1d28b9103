"""`mbx report SWEEP_DIR|RUN_DIR... [-o report.html]`: a shareable study report
(mbx/figures/report.py): one self-contained HTML file and its Markdown twin."""
from __future__ import annotations

import pathlib
import sys

from mbx import config as config_lib


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'report', help='one self-contained HTML report (+ Markdown) of sweeps, studies and runs',
      description='Writes what was run, the analyses with their uncertainty and warnings, the '
                  'tables (also as CSVs) and the figures of each directory given.')
  parser.add_argument('paths', nargs='+', metavar='DIR',
                      help='sweep directories, study results directories (trials.csv) or runs')
  parser.add_argument('-o', '--out', default='report.html',
                      help='the HTML file; the Markdown twin and <name>_files/ go beside it')
  parser.add_argument('--target', default=None, metavar='METRIC=VALUE',
                      help='the target of a table without its sweep.json, e.g. '
                           'eval_accuracy=0.85')
  parser.add_argument('--bootstrap', type=int, default=1000)
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  parser.set_defaults(run=_run)


def _target(text: str | None) -> tuple[str, float] | None:
  if text is None:
    return None
  metric, sep, value = text.partition('=')
  try:
    if not sep or not metric:
      raise ValueError
    return metric, float(value)
  except ValueError:
    raise config_lib.ConfigError(f'--target={text!r}: expected METRIC=VALUE, e.g. '
                                 'eval_accuracy=0.85') from None


def _run(args) -> None:
  target = _target(args.target)
  for path in args.paths:
    if not pathlib.Path(path).is_dir():
      raise config_lib.ConfigError(f'{path}: no such directory; mbx report takes study, sweep '
                                   'or run directories')
  from mbx.figures import report  # pylint: disable=import-outside-toplevel  (loads matplotlib)
  command = 'mbx ' + ' '.join(sys.argv[1:]) if sys.argv[1:2] == ['report'] else 'mbx report'
  html_path, markdown = report.write_report(args.paths, args.out, target=target,
                                            command=command, bootstrap=args.bootstrap,
                                            quiet=args.quiet)
  print(f'written: {html_path} and {markdown} (figures and CSVs in '
        f'{html_path.with_name(html_path.stem + "_files")})')
