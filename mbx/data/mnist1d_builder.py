"""MNIST-1D as a tfds dataset, generated locally by the `mnist1d` package.

Greydanus & Kobak, "Scaling down deep learning with MNIST-1D" (arXiv
2011.14439). Train and test are `mnist1d.data.make_dataset` with the package's
default arguments (5000 samples, 80/20 split -> 4000 train / 1000 test, length
40, seed 42), so baselines stay comparable with the paper's. The validation
split is 1000 more examples (100 per class) drawn from the same templates and
transformations with another seed (VALIDATION_SEED), shuffled, and normalised
with the 5000-example set's mean and std, so it is on the same scale as train
and test. Nothing is downloaded. Never use `mnist1d.data.get_dataset`: it tries
a GitHub download first and writes a pickle into the working directory.

Features: `x` float32 (40,) (the trainer reshapes to (40, 1)), `y` ClassLabel
(10), and `index`, the example's position in make_dataset's split, so that
rows read back (tfds stores them in hashed-key order, not generation order) can
be traced to the package's arrays.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

NAME = "mnist1d"
# The args this builder's VERSION stands for; generation fails rather than
# silently making different data if a new mnist1d changes its defaults.
EXPECTED_ARGS = {
    "num_samples": 5000,
    "train_split": 0.8,
    "final_seq_length": 40,
    "seed": 42,
}
VALIDATION_SEED = 1042
NUM_VALIDATION = 1000


@contextlib.contextmanager
def preserved_global_rng():
  """Restores numpy's and Python's global RNG states on exit.

  make_dataset reseeds both, and tfds draws from `random` for its temporary
  directory names; building must not move the caller's random streams.
  """
  np_state = np.random.get_state()
  py_state = random.getstate()
  try:
    yield
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)


def _checked_args():
  import mnist1d.data  # pylint: disable=g-import-not-at-top
  args = mnist1d.data.get_dataset_args()
  for key, value in EXPECTED_ARGS.items():
    if getattr(args, key) != value:
      raise RuntimeError(
          f"mnist1d.data.get_dataset_args().{key} is {getattr(args, key)!r}, "
          f"but the {NAME} {Mnist1d.VERSION} builder was written for {value!r}; "
          "bump the builder's VERSION after checking the new defaults.")
  return args


def raw_examples(args) -> tuple[np.ndarray, np.ndarray]:
  """make_dataset's examples before its whole-set normalisation, in its order.

  Written out because mnist1d has no way to draw more examples without
  renormalising them by their own statistics: the same loop, RNG calls and
  shuffle as `mnist1d.data.make_dataset` (`raw_matches_make_dataset` is tested).
  """
  import mnist1d.data  # pylint: disable=g-import-not-at-top
  from mnist1d.transform import transform  # pylint: disable=g-import-not-at-top
  from mnist1d.utils import set_seed  # pylint: disable=g-import-not-at-top
  templates = mnist1d.data.get_templates()
  set_seed(args.seed)
  xs, ys = [], []
  for label in range(len(templates["y"])):
    for _ in range(args.num_samples // len(templates["y"])):
      x, _ = transform(templates["x"][label], templates["t"], args)
      xs.append(x)
      ys.append(templates["y"][label])
  order = np.random.permutation(len(ys))
  return np.stack(xs)[order], np.stack(ys)[order]


def make_arrays() -> dict[str, np.ndarray]:
  """make_dataset(get_dataset_args()) plus the validation draw, global RNG untouched.

  Returns x, y, x_test, y_test (the package's arrays) and x_validation, y_validation
  (x float64 (N, 40)).
  """
  # mnist1d imports matplotlib.pyplot; with no DISPLAY matplotlib falls back
  # to the Agg backend by itself. Imported here so `import mbx.data` stays cheap.
  import mnist1d.data  # pylint: disable=g-import-not-at-top

  args = _checked_args()
  with preserved_global_rng():
    data = mnist1d.data.make_dataset(args)
    raw, _ = raw_examples(args)
    validation_args = _checked_args()
    validation_args.seed, validation_args.num_samples = VALIDATION_SEED, NUM_VALIDATION
    raw_validation, y_validation = raw_examples(validation_args)
  arrays = {k: data[k] for k in ("x", "y", "x_test", "y_test")}
  arrays["x_validation"] = (raw_validation - raw.mean()) / raw.std()
  arrays["y_validation"] = y_validation
  return arrays


class Mnist1d(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """MNIST-1D, 4000 train / 1000 validation / 1000 test sequences of length 40, 10 classes.

  Not registered with tfds (so a future tfds `mnist1d` cannot collide); build
  it directly: `Mnist1d(data_dir=...).download_and_prepare(
  file_format='array_record')`.
  """

  name = NAME
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "make_dataset(get_dataset_args()), mnist1d 0.0.2.",
                   "1.1.0": "Adds a 1000-example validation split (seed 1042)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "MNIST-1D generated locally with mnist1d.data.make_dataset("
            "get_dataset_args()); x as make_dataset returns it (whole set "
            "centred, unit std), cast to float32. Validation: 1000 more "
            "examples from the same generator with seed 1042, on the same "
            "scale."),
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
            "y": tfds.features.ClassLabel(num_classes=10),
            "index": tfds.features.Scalar(
                dtype=np.int64,
                doc="Position of the example in make_dataset's split."),
        }),
        supervised_keys=("x", "y"),
        homepage="https://github.com/greydanus/mnist1d",
        citation=(
            "@article{greydanus2020scaling, title={Scaling down deep learning "
            "with MNIST-1D}, author={Greydanus, Sam and Kobak, Dmitry}, "
            "journal={arXiv preprint arXiv:2011.14439}, year={2020}}"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated locally; nothing to download.
    data = make_arrays()
    return {
        "train": self._generate_examples(data["x"], data["y"]),
        "validation": self._generate_examples(data["x_validation"],
                                              data["y_validation"]),
        "test": self._generate_examples(data["x_test"], data["y_test"]),
    }

  def _generate_examples(self, x: np.ndarray, y: np.ndarray) -> Iterator:
    for i in range(len(y)):
      yield i, {"x": x[i].astype(np.float32), "y": int(y[i]), "index": i}
