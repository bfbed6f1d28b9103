"""The Transformer pieces the ViT and the decoder-only language model share."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused qkv Dense: unlike flax's MultiHeadDotProductAttention
  (2-D biases), every bias stays 1-D, which the optimizer's decay/trust-ratio masks rely on.
  causal: each position attends to itself and earlier ones; rotary: RoPE on queries and keys."""

  num_heads: int
  dtype: Any
  causal: bool = False
  rotary: bool = False

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, name='qkv', **dense_init)(x)
    q, k, v = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads).transpose(2, 0, 1, 3, 4)
    if self.rotary:
      q, k = rotary(q), rotary(k)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return nn.Dense(d, dtype=self.dtype, name='out', **dense_init)(y.reshape(b, t, d))


class TransformerBlock(nn.Module):
  """Pre-norm block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x))) with GELU; mlp_dropout
  also drops the MLP's hidden units (as the ViT does; GPT-2 does not)."""

  num_heads: int
  mlp_dim: int
  dropout: float
  dtype: Any
  causal: bool = False
  rotary: bool = False
  mlp_dropout: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    attention = SelfAttention(self.num_heads, self.dtype, causal=self.causal, rotary=self.rotary)
    x = x + drop(attention(nn.LayerNorm(dtype=self.dtype)(x)))
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, **dense_init)(y))
    y = nn.Dense(x.shape[-1], dtype=self.dtype, **dense_init)(drop(y) if self.mlp_dropout else y)
    return x + drop(y)
