"""The datasets mbx knows: names, shapes, split sizes, eval splits, normalisation.

Static facts only: nothing here imports tensorflow_datasets or touches the disk,
so validating a config costs nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from mbx import registry
from mbx.data import splits

DATASET_NAMES: tuple[str, ...] = (
    "mnist1d",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "imagenet2012",
)

# ImageNet examples are resized on the host (shorter side to this size, then a
# centre crop of IMAGENET_CROP); see `preprocess.resize_and_center_crop`.
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224


@dataclasses.dataclass(frozen=True)
class _Spec:
  num_classes: int
  input_shape: tuple[int, ...]
  num_examples: Mapping[str, int]  # canonical sizes, used until prepared
  eval_split: str
  # Per-channel mean/std of pixel values scaled to [0, 1]; None: raw values.
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None


_SPECS: dict[str, _Spec] = {
    # MNIST-1D (Greydanus & Kobak, arXiv 2011.14439) with the package defaults:
    # 5000 samples, 80/20 split. make_dataset already centres the whole set
    # and scales it to unit std; the paper trains on those values as they are.
    # Validation (mnist1d_builder): 1000 more draws; runs evaluate on it and
    # report test once at the end.
    "mnist1d": _Spec(10, (40, 1), {"train": 4000, "validation": 1000, "test": 1000},
                     "validation"),
    # MNIST: the PyTorch examples/mnist constants (training-set pixel stats).
    "mnist": _Spec(
        10, (28, 28, 1), {"train": 60000, "test": 10000}, "test",
        mean=(0.1307,), std=(0.3081,)),
    # Fashion-MNIST: training-set pixel mean/std.
    "fashion_mnist": _Spec(
        10, (28, 28, 1), {"train": 60000, "test": 10000}, "test",
        mean=(0.2860,), std=(0.3530,)),
    # CIFAR-10/100: per-channel mean/std over all training pixels. The often
    # copied CIFAR-10 std (0.2023, 0.1994, 0.2010) is the mean of per-image
    # stds, not the pixel std (kuangliu/pytorch-cifar#19, libffcv/ffcv#322).
    "cifar10": _Spec(
        10, (32, 32, 3), {"train": 50000, "test": 10000}, "test",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec(
        100, (32, 32, 3), {"train": 50000, "test": 10000}, "test",
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    # ImageNet-1k (ILSVRC 2012): the torchvision constants. tfds also has a
    # 'test' split, but its labels are all -1, so it is not offered here.
    "imagenet2012": _Spec(
        1000, (IMAGENET_CROP, IMAGENET_CROP, 3),
        {"train": 1281167, "validation": 50000}, "validation",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def spec(name: str) -> _Spec:
  validate_dataset(name)
  return _SPECS[name]


def split_names(name: str) -> tuple[str, ...]:
  """The base split names mbx offers for `name` (slices of them are allowed)."""
  return tuple(spec(name).num_examples)


def default_eval_split(name: str) -> str:
  """'test' for every dataset except imagenet2012 ('validation')."""
  return spec(name).eval_split


def validate_dataset(
    name: str, split: str | None = None, *, field: str = "data.train_split"
) -> None:
  """Raises ValueError for an unknown dataset or split; no I/O.

  `field` is the config field named in a split error (e.g. 'data.eval_split').
  """
  if name not in _SPECS:
    raise ValueError(
        f"data.name={name!r} is not a known dataset; {registry.suggest(name, DATASET_NAMES)}")
  if split is not None:
    splits.check_split(name, split, _SPECS[name].num_examples, field)
