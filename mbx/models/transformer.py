"""Decoder-only Transformer language model (GPT-2 style, Radford et al. 2019): small defaults.

Token embedding, learned absolute positions or rotary ones (RoPE, Su et al. 2021, arXiv
2104.09864, applied to queries and keys), pre-LayerNorm blocks of causal self-attention and
a 4x GELU MLP, a final LayerNorm, and logits from a Dense head or the transposed embedding
(`tie_embeddings`). Dropout (on the embeddings and each residual branch) needs a 'dropout'
rng and acts only with train=True. Parameters are float32; `dtype` is the compute dtype.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

POSITIONS = ('learned', 'rotary')
_init = nn.initializers.normal(0.02)
dense_init = dict(kernel_init=nn.initializers.xavier_uniform(), param_dtype=jnp.float32)


def rotary(x: jax.Array, base: float = 10000.0) -> jax.Array:
  """RoPE on [B, T, heads, head_dim]: pairs (i, i + head_dim / 2) rotated by position t
  times base^(-2i / head_dim) (the GPT-NeoX half-split layout), computed in float32."""
  t, dim = x.shape[1], x.shape[-1]
  half = dim // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) * 2 / dim)
  angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs  # [T, half]
  cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:2 * half].astype(jnp.float32)
  rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
  if dim % 2:  # an odd head dimension keeps its last channel as it is
    rotated.append(x[..., 2 * half:].astype(jnp.float32))
  return jnp.concatenate(rotated, axis=-1).astype(x.dtype)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with one fused qkv Dense, so every bias stays 1-D (the
  optimizer's decay/trust-ratio masks rely on that), as in mbx.models.vit."""

  num_heads: int
  rotary: bool
  dtype: Any

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, name='qkv', **dense_init)(x)
    q, k, v = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads).transpose(2, 0, 1, 3, 4)
    if self.rotary:
      q, k = rotary(q), rotary(k)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return nn.Dense(d, dtype=self.dtype, name='out', **dense_init)(y.reshape(b, t, d))


class DecoderBlock(nn.Module):
  """Pre-norm block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x))), MLP 4x wide with GELU."""

  num_heads: int
  rotary: bool
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = CausalSelfAttention(self.num_heads, self.rotary, self.dtype)(
        nn.LayerNorm(dtype=self.dtype)(x))
    x = x + drop(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.gelu(nn.Dense(4 * x.shape[-1], dtype=self.dtype, **dense_init)(y))
    y = nn.Dense(x.shape[-1], dtype=self.dtype, **dense_init)(y)
    return x + drop(y)


class Transformer(nn.Module):
  """int tokens [B, T] (T <= max_len) -> float32 next-token logits [B, T, num_classes]."""

  num_classes: int  # the vocabulary size, filled from the dataset
  num_layers: int = 4
  width: int = 128
  num_heads: int = 4
  max_len: int = 128
  dropout: float = 0.0
  positions: str = 'learned'
  tie_embeddings: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'transformer expects integer tokens (batch, length), got shape '
                       f'{tokens.shape} and dtype {tokens.dtype}')
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'transformer: sequence length {tokens.shape[1]} exceeds '
                       f'model.options.max_len={self.max_len}')
    if self.positions not in POSITIONS:
      raise ValueError(f'model.options.positions={self.positions!r} must be one of {POSITIONS}')
    if self.width % self.num_heads:
      raise ValueError(f'model.options.width={self.width} must be divisible by '
                       f'model.options.num_heads={self.num_heads}')
    embed = nn.Embed(self.num_classes, self.width, embedding_init=_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name='embedding')
    x = embed(tokens)
    if self.positions == 'learned':
      pos = self.param('pos_embedding', _init, (self.max_len, self.width), jnp.float32)
      x = x + pos[None, :tokens.shape[1]].astype(x.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for _ in range(self.num_layers):
      x = DecoderBlock(self.num_heads, self.positions == 'rotary', self.dropout, self.dtype)(
          x, train)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head', **dense_init)(x)
    return logits.astype(jnp.float32)
