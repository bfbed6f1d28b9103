"""The `mbx` command line: `mbx train --config configs/mnist1d_cnn.py optim.learning_rate=0.01`.

Each subcommand lives beside the code it runs; this file only dispatches.
"""
from __future__ import annotations

import argparse
import sys

from mbx.config import ConfigError


def _add_train(subparsers) -> None:
  parser = subparsers.add_parser('train', help='train one run (resumes if interrupted)')
  parser.add_argument('--config', required=True, help='configs/<name>.py')
  parser.add_argument('--workdir', default=None, help='run directory (default runs/<name>)')
  parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
  parser.add_argument('overrides', nargs='*', help='section.field=value')
  parser.set_defaults(run=_train)


def _train(args) -> None:
  from mbx.config import load_config  # pylint: disable=import-outside-toplevel
  from mbx.training.loop import train  # pylint: disable=import-outside-toplevel
  config = load_config(args.config, args.overrides)
  train(config, args.workdir, quiet=args.quiet)


# Subcommands that live beside their code. Each module exposes add_parser(subparsers);
# `mbx analyze <what>` subcommands come from add_analyze_parsers(analyze_subparsers).
COMMAND_MODULES = ('mbx.sweep.cli', 'mbx.training.autobatch')
ANALYZE_MODULES = ('mbx.sweep.cli', 'mbx.measure.cli')


def main(argv=None) -> None:
  import importlib  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='mbx', description=__doc__.splitlines()[0])
  subparsers = parser.add_subparsers(dest='command', required=True)
  _add_train(subparsers)
  for name in COMMAND_MODULES:
    importlib.import_module(name).add_parser(subparsers)
  analyze = subparsers.add_parser('analyze', help='analyses of runs and sweeps')
  analyze_subparsers = analyze.add_subparsers(dest='analysis', required=True)
  for name in ANALYZE_MODULES:
    importlib.import_module(name).add_analyze_parsers(analyze_subparsers)
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except ConfigError as error:
    print(f'mbx {args.command}: error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
