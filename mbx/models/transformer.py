"""Decoder-only Transformer language model (GPT-2 style, Radford et al. 2019): small defaults.

Token embedding, learned absolute positions or rotary ones (RoPE, Su et al. 2021, arXiv
2104.09864, applied to queries and keys), pre-LayerNorm blocks of causal self-attention and
a 4x GELU MLP, a final LayerNorm, and logits from a Dense head or the transposed embedding
(`tie_embeddings`). Dropout (on the embeddings and each residual branch) needs a 'dropout'
rng and acts only with train=True. Parameters are float32; `dtype` is the compute dtype.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mbx.models.attention import TransformerBlock, dense_init

POSITIONS = ('learned', 'rotary')
_init = nn.initializers.normal(0.02)


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
      x = TransformerBlock(self.num_heads, 4 * self.width, self.dropout, self.dtype, causal=True,
                           rotary=self.positions == 'rotary', mlp_dropout=False)(x, train)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head', **dense_init)(x)
    return logits.astype(jnp.float32)
