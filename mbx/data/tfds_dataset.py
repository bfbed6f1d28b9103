"""`TfdsDataset`: a tfds dataset as an `mbx.data.Dataset`, read without TensorFlow.

Three kinds of builder:

* a catalog name (`catalog.DATASET_NAMES`): mbx's preprocessing and normalisation
  (see `preprocess`), float32 inputs, int32 targets; metadata come from the catalog,
  so `info()` needs no data on disk.
* any other registered tfds builder name ('svhn_cropped', 'glue/cola'), built with
  `tfds.builder(name, data_dir=..., **options)`; prepared only with download=True.
* a user's `tfds.core.DatasetBuilder` subclass, built with `cls(data_dir=..., **options)`;
  it is the user's own code, so like mnist1d it is prepared in the data_dir on first use.

For the last two, 'inputs'/'targets' are the builder's `supervised_keys`: uint8 inputs
become float32 / 255, float64 float32, other inputs keep their dtype; integer targets
become int32, float targets float32; num_classes is the label's ClassLabel size, else
None. Their `info()` reads the prepared data (split sizes, one decoded example), so it
prepares what `source()` would: a user class always, a tfds name only with download=True.
Rows come in tfds's on-disk order (deterministic, not generation order).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mbx.data import catalog
from mbx.data import preprocess
from mbx.data import sources
from mbx.data import splits as splits_lib
from mbx.data.dataset import (Batch, DatasetInfo, ElementSpec, IndexedSource, cached_arrays,
                              empty_batch, read_all, spec_of)


class TfdsSource(IndexedSource):
  """One split of a tfds dataset: records decoded on demand, then converted to a batch."""

  def __init__(self, records: Sequence[dict], to_batch: Callable[[list[dict]], Batch],
               element_spec: Callable[[], ElementSpec], split: str):
    self._records = records
    self._to_batch = to_batch
    self._element_spec = element_spec
    self.split = split

  def __len__(self) -> int:
    return len(self._records)

  def read(self, rows: np.ndarray) -> Batch:
    if rows.size == 0:
      return empty_batch(self._element_spec())
    keys = rows.tolist()
    if hasattr(self._records, "__getitems__"):
      return self._to_batch(self._records.__getitems__(keys))
    return self._to_batch([self._records[i] for i in keys])


def _generic_batch(rows: list[dict], input_key: str, target_key: str) -> Batch:
  inputs = np.stack([np.asarray(row[input_key]) for row in rows])
  if inputs.dtype == np.uint8:
    inputs = inputs.astype(np.float32) / np.float32(255.0)
  elif inputs.dtype == np.float64:
    inputs = inputs.astype(np.float32)
  targets = np.stack([np.asarray(row[target_key]) for row in rows])
  if targets.dtype.kind in "iub":
    targets = targets.astype(np.int32)
  elif targets.dtype.kind == "f":
    targets = targets.astype(np.float32)
  return {"inputs": inputs, "targets": targets}


class TfdsDataset:
  """A catalog name, a registered tfds builder name, or a builder class (see module doc)."""

  def __init__(self, name: str, *, data_dir: str | os.PathLike | None = None,
               download: bool = False, builder_cls: type | None = None,
               options: Mapping[str, Any] | None = None,
               manual_dir: str | os.PathLike | None = None):
    self.name = name
    self.data_dir = sources.resolve_data_dir(data_dir)
    self.download = download
    self.in_catalog = builder_cls is None and name in catalog.DATASET_NAMES
    self._builder_cls = builder_cls
    self._options = dict(options or {})
    self._manual_dir = manual_dir
    self._prepared: Any = None  # the builder, once its data are on disk
    self._records: dict[str, Sequence[dict]] = {}
    if self.in_catalog and self._options:
      raise ValueError(f"data.options={self._options!r}: catalog dataset {name!r} takes no "
                       "options")
    if not self.in_catalog:
      self._new_builder()  # a wrong option or config fails here, not at the first read

  def __repr__(self) -> str:
    return f"TfdsDataset({self.name!r}, data_dir={self.data_dir!r})"

  # --------------------------------------------------------------- builders
  def _new_builder(self):
    """Reads only local metadata (tfds's GCS lookups are disabled); never downloads."""
    if self.in_catalog:
      return sources.builder(self.name, self.data_dir)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    make = self._builder_cls or functools.partial(tfds.builder, self.name)
    try:
      return make(data_dir=self.data_dir, **self._options)
    except TypeError as error:
      raise ValueError(f"data.options={self._options!r}: {self.name} does not take them "
                       f"({error})") from None

  def _builder_if_prepared(self):
    if self._prepared is None:
      dataset_builder = self._new_builder()
      if sources.is_prepared(dataset_builder):
        self._prepared = dataset_builder
    return self._prepared

  @property
  def _local(self) -> bool:
    """Generated here, not downloaded: mnist1d and a user's builder class."""
    return self._builder_cls is not None or self.name == "mnist1d"

  def _builder(self):
    """The builder with its data on disk, prepared only where allowed (`sources.prepare`)."""
    if self._prepared is None:
      self._prepared = sources.prepare(self._new_builder(), self.name, download=self.download,
                                       local=self._local, manual_dir=self._manual_dir)
    return self._prepared

  def check_available(self) -> None:
    """DatasetNotPreparedError, with how to prepare it, if reading would raise it; reads and
    writes nothing (a catalog dataset's info() needs no data, its reads do)."""
    if self._builder_if_prepared() is None:
      sources.check_preparable(self._new_builder(), self.name, download=self.download,
                               local=self._local)

  def _split_records(self, split: str) -> Sequence[dict]:
    if split not in self._records:
      dataset_builder = self._builder()
      sizes = {name: info.num_examples for name, info in dataset_builder.info.splits.items()}
      splits_lib.split_ranges(split, sizes)  # tfds misreads reversed or empty slices
      self._records[split] = sources.read_records(self.name, dataset_builder, split)
    return self._records[split]

  @functools.cached_property
  def _keys(self) -> tuple[str, str]:
    keys = (self._builder_if_prepared() or self._new_builder()).info.supervised_keys
    if (not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys)):
      raise ValueError(f"data.name={self.name!r}: the tfds builder needs supervised_keys "
                       f"(inputs feature, targets feature) in its DatasetInfo, got {keys!r}")
    return keys

  def _to_batch(self, rows: list[dict]) -> Batch:
    input_key, target_key = self._keys
    if self.in_catalog:
      return {"inputs": preprocess.inputs(self.name, [row[input_key] for row in rows]),
              "targets": preprocess.labels([row[target_key] for row in rows])}
    return _generic_batch(rows, input_key, target_key)

  # --------------------------------------------------------------- Dataset
  def info(self) -> DatasetInfo:
    if self.in_catalog:
      spec = catalog.spec(self.name)
      sizes = dict(spec.num_examples)
      dataset_builder = self._builder_if_prepared()
      if dataset_builder is not None:  # a subset or local copy may differ from canonical
        on_disk = {s: i.num_examples for s, i in dataset_builder.info.splits.items()}
        sizes = {split: on_disk[split] for split in sizes if split in on_disk}
      return DatasetInfo(
          name=self.name, splits=sizes,
          element_spec={"inputs": (spec.input_shape, "float32"), "targets": ((), "int32")},
          num_classes=spec.num_classes, eval_split=spec.eval_split)
    return self._generic_info

  @functools.cached_property
  def _generic_info(self) -> DatasetInfo:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    target_key = self._keys[1]  # checked before anything is prepared
    tfds_info = self._builder().info
    sizes = {split: info.num_examples for split, info in tfds_info.splits.items()}
    first = next((split for split, n in sizes.items() if n), None)
    if first is None:
      raise ValueError(f"data.name={self.name!r}: the prepared dataset has no examples "
                       f"(splits: {sizes})")
    element_spec = spec_of(self._to_batch([self._split_records(first)[0]]))
    target_kind = np.dtype(element_spec["targets"][1]).kind
    if target_kind not in "if":
      raise ValueError(f"data.name={self.name!r}: targets feature {target_key!r} has dtype "
                       f"{element_spec['targets'][1]}; expected integers or floats")
    label = tfds_info.features[target_key]
    num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else None
    return DatasetInfo(name=self.name, splits=sizes, element_spec=element_spec,
                       num_classes=num_classes, eval_split=splits_lib.default_eval_split(sizes))

  def check_split(self, split: str, field: str) -> None:
    if self.in_catalog:
      catalog.validate_dataset(self.name, split, field=field)
    else:
      splits_lib.check_split(self.name, split, self.info().splits, field)

  def num_examples(self, split: str) -> int:
    self.check_split(split, "split")
    if self.in_catalog and self._builder_if_prepared() is None:
      return splits_lib.split_size(split, self.info().splits)  # canonical sizes
    return len(self._split_records(split))

  def source(self, split: str) -> TfdsSource:
    self.check_split(split, "split")
    return TfdsSource(self._split_records(split), self._to_batch,
                      lambda: self.info().element_spec, split)

  def arrays(self, split: str) -> Batch:
    self.check_split(split, "split")
    return dict(cached_arrays(self, split))

  def read_arrays(self, split: str) -> Batch:
    return read_all(self.source(split), self.info().element_spec)

  def augment(self) -> Callable[[Any, Any], Any] | None:
    """The catalog's on-device augmentation (imports jax); None for other builders."""
    if not self.in_catalog:
      return None
    from mbx.data import augment  # pylint: disable=g-import-not-at-top  (jax)
    return augment.augment_fn(self.name)

