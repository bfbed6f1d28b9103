"""Batch normalisation for the BN models: flax's BatchNorm over the whole batch, or ghost batch norm.

Ghost BN is Hoffer, Hubara & Soudry 2017 (arXiv 1705.08741): statistics over consecutive virtual
batches of `ghost_batch_size` examples. Flax has no ghost BN, so `GhostBatchNorm` is written here.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ('batch', 'ghost')


class GhostBatchNorm(nn.Module):
  """BatchNorm whose training statistics come from virtual batches of `ghost_batch_size` examples.

  Variables are named as in `nn.BatchNorm` ('scale', 'bias' params; 'mean', 'var' batch_stats) so
  masks and analysis code treat both alike. The running averages move towards the mean of the
  ghost-batch statistics (averaged over `axis_name` too, so replicas keep identical state); in eval
  mode this is ordinary BN with the running averages.
  """

  ghost_batch_size: int
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)

    if use_running_average:
      y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale)
    else:
      batch = x.shape[0]
      # Init only creates variables, so let it run on any dummy batch.
      ghost = batch if self.is_initializing() else self.ghost_batch_size
      if batch % ghost:
        raise ValueError(
            f'GhostBatchNorm: local batch size {batch} is not divisible by '
            f'ghost_batch_size={ghost}')
      xg = x.reshape((batch // ghost, ghost) + x.shape[1:]).astype(jnp.float32)
      axes = tuple(range(1, xg.ndim - 1))
      # Two-pass variance, as the BN models use (see norm_layer).
      mean = xg.mean(axes, keepdims=True)
      var = jnp.square(xg - mean).mean(axes, keepdims=True)
      y = ((xg - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale)).reshape(x.shape)
      if not self.is_initializing():
        stats = (mean.reshape(-1, features[0]).mean(0), var.reshape(-1, features[0]).mean(0))
        if self.axis_name is not None:
          stats = jax.lax.pmean(stats, self.axis_name)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * stats[0]
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * stats[1]
    y = y + bias
    return y.astype(nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


def norm_layer(model: nn.Module, train: bool) -> Callable[..., nn.Module]:
  """The BN constructor for `model`, read from its fields norm, bn_momentum, ghost_batch_size,
  batch_norm_axis_name and dtype."""
  common = dict(use_running_average=not train, momentum=model.bn_momentum, dtype=model.dtype,
                param_dtype=jnp.float32, axis_name=model.batch_norm_axis_name)
  if model.norm == 'batch':
    # Two-pass variance: flax's one-pass E[x^2] - E[x]^2 cancels badly in float32 (1e-4
    # relative gradient error on a small ResNet), enough to break 1-vs-8-device equality.
    return functools.partial(nn.BatchNorm, use_fast_variance=False, **common)
  if model.norm == 'ghost':
    # Ghost statistics are local by definition; axis_name only syncs the running averages.
    return functools.partial(GhostBatchNorm, ghost_batch_size=model.ghost_batch_size, **common)
  raise ValueError(f'norm={model.norm!r}; choose one of {NORMS}')
