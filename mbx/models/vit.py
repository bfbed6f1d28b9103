"""Vision Transformer (Dosovitskiy et al. 2021, arXiv 2010.11929), small defaults for 32x32."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbx.models.attention import TransformerBlock

class ViT(nn.Module):
  """Conv patch embedding, learned position embeddings, pre-norm encoder, final LayerNorm, and
  global average pooling ('gap', as Beyer et al. 2022, arXiv 2205.01580) or a CLS token ('cls')."""

  num_classes: int
  patch_size: int = 4
  hidden: int = 192
  num_layers: int = 6
  num_heads: int = 3
  mlp_dim: int = 768
  pool: str = 'gap'
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f'vit expects NHWC images (batch, height, width, channels), '
                       f'got shape {x.shape}')
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f'vit: image size {x.shape[1:3]} is not divisible by patch_size={p}')
    x = nn.Conv(self.hidden, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                param_dtype=jnp.float32, name='embedding')(x)
    x = x.reshape(x.shape[0], -1, self.hidden)
    if self.pool == 'cls':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, self.hidden), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.hidden)).astype(x.dtype),
                           x], axis=1)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), (1,) + x.shape[1:],
                     jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(x.dtype))
    for _ in range(self.num_layers):
      x = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout, self.dtype)(x, train)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    x = x[:, 0] if self.pool == 'cls' else x.mean(1)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)
