"""The Task protocol (as small as optax's GradientTransformation) and the helpers tasks share."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp


class Task(Protocol):
  """Turns model outputs and a batch into losses and metric sums.

  metrics: every metric `finalize` reports, mapped to 'min' or 'max' (which way is better);
    'loss' is always one. `train.target_metric` takes 'eval_<name>' or 'train_<name>'.
    An optional `train_metrics` tuple limits what the train step logs (default: all).
  losses(outputs, batch): per-example (or per-token) losses, float32, the shape of weights.
  sums(outputs, batch, weights): additive statistics over the batch, weighted (weights None:
    all ones), always with 'loss' and 'count' (the summed weight). Summing them over batches,
    devices or hosts and calling finalize gives exact metrics over a whole split.
  finalize(sums): metric values from the summed statistics (works on floats and on arrays).
  check(outputs, info): raises ValueError when the model's output (a jax.ShapeDtypeStruct for
    a batch of 2) cannot be scored against the data (an mbx.data.DatasetInfo: element_spec,
    num_classes), before anything compiles.
  check_targets(info) (optional): raises ValueError when the data's targets cannot be scored by
    the task at all (float targets for classification); called before the model is built, so
    that the cause comes first.
  """
  metrics: Mapping[str, str]

  def losses(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array: ...

  def sums(self, outputs: jax.Array, batch: Mapping[str, jax.Array],
           weights: jax.Array | None) -> dict[str, jax.Array]: ...

  def finalize(self, sums: Mapping[str, Any]) -> dict[str, Any]: ...

  def check(self, outputs: jax.ShapeDtypeStruct, info: Any) -> None: ...


def weighted_sum(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  """sum(values * weights), weights broadcast over trailing axes; plain sum when None."""
  values = values.astype(jnp.float32)
  if weights is None:
    return jnp.sum(values)
  weights = weights.astype(jnp.float32)
  weights = weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim))
  return jnp.sum(values * weights)


def count(values: jax.Array, weights: jax.Array | None) -> jax.Array | int:
  """The summed weight of `values`' entries (their number when unweighted)."""
  if weights is None:
    return values.size
  weights = weights.astype(jnp.float32)
  return jnp.sum(jnp.broadcast_to(
      weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim)), values.shape))
