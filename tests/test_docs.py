"""The documentation is self-contained: every cited page and local link exists.

Scans README.md, docs/*.md, results/**/*.md and the Python files of mbx/, experiments/,
configs/, examples/ and tests/ for
- references `docs/<name>.md` (resolved from the repository root),
- relative Markdown links `[text](target)` in the .md files (resolved from the file's folder;
  a `#anchor` on a Markdown target must name one of its headings),
and fails naming the citing file and the missing target. It also fails if any of them cite
notes that live outside the repository (the developers' shared folder).
"""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
THIS = pathlib.Path(__file__).resolve()
PY_FOLDERS = ('mbx', 'experiments', 'configs', 'examples', 'tests')
# Notes outside the repository that users do not have.
FORBIDDEN = ('MEASURED.md', 'SCIENCE.md', '../shared')

DOCS_REF = re.compile(r'(?<![\w./-])docs/([\w-]+(?:/[\w-]+)*\.md)')
MD_LINK = re.compile(r'!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.S | re.M)
INLINE_CODE = re.compile(r'`[^`\n]*`')
HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$', re.M)


def markdown_files() -> list[pathlib.Path]:
  files = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md')),
           *sorted((REPO / 'results').rglob('*.md'))]
  return [f for f in files if f.is_file()]


def python_files() -> list[pathlib.Path]:
  files = []
  for folder in PY_FOLDERS:
    files += sorted(p for p in (REPO / folder).rglob('*.py')
                    if p.resolve() != THIS and '.venv' not in p.parts)
  return files


def scanned_files() -> list[pathlib.Path]:
  return markdown_files() + python_files()


def _name(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO))


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r'`([^`]*)`', r'\1', heading)
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)  # a link in a heading: its text
  text = re.sub(r'[^\w\- ]', '', text.strip().lower())
  return text.replace(' ', '-')


def anchors(path: pathlib.Path) -> set[str]:
  text = FENCE.sub('', path.read_text(encoding='utf-8'))
  seen: dict[str, int] = {}
  result = set()
  for heading in HEADING.findall(text):
    base = slug(heading)
    count = seen.get(base, 0)
    seen[base] = count + 1
    result.add(base if count == 0 else f'{base}-{count}')
  return result


def link_targets(text: str) -> list[str]:
  """Relative link targets of a Markdown text, outside code blocks and inline code."""
  prose = INLINE_CODE.sub('', FENCE.sub('', text))
  targets = []
  for target in MD_LINK.findall(prose):
    if re.match(r'^[a-zA-Z][\w+.-]*:', target) or target.startswith('/'):
      continue  # a URL (http:, mailto:, ...) or an absolute path: not a repository link
    targets.append(target)
  return targets


def missing_references() -> list[str]:
  problems = []
  for path in scanned_files():
    text = path.read_text(encoding='utf-8')
    for page in sorted(set(DOCS_REF.findall(text))):
      if not (REPO / 'docs' / page).is_file():
        problems.append(f'{_name(path)} cites docs/{page}, which does not exist')
    if path.suffix != '.md':
      continue
    for target in link_targets(text):
      file_part, _, anchor = target.partition('#')
      resolved = (path.parent / file_part).resolve() if file_part else path
      if not resolved.exists():
        problems.append(f'{_name(path)} links to {target}: {file_part} does not exist')
      elif anchor and resolved.suffix == '.md' and anchor not in anchors(resolved):
        problems.append(f'{_name(path)} links to {target}: no heading #{anchor} in '
                        f'{resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved}')
  return problems


def test_scan_covers_the_documentation():
  names = {_name(p) for p in scanned_files()}
  assert {'README.md', 'docs/README.md', 'docs/science.md', 'docs/performance.md'} <= names
  assert 'tests/test_docs.py' not in names
  assert any(n.startswith('results/') for n in names)
  assert any(n.startswith('mbx/') for n in names)


def test_cited_docs_and_local_links_exist():
  problems = missing_references()
  assert not problems, 'broken documentation references:\n' + '\n'.join(problems)


def test_nothing_cites_notes_outside_the_repository():
  problems = []
  for path in scanned_files():
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
      for needle in FORBIDDEN:
        if needle in line:
          problems.append(f'{_name(path)}:{number} mentions {needle}: {line.strip()[:120]}')
  assert not problems, ('cite docs/science.md or docs/performance.md instead:\n'
                        + '\n'.join(problems))


def test_the_checker_catches_a_broken_reference(tmp_path):
  text = ('see docs/science.md and [perf](performance.md#memory-analysis-on-cpu), '
          '[web](https://example.org/x.md), `[code](nowhere.md)`')
  assert link_targets(text) == ['performance.md#memory-analysis-on-cpu']
  assert DOCS_REF.findall('(docs/science.md, docs/no_such_page.md; mydocs/x.md)') == [
      'science.md', 'no_such_page.md']
  page = tmp_path / 'page.md'
  page.write_text('# 6. Sharp minima: ε-sharpness\n\n## XLA:CPU loops\n\n## XLA:CPU loops\n')
  assert anchors(page) == {'6-sharp-minima-ε-sharpness', 'xlacpu-loops', 'xlacpu-loops-1'}


def test_the_api_reference_builds_from_the_docstrings(tmp_path):
  from mbx import api_docs
  index = api_docs.build(tmp_path)
  assert index.exists()
  for page, text in (('mbx/training/step.html', 'make_step'), ('mbx/tasks/base.html', 'Task'),
                     ('mbx/training/noise_scale.html', 'B_simple'),
                     ('mbx/measure/sharpness.html', 'epsilon_sharpness')):
    assert text in (tmp_path / page).read_text(), page
