"""docs/config_reference.md is the reference generated from the config dataclasses, and every
field of every documented dataclass has a meaning and a row."""
from __future__ import annotations

import dataclasses

import pytest

from mbx import config_docs

from helpers import REPO


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """A kind of config added later."""
  trials: int = 3
  """How many."""
  method: str = 'grid'
  """How they are chosen."""


@dataclasses.dataclass(frozen=True)
class Undocumented:
  """A dataclass with a field that has no docstring."""
  size: int = 1


def test_the_committed_reference_is_the_generated_one():
  committed = (REPO / config_docs.OUT).read_text(encoding='utf-8')
  assert committed == config_docs.markdown(), f'{config_docs.OUT} is stale: make config-docs'


def test_every_field_has_a_meaning_and_a_row():
  text = config_docs.markdown()
  for section in config_docs.REFERENCE:
    meanings = config_docs.field_docs(section.cls)
    for field in dataclasses.fields(section.cls):
      if field.name in section.skip:  # a section of its own
        assert f'\n## {field.name}\n' in text, field.name
        continue
      assert meanings.get(field.name), f'{section.cls.__name__}.{field.name}: no docstring'
      name = f'{section.key}.{field.name}' if section.key else field.name
      assert f'| `{name}` | ' in text, name


def test_the_closed_sets_and_built_in_names_are_listed():
  text = config_docs.markdown()
  assert "| `optim.name` | `str` | `'adam'` | `sgd`, `momentum`, `nesterov`, `adam`," in text
  assert '`cnn1d`' in text and '`mnist1d`' in text and '`classification`' in text
  assert "| `sweep.search[i].sampling` | `str` | `'grid'` | `grid`, `quasirandom` |" in text


def test_a_new_kind_of_config_is_one_more_section():
  text = config_docs.markdown([config_docs.Section('study', StudyConfig,
                                                   choices={'method': ('grid', 'random')})])
  assert '## study\n\nA kind of config added later.' in text
  assert "| `study.trials` | `int` | `3` |  | How many. |" in text
  assert "| `study.method` | `str` | `'grid'` | `grid`, `random` | How they are chosen. |" in text
  with pytest.raises(ValueError, match='Undocumented.size: no docstring'):
    config_docs.markdown([config_docs.Section('x', Undocumented)])
