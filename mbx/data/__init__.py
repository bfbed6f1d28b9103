"""Datasets through tensorflow-datasets, as host numpy arrays (no TensorFlow).

    from mbx import data
    data.validate_dataset("cifar10", "train[:90%]")          # config check, no I/O
    info = data.dataset_info("cifar10")                     # classes, shape, sizes
    x, y = data.load_arrays("cifar10", "train")             # float32 NHWC, int32
    source = data.random_access_source("imagenet2012", "train")
    x, y = source[np.array([3, 1, 4])]                      # for data > memory
    augment = data.augment_fn("cifar10")                    # (key, x) -> x, on device

Datasets: mnist1d (generated locally, see `mnist1d_builder`), mnist,
fashion_mnist, cifar10, cifar100, imagenet2012. Catalog datasets must already
be prepared in the data_dir (argument, else $MBX_DATA_DIR, else the tfds
default); otherwise a `DatasetNotPreparedError` says how to prepare them, and
nothing is downloaded unless download=True. Prepare once with
`tfds build <name> --data_dir <dir> --file_format array_record` (needs
TensorFlow and internet; imagenet2012 also `--manual_dir` holding
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org).

Preprocessing: images -> float32 (x / 255 - mean) / std per channel (constants
and their sources in `catalog`); MNIST-1D keeps make_dataset's values, shape
(40, 1); ImageNet is resized (shorter side 256) and centre-cropped to 224 on
the host. Labels are int32. Splits: 'train' and `default_eval_split(name)`
('test'; 'validation' for imagenet2012), tfds slices like 'train[:90%]'.

Importing this package imports neither tensorflow_datasets nor jax.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from mbx.data import catalog
from mbx.data import sources
from mbx.data.catalog import DATASET_NAMES
from mbx.data.catalog import DatasetInfo
from mbx.data.catalog import default_eval_split
from mbx.data.catalog import validate_dataset
from mbx.data.sources import DATA_DIR_ENV
from mbx.data.sources import DatasetFormatError
from mbx.data.sources import DatasetNotPreparedError
from mbx.data.sources import RandomAccessSource
from mbx.data.sources import load_arrays
from mbx.data.sources import random_access_source

if TYPE_CHECKING:
  import jax

__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "RandomAccessSource",
    "augment_fn",
    "dataset_info",
    "default_eval_split",
    "load_arrays",
    "random_access_source",
    "validate_dataset",
]


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
  """Classes, input shape and split sizes; never prepares or downloads.

  Split sizes are read from the data_dir when the dataset is prepared there
  (a subset or a locally made copy may differ from the canonical sizes), and
  are the canonical sizes otherwise.
  """
  spec = catalog.spec(name)
  sizes = dict(spec.num_examples)
  on_disk = sources.prepared_split_sizes(name, data_dir)
  if on_disk is not None:
    sizes = {split: on_disk[split] for split in sizes if split in on_disk}
  return DatasetInfo(name=name, num_classes=spec.num_classes,
                     input_shape=spec.input_shape, num_examples=sizes)


def augment_fn(name: str) -> Callable[["jax.Array", "jax.Array"], "jax.Array"] | None:
  """On-device training augmentation `(key, x) -> x` for `name`, or None.

  cifar10/cifar100: random crop with 4-pixel zero padding + horizontal flip;
  imagenet2012: random-resized crop + flip; mnist, fashion_mnist, mnist1d: None.
  """
  from mbx.data import augment  # pylint: disable=g-import-not-at-top  (jax)

  return augment.augment_fn(name)
