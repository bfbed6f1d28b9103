"""Which kind of directory a command was given: a run (config.json, status.json) or a sweep
(sweep.json). Each `mbx analyze` command checks its arguments here, so a sweep given where a
run belongs (or the other way round) is one line saying what it needs, before anything loads.
"""
from __future__ import annotations

import pathlib

from mbx.config import ConfigError

MARKERS = {'run': 'config.json', 'sweep': 'sweep.json'}  # mbx.train and mbx.sweep write them
# What to run on each kind instead; {path} is the directory given.
ALTERNATIVES = {
    'run': 'mbx analyze local-cbs {path} --step N (the local critical batch size of one run) '
           'or mbx analyze sharpness {path}',
    'sweep': 'mbx analyze cbs {path}, or this analysis on one of its trials, '
             '{path}/trials/<trial_id>',
}


def kind_of(path: str | pathlib.Path) -> str | None:
  """'sweep', 'run', or None for neither."""
  path = pathlib.Path(path)
  for kind, marker in MARKERS.items():
    if (path / marker).is_file():
      return kind
  return None


def require(path: str | pathlib.Path, kind: str, command: str) -> None:
  """ConfigError (one line) unless `path` is a directory of `kind` ('run' or 'sweep')."""
  needs = f'{command} needs a {kind} directory (one with {MARKERS[kind]})'
  if not pathlib.Path(path).is_dir():
    raise ConfigError(f'{path}: no such directory; {needs}')
  found = kind_of(path)
  if found == kind:
    return
  if found is None:
    raise ConfigError(f'{path} is neither a run directory ({MARKERS["run"]}) nor a sweep '
                      f'directory ({MARKERS["sweep"]}); {needs}')
  instead = ALTERNATIVES[found].format(path=str(path).rstrip('/'))
  sweep = pathlib.Path(path).absolute().parent.parent
  if found == 'run' and kind == 'sweep' and kind_of(sweep) == 'sweep':  # a sweep's trial
    instead = f'mbx analyze cbs {pathlib.Path(path).parent.parent}, the sweep it belongs to'
  raise ConfigError(f'{path} is a {found} directory; {needs}; did you mean {instead}?')
