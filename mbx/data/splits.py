"""tfds split strings ('train', 'train[:90%]', 'train[1000:]', 'train+test'), without tfds.

`split_problem` and `check_split` validate a split against the allowed base names (no I/O);
`split_ranges` reads it the way tfds does, so in-memory datasets slice exactly like tfds ones.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

# tfds split grammar (tensorflow_datasets/core/splits.py), kept to what mbx
# passes through: 'train', 'train[:90%]', 'train[1000:]', 'train+test'.
_SUB_SPLIT_RE = re.compile(r"^(?P<name>[\w-]+)(\[(?P<selector>[^\]]*)\])?$")
_BOUND_RE = re.compile(r"^(-?\d+%?)?$")
_PLUS_RE = re.compile(r"\s*\+\s*")


def split_problem(split: str, allowed: Iterable[str]) -> str | None:
  """Why `split` is not a valid split over the base names `allowed`, or None."""
  allowed = tuple(allowed)
  if not isinstance(split, str) or not split.strip():
    return "empty split"
  for part in _PLUS_RE.split(split.strip()):
    match = _SUB_SPLIT_RE.match(part)
    if not match:
      return f"cannot parse {part!r}"
    if match["name"] not in allowed:
      return f"unknown split name {match['name']!r}"
    selector = match["selector"]
    if selector is not None:
      bounds = selector.split(":")
      if (len(bounds) != 2 or not all(_BOUND_RE.match(b) for b in bounds)
          or not any(bounds)):
        return f"cannot parse the slice [{selector}]"
  return None


def check_split(name: str, split: str, allowed: Iterable[str], field: str) -> None:
  """Raises a one-line ValueError naming `field` if `split` is not valid for `name`."""
  allowed = tuple(allowed)
  problem = split_problem(split, allowed)
  if problem:
    raise ValueError(
        f"{field}={split!r} is not a valid split of {name!r}: {problem}. "
        f"Allowed splits: {', '.join(allowed)}, optionally sliced the tfds "
        "way ('train[:90%]', 'train[1000:]') and joined with '+'.")


def split_ranges(split: str, sizes: Mapping[str, int]) -> list[tuple[str, int, int]]:
  """(base split, start, stop) per '+' part, as tfds reads it (percents rounded to closest)."""
  problem = split_problem(split, sizes)
  if problem:
    raise ValueError(f"split={split!r}: {problem}")
  ranges = []
  for part in _PLUS_RE.split(split.strip()):
    match = _SUB_SPLIT_RE.match(part)
    name, selector, n = match["name"], match["selector"], sizes[match["name"]]
    if selector is None:
      ranges.append((name, 0, n))
      continue
    bounds = selector.split(":")
    percent = any(b.endswith("%") for b in bounds)  # tfds: one '%' makes both percents

    def absolute(bound: str, default: int) -> int:
      if not bound:
        return default
      value = int(bound.rstrip("%"))
      return int(round(value * n / 100.0)) if percent else value

    start, stop = absolute(bounds[0], 0), absolute(bounds[1], n)
    if abs(start) > n or abs(stop) > n:
      raise ValueError(f"split={split!r}: slice [{selector}] is out of range for the "
                       f"{n} examples of {name!r}")
    start, stop = n + start if start < 0 else start, n + stop if stop < 0 else stop
    if start >= stop:
      raise ValueError(f"split={split!r}: slice [{selector}] selects no examples of the "
                       f"{n} in {name!r}")
    ranges.append((name, start, stop))
  return ranges


def split_size(split: str, sizes: Mapping[str, int]) -> int:
  return sum(stop - start for _, start, stop in split_ranges(split, sizes))


def default_eval_split(split_names: Iterable[str]) -> str:
  """'validation', else 'test', else the first split that is not 'train', else 'train'.

  Validation first: targets and learning-rate choices are made on it, and test is
  reported once at the end (Shallue et al. 2019's protocol; see `test_split`).
  """
  names = tuple(split_names)
  for name in ("validation", "test"):
    if name in names:
      return name
  return next((name for name in names if name != "train"), names[0])
