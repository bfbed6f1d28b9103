"""ResNets (He et al. 2016, arXiv 1512.03385): ResNet-18 for CIFAR and ResNet-50 for ImageNet."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from mbx.models.batch_norm import norm_layer

# He init (fan_out, as torchvision and Goyal et al. 2017) suits ReLU nets without a bias.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv_layer(dtype) -> Callable[..., nn.Module]:
  return functools.partial(nn.Conv, use_bias=False, kernel_init=he_normal, dtype=dtype,
                           param_dtype=jnp.float32)


def pad(kernel: int):
  # PyTorch-style symmetric padding: output sizes match the reference models on any input size.
  return ((kernel // 2, kernel // 2),) * 2


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN; projection shortcut when the shape changes."""

  features: int
  strides: int
  conv: Callable
  norm: Callable
  zero_init_residual: bool

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.features, (3, 3), self.strides, pad(3))(x)))
    y = self.conv(self.features, (3, 3), 1, pad(3))(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_residual else
                  nn.initializers.ones)(y)
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.features, (1, 1), self.strides, 'VALID')(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (carrying the stride: "ResNet v1.5", as Goyal et al.), 1x1 expand x4."""

  features: int
  strides: int
  conv: Callable
  norm: Callable
  zero_init_residual: bool

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.features, (3, 3), self.strides, pad(3))(y)))
    y = self.conv(4 * self.features, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_residual else
                  nn.initializers.ones)(y)
    if x.shape != y.shape:
      x = self.norm()(self.conv(4 * self.features, (1, 1), self.strides, 'VALID')(x))
    return nn.relu(x + y)


def residual_stages(x, block, blocks, width, **block_args):
  for stage, num_blocks in enumerate(blocks):
    for i in range(num_blocks):
      strides = 2 if stage > 0 and i == 0 else 1
      x = block(width * 2**stage, strides, **block_args)(x)
  return x


class CifarResNet18(nn.Module):
  """ResNet-18 for 32x32 images: 3x3 stride-1 stem, no max pool, BasicBlocks [2, 2, 2, 2] of
  widths width x (1, 2, 4, 8), global average pool, Dense."""

  num_classes: int
  width: int = 64
  zero_init_residual: bool = False
  norm: str = 'batch'
  ghost_batch_size: int = 32
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  batch_norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f'resnet18 expects NHWC input, got shape {x.shape}')
    conv, norm = conv_layer(self.dtype), norm_layer(self, train)
    x = nn.relu(norm()(conv(self.width, (3, 3), 1, pad(3))(x)))
    x = residual_stages(x, BasicBlock, (2, 2, 2, 2), self.width, conv=conv, norm=norm,
                        zero_init_residual=self.zero_init_residual)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x.mean((1, 2)))
    return x.astype(jnp.float32)


class ImageNetResNet50(nn.Module):
  """ResNet-50: 7x7 stride-2 stem, 3x3 stride-2 max pool, Bottlenecks [3, 4, 6, 3] of widths
  width x (1, 2, 4, 8) (x4 out), global average pool, Dense. `zero_init_residual` zeroes the
  last BN scale of each block (Goyal et al. 2017, arXiv 1706.02677)."""

  num_classes: int
  width: int = 64
  zero_init_residual: bool = True
  norm: str = 'batch'
  ghost_batch_size: int = 32
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  batch_norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f'resnet50 expects NHWC input, got shape {x.shape}')
    conv, norm = conv_layer(self.dtype), norm_layer(self, train)
    x = nn.relu(norm()(conv(self.width, (7, 7), 2, pad(7))(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad(3))
    x = residual_stages(x, Bottleneck, (3, 4, 6, 3), self.width, conv=conv, norm=norm,
                        zero_init_residual=self.zero_init_residual)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x.mean((1, 2)))
    return x.astype(jnp.float32)
