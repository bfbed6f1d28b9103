"""Studies: each question of the large-batch literature as one command on your own config.

    mbx study sharp-minima --config my_config.py --out studies/sharp [--quick] [study.seeds=0,1,2]
    mbx study cbs --config configs/mnist1d_cnn.py --workers 2
    summary = mbx.study.run('sharp-minima', mbx.load_config('my_config.py'), 'studies/sharp')

A study is one file (here, or your own, named by path): `Options` (a frozen dataclass of its protocol's knobs,
with `QUICK`, the smoke-sized overrides), `TITLE`, `check(config, options)` (one-line errors
before anything is written), and `run(ctx)`: grids, then runs (`ctx.train`, which trains only
what is unfinished), then analyses, then tables, figures and findings (mbx/study/context.py).
"""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
import sys
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

from mbx import config as config_lib
from mbx import registry
from mbx.optim import declared as optim_declared

STUDIES = {
    'cbs': 'mbx.study.cbs',
    'sharp-minima': 'mbx.study.sharp_minima',
    'increase-batch': 'mbx.study.increase_batch',
    'small-batch': 'mbx.study.small_batch',
    'scaling-rules': 'mbx.study.scaling_rules',
    'adaptive': 'mbx.study.adaptive',
}


PROTOCOL = ('TITLE', 'Options', 'QUICK', 'check', 'run')


def study_module(name: str) -> types.ModuleType:
  """A built-in study, or your own: a Python file (`my_study.py`) or module (`pkg.mod`) that
  defines TITLE, Options, QUICK, check and run as the built-in ones do."""
  if name.endswith('.py') or ('.' in name and name not in STUDIES):
    try:
      module = (registry.module_from_file(name) if name.endswith('.py')
                else importlib.import_module(name))
    except (ImportError, OSError) as error:
      raise config_lib.ConfigError(f'study {name!r}: cannot import it ({error})') from None
    missing = [attr for attr in PROTOCOL if not hasattr(module, attr)]
    if missing:
      raise config_lib.ConfigError(f'study {name!r}: a study module defines '
                                   f'{", ".join(PROTOCOL)}; it lacks {", ".join(missing)}')
    return module
  if name not in STUDIES:
    raise config_lib.ConfigError(f'study {name!r}: unknown; {registry.suggest(name, STUDIES)}'
                                 ' (or the path of your own study file)')
  return importlib.import_module(STUDIES[name])


def options_of(name: str, overrides: Sequence[str] = (), quick: bool = False,
               **values: Any) -> Any:
  """The study's Options: defaults, then QUICK (with `quick`), then `values`, then
  `study.field=value` overrides; unknown fields are one-line errors."""
  module = study_module(name)
  fields = {f.name: f for f in dataclasses.fields(module.Options)}
  chosen = dict(module.QUICK) if quick else {}
  chosen.update(values)
  for text in overrides:
    key, sep, value = text.partition('=')
    key = key.removeprefix('study.')
    if not sep:
      raise config_lib.ConfigError(f'study.{key}: expected study.{key}=VALUE')
    chosen[key] = config_lib.parse_value(value)
  for key in chosen:
    if key not in fields:
      raise config_lib.ConfigError(f'study.{key}: not an option of the {name} study; '
                                   f'{registry.suggest(key, fields, prefix="study.")}')
  defaults = module.Options()
  for key, value in chosen.items():
    if isinstance(value, list) or (isinstance(getattr(defaults, key), tuple)
                                   and not isinstance(value, tuple) and value is not None):
      chosen[key] = tuple(value) if isinstance(value, list) else (value,)
  return dataclasses.replace(module.Options(), **chosen)


def is_study_dir(path: str | pathlib.Path) -> bool:
  from mbx.study.context import SUMMARY_FILE  # pylint: disable=import-outside-toplevel
  return (pathlib.Path(path) / SUMMARY_FILE).is_file()


def run(name: str, config: config_lib.Config, out: str | pathlib.Path, *,
        options: Any = None, quick: bool = False, workers: int = 1, submit: str | None = None,
        runs: str | pathlib.Path | None = None, command: str | None = None,
        log=None) -> dict[str, Any]:
  """Runs study `name` on `config` into `out` (its run directories into `runs`, default
  `out`); returns its summary (summary.json).

  Finished runs are reused. Every option and config error is raised (ConfigError)
  before anything is written or compiled."""
  module = study_module(name)
  options = options_of(name, quick=quick) if options is None else options
  optim_declared.validate(config)
  module.check(config, options)
  _check_same_config(pathlib.Path(out), name, config)
  from mbx.study import context  # pylint: disable=import-outside-toplevel
  ctx = context.StudyContext(
      study=name, config=config, options=options, out=pathlib.Path(out), quick=quick,
      workers=workers, submit=submit, runs=runs,
      command=command or _command())
  if log is not None:
    ctx.log = log
  start = time.perf_counter()
  ctx.out.mkdir(parents=True, exist_ok=True)
  ctx.runs.mkdir(parents=True, exist_ok=True)
  module.run(ctx)
  return context.write(ctx, module.TITLE.format(name=config.name), time.perf_counter() - start)


def _check_same_config(out: pathlib.Path, name: str, config: config_lib.Config) -> None:
  """A study directory grows (more seeds, learning rates, batch sizes) but holds one config:
  a changed model, data, task or training field is refused, naming the field."""
  import json  # pylint: disable=import-outside-toplevel
  path = out / 'summary.json'
  if not path.is_file():
    return
  previous = json.loads(path.read_text())
  # Compared without fields at their defaults (config.identity), so a field mbx adds later
  # does not make a study directory refuse its own config.
  try:
    before = config_lib.identity(config_lib.from_dict(previous.get('config')))
  except (config_lib.ConfigError, TypeError):
    before = previous.get('config')
  now = config_lib.identity(config)
  if previous.get('study') != name:
    raise config_lib.ConfigError(f'{out} holds the {previous.get("study")!r} study; use another '
                                 f'--out for the {name!r} study')
  change = config_lib.first_difference(before, now)
  if change is not None:
    field, old, new = change
    raise config_lib.ConfigError(f'{out} holds the {name} study of a different config ({field}: '
                                 f'{old!r} -> {new!r}); use another --out, or revert it')


def _command() -> str:
  """How this process was started: `python experiments/x.py --quick`, or `mbx ...`."""
  program = pathlib.Path(sys.argv[0])
  if program.suffix == '.py':
    try:
      program = program.resolve().relative_to(pathlib.Path.cwd())
    except ValueError:
      pass
    return ' '.join(['python', str(program), *sys.argv[1:]])
  return ' '.join([program.name, *sys.argv[1:]])


def describe_options(name: str) -> list[str]:
  """'field = default' per option, for `mbx study NAME --help`."""
  module = study_module(name)
  return [f'study.{f.name}={getattr(module.Options(), f.name)!r}'
          for f in dataclasses.fields(module.Options)]


__all__ = ['STUDIES', 'run', 'options_of', 'study_module', 'is_study_dir']
