"""Small plain CNNs: the MNIST-1D paper's 1-D CNN and a two-block 2-D CNN for (Fashion-)MNIST."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class CNN1D(nn.Module):
  """The MNIST-1D CNN of Greydanus & Kobak (arXiv 2011.14439, their PyTorch `ConvBase`).

  Conv1d(k5, s2, p1) then two Conv1d(k3, s2, p1), ReLU after each, flatten, Dense: length
  40 -> 19 -> 10 -> 5. Explicit padding keeps the lengths equal to PyTorch's; the flatten is
  length-major (NWC) rather than channel-major, which changes nothing but the weight order.
  """

  num_classes: int
  channels: int = 25
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f'cnn1d expects (batch, length, channels) input, got shape {x.shape}')
    for kernel in (5, 3, 3):
      x = nn.Conv(self.channels, (kernel,), strides=(2,), padding=((1, 1),),
                  dtype=self.dtype, param_dtype=jnp.float32)(x)
      x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)


class CNN2D(nn.Module):
  """Per entry of `channels`: 3x3 conv, ReLU, 2x2 max pool; then Dense(dense), ReLU, Dense."""

  num_classes: int
  channels: tuple[int, ...] = (32, 64)
  dense: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f'cnn2d expects NHWC input, got shape {x.shape}')
    for width in self.channels:
      x = nn.Conv(width, (3, 3), padding='SAME', dtype=self.dtype, param_dtype=jnp.float32)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype, param_dtype=jnp.float32)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)
