"""`python -m mbx.config_docs [OUT]`: the config reference (docs/config_reference.md), generated
from the config dataclasses.

Every field gets its type, default, allowed values (a closed set, or the built-in names of a
field that also takes an import path) and its meaning, the attribute docstring under the field.
`REFERENCE` lists the dataclasses in order; a new kind of config is one more `Section`.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pathlib
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence

from mbx import config as config_lib
from mbx.study import STUDIES
from mbx.sweep import grid, submit

OUT = 'docs/config_reference.md'


@dataclasses.dataclass(frozen=True)
class Section:
  """One dataclass of the reference, under the heading `key`."""
  key: str                                   # fields are written key.field ('': field)
  cls: type                                  # the dataclass; its docstring opens the section
  choices: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)  # closed sets
  # Fields that take a built-in name or an import path: a function returning their built-in
  # names (called when the reference is generated; it may import the training stack).
  names: Callable[[], Mapping[str, Sequence[str]]] | None = None
  skip: tuple[str, ...] = ()                 # fields that are sections of their own
  title: str | None = None                   # the heading; default: key


def _config_choices(section: str) -> dict[str, Sequence[str]]:
  return {key.partition('.')[2]: values for key, values in config_lib.CHOICES.items()
          if key.partition('.')[0] == section}


# The built-in names of the fields that also take an import path. They load the training stack,
# so only when the reference is generated.
# pylint: disable=import-outside-toplevel
def _data_names() -> Mapping[str, Sequence[str]]:
  from mbx.data.resolve import BUILT_IN_NAMES
  return {'name': BUILT_IN_NAMES}


def _model_names() -> Mapping[str, Sequence[str]]:
  from mbx.models import MODEL_NAMES
  return {'name': MODEL_NAMES}


def _task_names() -> Mapping[str, Sequence[str]]:
  from mbx.tasks import TASKS
  return {'name': tuple(TASKS)}


def _optim_names() -> Mapping[str, Sequence[str]]:
  from mbx.optim.declared import BUILTIN
  from mbx.optim.update_rules import UPDATE_RULES
  return {'name': BUILTIN, 'update_rule': tuple(UPDATE_RULES)}
# pylint: enable=import-outside-toplevel


NAMES = {'data': _data_names, 'model': _model_names, 'task': _task_names,
         'optim': _optim_names}
REFERENCE: tuple[Section, ...] = (
    Section('', config_lib.Config, skip=tuple(config_lib.SECTIONS), title='Top level'),
    *(Section(key, cls, _config_choices(key), NAMES.get(key))
      for key, cls in config_lib.SECTIONS.items()),
    Section('sweep', grid.SweepConfig),
    Section('sweep.search[i]', grid.SearchSpace, grid.SEARCH_CHOICES),
    Section('sweep.submit', submit.SubmitOptions),
    *(Section('study', importlib.import_module(module).Options,
              title=f'study options: mbx study {name}') for name, module in STUDIES.items()),
)


def field_docs(cls: type) -> dict[str, str]:
  """Each field's attribute docstring (the string literal under it), else the comment that
  ends its line and the comment-only lines right under it (the studies' Options), on one
  line."""
  source = textwrap.dedent(inspect.getsource(cls))
  lines = source.splitlines()
  body = ast.parse(source).body[0].body
  docs = {}
  for node, after in zip(body, [*body[1:], None]):
    if not isinstance(node, ast.AnnAssign):
      continue
    if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)):
      docs[node.target.id] = ' '.join(after.value.value.split())
      continue
    line = lines[node.end_lineno - 1]
    if '  # ' not in line:
      continue
    comment = [line.split('  # ', 1)[1]]
    for following in lines[node.end_lineno:]:
      if not following.strip().startswith('#'):
        break
      comment.append(following.strip().lstrip('#'))
    docs[node.target.id] = ' '.join(' '.join(comment).split())
  return docs


def _default(field: dataclasses.Field) -> str:
  if field.default is not dataclasses.MISSING:
    return f'`{field.default!r}`'
  if field.default_factory is not dataclasses.MISSING:
    return f'`{field.default_factory()!r}`'
  return 'required'


def _prose(text: str) -> str:
  """Markdown prose: `runs/<name>` must not read as an HTML tag."""
  return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def section_markdown(section: Section) -> str:
  docs = field_docs(section.cls)
  names = section.names() if section.names else {}
  title = section.title or section.key
  intro = inspect.cleandoc(section.cls.__doc__ or '')
  if intro.startswith(f'{section.cls.__name__}('):  # dataclass's generated signature: the
    module_doc = sys.modules[section.cls.__module__].__doc__ or ''  # module's opening instead
    intro = inspect.cleandoc(module_doc).split('\n\n')[0]
  lines = [f'## {title}', '', _prose(intro), '',
           '| field | type | default | allowed | meaning |', '|---|---|---|---|---|']
  prefix = f'{section.key}.' if section.key else ''
  for field in dataclasses.fields(section.cls):
    if field.name in section.skip:
      continue
    if field.name not in docs:
      raise ValueError(f'{section.cls.__name__}.{field.name}: no docstring under the field')
    allowed = ''
    if field.name in section.choices:
      allowed = ', '.join(f'`{c}`' for c in section.choices[field.name])
    elif field.name in names:
      allowed = ', '.join(f'`{c}`' for c in names[field.name]) + ', or an import path'
    kind = str(field.type).replace('config_lib.', '')
    lines.append(f'| `{prefix}{field.name}` | `{_cell(kind)}` | {_cell(_default(field))} | '
                 f'{allowed} | {_cell(_prose(docs[field.name]))} |')
  return '\n'.join(lines) + '\n'


HEADER = """\
<!-- Generated by `python -m mbx.config_docs` from the config dataclasses (mbx/config.py,
mbx/sweep/grid.py, mbx/sweep/submit.py); edit the field docstrings there, not this file. -->

# Config reference

Every field of a run's config and of a sweep config: its type, default, allowed values and
meaning. A config file (`configs/<name>.py`) returns these dataclasses; on the command line each
field is an override `section.field=value` (`train.batch_size=256`, `model.options.width=64`,
`sweep.seeds=0,1`; all sweep fields but {not_overridden}, which the sweep
file sets). Every value is checked before anything compiles; an unknown field or name is
answered with the closest valid ones.

Value formats:

- a duration is `"<number> <unit>"` with unit `steps`, `epochs`, `examples` or `tokens` (target
  positions), e.g. `"8000 steps"`, `"20 epochs"`, `"1e6 examples"`;
- `none` (or `null`) on the command line is `None`; a list is comma-separated (`30,60`) or a
  Python literal (`[30, 60]`); a mapping is a Python dict literal (`{{"seq_len": 64}}`);
- a name field (`data.name`, `model.name`, `task.name`, `train.probes`, `optim.update_rule`)
  takes a built-in name or an import path `package.module:Name` or `path/to/file.py:Name`.

"""


def markdown(sections: Sequence[Section] = REFERENCE) -> str:
  """The reference of `sections`, in order."""
  contents = '\n'.join(f'- [{s.title or s.key}](#{_slug(s.title or s.key)})' for s in sections)
  not_overridden = ', '.join(f'`{f}`' for f in grid.NOT_OVERRIDDEN)
  return (HEADER.format(not_overridden=not_overridden) + f'Sections:\n\n{contents}\n\n' +
          '\n'.join(section_markdown(s) for s in sections))


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  return ''.join(c for c in heading.lower().replace(' ', '-') if c.isalnum() or c in '-_')


def write(path: str | pathlib.Path = OUT, sections: Sequence[Section] = REFERENCE) -> pathlib.Path:
  path = pathlib.Path(path)
  path.write_text(markdown(sections), encoding='utf-8')
  return path


if __name__ == '__main__':
  if len(sys.argv) > 2:
    sys.exit('usage: python -m mbx.config_docs [OUT]  (default docs/config_reference.md)')
  print(f'written: {write(*sys.argv[1:])}')
