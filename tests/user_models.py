"""Models and probes defined outside mbx, the way a user would write them (resolved by import
path in test_workload.py)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class TwoLayer(nn.Module):
  """A plain Flax MLP: no `train` argument, no dtype field; `num_classes` is filled by mbx."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
  """Linear regression: one output per example, no num_classes field."""
  outputs: int = 1

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


def small_two_layer(width: int = 16) -> nn.Module:
  """A factory: model.name may name a function that returns a module."""
  return TwoLayer(num_classes=10, width=width)


class NotAModule:
  pass


class LayerGradNorms:
  """A user probe: the mean gradient's norm per top-level parameter collection, every step."""
  name = 'layer_grad_norms'
  metrics = ('grad_norm_first_layer', 'grad_norm_last_layer')
  min_groups = 1

  def init(self, params):
    return {'steps': jnp.zeros((), jnp.int32)}

  def per_group(self, grads, sq_norm):
    return jnp.zeros((), jnp.float32)

  def update(self, state, gradients):
    layers = sorted(gradients.grads)
    first, last = gradients.grads[layers[0]], gradients.grads[layers[-1]]
    norm = lambda tree: jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))
    return ({'steps': state['steps'] + 1},
            {'grad_norm_first_layer': norm(first), 'grad_norm_last_layer': norm(last)})

  def summarize(self, state):
    return {'layer_probe_steps': float(state['steps'])}
