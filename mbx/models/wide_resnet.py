"""Wide ResNet (Zagoruyko & Komodakis 2016, arXiv 1605.07146), WRN-16-4 by default as in
Smith et al. 2018 (arXiv 1711.00489) on CIFAR-10."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbx.models.batch_norm import norm_layer
from mbx.models.resnet import conv_layer, pad


class WideBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3, 1x1 projection when the
  shape changes (taken from the pre-activated input, as the authors' code does)."""

  features: int
  strides: int
  conv: Any
  norm: Any
  dropout: float
  train: bool

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(x))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = self.conv(self.features, (1, 1), self.strides, 'VALID')(y)
    y = self.conv(self.features, (3, 3), self.strides, pad(3))(y)
    y = nn.relu(self.norm()(y))
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    y = self.conv(self.features, (3, 3), 1, pad(3))(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-width: 3x3 stem of 16, three groups of (depth - 4) / 6 blocks with widths
  16, 32, 64 x width, final BN-ReLU, global average pool, Dense. Dropout needs a 'dropout' rng."""

  num_classes: int
  depth: int = 16
  width: int = 4
  dropout: float = 0.0
  norm: str = 'batch'
  ghost_batch_size: int = 32
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  batch_norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f'wrn expects NHWC input, got shape {x.shape}')
    conv, norm = conv_layer(self.dtype), norm_layer(self, train)
    x = conv(16, (3, 3), 1, pad(3))(x)
    for group in range(3):
      for i in range((self.depth - 4) // 6):
        strides = 2 if group > 0 and i == 0 else 1
        x = WideBlock(16 * self.width * 2**group, strides, conv, norm, self.dropout, train)(x)
    x = nn.relu(norm()(x)).mean((1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)
