"""Regression: mean squared error against float targets."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mbx.tasks.base import count, weighted_sum


@dataclasses.dataclass(frozen=True)
class Regression:
  """Outputs of the targets' shape (or [..., 1] for scalar targets), squared error summed over
  each example's target entries: loss = mean over examples of sum_j (output_j - target_j)^2."""
  metrics = {'loss': 'min', 'rmse': 'min'}

  def _errors(self, outputs, batch):
    targets = batch['targets'].astype(jnp.float32)
    outputs = outputs.astype(jnp.float32)
    if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
      outputs = outputs[..., 0]
    return outputs - targets

  def losses(self, outputs, batch):
    errors = self._errors(outputs, batch)
    return jnp.sum(jnp.square(errors).reshape(errors.shape[0], -1), axis=-1)

  def sums(self, outputs, batch, weights):
    losses = self.losses(outputs, batch)
    return {'loss': weighted_sum(losses, weights), 'count': count(losses, weights)}

  def finalize(self, sums):
    loss = sums['loss'] / sums['count']
    return {'loss': loss, 'rmse': loss ** 0.5}

  def check(self, outputs, info):
    target_shape, target_dtype = info.element_spec['targets']
    shape = tuple(outputs.shape[1:])
    if shape != tuple(target_shape) and shape != tuple(target_shape) + (1,):
      raise ValueError(f'model output shape {shape} per example does not match targets of '
                       f'shape {tuple(target_shape)} ({target_dtype}): regression expects '
                       f'{tuple(target_shape)}' + (' or (1,)' if not target_shape else ''))
