"""Names to objects: a built-in name, or an import path to the user's own code.

`model.name`, `data.name`, `task.name` and `train.probes` each take either a name from a
built-in table or an import path, as big_vision resolves model modules by name:

    package.module:Name        imported with importlib (the working directory is on the path)
    path/to/file.py:Name       loaded from that file

`import_path(obj)` gives the path that resolves back to `obj` in a fresh process (the module's
name when it is installed or under the working directory, else its file), so that a run's
config.json rebuilds the same model wherever it is loaded.

Every file an import path reaches is remembered with the field that named it, so that an
exception raised inside the user's code, wherever mbx calls it (building the dataset, tracing
the model, in the train step), is told in one line by `user_code_error`: the field, the
exception, and the line of the user's file it came from.

`suggest(name, choices)` is the hint every unknown-name error ends with: the closest valid
names, or the allowed ones when none is close.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import importlib.util
import os
import pathlib
import site
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping
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
  except Exception as error:  # the user's module failed to import: say which, why and where
    where = _innermost_user_frame(_frames(error.__traceback__))
    at = f' at {_location(where)}' if where is not None else ''
    raise ResolveError(f'{field}={name!r}: cannot import {module_part!r} '
                       f'({type(error).__name__}{at}: {_one_line(error)})') from None
  obj = module
  for part in attribute.split('.'):
    if not hasattr(obj, part):
      raise ResolveError(f'{field}={name!r}: {module_part!r} has no attribute {attribute!r}')
    obj = getattr(obj, part)
  _remember_user_code(module, obj, f'{field}={name}')
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


# ------------------------------------------------------- exceptions in the user's code
# file -> [(qualname of the object named, or None, 'field=value')], in the order resolved.
_USER_CODE: dict[str, list[tuple[str | None, str]]] = {}
_MBX_DIR = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class _Frame:
  path: str       # resolved, or '<string>' and the like
  line: int
  qualname: str


def _frames(tb) -> list[_Frame]:
  """The traceback's frames, outermost first."""
  return [_Frame(_resolved(frame.f_code.co_filename), line, frame.f_code.co_qualname)
          for frame, line in traceback.walk_tb(tb)]


def _resolved(filename: str) -> str:
  return filename if filename.startswith('<') else str(pathlib.Path(filename).resolve())


@functools.cache
def _library_roots() -> tuple[str, ...]:
  roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
           *site.getsitepackages(), site.getusersitepackages(), str(_MBX_DIR)}
  return tuple(str(pathlib.Path(root).resolve()) + os.sep for root in roots if root)


def _is_library(path: str) -> bool:
  """mbx, the standard library, installed packages (jax, flax, numpy, ...), generated code."""
  return path.startswith('<') or (path + os.sep).startswith(_library_roots())


def _remember_user_code(module, obj: Any, label: str) -> None:
  """Records the file of `module`, and the one defining `obj`, as code that `label` reached."""
  target = obj if isinstance(obj, type) or hasattr(obj, '__code__') else type(obj)
  defining = sys.modules.get(getattr(target, '__module__', None) or '')
  for file in {getattr(module, '__file__', None), getattr(defining, '__file__', None)} - {None}:
    path = _resolved(file)
    if not _is_library(path):
      entries = _USER_CODE.setdefault(path, [])
      entry = (getattr(target, '__qualname__', None), label)
      if entry in entries:  # the latest naming of the same code is the one told
        entries.remove(entry)
      entries.append(entry)


def remember_user_file(path: str | pathlib.Path, label: str) -> None:
  """Records a file of the user's code that mbx runs for `label` (e.g. a --config file)."""
  entries = _USER_CODE.setdefault(_resolved(str(path)), [])
  if (None, label) not in entries:
    entries.append((None, label))


def _innermost_user_frame(frames: list[_Frame]) -> _Frame | None:
  """The innermost frame in a remembered file or outside every library."""
  return next((f for f in reversed(frames) if f.path in _USER_CODE or not _is_library(f.path)),
              None)


def _label(frames: list[_Frame]) -> str | None:
  """The field whose code the traceback passed through: the innermost frame running the very
  object a field named (or one of its methods), else the innermost frame in a remembered file."""
  inside = [(f, _USER_CODE[f.path]) for f in reversed(frames) if f.path in _USER_CODE]
  for frame, entries in inside:
    for named, label in reversed(entries):
      if named is not None and (frame.qualname == named or
                                frame.qualname.startswith(named + '.')):
        return label
  if not inside:
    return None
  _, entries = inside[0]
  return entries[0][1]  # the first field that reached the innermost remembered file


def _location(frame: _Frame) -> str:
  """file:line, the file relative to the working directory when it is under it."""
  path = pathlib.Path(frame.path)
  try:
    path = path.relative_to(pathlib.Path.cwd().resolve())
  except ValueError:
    pass
  return f'{path}:{frame.line}'


def _one_line(error: BaseException) -> str:
  return ' '.join(line.strip() for line in str(error).splitlines() if line.strip())


def _chain(error: BaseException | None) -> Iterator[BaseException]:
  """`error`, then the exceptions it was raised from or while handling."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def user_code_error(error: BaseException) -> str | None:
  """One line for an exception raised inside code an import path reached; None for any other.

  "data.name=my_data.py:load: KeyError at my_data.py:12: 'y'": the field that pointed there,
  the exception, and the innermost line of the user's own files. When mbx caught it and raised
  its own error naming the field, that message gets the line: '... (at my_data.py:12)'.
  """
  for inner in _chain(error):
    frames = _frames(inner.__traceback__)
    label = _label(frames)
    if label is None:
      continue
    where = _location(_innermost_user_frame(frames))
    if inner is not error:
      return f'{_one_line(error)} (at {where})'
    message = _one_line(error)
    return f'{label}: {type(error).__name__} at {where}' + (f': {message}' if message else '')
  return None
