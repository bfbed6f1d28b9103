"""A run directory's JSON files, read and written without JAX: the sweep's trial table and the
command line read them before (or without) the training stack."""
from __future__ import annotations

import json
import os
import pathlib
import warnings
from typing import Any


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
  """Readers see the old or the new file, never a partial one."""
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=_jsonable) + '\n')
  os.replace(tmp, path)


def _jsonable(value):
  if hasattr(value, 'item'):
    return value.item()
  raise TypeError(f'not JSON serialisable: {value!r}')


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a metrics file; a line that is not JSON (cut short by a crash or a full disk)
  is skipped with a warning naming file:line, and the rows after it are kept."""
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      warnings.warn(f'{path}:{number}: not a JSON row (cut short?); skipped', stacklevel=2)
  return rows
