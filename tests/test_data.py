"""Tests for mbx.data: real tfds writing and reading, no network, no TensorFlow.

Every socket connection and DNS lookup in this file fails (the `no_network`
fixture), so a code path that tried to download would fail loudly instead of
hanging on tfds's offline DNS retries.
"""

import hashlib
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mbx import data
from mbx.config import DataConfig
from mbx.data import augment
from mbx.data import preprocess
from mbx.data import sources
from mbx.data import resolve_dataset
import user_datasets

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TF_INSTALLED = sources.tensorflow_available()
CATALOG = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")


def _refuse_network(*args, **kwargs):
  raise OSError("tests/test_data.py: network access is blocked")


@pytest.fixture(autouse=True, scope="module")
def no_network():
  with pytest.MonkeyPatch.context() as mp:
    for attr in ("connect", "connect_ex"):
      mp.setattr(socket.socket, attr, _refuse_network)
    mp.setattr(socket, "getaddrinfo", _refuse_network)
    mp.setattr(socket, "create_connection", _refuse_network)
    yield


def test_network_is_blocked():
  with pytest.raises(OSError, match="blocked"):
    socket.create_connection(("storage.googleapis.com", 443), timeout=1)


# --- MNIST-1D ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("mnist1d")
  data.load_arrays("mnist1d", "train", data_dir=data_dir)  # prepares it
  return data_dir


@pytest.fixture(scope="module")
def mnist1d_reference():
  """The package's own arrays, made the way its README does."""
  import mnist1d.data  # pylint: disable=g-import-not-at-top

  state = np.random.get_state(), random.getstate()
  try:
    return mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
  finally:
    np.random.set_state(state[0])
    random.setstate(state[1])


def test_mnist1d_shapes_dtypes_and_sizes(mnist1d_dir):
  x, y = data.load_arrays("mnist1d", "train", data_dir=mnist1d_dir)
  x_test, y_test = data.load_arrays("mnist1d", "test", data_dir=mnist1d_dir)
  assert x.shape == (4000, 40, 1) and x.dtype == np.float32
  assert x_test.shape == (1000, 40, 1) and x_test.dtype == np.float32
  assert y.dtype == y_test.dtype == np.int32
  assert set(np.unique(y)) == set(np.unique(y_test)) == set(range(10))
  info = data.dataset_info("mnist1d", data_dir=mnist1d_dir)
  assert info == data.DatasetInfo(
      name="mnist1d", splits={"train": 4000, "validation": 1000, "test": 1000},
      element_spec={"inputs": ((40, 1), "float32"), "targets": ((), "int32")},
      num_classes=10, eval_split="validation")
  assert info.input_shape == (40, 1) and info.num_examples == info.splits


def test_mnist1d_values_match_make_dataset(mnist1d_dir, mnist1d_reference):
  """Rows are a fixed permutation of make_dataset's; `index` says which."""
  builder = sources.prepared_builder("mnist1d", mnist1d_dir)
  for split, (ref_x, ref_y) in {
      "train": ("x", "y"), "test": ("x_test", "y_test")}.items():
    x, y = data.load_arrays("mnist1d", split, data_dir=mnist1d_dir)
    records = builder.as_data_source(split)
    index = np.array([r["index"] for r in records.__getitems__(
        list(range(len(records))))])
    np.testing.assert_array_equal(np.sort(index), np.arange(len(y)))
    expected_x = mnist1d_reference[ref_x][index].astype(np.float32)[..., None]
    np.testing.assert_array_equal(x, expected_x)  # raw values, not rescaled
    np.testing.assert_array_equal(y, mnist1d_reference[ref_y][index])


def test_mnist1d_validation_is_disjoint_balanced_and_on_the_same_scale(mnist1d_dir):
  """1000 more draws from the generator (another seed): no example of train or test
  reappears, 100 per class, normalised with the 5000-example set's statistics."""
  from mbx.data import mnist1d_builder  # pylint: disable=g-import-not-at-top
  x_val, y_val = data.load_arrays("mnist1d", "validation", data_dir=mnist1d_dir)
  assert x_val.shape == (1000, 40, 1) and np.bincount(y_val).tolist() == [100] * 10
  others = np.concatenate([data.load_arrays("mnist1d", s, data_dir=mnist1d_dir)[0]
                           for s in ("train", "test")])[..., 0]
  sq_dist = ((x_val[:, None, :, 0] - others[None]) ** 2).sum(-1)
  assert sq_dist.min() > 1.0  # nearest train/test neighbour; an exact copy would be 0
  assert abs(x_val.mean()) < 0.05 and abs(x_val.std() - 1.0) < 0.05
  # The hand-written generator loop is make_dataset's own, before its normalisation.
  import mnist1d.data  # pylint: disable=g-import-not-at-top
  args = mnist1d.data.get_dataset_args()
  with mnist1d_builder.preserved_global_rng():
    raw, labels = mnist1d_builder.raw_examples(args)
    reference = mnist1d.data.make_dataset(args)
  np.testing.assert_array_equal((raw[:4000] - raw.mean()) / raw.std(), reference["x"])
  np.testing.assert_array_equal(labels[4000:], reference["y_test"])


def test_mnist1d_build_is_deterministic_and_keeps_global_rng(
    mnist1d_dir, tmp_path):
  np.random.seed(123)
  random.seed(123)
  np_before, py_before = np.random.get_state(), random.getstate()
  x, y = data.load_arrays("mnist1d", "train", data_dir=tmp_path)  # new build
  np_after = np.random.get_state()
  assert np_after[0] == np_before[0]
  np.testing.assert_array_equal(np_after[1], np_before[1])
  assert np_after[2:] == np_before[2:]
  assert random.getstate() == py_before
  x0, y0 = data.load_arrays("mnist1d", "train", data_dir=mnist1d_dir)
  np.testing.assert_array_equal(x, x0)  # same on-disk order in both builds
  np.testing.assert_array_equal(y, y0)


def test_mnist1d_random_access_and_slices_match_load_arrays(mnist1d_dir):
  x, y = data.load_arrays("mnist1d", "test", data_dir=mnist1d_dir)
  source = data.random_access_source("mnist1d", "test", data_dir=mnist1d_dir)
  assert len(source) == 1000
  idx = np.array([999, 0, 17, 17, -1])
  bx, by = source[idx]
  np.testing.assert_array_equal(bx, x[idx])
  np.testing.assert_array_equal(by, y[idx])
  one_x, one_y = source[3]
  np.testing.assert_array_equal(one_x, x[3])
  assert one_y == y[3]
  with pytest.raises(IndexError):
    source[np.array([1000])]
  head_x, head_y = data.load_arrays("mnist1d", "test[:10%]", data_dir=mnist1d_dir)
  np.testing.assert_array_equal(head_x, x[:100])
  np.testing.assert_array_equal(head_y, y[:100])


def test_mnist1d_builds_headless_without_side_effects(tmp_path):
  """In a fresh process: no DISPLAY, no network, nothing written to the cwd,
  and `import mbx.data` loads neither tfds, jax, mnist1d nor matplotlib."""
  script = textwrap.dedent("""
      import socket, sys
      def refuse(*a, **k):
          raise OSError("network access is blocked")
      socket.socket.connect = socket.getaddrinfo = refuse
      import mbx.data
      heavy = [m for m in ("tensorflow_datasets", "jax", "mnist1d",
                           "matplotlib") if m in sys.modules]
      assert not heavy, f"import mbx.data imported {heavy}"
      x, y = mbx.data.load_arrays("mnist1d", "test", data_dir=sys.argv[1])
      assert x.shape == (1000, 40, 1), x.shape
      import matplotlib
      print("backend", matplotlib.get_backend())
  """)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  result = subprocess.run(
      [sys.executable, "-c", script, str(tmp_path / "data")], cwd=cwd, env=env,
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "backend agg" in result.stdout.lower()
  assert list(cwd.iterdir()) == []  # no mnist1d_data.pkl


# --- Catalog datasets, prepared locally -------------------------------------


def _fake_split_generators(examples):
  """A stand-in for a builder's `_split_generators`: yields our examples."""

  def split_generators(self, dl_manager):
    del self, dl_manager
    return {split: iter(list(rows)) for split, rows in examples.items()}

  return split_generators


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
  """mnist, cifar10 and imagenet2012 prepared by tfds from tiny local data.

  The real `tfds.builder(name)` classes and the real tfds
  `download_and_prepare(file_format='array_record')` run: feature encoding,
  shuffling, array_record writing, dataset_info.json. Only each builder's
  `_split_generators` is replaced, by one that yields a few random images
  (instead of downloading and parsing the raw files). Images are handed over
  as PIL images, which tfds encodes with PIL; the real parsers hand over numpy
  arrays, which tfds 4.9.10 encodes with tf.image (TensorFlow), and read the
  raw files with tf.io.gfile. This is what `tfds build` would have left on
  disk; mbx then reads it with download=False, as a user's code would.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as imagenet  # pylint: disable=g-import-not-at-top,line-too-long
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  raw = {}

  def images(n, shape):
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8)

  raw["mnist"] = {
      "train": (images(20, (28, 28)), rng.integers(0, 10, 20)),
      "test": (images(10, (28, 28)), rng.integers(0, 10, 10)),
  }
  raw["cifar10"] = {
      "train": (images(8, (32, 32, 3)), rng.integers(0, 10, 8)),
      "test": (images(4, (32, 32, 3)), rng.integers(0, 10, 4)),
  }
  # ImageNet: constant-colour JPEGs of odd sizes (JPEG is lossy, but not on
  # flat colours), to check the resize/crop geometry and the normalisation.
  colours = rng.integers(0, 256, (3, 3), dtype=np.uint8)
  sizes = [(300, 400), (256, 200), (500, 224)]
  raw["imagenet2012"] = {
      "validation": ([np.broadcast_to(c, s + (3,)).copy()
                      for c, s in zip(colours, sizes)], np.array([0, 7, 999])),
  }

  def rows(name, split, with_id=False):
    imgs, labels = raw[name][split]
    for i, (img, label) in enumerate(zip(imgs, labels)):
      example = {"image": PIL.Image.fromarray(img), "label": int(label)}
      if with_id:
        example["id"] = f"{split}_{i:05d}"
      if name == "imagenet2012":
        example["file_name"] = f"ILSVRC2012_val_{i:08d}.JPEG"
      yield i, example

  fakes = {
      "mnist": (mnist.MNIST, {s: rows("mnist", s) for s in ("train", "test")}),
      "cifar10": (cifar.Cifar10, {s: rows("cifar10", s, with_id=True)
                                  for s in ("train", "test")}),
      "imagenet2012": (imagenet.Builder, {
          "validation": rows("imagenet2012", "validation")}),
  }
  data_dir = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as mp:
    for name, (cls, examples) in fakes.items():
      mp.setattr(cls, "_split_generators", _fake_split_generators(examples))
      tfds.builder(name, data_dir=data_dir).download_and_prepare(
          file_format="array_record")
  return data_dir, raw


def _match_rows(x_uint8, raw_images):
  """For each loaded row, the index of the raw image it came from."""
  lookup = {img.tobytes(): i for i, img in enumerate(raw_images)}
  return np.array([lookup[row.tobytes()] for row in x_uint8])


@pytest.mark.parametrize("name,shape,mean,std", [
    ("mnist", (28, 28, 1), [0.1307], [0.3081]),
    ("cifar10", (32, 32, 3),
     [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
])
def test_catalog_load_arrays_normalises(catalog_dir, name, shape, mean, std):
  data_dir, raw = catalog_dir
  for split in ("train", "test"):
    images, labels = raw[name][split]
    images = images.reshape((len(images),) + shape)
    x, y = data.load_arrays(name, split, data_dir=data_dir)
    assert x.shape == images.shape and x.dtype == np.float32
    assert y.dtype == np.int32
    pixels = np.rint((x * np.float32(std) + np.float32(mean)) * 255)
    order = _match_rows(pixels.astype(np.uint8), images)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(images)))
    expected = (images[order] / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, labels[order])


def test_catalog_random_access_matches_load_arrays(catalog_dir):
  data_dir, _ = catalog_dir
  x, y = data.load_arrays("mnist", "train", data_dir=data_dir)
  source = data.random_access_source("mnist", "train", data_dir=data_dir)
  assert len(source) == 20
  idx = np.array([5, 0, 19, 5, -2])
  bx, by = source[idx]
  np.testing.assert_array_equal(bx, x[idx])
  np.testing.assert_array_equal(by, y[idx])
  empty_x, empty_y = source[np.array([], dtype=np.int64)]
  assert empty_x.shape == (0, 28, 28, 1) and empty_y.shape == (0,)
  half = data.random_access_source("mnist", "train[:50%]", data_dir=data_dir)
  np.testing.assert_array_equal(half[np.arange(10)][0], x[:10])


def test_catalog_dataset_info_reads_prepared_sizes(catalog_dir, tmp_path):
  data_dir, _ = catalog_dir
  assert data.dataset_info("mnist", data_dir).splits == {
      "train": 20, "test": 10}
  image_spec = {"inputs": ((32, 32, 3), "float32"), "targets": ((), "int32")}
  assert data.dataset_info("cifar10", data_dir) == data.DatasetInfo(
      "cifar10", {"train": 8, "test": 4}, image_spec, 10, "test")
  # Unprepared: the canonical sizes, without creating anything.
  assert data.dataset_info("cifar100", tmp_path / "none") == data.DatasetInfo(
      "cifar100", {"train": 50000, "test": 10000}, image_spec, 100, "test")
  assert data.dataset_info("imagenet2012", tmp_path / "none").eval_split == "validation"
  assert not (tmp_path / "none").exists()


def test_catalog_data_dir_from_environment(catalog_dir, monkeypatch):
  data_dir, _ = catalog_dir
  monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
  x, _ = data.load_arrays("mnist", "test")
  assert x.shape == (10, 28, 28, 1)


def test_imagenet_source_resizes_crops_and_normalises(catalog_dir):
  data_dir, raw = catalog_dir
  source = data.random_access_source(
      "imagenet2012", data.default_eval_split("imagenet2012"),
      data_dir=data_dir)
  x, y = source[np.arange(len(source))]
  assert x.shape == (3, 224, 224, 3) and x.dtype == np.float32
  images, labels = raw["imagenet2012"]["validation"]
  colours = np.array([img[0, 0] for img in images])
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  recovered = np.rint((x.mean(axis=(1, 2)) * std + mean) * 255)
  order = [int(np.argmin(np.abs(colours - c).sum(1))) for c in recovered]
  assert sorted(order) == [0, 1, 2]
  np.testing.assert_allclose(recovered, colours[order], atol=2)  # JPEG
  np.testing.assert_array_equal(y, labels[order])


def test_resize_and_center_crop_geometry():
  """Shorter side to 256, then the central 224: a ramp keeps its middle."""
  ramp = np.tile(np.arange(200, dtype=np.uint8), (100, 1))  # x = column
  image = np.stack([ramp] * 3, axis=-1)
  out = preprocess.resize_and_center_crop(image)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  # 100x200 -> 256x512; columns 144..367 of 512 = original 56.25..143.75.
  columns = out[112, :, 0].astype(float)
  assert abs(columns[0] - 56.5) <= 1.5 and abs(columns[-1] - 143.5) <= 1.5
  assert np.all(np.diff(columns) >= 0)
  assert np.ptp(out[:, 100, 0]) == 0  # rows unchanged along y


def test_tfrecord_without_tensorflow_is_a_clear_error(catalog_dir, tmp_path):
  if TF_INSTALLED:
    pytest.skip("TensorFlow is installed; the tfrecord path is available")
  source_dir, _ = catalog_dir
  shutil.copytree(source_dir / "mnist", tmp_path / "mnist")
  info_path = next((tmp_path / "mnist").glob("*/dataset_info.json"))
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(data.DatasetFormatError) as error:
    data.load_arrays("mnist", "train", data_dir=tmp_path)
  message = str(error.value)
  assert "tfrecord" in message and "tensorflow-cpu" in message
  assert "--file_format array_record" in message


@pytest.mark.parametrize("name", CATALOG)
def test_unprepared_dataset_fails_with_instructions_and_writes_nothing(name, tmp_path):
  data_dir = tmp_path / "empty"
  split = data.default_eval_split(name)
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.load_arrays(name, split, data_dir=data_dir)
  with pytest.raises(data.DatasetNotPreparedError):
    data.random_access_source(name, "train", data_dir=data_dir)
  message = str(error.value)
  assert repr(name) in message
  assert str(data_dir) in message
  assert f"tfds build {name} --data_dir {data_dir}" in message
  assert "--file_format array_record" in message
  if name == "imagenet2012":
    assert "--manual_dir" in message and "ILSVRC2012_img_train.tar" in message
  assert not data_dir.exists()  # nothing written either


def test_download_without_tensorflow_fails_before_any_download(tmp_path):
  if TF_INSTALLED:
    pytest.skip("TensorFlow is installed; download=True would really prepare")
  with pytest.raises(data.DatasetNotPreparedError, match="tensorflow-cpu"):
    data.load_arrays("cifar10", "train", data_dir=tmp_path, download=True)
  assert list(tmp_path.iterdir()) == []


# --- Augmentation -------------------------------------------------------------


def _crop_candidates(image, padding):
  """Every (dy, dx, flip) crop of the zero-padded image."""
  h, w, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      yield (dy, dx, False), crop
      yield (dy, dx, True), crop[:, ::-1]


def test_cifar_augment_crops_and_flips_each_example(catalog_dir):
  fn = data.augment_fn("cifar10")
  assert fn is data.augment_fn("cifar100") is augment.cifar_augment
  x = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32)
  key = jax.random.key(0)
  out = np.asarray(jax.jit(fn)(key, x))
  assert out.shape == x.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, np.asarray(fn(key, x)))  # same key
  assert not np.array_equal(out, np.asarray(fn(jax.random.key(1), x)))
  transforms = []
  for image, result in zip(x, out):
    found = [t for t, crop in _crop_candidates(image, 4)
             if np.array_equal(crop, result)]
    assert len(found) == 1  # values preserved, exactly one crop/flip
    transforms.append(found[0])
  flips = {t[2] for t in transforms}
  offsets = {t[:2] for t in transforms}
  assert flips == {False, True}
  assert len(offsets) > 10
  # On real (locally prepared) CIFAR arrays too.
  images, _ = data.load_arrays("cifar10", "train", data_dir=catalog_dir[0])
  assert fn(key, images).shape == images.shape


def test_imagenet_augment_keeps_shape_and_crops():
  fn = data.augment_fn("imagenet2012")
  ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None],
                         (4, 32, 32, 3))
  key = jax.random.key(0)
  out = np.asarray(jax.jit(fn)(key, ramp))
  assert out.shape == ramp.shape and out.dtype == np.float32
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out, np.asarray(jax.jit(fn)(key, ramp)))
  np.testing.assert_allclose(out, np.asarray(fn(key, ramp)), atol=1e-5)
  whole = augment.random_resized_crop(key, ramp, area=(1.0, 1.0),
                                      aspect_ratio=(1.0, 1.0))
  np.testing.assert_allclose(np.asarray(whole), ramp, atol=1e-4)
  quarter = np.asarray(augment.random_resized_crop(
      key, ramp, area=(0.25, 0.25), aspect_ratio=(1.0, 1.0)))
  spans = np.ptp(quarter[:, 16, :, 0], axis=1)  # a 16-wide box, stretched
  np.testing.assert_allclose(spans, 15.5, atol=1.0)


@pytest.mark.parametrize("name", ["mnist1d", "mnist", "fashion_mnist"])
def test_no_augmentation(name):
  assert data.augment_fn(name) is None


# --- Validation ---------------------------------------------------------------


def test_dataset_names_and_eval_splits():
  assert data.DATASET_NAMES == (
      "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100",
      "imagenet2012")
  assert {n: data.default_eval_split(n) for n in data.DATASET_NAMES} == {
      "mnist1d": "validation", "mnist": "test", "fashion_mnist": "test",
      "cifar10": "test", "cifar100": "test", "imagenet2012": "validation"}


def test_validate_dataset_unknown_name():
  with pytest.raises(ValueError) as error:
    data.validate_dataset("cifar-10")
  message = str(error.value)
  assert "data.name='cifar-10'" in message and "did you mean cifar10 or cifar100?" in message
  with pytest.raises(ValueError) as error:
    data.validate_dataset("nosuchset")
  assert all(n in str(error.value) for n in data.DATASET_NAMES)
  with pytest.raises(ValueError, match="data.name"):
    data.augment_fn("svhn")
  with pytest.raises(ValueError, match="data.name"):
    data.dataset_info("svhn")


@pytest.mark.parametrize("split", [
    "train", "test", "train[:90%]", "train[90%:]", "train[1000:]",
    "test[-100:]", "train[:10%]+test", "train[10%:20%]"])
def test_validate_dataset_accepts(split):
  data.validate_dataset("cifar10", split)


@pytest.mark.parametrize("split", [
    "validation", "train[:90%", "train[abc]", "train[:]", "train[1:2:3]",
    "train+", "", "Train"])
def test_validate_dataset_rejects(split):
  with pytest.raises(ValueError) as error:
    data.validate_dataset("cifar10", split)
  message = str(error.value)
  assert "data.train_split" in message and repr(split) in message
  assert "train, test" in message


def test_validate_dataset_split_field_and_imagenet_splits():
  with pytest.raises(ValueError, match=r"data\.eval_split='test'.*"
                     r"train, validation"):
    data.validate_dataset("imagenet2012", "test", field="data.eval_split")
  data.validate_dataset("imagenet2012", "validation")
  with pytest.raises(ValueError, match="split='validation'"):
    data.load_arrays("mnist", "validation")  # before any I/O


# --- Datasets as dicts: resolve_dataset, user builders, ArrayDataset ----------

# sha256 of load_arrays("mnist1d", "train") before the data layer returned dicts: the
# trainer's committed results were computed on exactly these bytes (x, then y).
MNIST1D_TRAIN_SHA256 = ("707d6ee2b8ead208", "badaca193f716048")


def _sha(array):
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _one_line_value_error(fn, *needles):
  with pytest.raises(ValueError) as error:
    fn()
  message = str(error.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, (needle, message)
  return message


def test_resolve_mnist1d_is_the_old_load_arrays(session_data_dir, mnist1d_reference):
  dataset = resolve_dataset(DataConfig(name="mnist1d"))  # $MBX_DATA_DIR: the session dir
  assert resolve_dataset(DataConfig(name="mnist1d")) is dataset  # cached per config
  train = dataset.arrays("train")
  assert set(train) == {"inputs", "targets"}
  assert train["inputs"].shape == (4000, 40, 1) and train["inputs"].dtype == np.float32
  assert train["targets"].shape == (4000,) and train["targets"].dtype == np.int32
  assert not train["inputs"].flags.writeable and not train["targets"].flags.writeable
  assert dataset.arrays("train")["inputs"] is train["inputs"]  # decoded once
  assert (_sha(train["inputs"]), _sha(train["targets"])) == MNIST1D_TRAIN_SHA256
  x, y = data.load_arrays("mnist1d", "train")
  np.testing.assert_array_equal(train["inputs"], x)
  np.testing.assert_array_equal(train["targets"], y)
  # Same rows as make_dataset's, in the on-disk order the builder's `index` gives.
  records = sources.prepared_builder("mnist1d", session_data_dir).as_data_source("train")
  index = np.array([r["index"] for r in records.__getitems__(list(range(len(records))))])
  np.testing.assert_array_equal(
      train["inputs"], mnist1d_reference["x"][index].astype(np.float32)[..., None])
  info = dataset.info()
  assert info.num_classes == 10 and info.eval_split == "validation"
  assert info.input_shape == (40, 1)
  assert info.splits == {"train": 4000, "validation": 1000, "test": 1000}
  assert dataset.augment() is None
  assert dataset.num_examples("train[:90%]") == 3600
  source = dataset.source("test")
  assert isinstance(source, data.DataSource) and isinstance(dataset, data.Dataset)
  test = dataset.arrays("test")
  row = source[7]
  assert row["inputs"].shape == (40, 1) and row["targets"].shape == ()
  np.testing.assert_array_equal(row["inputs"], test["inputs"][7])
  batch = source[np.array([5, -1, 5])]
  np.testing.assert_array_equal(batch["inputs"], test["inputs"][[5, -1, 5]])
  np.testing.assert_array_equal(batch["targets"], test["targets"][[5, -1, 5]])
  _one_line_value_error(lambda: dataset.check_split("valid", "data.eval_split"),
                        "data.eval_split='valid'", "train, validation, test")


@pytest.mark.parametrize("split", [
    "train", "train[:90%]", "train[90%:]", "train[1000:]", "test[-100:]",
    "train[10%:20%]", "train[:10%]+test", "test[-33%:]", "train[:1%]", "test[5:-5]",
    "train[10:50%]"])
def test_array_dataset_slices_like_tfds(split):
  """ArrayDataset reads split strings into exactly the rows tfds does."""
  tfds_dataset = resolve_dataset(DataConfig(name="mnist1d"))
  arrays = data.ArrayDataset({s: tfds_dataset.arrays(s) for s in ("train", "test")})
  expected = tfds_dataset.arrays(split)
  assert tfds_dataset.num_examples(split) == arrays.num_examples(split) == len(
      expected["targets"])
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(arrays.arrays(split)[key], expected[key])


@pytest.mark.parametrize("split,needle", [
    ("test[7:3]", "selects no examples"), ("test[5:5]", "selects no examples"),
    ("test[-1001:]", "out of range")])
def test_empty_or_out_of_range_slices_are_errors(split, needle):
  tfds_dataset = resolve_dataset(DataConfig(name="mnist1d"))
  arrays = data.ArrayDataset({"test": tfds_dataset.arrays("test")})
  for dataset in (tfds_dataset, arrays):
    _one_line_value_error(lambda: dataset.num_examples(split), f"split={split!r}", needle)
    _one_line_value_error(lambda: dataset.source(split), f"split={split!r}", needle)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """TinyBuilder (tests/user_datasets.py, outside mbx) prepared the way its user would."""
  data_dir = tmp_path_factory.mktemp("tiny")
  user_datasets.TinyBuilder(data_dir=data_dir).download_and_prepare(
      file_format="array_record")
  return data_dir


@pytest.mark.parametrize("name", [
    "user_datasets:TinyBuilder", "tests/user_datasets.py:TinyBuilder"])
def test_user_tfds_builder_by_import_path(tiny_dir, name):
  dataset = resolve_dataset(DataConfig(name=name, data_dir=str(tiny_dir)))
  assert isinstance(dataset, data.TfdsDataset)
  info = dataset.info()
  assert info.splits == user_datasets.TINY_SIZES
  assert info.element_spec == {"inputs": ((8,), "float32"), "targets": ((), "int32")}
  assert info.num_classes == 3 and info.eval_split == "test" and info.input_shape == (8,)
  assert dataset.num_examples("train") == 200 and dataset.num_examples("train[:10%]") == 20
  assert dataset.augment() is None
  for split in ("train", "test"):
    x, label = user_datasets.tiny_arrays(split)
    arrays = dataset.arrays(split)
    assert arrays["inputs"].dtype == np.float32 and arrays["targets"].dtype == np.int32
    lookup = {row.tobytes(): i for i, row in enumerate(x)}
    order = np.array([lookup[row.tobytes()] for row in arrays["inputs"]])  # on-disk order
    np.testing.assert_array_equal(np.sort(order), np.arange(len(x)))
    np.testing.assert_array_equal(arrays["targets"], label[order])
    source = dataset.source(split)
    assert len(source) == len(x)
    row = source[3]
    np.testing.assert_array_equal(row["inputs"], arrays["inputs"][3])
    assert row["targets"] == arrays["targets"][3]
    batch = source[np.array([1, 0, 1])]
    np.testing.assert_array_equal(batch["inputs"], arrays["inputs"][[1, 0, 1]])
  _one_line_value_error(lambda: dataset.check_split("validation", "data.eval_split"),
                        "data.eval_split='validation'", "train, test")


def test_user_builder_is_prepared_locally_on_first_use(tmp_path):
  dataset = resolve_dataset(DataConfig(name="user_datasets:TinyBuilder",
                                       data_dir=str(tmp_path)))
  assert dataset.num_examples("test") == 50  # prepared here, download=False
  assert (tmp_path / "tiny_builder" / "1.0.0" / "dataset_info.json").exists()
  with pytest.raises(ValueError, match=r"data\.name=.*supervised_keys"):
    resolve_dataset(DataConfig(name="user_datasets:NoSupervisedKeys",
                               data_dir=str(tmp_path))).info()
  assert not (tmp_path / "no_supervised_keys").exists()  # refused before preparing


def test_function_import_path_returns_array_dataset():
  config = DataConfig(name="user_datasets:make_regression", options={"n": 100})
  dataset = resolve_dataset(config)
  assert isinstance(dataset, data.ArrayDataset)
  info = dataset.info()
  assert info.splits == {"train": 100, "test": 25}
  assert info.element_spec == {"inputs": ((4,), "float32"), "targets": ((), "float32")}
  assert info.num_classes is None and info.eval_split == "test"
  expected = user_datasets.make_regression(n=100).arrays("train")
  for key in ("inputs", "targets"):
    np.testing.assert_array_equal(dataset.arrays("train")[key], expected[key])
  _one_line_value_error(
      lambda: resolve_dataset(DataConfig(name="user_datasets:make_regression",
                                         options={"m": 1})),
      "data.options={'m': 1}", "make_regression", "'m'")
  _one_line_value_error(
      lambda: resolve_dataset(DataConfig(name="user_datasets:TinyBuilder",
                                         options={"size": 1})),
      "data.options={'size': 1}", "TinyBuilder")
  _one_line_value_error(
      lambda: resolve_dataset(DataConfig(name="user_datasets:not_a_dataset")),
      "data.name='user_datasets:not_a_dataset'", "returned dict",
      "mbx.data.ArrayDataset")


def test_preprocess_import_path(tiny_dir):
  base = resolve_dataset(DataConfig(name="user_datasets:TinyBuilder",
                                    data_dir=str(tiny_dir)))
  dataset = resolve_dataset(DataConfig(
      name="user_datasets:TinyBuilder", data_dir=str(tiny_dir),
      preprocess="user_datasets:scale_inputs"))
  assert dataset.info().element_spec == {
      "inputs": ((8,), "float32"), "targets": ((), "int32"), "weights": ((), "float32")}
  assert dataset.info().num_classes == 3
  arrays = dataset.arrays("train")
  np.testing.assert_array_equal(arrays["inputs"], 2 * base.arrays("train")["inputs"])
  np.testing.assert_array_equal(arrays["targets"], base.arrays("train")["targets"])
  np.testing.assert_array_equal(arrays["weights"], np.ones(200, np.float32))
  row = dataset.source("train")[4]
  np.testing.assert_array_equal(row["inputs"], arrays["inputs"][4])
  assert row["weights"] == 1.0
  # A Dataset object passed in, preprocessed the same way.
  own = data.ArrayDataset({"train": (np.arange(6.0).reshape(3, 2), np.array([0, 1, 1]))})
  scaled = resolve_dataset(DataConfig(preprocess="user_datasets:scale_inputs"), own)
  np.testing.assert_array_equal(scaled.arrays("train")["inputs"],
                                2 * np.arange(6.0).reshape(3, 2))
  assert resolve_dataset(DataConfig(), own) is own
  _one_line_value_error(
      lambda: resolve_dataset(DataConfig(preprocess="user_datasets:nope"), own),
      "data.preprocess='user_datasets:nope'")
  _one_line_value_error(lambda: resolve_dataset(DataConfig(), object()), "dataset=",
                        "mbx.data.Dataset")


def test_resolve_errors_name_the_field(tmp_path):
  _one_line_value_error(
      lambda: resolve_dataset(DataConfig(name="cifar-10")), "data.name='cifar-10'",
      "did you mean cifar10 or cifar100?", "not a tfds builder", "package.module:Builder",
      "package.module:function")
  message = _one_line_value_error(lambda: resolve_dataset(DataConfig(name="nosuchset")),
                                  "data.name='nosuchset'")
  assert all(name in message for name in data.DATASET_NAMES)
  _one_line_value_error(lambda: resolve_dataset(DataConfig(name="mnist", options={"a": 1})),
                        "data.options=")
  _one_line_value_error(
      lambda: resolve_dataset(DataConfig(name="user_datasets:TINY_SIZES")),
      "data.name='user_datasets:TINY_SIZES'", "tfds.core.DatasetBuilder")
  _one_line_value_error(lambda: resolve_dataset(DataConfig(name="no_such_module:Builder")),
                        "data.name='no_such_module:Builder'")
  _one_line_value_error(lambda: resolve_dataset(DataConfig(name="tests/nope.py:Builder")),
                        "data.name='tests/nope.py:Builder'", "no such file")
  # A registered tfds name that is not in mbx's catalog resolves, and is not fetched.
  other = resolve_dataset(DataConfig(name="svhn_cropped", data_dir=str(tmp_path / "empty")))
  with pytest.raises(data.DatasetNotPreparedError, match="tfds build svhn_cropped"):
    other.info()
  assert not (tmp_path / "empty").exists()


def test_unprepared_catalog_dataset_through_resolve(tmp_path):
  data_dir = tmp_path / "empty"
  dataset = resolve_dataset(DataConfig(name="mnist", data_dir=str(data_dir)))
  assert dataset.info().splits == {"train": 60000, "test": 10000}  # canonical, no I/O
  assert dataset.num_examples("train[:90%]") == 54000
  with pytest.raises(data.DatasetNotPreparedError, match="tfds build mnist"):
    dataset.arrays("train")
  with pytest.raises(data.DatasetNotPreparedError):
    dataset.source("test")
  assert not data_dir.exists()


def test_catalog_dataset_augment(catalog_dir):
  dataset = resolve_dataset(DataConfig(name="cifar10", data_dir=str(catalog_dir[0])))
  assert dataset.augment() is augment.cifar_augment
  assert dataset.arrays("train")["inputs"].shape == (8, 32, 32, 3)


def test_array_dataset_dtypes_classes_and_eval_split():
  x = np.arange(24, dtype=np.float64).reshape(6, 4)
  dataset = data.ArrayDataset(
      {"train": {"inputs": x, "targets": np.array([0, 1, 2, 0, 1, 4], np.int64),
                 "weights": np.ones(6)},
       "validation": {"inputs": x[:2], "targets": np.array([1, 1]),
                      "weights": np.ones(2, np.int32)}})
  info = dataset.info()
  assert info.element_spec == {"inputs": ((4,), "float32"), "targets": ((), "int32"),
                               "weights": ((), "float32")}
  assert info.num_classes == 5 and info.eval_split == "validation"
  assert info.name == "arrays" and info.splits == {"train": 6, "validation": 2}
  assert dataset.augment() is None
  row = dataset.source("train")[-1]
  assert row["targets"] == 4 and row["inputs"].dtype == np.float32
  batch = dataset.source("train[2:]")[np.array([0, 3])]
  np.testing.assert_array_equal(batch["inputs"], x[[2, 5]].astype(np.float32))
  assert dataset.arrays("train")["inputs"].flags.writeable is False
  assert x.flags.writeable  # the caller's arrays keep their flags
  both = dataset.arrays("train+validation")
  assert len(both["targets"]) == 8
  images = np.zeros((3, 2, 2, 1), np.uint8)
  kept = data.ArrayDataset({"train": (images, np.zeros(3, int))}, num_classes=10)
  assert kept.info().element_spec["inputs"] == ((2, 2, 1), "uint8")  # kept as given
  assert kept.info().num_classes == 10 and kept.info().eval_split == "train"
  assert data.ArrayDataset({"train": (x, x[:, 0]), "holdout": (x, x[:, 0])},
                           eval_split="train").info().eval_split == "train"
  assert data.ArrayDataset({"train": (x, x[:, 0]), "holdout": (x, x[:, 0])}
                           ).info().eval_split == "holdout"
  _one_line_value_error(lambda: dataset.check_split("test", "data.eval_split"),
                        "data.eval_split='test'", "train, validation")


X3, Y3 = np.zeros((3, 2), np.float32), np.array([0, 1, 2])


@pytest.mark.parametrize("splits,kwargs,needles", [
    ({}, {}, ["non-empty"]),
    ({"train": (X3, Y3[:2])}, {}, ["'train'", "differ in length", "'inputs': 3",
                                   "'targets': 2"]),
    ({"train": {"inputs": X3}}, {}, ["'train'", "'targets' missing"]),
    ({"test": {"inputs": X3, "targets": Y3, "mask": Y3}}, {}, ["'test'", "'mask'"]),
    ({"train": (X3[:0], Y3[:0])}, {}, ["'train'", "no examples"]),
    ({"train": (X3, Y3)}, {"num_classes": 2}, ["num_classes=2", "needs >= 3"]),
    ({"train": (X3, Y3), "test": (np.zeros((3, 5)), Y3)}, {},
     ["'test'", "'inputs'", "(5,)", "(2,)"]),
    ({"train": (X3, Y3), "test": (X3, Y3.astype(np.float32))}, {}, ["'test'", "'targets'"]),
    ({"train": (X3, Y3), "test": {"inputs": X3, "targets": Y3, "weights": Y3}}, {},
     ["'test'", "weights"]),
    ({"train": (X3, np.array(["a", "b", "c"]))}, {}, ["'train'", "'targets'"]),
    ({"train": (X3, Y3 - 1)}, {}, [">= 0"]),
    ({"train": (X3, Y3)}, {"eval_split": "test"}, ["eval_split='test'"]),
    ({"train": (X3, Y3, Y3)}, {}, ["'train'", "(inputs, targets)"]),
])
def test_array_dataset_validation(splits, kwargs, needles):
  _one_line_value_error(lambda: data.ArrayDataset(splits, **kwargs), *needles)


def test_processes_that_prepare_mnist1d_at_once_all_get_it(tmp_path):
  """The processes of a multi-host run (or sweep workers) starting together on an empty
  data_dir: one prepares, the others wait for it (tfds alone fails the second rename)."""
  code = textwrap.dedent(f'''
      import hashlib, sys
      from mbx import data
      x, y = data.load_arrays('mnist1d', 'test', data_dir={str(tmp_path)!r})
      print(hashlib.sha1(x.tobytes() + y.tobytes()).hexdigest())
  ''')
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  processes = [subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
  results = [p.communicate(timeout=120) for p in processes]
  assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in results]
  digests = {out.strip().splitlines()[-1] for out, _ in results}
  assert len(digests) == 1
  assert len(list((tmp_path / 'mnist1d').iterdir())) == 1  # one version dir, no leftovers


def test_mbx_sources_and_grain_sources_read_each_other(tmp_path):
  """An mbx DataSource is a grain RandomAccessDataSource, and RecordSource makes any grain
  source (here grain's ArrayRecordDataSource over a file written here) an mbx DataSource."""
  import grain  # pylint: disable=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel

  dataset = resolve_dataset(DataConfig(name='mnist1d'))
  source = dataset.source('test')
  expected = dataset.arrays('test')
  assert isinstance(source, grain.sources.RandomAccessDataSource)
  batches = grain.MapDataset.source(source).batch(8)
  np.testing.assert_array_equal(batches[3]['inputs'], expected['inputs'][24:32])
  np.testing.assert_array_equal(batches[3]['targets'], expected['targets'][24:32])

  path = tmp_path / 'records.array_record'
  writer = ArrayRecordWriter(str(path), 'group_size:1')
  for i in range(50):
    writer.write(np.full(6, i, np.float32).tobytes())
  writer.close()
  records = data.RecordSource(
      grain.sources.ArrayRecordDataSource([str(path)]),
      lambda b: {'inputs': np.frombuffer(b, np.float32), 'targets': np.int32(b[0] % 7)},
      split='train')
  assert isinstance(records, data.DataSource) and len(records) == 50
  batch = records[np.array([3, 49, -1, 0])]
  np.testing.assert_array_equal(batch['inputs'][:, 0], [3, 49, 49, 0])
  assert records[7]['inputs'].shape == (6,)
  with pytest.raises(IndexError):
    records[np.array([50])]
