"""Reading prepared tfds datasets into preprocessed numpy arrays, without TF.

Data live in a tfds data_dir (`data_dir` argument, else $MBX_DATA_DIR, else
the tfds default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Layout and
preparation are plain tfds; mbx only prepares what it is allowed to:

* mnist1d is generated locally on first use (no network, ~2 s).
* Catalog datasets are read if already prepared. If not, nothing is fetched
  unless the caller passes download=True: mbx checks `dataset_info.json`
  before anything can start a download, because tfds offline retries DNS for
  minutes instead of failing.
* array_record data are read with `builder.as_data_source()` (random access,
  no TensorFlow); tfrecord data (the tfds default) need TensorFlow to read.

Rows come back in tfds's on-disk order, which is deterministic but is not the
order examples were generated in (tfds sorts them by a hash of their key).
"""

from __future__ import annotations

import importlib.util
import functools
import os
from typing import Any, Sequence

import numpy as np

from mbx.data import catalog
from mbx.data import preprocess

DATA_DIR_ENV = "MBX_DATA_DIR"
_ARRAY_RECORD = "array_record"


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset is not in the data_dir and mbx may not (or cannot) fetch it."""


class DatasetFormatError(RuntimeError):
  """The dataset is prepared in a file format mbx cannot read here."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """data_dir, else $MBX_DATA_DIR, else None (tfds picks its default)."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get(DATA_DIR_ENV) or None


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def builder(name: str, data_dir: str | os.PathLike | None = None):
  """The tfds builder for `name`; constructing it reads only local metadata."""
  catalog.validate_dataset(name)
  data_dir = resolve_data_dir(data_dir)
  if name == "mnist1d":
    from mbx.data import mnist1d_builder  # pylint: disable=g-import-not-at-top
    return mnist1d_builder.Mnist1d(data_dir=data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder(name, data_dir=data_dir)


def is_prepared(dataset_builder) -> bool:
  # Checking the file first keeps tfds from logging a warning when it is absent.
  info_file = dataset_builder.data_path / "dataset_info.json"
  return info_file.exists() and dataset_builder.is_prepared()


def prepared_builder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    manual_dir: str | os.PathLike | None = None,
):
  """A builder whose data are on disk, preparing them only where allowed.

  mnist1d is always generated if missing (locally, no network). A catalog
  dataset is downloaded and prepared (in array_record) only if `download`;
  imagenet2012 then reads the tar files from `manual_dir` (tfds default:
  <data_dir>/downloads/manual).
  """
  dataset_builder = builder(name, data_dir)
  if is_prepared(dataset_builder):
    return dataset_builder
  if name == "mnist1d":
    from mbx.data import mnist1d_builder  # pylint: disable=g-import-not-at-top
    with mnist1d_builder.preserved_global_rng():
      dataset_builder.download_and_prepare(file_format=_ARRAY_RECORD)
    return dataset_builder
  if not download:
    raise DatasetNotPreparedError(_not_prepared_message(name, dataset_builder))
  if not tensorflow_available():
    raise DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in {dataset_builder.data_dir_root}, "
        "and preparing it needs TensorFlow, which is not installed: tfds "
        "4.9.10's catalog builders read the raw files with tf.io.gfile and "
        "encode images with tf.image (reading the prepared array_record data "
        "back does not need it). Install it (`pip install tensorflow-cpu`) "
        "and retry, or prepare on a machine that has it and copy the data "
        "here:\n  " + _build_command(name, dataset_builder))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset_builder.download_and_prepare(
      file_format=_ARRAY_RECORD,
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir) if manual_dir else None),
  )
  return dataset_builder


def _build_command(name: str, dataset_builder) -> str:
  manual = " --manual_dir <dir with the tar files>" if name == "imagenet2012" else ""
  return (f"tfds build {name} --data_dir {dataset_builder.data_dir_root}"
          f"{manual} --file_format array_record")


def _not_prepared_message(name: str, dataset_builder) -> str:
  message = (
      f"Dataset {name!r} is not prepared in data_dir "
      f"{dataset_builder.data_dir_root} (no {dataset_builder.data_dir}"
      "/dataset_info.json), and download=False, so nothing was fetched. "
      "Prepare it once where there is internet access and TensorFlow (tfds's "
      "catalog builders need TensorFlow to write the data; mbx reads it back "
      "without TensorFlow):\n  " + _build_command(name, dataset_builder) +
      f"\nor call mbx.data.load_arrays({name!r}, split, data_dir=..., "
      "download=True) there, then copy the data_dir here (or point "
      f"data_dir / ${DATA_DIR_ENV} at it).")
  if name == "imagenet2012":
    message += (
        "\nImageNet cannot be downloaded automatically: register at "
        "https://image-net.org/download-images, download "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into the manual "
        "dir (default <data_dir>/downloads/manual).")
  return message


def _read_records(name: str, dataset_builder, split: str) -> Sequence[dict]:
  """Decoded examples of the split, indexable; lazy for array_record."""
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top

  formats = dataset_builder.info.available_file_formats()
  if file_adapters.FileFormat.ARRAY_RECORD in formats:
    return dataset_builder.as_data_source(split, file_format=_ARRAY_RECORD)
  stored = ", ".join(sorted(f.value for f in formats)) or "unknown"
  convert = (f"tfds convert_format --dataset_version_dir {dataset_builder.data_dir} "
             "--out_file_format array_record")
  if name == "imagenet2012" or not tensorflow_available():
    needs = ("random access, which only array_record gives"
             if name == "imagenet2012" else "TensorFlow, which is not installed")
    raise DatasetFormatError(
        f"Dataset {name!r} at {dataset_builder.data_dir} is stored as {stored}; "
        f"reading it needs {needs}. Re-prepare it with "
        f"`{_build_command(name, dataset_builder)}` (into another data_dir), "
        f"or convert it in place with TensorFlow installed: `{convert}`."
        + ("" if name == "imagenet2012" else
           " Alternatively install TensorFlow: `pip install tensorflow-cpu`."))
  # tfrecord with TensorFlow installed: read the whole split into memory.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = dataset_builder.as_dataset(split=split, shuffle_files=False)
  return list(tfds.as_numpy(dataset))


class RandomAccessSource:
  """One split of a dataset: `source[indices] -> (x, y)`, preprocessed.

  x is float32 of shape (len(indices),) + input_shape, y int32. Examples are
  read and decoded on demand (array_record), so this works for datasets that
  do not fit in memory. Row order is tfds's on-disk order, the same as
  `load_arrays`.
  """

  def __init__(self, name: str, split: str, records: Sequence[dict],
               supervised_keys: tuple[str, str]):
    self.name = name
    self.split = split
    self.input_shape = catalog.spec(name).input_shape
    self._records = records
    self._x_key, self._y_key = supervised_keys

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """indices: 1-D integer array (a batch) or an int (one example, no batch)."""
    idx = np.asarray(indices)
    if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
      raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.ndim > 1:
      raise ValueError(f"indices must be 0-D or 1-D, got shape {idx.shape}")
    n = len(self)
    flat = np.atleast_1d(idx).astype(np.int64)
    if ((flat < -n) | (flat >= n)).any():
      raise IndexError(f"index out of range for {self.name} {self.split!r} "
                       f"of length {n}")
    flat = np.where(flat < 0, flat + n, flat)
    if flat.size == 0:
      return (np.zeros((0,) + self.input_shape, np.float32),
              np.zeros((0,), np.int32))
    keys = flat.tolist()
    if hasattr(self._records, "__getitems__"):
      rows = self._records.__getitems__(keys)
    else:
      rows = [self._records[i] for i in keys]
    x = preprocess.inputs(self.name, [row[self._x_key] for row in rows])
    y = preprocess.labels([row[self._y_key] for row in rows])
    if idx.ndim == 0:
      return x[0], y[0]
    return x, y

  def __repr__(self) -> str:
    return (f"RandomAccessSource({self.name!r}, {self.split!r}, "
            f"len={len(self)})")


def random_access_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    manual_dir: str | os.PathLike | None = None,
) -> RandomAccessSource:
  """Random access to a split; see `prepared_builder` for what is prepared."""
  catalog.validate_dataset(name, split, field="split")
  dataset_builder = prepared_builder(name, data_dir, download, manual_dir)
  records = _read_records(name, dataset_builder, split)
  return RandomAccessSource(
      name, split, records, tuple(dataset_builder.info.supervised_keys))


def load_arrays(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    manual_dir: str | os.PathLike | None = None,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
  """The whole split in memory: x float32 (N,) + input_shape, y int32 (N,).

  Read-only arrays, cached per process: a sweep's trials share one copy instead of
  each decoding the split again (~1 s for MNIST-1D through tfds).
  """
  return _load_arrays_cached(name, split, resolve_data_dir(data_dir), download,
                             None if manual_dir is None else str(manual_dir), chunk_size)


@functools.lru_cache(maxsize=8)
def _load_arrays_cached(name, split, data_dir, download, manual_dir, chunk_size):
  source = random_access_source(
      name, split, data_dir, download, manual_dir=manual_dir)
  n = len(source)
  x = np.empty((n,) + source.input_shape, np.float32)
  y = np.empty((n,), np.int32)
  for start in range(0, n, chunk_size):
    stop = min(n, start + chunk_size)
    x[start:stop], y[start:stop] = source[np.arange(start, stop)]
  x.flags.writeable = False
  y.flags.writeable = False
  return x, y


def prepared_split_sizes(
    name: str, data_dir: str | os.PathLike | None = None
) -> dict[str, int] | None:
  """Split sizes recorded on disk, or None if the dataset is not prepared."""
  dataset_builder = builder(name, data_dir)
  if not is_prepared(dataset_builder):
    return None
  return {split: info.num_examples
          for split, info in dataset_builder.info.splits.items()}
