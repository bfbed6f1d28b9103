"""`mbx --help`, every command's `--help` and config errors answer without the training stack:
no JAX, Flax, Optax, Orbax or TFDS is imported until a command starts real work."""
from __future__ import annotations

import argparse

import pytest

from mbx.cli import build_parser

from helpers import TRAINING_STACK, assert_one_line_error, mbx_cli


def _commands(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
  """Every command and nested command of the parser, e.g. ('analyze', 'cbs')."""
  found = []
  for action in parser._actions:  # pylint: disable=protected-access  (argparse has no API)
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for name, sub in action.choices.items():
        found += [(*prefix, name), *_commands(sub, (*prefix, name))]
  return found


COMMANDS = _commands(build_parser())


def test_every_command_is_found():
  assert {('train',), ('sweep',), ('analyze', 'cbs'), ('analyze', 'sharpness')} <= set(COMMANDS)


@pytest.mark.parametrize('command', [(), *COMMANDS], ids=lambda c: ' '.join(c) or 'mbx')
def test_help_imports_no_training_stack(command):
  result = mbx_cli(*command, '--help')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('usage: mbx'), result.stdout
  assert result.imported == [], f'mbx {" ".join(command)} --help imported {result.imported}'


@pytest.mark.parametrize('args, fragment', [
    (('train', '--config', 'configs/mnist1d_cnn.py', 'train.batchsize=3'),
     'unknown field train.batchsize; did you mean train.batch_size?'),
    (('train', '--config', 'configs/mnist1d_cnn.py', 'optim.name=adamm'), 'did you mean adam'),
    (('train', '--config', 'configs/mnist1d_cnn.py', 'train.duration=10 parsecs'), 'parsecs'),
    (('autobatch', '--config', 'configs/mnist1d_cnn.py', 'trian.batch_size=3'),
     'did you mean train?'),
    (('sweep', '--config', 'configs/cbs_mnist1d_cnn.py', 'sweep.seedz=0,1'),
     'did you mean sweep.seeds?'),
    (('report', 'sweeps/x', '--target', 'eval_accuracy'), 'expected METRIC=VALUE'),
])
def test_a_config_error_imports_no_training_stack(args, fragment):
  result = mbx_cli(*args)
  assert_one_line_error(result, fragment)
  assert result.imported == [], f'{" ".join(args)} imported {result.imported}'


def test_the_probe_sees_the_training_stack_when_it_loads():
  """The check above is not vacuous: a command that resolves a workload loads JAX."""
  result = mbx_cli('train', '--config', 'configs/mnist1d_cnn.py', 'model.name=resnet9')
  assert_one_line_error(result, 'model.name')
  assert 'jax' in result.imported and set(result.imported) <= set(TRAINING_STACK)
