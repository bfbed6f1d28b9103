"""Text for the README a study writes: number formatting, and a rewrite that keeps the
hand-written interpretation of the previous run."""
from __future__ import annotations

import math
import pathlib
import re

PLACEHOLDER = '<!-- Write the interpretation of this run here; re-runs keep it. -->'
_SECTION = re.compile(r'## Interpretation\n(.*?)\n## ', re.S)


def fmt(value, digits: int = 3) -> str:
  """`digits` significant digits; '—' for None or NaN, '∞' for infinity."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '—' if value is None or math.isnan(value) else '∞'
  return f'{value:.{digits}g}'


def write_keeping_interpretation(path: str | pathlib.Path, text: str) -> None:
  """Writes `text` to `path`; if the README there has a written '## Interpretation' section
  (not the placeholder), that section replaces the one in `text`."""
  path = pathlib.Path(path)
  if path.exists():
    kept = _SECTION.search(path.read_text())
    if kept and PLACEHOLDER not in kept.group(1):
      text = _SECTION.sub(lambda _: f'## Interpretation\n{kept.group(1)}\n## ', text, count=1)
  path.write_text(text)
