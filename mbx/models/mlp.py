"""Multilayer perceptron. hidden=(100, 100) with residual=True is the MNIST-1D paper's MLPBase
(arXiv 2011.14439: h = relu(W1 x); h = h + relu(W2 h)); hidden=() is logistic regression."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Flatten, Dense+ReLU per entry of `hidden` (added to its input when `residual` and the
  widths match), Dense(num_classes)."""

  num_classes: int
  hidden: tuple[int, ...] = (100, 100)
  residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(x))
      x = x + h if self.residual and i > 0 and x.shape[-1] == width else h
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)
