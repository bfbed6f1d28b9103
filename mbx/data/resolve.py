"""`resolve_dataset`: a data config (or the user's own Dataset object) -> an `mbx.data.Dataset`.

`data.name` is a catalog name, a built-in text dataset (`text.TEXT_DATASETS`: kjv,
text_file, which take options), the noisy quadratic model `nqm` (`mbx.data.nqm`), any
registered tfds builder name, or an import path
(`mbx.registry`) of a `tfds.core.DatasetBuilder` subclass or of a function returning an
`ArrayDataset` (or any Dataset); `data.options` are the builder's or function's keyword
arguments. `data.preprocess` is an import path of `fn(batch) -> batch`, applied on the
host after the dataset's own preprocessing. Resolved datasets are cached in-process per
(name, data_dir, download, options, preprocess), so resolving once per run is cheap and
a sweep's trials share one decoded copy.
"""

from __future__ import annotations

import collections
import inspect
import json
from typing import Any, Callable, Mapping

from mbx import registry
from mbx.data import catalog
from mbx.data import nqm
from mbx.data import sources
from mbx.data import text
from mbx.data.dataset import ArrayDataset, Dataset, PreprocessedDataset, missing_dataset_methods
from mbx.data.tfds_dataset import TfdsDataset

_CACHE_SIZE = 32
# The names `_build` knows without tfds or an import path.
BUILT_IN_NAMES: tuple[str, ...] = (*catalog.DATASET_NAMES, *text.TEXT_DATASETS, nqm.NAME)
_cache: collections.OrderedDict[Any, Dataset] = collections.OrderedDict()


def resolve_dataset(data_config: Any, dataset: Dataset | None = None) -> Dataset:
  """The Dataset for `data_config` (a DataConfig), or `dataset` with data.preprocess applied.

  Raises ValueError (one line, naming the field) for a name, option or preprocess that
  does not resolve; reads no data (user builders are prepared later, on first use), except
  for the text datasets, whose corpus is read and windowed here (in memory, ~1 s for kjv), and
  nqm, which is drawn here (~1 s for the defaults).
  """
  preprocess = getattr(data_config, "preprocess", None)
  if dataset is not None:
    missing = missing_dataset_methods(dataset)
    if missing:
      raise ValueError(f"dataset={type(dataset).__name__}: not an mbx.data.Dataset (no "
                       f"{', '.join(missing)}); pass an mbx.data.ArrayDataset or an object "
                       "with the mbx.data.Dataset methods")
    return _cached(("object", dataset, preprocess),
                   lambda: _with_preprocess(dataset, preprocess))
  name = data_config.name
  options = dict(getattr(data_config, "options", None) or {})
  data_dir = sources.resolve_data_dir(getattr(data_config, "data_dir", None))
  download = bool(getattr(data_config, "download", False))
  key = ("config", name, data_dir, download, _options_key(options))
  base = _cached(key, lambda: _build(name, options, data_dir, download))
  if not preprocess:
    return base
  return _cached(key + (preprocess,), lambda: _with_preprocess(base, preprocess))


def clear_cache() -> None:
  _cache.clear()


def _cached(key: Any, make: Callable[[], Dataset]) -> Dataset:
  try:
    hash(key)
  except TypeError:  # options that are not JSON, an unhashable Dataset object
    return make()
  if key not in _cache:
    _cache[key] = make()
    while len(_cache) > _CACHE_SIZE:
      _cache.popitem(last=False)
  _cache.move_to_end(key)
  return _cache[key]


def _options_key(options: Mapping[str, Any]) -> str | list:
  """A hashable stand-in for JSON-like options (a list, unhashable, if they are not JSON)."""
  def plain(value):
    if isinstance(value, Mapping):
      return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [plain(v) for v in value]
    return value
  try:
    return json.dumps(plain(options), sort_keys=True)
  except (TypeError, ValueError):
    return []


def _build(name: str, options: dict[str, Any], data_dir: str | None,
           download: bool) -> Dataset:
  if name in text.TEXT_DATASETS:
    _check_options(name, text.BUILDERS[name], options)
    if name in text.TFDS_TEXT:
      return text.BUILDERS[name](**options, data_dir=data_dir, download=download)
    return text.BUILDERS[name](**options)
  if name == nqm.NAME:
    _check_options(name, nqm.dataset, options)
    return nqm.dataset(**options)
  if name in catalog.DATASET_NAMES:
    return TfdsDataset(name, data_dir=data_dir, download=download, options=options)
  if registry.is_import_path(name):
    obj = registry.resolve(name, {}, "data.name", "Builder")  # ResolveError is a ValueError
    return _from_object(name, obj, options, data_dir, download)
  if _is_tfds_builder_name(name):
    return TfdsDataset(name, data_dir=data_dir, download=download, options=options)
  raise ValueError(
      f"data.name={name!r}: not a catalog, text or nqm dataset "
      f"({registry.suggest(name, BUILT_IN_NAMES)}), not a tfds "
      "builder, and not an import path 'package.module:Builder' or 'package.module:function'")


def _check_options(name: str, obj: Any, options: dict[str, Any]) -> None:
  """A ValueError naming data.options if `obj(**options)` would not bind."""
  try:
    signature = inspect.signature(obj)
  except (TypeError, ValueError):  # no signature to check (a builtin): let the call say
    return
  try:
    signature.bind(**options)
  except TypeError as error:
    raise ValueError(f"data.options={options!r}: {name} does not take them ({error})") from None


def _from_object(name: str, obj: Any, options: dict[str, Any], data_dir: str | None,
                 download: bool) -> Dataset:
  if isinstance(obj, type):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if issubclass(obj, tfds.core.DatasetBuilder):
      return TfdsDataset(name, data_dir=data_dir, download=download, builder_cls=obj,
                         options=options)
    raise ValueError(f"data.name={name!r}: names the class {obj.__name__}, expected a "
                     "tfds.core.DatasetBuilder subclass or a function returning "
                     "mbx.data.ArrayDataset")
  if not callable(obj):
    raise ValueError(f"data.name={name!r}: names a {type(obj).__name__}, expected a "
                     "tfds.core.DatasetBuilder subclass or a function returning "
                     "mbx.data.ArrayDataset")
  _check_options(name, obj, options)
  result = obj(**options)
  if isinstance(result, ArrayDataset) or not missing_dataset_methods(result):
    return result
  raise ValueError(f"data.name={name!r}: the function returned {type(result).__name__}, "
                   "expected mbx.data.ArrayDataset (or an object with the mbx.data.Dataset "
                   "methods)")


def _is_tfds_builder_name(name: str) -> bool:
  """Whether tfds has a builder registered as `name` ('glue/cola': dataset 'glue')."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tfds.builder_cls(name.split("/")[0])
  except (tfds.core.registered.DatasetNotFoundError, ValueError):
    return False
  return True


def _with_preprocess(dataset: Dataset, preprocess: str | None) -> Dataset:
  if not preprocess:
    return dataset
  fn = registry.resolve(preprocess, {}, "data.preprocess", "function")
  if not callable(fn) or isinstance(fn, type):
    raise ValueError(f"data.preprocess={preprocess!r}: names a {type(fn).__name__}, expected "
                     "a function fn(batch: dict[str, np.ndarray]) -> dict")
  return PreprocessedDataset(dataset, fn, field="data.preprocess", label=preprocess)
