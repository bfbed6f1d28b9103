"""Finding, preparing and opening tfds datasets, without TensorFlow.

Data live in a tfds data_dir (`data_dir` argument, else $MBX_DATA_DIR, else
the tfds default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Layout and
preparation are plain tfds; mbx only prepares what it is allowed to:

* mnist1d, and a user's own builder class, are generated locally on first use
  (mnist1d: no network, ~2 s).
* Catalog datasets, and any other tfds builder name, are read if already
  prepared. If not, nothing is fetched unless the caller passes download=True:
  mbx checks `dataset_info.json` before anything can start a download, because
  tfds offline retries DNS for minutes instead of failing.
* array_record data are read with `builder.as_data_source()` (random access,
  no TensorFlow); tfrecord data (the tfds default) need TensorFlow to read.

Rows come back in tfds's on-disk order, which is deterministic but is not the
order examples were generated in (tfds sorts them by a hash of their key).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pathlib
from typing import Sequence

from mbx.data import catalog

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
  """The builder of catalog dataset `name` with its data on disk; see `prepare`."""
  return prepare(builder(name, data_dir), name, download=download,
                 local=name == "mnist1d", manual_dir=manual_dir)


def prepare(dataset_builder, name: str, *, download: bool, local: bool,
            manual_dir: str | os.PathLike | None = None):
  """`dataset_builder`, its data prepared (array_record) only where allowed.

  `local` builders (mnist1d, a user's own class) are always generated if
  missing. Others are downloaded and prepared only if `download`; imagenet2012
  then reads the tar files from `manual_dir` (tfds default:
  <data_dir>/downloads/manual). `name` is what messages call the dataset.
  """
  if is_prepared(dataset_builder):
    return dataset_builder
  check_preparable(dataset_builder, name, download=download, local=local)
  with _preparation_lock(dataset_builder, name):
    if is_prepared(dataset_builder):  # another process prepared it while this one waited:
      # a builder made before the data existed knows neither its splits nor its format
      return type(dataset_builder)(data_dir=dataset_builder.data_dir_root,
                                   config=dataset_builder.builder_config,
                                   version=dataset_builder.version)
    if local:
      from mbx.data import mnist1d_builder  # pylint: disable=g-import-not-at-top
      with mnist1d_builder.preserved_global_rng():
        dataset_builder.download_and_prepare(file_format=_ARRAY_RECORD)
      return dataset_builder
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset_builder.download_and_prepare(
        file_format=_ARRAY_RECORD,
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None),
    )
    return dataset_builder


def check_preparable(dataset_builder, name: str, *, download: bool, local: bool) -> None:
  """DatasetNotPreparedError, with how to prepare it, when `prepare` could not: the data are
  not on disk and may not be fetched (not `local`, not `download`) or cannot be (no TensorFlow).
  Reads and writes nothing."""
  if is_prepared(dataset_builder):
    return
  if not local and not download:
    raise DatasetNotPreparedError(_not_prepared_message(name, dataset_builder))
  if not local and name in catalog.DATASET_NAMES and not tensorflow_available():
    raise DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in {dataset_builder.data_dir_root}, "
        "and preparing it needs TensorFlow, which is not installed: tfds "
        "4.9.10's catalog builders read the raw files with tf.io.gfile and "
        "encode images with tf.image (reading the prepared array_record data "
        "back does not need it). Install it (`pip install tensorflow-cpu`) "
        "and retry, or prepare on a machine that has it and copy the data "
        "here:\n  " + _build_command(name, dataset_builder))


@contextlib.contextmanager
def _preparation_lock(dataset_builder, name: str):
  """An exclusive flock per dataset in its data_dir: processes that start together (the
  processes of a multi-host run, sweep workers) prepare it once, the others wait (tfds's
  own rename of the finished directory fails in all but one)."""
  root = pathlib.Path(os.fspath(dataset_builder.data_dir_root))
  root.mkdir(parents=True, exist_ok=True)
  with open(root / f".{name.replace('/', '_')}.prepare.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


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
      "\nor run with data.download=True there, then copy the data_dir here "
      f"(or point data.data_dir / ${DATA_DIR_ENV} at it).")
  if name == "imagenet2012":
    message += (
        "\nImageNet cannot be downloaded automatically: register at "
        "https://image-net.org/download-images, download "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into the manual "
        "dir (default <data_dir>/downloads/manual).")
  return message


def read_records(name: str, dataset_builder, split: str) -> Sequence[dict]:
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

