"""Model FLOPs per example, counted from the layers, for model-FLOPs utilisation (MFU).

The PaLM convention (Chowdhury et al. 2022, app. B; MaxText uses the same): count the
matrix multiplications only, 2 FLOPs per multiply-add, and a training step as 3x the
forward pass (the backward pass computes two products per forward one). Elementwise work,
normalisation and softmax are left out, and causal attention is counted in full, so MFU is
comparable across codebases. XLA's `cost_analysis()` counts what the compiled program does
instead; it serves as a cross-check, not as the definition.

Counted by tracing the model's forward pass once (no compute) and intercepting every module
that owns a `kernel` parameter, as flax's Dense, DenseGeneral and Conv do (output elements x the
kernel's fan-in), every `Embed.attend` (a tied output layer) and every mbx SelfAttention (the two
T x T products per head), so a user's model built from such layers is counted without being
described by hand.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

TRAIN_FLOPS_PER_FORWARD = 3


def _kernel_fan_in(module: nn.Module, kernel: jax.Array) -> int:
  """Multiply-adds per output element: the kernel's size over its output features (a grouped
  convolution's kernel already holds in_features / groups)."""
  features = getattr(module, 'features', kernel.shape[-1])
  features = math.prod(features) if isinstance(features, (tuple, list)) else features
  return kernel.size // features


def forward_flops(model: nn.Module, variables, inputs: jax.Array, **apply_kwargs) -> float:
  """Matmul FLOPs of one forward pass of `model` on `inputs` (any batch size)."""
  from mbx.models.attention import SelfAttention  # pylint: disable=import-outside-toplevel

  total = [0.0]

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__':
      kernel = module.variables.get('params', {}).get('kernel')
      if hasattr(kernel, 'shape'):  # Dense, DenseGeneral, Conv, or any layer built that way
        total[0] += 2.0 * out.size * _kernel_fan_in(module, kernel)
      if isinstance(module, SelfAttention):
        b, t, d = args[0].shape
        total[0] += 2.0 * 2 * b * t * t * d  # q k^T and (softmax) v, every head together
    elif context.method_name == 'attend' and isinstance(module, nn.Embed):
      total[0] += 2.0 * out.size * module.features
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, inputs)
  return total[0]


def train_flops_per_example(model: nn.Module, example_shape: tuple[int, ...], *,
                            input_dtype=jnp.float32) -> float:
  """Training FLOPs (forward + backward, PaLM convention) per example of `example_shape`."""
  inputs = jnp.zeros((1, *example_shape), input_dtype)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), inputs)
  return TRAIN_FLOPS_PER_FORWARD * forward_flops(model, variables, inputs, train=False)
