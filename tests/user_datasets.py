"""Datasets defined outside mbx, the way a user would: resolved by import path in test_data."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mbx import data

TINY_SIZES = {"train": 200, "test": 50}


def tiny_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The examples TinyBuilder writes for `split`: x float32 (n, 8), label in 0..2."""
  rng = np.random.default_rng(list(TINY_SIZES).index(split))
  n = TINY_SIZES[split]
  return rng.normal(size=(n, 8)).astype(np.float32), rng.integers(0, 3, n)


class TinyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """200 train / 50 test synthetic examples, 3 classes; generated locally."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(8,), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=3),
        }),
        supervised_keys=("x", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in TINY_SIZES}

  def _generate_examples(self, split):
    x, label = tiny_arrays(split)
    for i in range(len(label)):
      yield i, {"x": x[i], "label": int(label[i])}


class NoSupervisedKeys(TinyBuilder, skip_registration=True):
  """TinyBuilder without supervised_keys: mbx cannot tell inputs from targets."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(8,), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=3),
        }))


def make_regression(n: int = 64, dim: int = 4, seed: int = 0) -> data.ArrayDataset:
  """y = x . w + noise, float targets; n train and n // 4 test examples."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=dim)
  x = rng.normal(size=(n + n // 4, dim))  # float64: mbx keeps it as float32
  y = x @ w + 0.1 * rng.normal(size=len(x))
  return data.ArrayDataset({"train": (x[:n], y[:n]), "test": (x[n:], y[n:])},
                           name="regression")


def not_a_dataset(**options):
  return {"train": options}


def scale_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A data.preprocess function: inputs x 2, and per-example weights of 1."""
  return {**batch, "inputs": batch["inputs"] * 2,
          "weights": np.ones(len(batch["targets"]), np.float32)}


# data.name functions with the mistakes of a first hour: each fails inside the user's code.
def missing_file() -> data.ArrayDataset:
  arrays = np.load("my_data.npz")  # FileNotFoundError, raised inside numpy
  return data.ArrayDataset({"train": (arrays["x"], arrays["y"])})


def missing_key() -> data.ArrayDataset:
  arrays = {"x": np.zeros((8, 4), np.float32), "labels": np.zeros(8, np.int32)}
  return data.ArrayDataset({"train": (arrays["x"], arrays["y"])})  # KeyError: 'y'


def bad_reshape() -> data.ArrayDataset:
  x = np.zeros((8, 5), np.float32).reshape(8, 4, -1, 3)  # ValueError, raised inside numpy
  return data.ArrayDataset({"train": (x, np.zeros(8, np.int32))})


def float_labels() -> data.ArrayDataset:
  """Class indices stored as floats (as np.loadtxt reads them)."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(80, 8)), rng.integers(0, 3, 80).astype(np.float64)
  return data.ArrayDataset({"train": (x[:64], y[:64]), "test": (x[64:], y[64:])})


def one_hot_labels() -> data.ArrayDataset:
  """One-hot rows (as keras.utils.to_categorical gives them), float."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(80, 8)), np.eye(3)[rng.integers(0, 3, 80)]
  return data.ArrayDataset({"train": (x[:64], y[:64]), "test": (x[64:], y[64:])})
