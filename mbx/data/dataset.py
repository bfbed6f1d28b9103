"""What the trainer consumes: `Dataset` objects whose sources yield dicts of numpy arrays.

Every record and batch is a dict with 'inputs', 'targets' and optionally 'weights'
(per-example or per-token float32). `ArrayDataset` holds numpy splits in memory;
`mbx.data.tfds_dataset.TfdsDataset` reads tfds data; `PreprocessedDataset` applies a
user's host-side function to every batch of another dataset.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from mbx.data import splits as splits_lib

Batch = dict[str, np.ndarray]
ElementSpec = dict[str, tuple[tuple[int, ...], str]]
BATCH_KEYS = ("inputs", "targets", "weights")
_CHUNK = 4096  # rows decoded at a time when a whole split is read into memory


@runtime_checkable
class DataSource(Protocol):
  """Random access to one split; compatible with grain's RandomAccessDataSource."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int | np.ndarray) -> Batch:
    """int -> one record (no batch axis); 1-D int array -> batch with a leading axis."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trainer needs to know before reading: split sizes, one example's spec, classes."""

  name: str
  splits: dict[str, int]  # base split -> examples (on disk when prepared, else canonical)
  element_spec: ElementSpec  # one example: key -> (shape, numpy dtype name)
  num_classes: int | None  # None for float targets
  eval_split: str

  @property
  def input_shape(self) -> tuple[int, ...]:
    return self.element_spec["inputs"][0]

  @property
  def num_examples(self) -> dict[str, int]:
    """`splits`, under the name `dataset_info`'s callers read."""
    return self.splits


@runtime_checkable
class Dataset(Protocol):
  """One resolved data config: metadata, split checks, random access and in-memory splits."""

  name: str

  def info(self) -> DatasetInfo: ...

  def check_split(self, split: str, field: str) -> None: ...

  def num_examples(self, split: str) -> int: ...

  def source(self, split: str) -> DataSource: ...

  def arrays(self, split: str) -> Batch: ...

  def augment(self) -> Callable[[Any, Any], Any] | None: ...


DATASET_METHODS = ("info", "check_split", "num_examples", "source", "arrays", "augment")


def missing_dataset_methods(obj: Any) -> list[str]:
  """The `Dataset` members `obj` lacks (empty for a Dataset)."""
  missing = [m for m in DATASET_METHODS if not callable(getattr(obj, m, None))]
  return missing + ([] if isinstance(getattr(obj, "name", None), str) else ["name"])


def spec_of(batch: Batch) -> ElementSpec:
  """The element spec of a batch (its arrays without the leading axis)."""
  return {k: (tuple(v.shape[1:]), v.dtype.name) for k, v in batch.items()}


def empty_batch(element_spec: ElementSpec) -> Batch:
  return {k: np.zeros((0,) + shape, dtype) for k, (shape, dtype) in element_spec.items()}


def read_only(batch: Batch) -> Batch:
  """Read-only views of the arrays; the callers' own arrays keep their flags."""
  views = {k: v.view() for k, v in batch.items()}
  for view in views.values():
    view.flags.writeable = False
  return views


class IndexedSource:
  """Index handling shared by the sources: ints and 1-D int arrays, negatives, bounds."""

  split: str = ""

  def __len__(self) -> int:
    raise NotImplementedError

  def read(self, rows: np.ndarray) -> Batch:
    """The batch of non-negative in-range `rows` (possibly empty)."""
    raise NotImplementedError

  def __getitem__(self, index: int | np.ndarray) -> Batch:
    idx = np.asarray(index)
    if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
      raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.ndim > 1:
      raise ValueError(f"indices must be 0-D or 1-D, got shape {idx.shape}")
    n = len(self)
    rows = np.atleast_1d(idx).astype(np.int64)
    if ((rows < -n) | (rows >= n)).any():
      raise IndexError(f"index out of range for split {self.split!r} of length {n}")
    batch = self.read(np.where(rows < 0, rows + n, rows))
    return {k: v[0] for k, v in batch.items()} if idx.ndim == 0 else batch

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.split!r}, len={len(self)})"


class ArraySource(IndexedSource):
  """A split held as arrays: rows are gathered by fancy indexing."""

  def __init__(self, arrays: Batch, split: str = ""):
    self.arrays = arrays
    self.split = split
    self._length = len(arrays["targets"])

  def __len__(self) -> int:
    return self._length

  def read(self, rows: np.ndarray) -> Batch:
    return {k: v[rows] for k, v in self.arrays.items()}


class RecordSource(IndexedSource):
  """A source of single records (grain's RandomAccessDataSource protocol: `len()` and
  `source[i]`, e.g. `grain.sources.ArrayRecordDataSource`) as an mbx DataSource.

  decode(record) -> {'inputs': ..., 'targets': ...} (identity by default, for sources that
  already give dicts of arrays); batches use the source's `__getitems__` when it has one.
  The reverse needs no adapter: an mbx DataSource is a grain source
  (`grain.MapDataset.source(dataset.source('train'))`).
  """

  def __init__(self, records, decode=None, split: str = ""):
    self.records, self.decode, self.split = records, decode, split

  def __len__(self) -> int:
    return len(self.records)

  def read(self, rows: np.ndarray) -> Batch:
    keys = rows.tolist()
    items = (self.records.__getitems__(keys) if hasattr(self.records, "__getitems__")
             else [self.records[i] for i in keys])
    if self.decode is not None:
      items = [self.decode(item) for item in items]
    if not items:
      raise ValueError("RecordSource.read: no rows asked for (its element spec is unknown)")
    return {key: np.stack([np.asarray(item[key]) for item in items]) for key in items[0]}


def read_all(source: DataSource, element_spec: ElementSpec) -> Batch:
  """The whole source in memory, decoded `_CHUNK` rows at a time, read-only."""
  n = len(source)
  if n == 0:
    return read_only(empty_batch(element_spec))
  out: Batch = {}
  for start in range(0, n, _CHUNK):
    stop = min(n, start + _CHUNK)
    batch = source[np.arange(start, stop)]
    for key, value in batch.items():
      if key not in out:
        out[key] = np.empty((n,) + value.shape[1:], value.dtype)
      out[key][start:stop] = value
  return read_only(out)


@functools.lru_cache(maxsize=8)
def cached_arrays(dataset: Any, split: str) -> Batch:
  """`dataset.read_arrays(split)`, once per process: a sweep's trials share one copy."""
  return dataset.read_arrays(split)


# ----------------------------------------------------------------- ArrayDataset
def _as_batch(split: str, value: Any) -> Batch:
  if isinstance(value, tuple):
    if len(value) != 2:
      raise ValueError(f"ArrayDataset split {split!r}: a tuple must be (inputs, targets), "
                       f"got {len(value)} items")
    value = {"inputs": value[0], "targets": value[1]}
  if not isinstance(value, Mapping):
    raise ValueError(f"ArrayDataset split {split!r}: expected a dict of arrays or an "
                     f"(inputs, targets) tuple, got {type(value).__name__}")
  for key in ("inputs", "targets"):
    if key not in value:
      raise ValueError(f"ArrayDataset split {split!r}: {key!r} missing (keys: {sorted(value)})")
  unknown = sorted(set(value) - set(BATCH_KEYS))
  if unknown:
    raise ValueError(f"ArrayDataset split {split!r}: unknown keys {unknown}; "
                     f"allowed: {', '.join(BATCH_KEYS)}")
  batch = {}
  for key, array in value.items():
    array = np.asarray(array)
    if array.ndim == 0:
      raise ValueError(f"ArrayDataset split {split!r}: {key!r} is a scalar; expected one row "
                       "per example")
    batch[key] = _converted(split, key, array)
  lengths = {key: len(array) for key, array in batch.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"ArrayDataset split {split!r}: arrays differ in length ({lengths})")
  if lengths["targets"] == 0:
    raise ValueError(f"ArrayDataset split {split!r}: no examples")
  return batch


def _converted(split: str, key: str, array: np.ndarray) -> np.ndarray:
  """float64 -> float32; integer targets -> int32; targets and weights must be numeric."""
  kind = array.dtype.kind
  if key == "weights" or (key == "targets" and kind == "f"):
    if kind not in "iuf":
      raise ValueError(f"ArrayDataset split {split!r}: {key!r} must be numeric, got "
                       f"dtype {array.dtype}")
    return array.astype(np.float32, copy=False)
  if key == "targets":
    if kind not in "iu":
      raise ValueError(f"ArrayDataset split {split!r}: 'targets' must be integer class "
                       f"indices or floats, got dtype {array.dtype}")
    return array.astype(np.int32, copy=False)
  return array.astype(np.float32, copy=False) if array.dtype == np.float64 else array


class ArrayDataset:
  """Numpy splits in memory: `ArrayDataset({'train': (x, y), 'test': {'inputs': ..., ...}})`.

  A tuple is (inputs, targets); a dict may add 'weights'. Inputs keep their dtype
  (float64 -> float32), integer targets become int32 (num_classes defaults to max + 1),
  float targets float32 (num_classes None), weights float32. The arrays are not copied:
  do not modify them afterwards. Splits slice the tfds way ('train[:90%]').
  """

  def __init__(self, splits: Mapping[str, Mapping[str, np.ndarray] | tuple[np.ndarray, np.ndarray]],
               *, num_classes: int | None = None, eval_split: str | None = None,
               name: str = "arrays"):
    if not isinstance(splits, Mapping) or not splits:
      raise ValueError("ArrayDataset: expected a non-empty mapping of split name -> arrays")
    self.name = name
    self._splits = {str(split): read_only(_as_batch(split, value))
                    for split, value in splits.items()}
    first_name, first = next(iter(self._splits.items()))
    for split, batch in self._splits.items():
      if set(batch) != set(first):
        raise ValueError(f"ArrayDataset split {split!r}: keys {sorted(batch)} differ from "
                         f"split {first_name!r}'s {sorted(first)}")
      for key, array in batch.items():
        ref = first[key]
        if array.shape[1:] != ref.shape[1:] or array.dtype != ref.dtype:
          raise ValueError(
              f"ArrayDataset split {split!r}: {key!r} has per-example shape {array.shape[1:]} "
              f"and dtype {array.dtype}, but split {first_name!r} has {ref.shape[1:]} and "
              f"{ref.dtype}")
    self._num_classes = self._checked_num_classes(num_classes)
    if eval_split is not None:
      self.check_split(eval_split, "ArrayDataset eval_split")
    self._eval_split = eval_split or splits_lib.default_eval_split(self._splits)

  def _checked_num_classes(self, num_classes: int | None) -> int | None:
    targets = [batch["targets"] for batch in self._splits.values()]
    if targets[0].dtype.kind == "f":
      if num_classes is not None:
        raise ValueError(f"ArrayDataset: num_classes={num_classes} given, but the targets are "
                         "floats (regression); leave num_classes None")
      return None
    low = min(int(t.min()) for t in targets)
    high = max(int(t.max()) for t in targets)
    if low < 0:
      raise ValueError(f"ArrayDataset: integer targets must be class indices >= 0, got {low}")
    if num_classes is not None and num_classes < high + 1:
      raise ValueError(f"ArrayDataset: num_classes={num_classes} is too small for target "
                       f"{high} (needs >= {high + 1})")
    return high + 1 if num_classes is None else num_classes

  def __repr__(self) -> str:
    sizes = {split: len(batch["targets"]) for split, batch in self._splits.items()}
    return f"ArrayDataset({self.name!r}, {sizes})"

  def info(self) -> DatasetInfo:
    return DatasetInfo(
        name=self.name,
        splits={split: len(batch["targets"]) for split, batch in self._splits.items()},
        element_spec=spec_of(next(iter(self._splits.values()))),
        num_classes=self._num_classes, eval_split=self._eval_split)

  def check_split(self, split: str, field: str) -> None:
    splits_lib.check_split(self.name, split, self._splits, field)

  def num_examples(self, split: str) -> int:
    self.check_split(split, "split")
    return splits_lib.split_size(split, self.info().splits)

  def source(self, split: str) -> DataSource:
    return ArraySource(self.arrays(split), split)

  def arrays(self, split: str) -> Batch:
    if split in self._splits:  # no copy, no cache entry
      return dict(self._splits[split])
    self.check_split(split, "split")
    return dict(cached_arrays(self, split))

  def read_arrays(self, split: str) -> Batch:
    parts = [{k: v[start:stop] for k, v in self._splits[name].items()}
             for name, start, stop in splits_lib.split_ranges(split, self.info().splits)]
    if len(parts) == 1:
      return read_only(parts[0])
    return read_only({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

  def augment(self) -> None:
    return None


# ----------------------------------------------------------------- preprocessing
class PreprocessedSource(IndexedSource):
  """`fn` applied to every batch read from `base`."""

  def __init__(self, base: DataSource, fn: Callable[[Batch], Batch], split: str = ""):
    self.base = base
    self.fn = fn
    self.split = split

  def __len__(self) -> int:
    return len(self.base)

  def read(self, rows: np.ndarray) -> Batch:
    return dict(self.fn(self.base[rows]))


class PreprocessedDataset:
  """`base` with the host-side `fn(batch) -> batch` applied after its own preprocessing."""

  def __init__(self, base: Dataset, fn: Callable[[Batch], Batch], field: str = "data.preprocess",
               label: str | None = None):
    self.base = base
    self.fn = fn
    self.name = base.name
    self._field = field
    self._label = label or getattr(fn, "__qualname__", repr(fn))

  def __repr__(self) -> str:
    return f"PreprocessedDataset({self.base!r}, {self._label})"

  @functools.cached_property
  def _info(self) -> DatasetInfo:
    base = self.base.info()
    one_row = {k: np.zeros((1,) + shape, dtype) for k, (shape, dtype) in base.element_spec.items()}
    out = self.fn(one_row)
    where = f"{self._field}={self._label!r}"
    if not isinstance(out, Mapping) or not {"inputs", "targets"} <= set(out):
      raise ValueError(f"{where}: must return a dict with 'inputs' and 'targets', got "
                       f"{sorted(out) if isinstance(out, Mapping) else type(out).__name__}")
    unknown = sorted(set(out) - set(BATCH_KEYS))
    if unknown:
      raise ValueError(f"{where}: returned unknown keys {unknown}; allowed: "
                       f"{', '.join(BATCH_KEYS)}")
    out = {k: np.asarray(v) for k, v in out.items()}
    lengths = {k: v.shape[:1] for k, v in out.items()}
    if any(length != (1,) for length in lengths.values()):
      raise ValueError(f"{where}: must keep the batch axis (1 row in, leading axes {lengths} out)")
    spec = spec_of(out)
    floats = np.dtype(spec["targets"][1]).kind == "f"
    return dataclasses.replace(base, element_spec=spec,
                               num_classes=None if floats else base.num_classes)

  def info(self) -> DatasetInfo:
    return self._info

  def check_split(self, split: str, field: str) -> None:
    self.base.check_split(split, field)

  def num_examples(self, split: str) -> int:
    return self.base.num_examples(split)

  def source(self, split: str) -> DataSource:
    return PreprocessedSource(self.base.source(split), self.fn, split)

  def arrays(self, split: str) -> Batch:
    self.check_split(split, "split")
    return dict(cached_arrays(self, split))

  def read_arrays(self, split: str) -> Batch:
    """`fn` over the base's in-memory split, `_CHUNK` rows at a time (the base decodes once)."""
    base = self.base.arrays(split)
    return read_all(PreprocessedSource(ArraySource(base, split), self.fn, split),
                    self.info().element_spec)

  def augment(self) -> Callable[[Any, Any], Any] | None:
    return self.base.augment()

  def check_available(self) -> None:
    if hasattr(self.base, "check_available"):
      self.base.check_available()
