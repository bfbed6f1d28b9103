"""Helpers by dataset name, returning (inputs, targets) tuples: built on `resolve_dataset`.

`name` is anything `data.name` takes (a catalog name, a tfds builder name, an import path).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from mbx.data.dataset import DataSource, Dataset, DatasetInfo
from mbx.data.resolve import resolve_dataset
from mbx.data.tfds_dataset import TfdsDataset


@dataclasses.dataclass(frozen=True)
class _ByName:
  """The DataConfig fields `resolve_dataset` reads."""
  name: str
  data_dir: str | os.PathLike | None = None
  download: bool = False
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  preprocess: str | None = None


def _dataset(name: str, data_dir: str | os.PathLike | None, download: bool,
             manual_dir: str | os.PathLike | None = None) -> Dataset:
  if manual_dir is not None:  # imagenet2012's tar files; not a DataConfig field
    return TfdsDataset(name, data_dir=data_dir, download=download, manual_dir=manual_dir)
  return resolve_dataset(_ByName(name, data_dir, download))


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
  """Classes, element spec and split sizes (on disk when prepared, else the catalog's)."""
  return _dataset(name, data_dir, False).info()


class RandomAccessSource:
  """One split as `source[indices] -> (inputs, targets)`, over a dict `DataSource`."""

  def __init__(self, name: str, split: str, source: DataSource,
               input_shape: tuple[int, ...]):
    self.name = name
    self.split = split
    self.input_shape = input_shape
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """indices: 1-D integer array (a batch) or an int (one example, no batch)."""
    batch = self.source[indices]
    return batch["inputs"], batch["targets"]

  def __repr__(self) -> str:
    return f"RandomAccessSource({self.name!r}, {self.split!r}, len={len(self)})"


def random_access_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    manual_dir: str | os.PathLike | None = None,
) -> RandomAccessSource:
  """Random access to a split, decoded on demand (for data larger than memory)."""
  dataset = _dataset(name, data_dir, download, manual_dir)
  dataset.check_split(split, "split")
  source = dataset.source(split)
  return RandomAccessSource(name, split, source, dataset.info().input_shape)


def load_arrays(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    manual_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """The whole split in memory as (inputs, targets), read-only, cached per process."""
  dataset = _dataset(name, data_dir, download, manual_dir)
  dataset.check_split(split, "split")
  arrays = dataset.arrays(split)
  return arrays["inputs"], arrays["targets"]
