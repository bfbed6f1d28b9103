"""Names to objects: a built-in name, or an import path to the user's own code.

`model.name`, `data.name`, `task.name` and `train.probes` each take either a name from a
built-in table or an import path, as big_vision resolves model modules by name:

    package.module:Name        imported with importlib (the working directory is on the path)
    path/to/file.py:Name       loaded from that file

`import_path(obj)` gives the path that resolves back to `obj` in a fresh process (the module's
name when it is installed or under the working directory, else its file), so that a run's
config.json rebuilds the same model wherever it is loaded.

`suggest(name, choices)` is the hint every unknown-name error ends with: the closest valid
names, or the allowed ones when none is close.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import pathlib
import site
import sys
from collections.abc import Iterable, Mapping
from typing import Any


class ResolveError(ValueError):
  """A name that is neither built in nor an import path that resolves."""


def close_names(name: str, choices: Iterable[str]) -> list[str]:
  """Up to three of `choices` closest to `name` by difflib's similarity, each about as close
  as the closest; [] when none is close."""
  close = difflib.get_close_matches(str(name), list(choices), n=3)
  ratios = [difflib.SequenceMatcher(None, str(name), c).ratio() for c in close]
  return [c for c, ratio in zip(close, ratios) if ratio >= ratios[0] - 0.1]


def did_you_mean(names: Iterable[str]) -> str:
  """'did you mean a?', 'did you mean a or b?', 'did you mean a, b or c?'."""
  *others, last = names
  return f'did you mean {", ".join(others) + " or " if others else ""}{last}?'


def suggest(name: str, choices: Iterable[str], prefix: str = '') -> str:
  """'did you mean train.batch_size?' for the choices closest to `name`, else 'allowed: a, b,
  c'; `prefix` is put before each choice."""
  choices = list(choices)
  close = close_names(name, choices)
  if close:
    return did_you_mean(prefix + c for c in close)
  return f'allowed: {", ".join(choices) or "none"}'


def is_import_path(name: str) -> bool:
  return isinstance(name, str) and ':' in name


def module_from_file(path: str | pathlib.Path):
  """The module of a Python file, loaded once per process under a name of its own (registered
  in sys.modules, as dataclasses and pickling expect)."""
  path = pathlib.Path(path).resolve()
  digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
  name = f'mbx_user_{path.stem}_{digest}'
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def _import_module(module_name: str):
  if os.getcwd() not in sys.path:  # as `python -m` does: the user's own packages resolve
    sys.path.append(os.getcwd())
  return importlib.import_module(module_name)


def resolve(name: str, builtin: Mapping[str, Any], field: str, expected: str) -> Any:
  """`builtin[name]`, or the object an import path names; ResolveError names `field`."""
  if not isinstance(name, str) or not name:
    raise ResolveError(f'{field}={name!r}: expected a name or an import path')
  if name in builtin:
    return builtin[name]
  if not is_import_path(name):
    raise ResolveError(f'{field}={name!r}: not a built-in name ({suggest(name, builtin)}) '
                       f'and not an import path "package.module:{expected}" or '
                       f'"path/to/file.py:{expected}"')
  module_part, _, attribute = name.rpartition(':')
  try:
    if module_part.endswith('.py'):
      path = pathlib.Path(module_part).expanduser()
      if not path.is_file():
        raise ResolveError(f'{field}={name!r}: no such file {path}')
      module = module_from_file(path)
    else:
      module = _import_module(module_part)
  except ResolveError:
    raise
  except Exception as error:  # the user's module failed to import: say which and why
    raise ResolveError(f'{field}={name!r}: cannot import {module_part!r} '
                       f'({type(error).__name__}: {error})') from None
  obj = module
  for part in attribute.split('.'):
    if not hasattr(obj, part):
      raise ResolveError(f'{field}={name!r}: {module_part!r} has no attribute {attribute!r}')
    obj = getattr(obj, part)
  return obj



def _importable_anywhere(module_name: str, file: str | None) -> bool:
  """Whether a fresh process finds `module_name` by name: installed, or under the working
  directory (which `resolve` puts on the path)."""
  if file is None:
    return True  # built-in or namespace package
  path = pathlib.Path(file).resolve()
  parts = module_name.split('.')
  relative = (pathlib.Path(*parts, '__init__.py') if path.name == '__init__.py'
              else pathlib.Path(*parts[:-1], path.name))
  if path.parts[-len(relative.parts):] != relative.parts:
    return False
  base = pathlib.Path(*path.parts[:-len(relative.parts)])
  roots = [os.getcwd(), *site.getsitepackages(), site.getusersitepackages()]
  return any(base == pathlib.Path(root).resolve() for root in roots if os.path.isdir(root))


def import_path(obj: Any) -> str:
  """'package.module:Name', or '/abs/path/file.py:Name' when a fresh process could not import
  the module by name (a script run as __main__, or a module found through sys.path edits)."""
  module_name, qualname = obj.__module__, obj.__qualname__
  if '<locals>' in qualname:
    raise ResolveError(f'{qualname}: defined inside a function, so no import path reaches it; '
                       'define it at the top level of a module')
  file = getattr(sys.modules.get(module_name), '__file__', None)
  if (module_name == '__main__' or module_name.startswith('mbx_user_') or
      not _importable_anywhere(module_name, file)):
    if file is None:
      raise ResolveError(f'{qualname}: defined interactively, so no import path reaches it; '
                         'define it in a file')
    return f'{pathlib.Path(file).resolve()}:{qualname}'
  return f'{module_name}:{qualname}'
