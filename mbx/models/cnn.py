"""Small plain CNNs: the MNIST-1D paper's 1-D CNN and a two-block 2-D CNN for (Fashion-)MNIST."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbx.models.batch_norm import norm_layer


class Conv1DAsMatmul(nn.Module):
  """A 1-D convolution (NWC, explicit symmetric padding) computed as patches @ kernel.

  Same parameters ('kernel' (k, in, out), 'bias') and outputs as `nn.Conv`. XLA:CPU runs
  these tiny convolutions faster this way (46 vs 119 us per CNN1D step at batch 1), and
  under `vmap` over parameters (packed trials) they become batched matmuls instead of
  grouped convolutions, which XLA:CPU runs several times slower.
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.kernel_size, channels, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (self.padding, self.padding), (0, 0)))
    length = (x.shape[1] - self.kernel_size) // self.stride + 1
    last = self.stride * (length - 1) + 1
    patches = jnp.stack([x[:, j:j + last:self.stride] for j in range(self.kernel_size)], axis=2)
    patches = patches.reshape(x.shape[0], length, self.kernel_size * channels)
    return patches @ kernel.reshape(-1, self.features).astype(self.dtype) + bias.astype(self.dtype)


class CNN1D(nn.Module):
  """The MNIST-1D CNN of Greydanus & Kobak (arXiv 2011.14439, their PyTorch `ConvBase`).

  Conv1d(k5, s2, p1) then two Conv1d(k3, s2, p1), ReLU after each, flatten, Dense: length
  40 -> 19 -> 10 -> 5. Explicit padding keeps the lengths equal to PyTorch's; the flatten is
  length-major (NWC) rather than channel-major, which changes nothing but the weight order.
  `norm='batch'` (or 'ghost') adds BatchNorm between each convolution and its ReLU, for
  small-batch studies with and without BN (Masters & Luschi 2018); the default has none, as
  in the paper.
  """

  num_classes: int
  channels: int = 25
  norm: str = 'none'                   # 'batch' or 'ghost': BN after each convolution
  ghost_batch_size: int = 32
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  batch_norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 2:
      x = x[..., None]
    if x.ndim != 3:
      raise ValueError(f'cnn1d expects (batch, length, channels) input, got shape {x.shape}')
    norm = norm_layer(self, train) if self.norm != 'none' else None
    for i, kernel in enumerate((5, 3, 3)):
      x = Conv1DAsMatmul(self.channels, kernel, stride=2, padding=1, dtype=self.dtype,
                         name=f'Conv_{i}')(x)
      if norm is not None:
        x = norm(name=f'BatchNorm_{i}')(x)
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
