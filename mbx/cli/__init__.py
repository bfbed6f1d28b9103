"""The `mbx` command line: `mbx train --config configs/mnist1d_cnn.py optim.learning_rate=0.01`.

The top layer: each subcommand module here parses its arguments, calls the library and writes
figures; nothing below imports this package. Bad input, and an exception raised inside the
user's own code (a dataset function, a model, a task, a probe named by an import path), is told
in one line, `mbx <command>: error: ...`, with exit status 2; MBX_DEBUG=1 prints the traceback
instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from mbx import registry
from mbx import validate
from mbx.config import ConfigError, load_config

DEBUG_ENV = 'MBX_DEBUG'


def _add_train(subparsers) -> None:
  parser = subparsers.add_parser('train', help='train one run (resumes if interrupted)')
  parser.add_argument('--config', required=True,
                      help="configs/<name>.py, or a run's config.json (or its directory)")
  parser.add_argument('--workdir', default=None, help='run directory (default runs/<name>)')
  parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
  parser.add_argument('--trackers', default='tensorboard',
                      help='comma-separated, of tensorboard, wandb (offline unless WANDB_MODE '
                           'is set), mlflow (MLFLOW_TRACKING_URI, else <workdir>/mlruns); '
                           "'none' for none (default %(default)s)")
  parser.add_argument('overrides', nargs='*', help='section.field=value')
  parser.set_defaults(run=_train)


def _train(args) -> None:
  config = load_config(args.config, args.overrides)
  validate(config)  # every field's value and the optimizer's, before the training stack loads
  from mbx.training import lock  # pylint: disable=import-outside-toplevel  (no JAX)
  workdir = args.workdir or lock.default_workdir(config)
  if (holder := lock.holder_of(workdir)) is not None:  # before the training stack loads
    raise lock.busy_error(workdir, holder)
  loop = importlib.import_module('mbx.training.loop')  # jax loads only for commands that train
  trackers = [] if args.trackers == 'none' else [t for t in args.trackers.split(',') if t]
  loop.train(config, args.workdir, quiet=args.quiet, trackers=trackers)


# Each module exposes add_parser(subparsers) and/or, for `mbx analyze <what>`,
# add_analyze_parsers(analyze_subparsers).
COMMAND_MODULES = ('mbx.cli.sweep', 'mbx.cli.study', 'mbx.cli.autobatch', 'mbx.cli.launch', 'mbx.cli.report')
ANALYZE_MODULES = ('mbx.cli.sweep', 'mbx.cli.analyze')


CONFIG_FLAG = '--config.'


def config_flags_as_overrides(argv: list[str]) -> list[str]:
  """`--config.train.batch_size=32` (or `--config.train.batch_size 32`), the ml_collections /
  big_vision spelling, as the override `train.batch_size=32`. A launched command after `--`
  is left to its own parser."""
  out, overrides, i = [], [], 0
  while i < len(argv):
    token = argv[i]
    if token == '--':
      out += argv[i:]
      break
    if token.startswith(CONFIG_FLAG) and len(token) > len(CONFIG_FLAG):
      key, sep, value = token[len(CONFIG_FLAG):].partition('=')
      if not sep:
        if i + 1 >= len(argv):
          raise ConfigError(f'{token}: no value; use {token}=VALUE')
        value, i = argv[i + 1], i + 1
      overrides.append(f'{key}={value}')
    else:
      out.append(token)
    i += 1
  if overrides and '--' in out:
    at = out.index('--')
    return out[:at] + overrides + out[at:]
  return out + overrides


def build_parser() -> argparse.ArgumentParser:
  """Every command's parser; imports no JAX (the commands load it when they start work)."""
  parser = argparse.ArgumentParser(prog='mbx', description=__doc__.splitlines()[0])
  subparsers = parser.add_subparsers(dest='command', required=True)
  _add_train(subparsers)
  for name in COMMAND_MODULES:
    importlib.import_module(name).add_parser(subparsers)
  analyze = subparsers.add_parser('analyze', help='analyses of runs and sweeps')
  analyze_subparsers = analyze.add_subparsers(dest='analysis', required=True)
  for name in ANALYZE_MODULES:
    importlib.import_module(name).add_analyze_parsers(analyze_subparsers)
  return parser


def main(argv=None) -> None:
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    argv = config_flags_as_overrides(argv)
  except ConfigError as error:
    print(f'mbx: error: {error}', file=sys.stderr)
    sys.exit(2)
  args, extra = parser.parse_known_args(argv)
  # `mbx study NAME --quick study.seeds=0,1`: overrides after options (argparse takes
  # positionals in one run), kept as overrides when they all look like field=value.
  if extra:
    if getattr(args, 'overrides', None) is None or not all(
        '=' in e and not e.startswith('-') for e in extra):
      parser.error(f'unrecognized arguments: {" ".join(extra)}')
    args.overrides = [*args.overrides, *extra]
  try:
    args.run(args)
  except Exception as error:  # pylint: disable=broad-except  (re-raised unless bad input)
    line = str(error) if isinstance(error, ConfigError) else registry.user_code_error(error)
    if line is None or os.environ.get(DEBUG_ENV, '') not in ('', '0'):
      raise
    if error.__cause__ is not None or not isinstance(error, ConfigError):
      line += f' ({DEBUG_ENV}=1 shows the traceback)'
    print(f'mbx {args.command}: error: {line}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print(f'mbx {args.command}: interrupted; run directories record it (status '
          '"interrupted"), and the same command resumes from the last checkpoint',
          file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  main()
