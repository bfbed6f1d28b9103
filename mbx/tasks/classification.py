"""Classification with integer labels: softmax cross-entropy, accuracy and error."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mbx.tasks.base import count, weighted_sum


def cross_entropy(logits, labels):
  """optax.softmax_cross_entropy_with_integer_labels (same value, gradient equal to
  rounding) with the label logit picked by a mask, not take_along_axis: the gradient of
  that is a scatter whose constant input, shared by unrolled micro-batches, became an
  input-free kernel that made XLA:CPU run the step on its thread pool."""
  logits = logits.astype(jnp.float32)
  is_label = labels[..., None] == jnp.arange(logits.shape[-1])
  label_logits = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - label_logits


@dataclasses.dataclass(frozen=True)
class Classification:
  """Logits [..., num_classes] against integer targets [...] (per example, or per token)."""
  metrics = {'loss': 'min', 'accuracy': 'max', 'error': 'min'}
  train_metrics = ('loss', 'accuracy')  # in the step; error = 1 - accuracy would be a kernel more

  def losses(self, outputs, batch):
    return cross_entropy(outputs, batch['targets'])

  def sums(self, outputs, batch, weights):
    correct = jnp.argmax(outputs, -1) == batch['targets']
    return {'loss': weighted_sum(self.losses(outputs, batch), weights),
            'correct': weighted_sum(correct, weights), 'count': count(correct, weights)}

  def finalize(self, sums):
    accuracy = sums['correct'] / sums['count']
    return {'loss': sums['loss'] / sums['count'], 'accuracy': accuracy, 'error': 1.0 - accuracy}

  def check_targets(self, info):
    """Integer class labels, one per example (or per token): float or one-hot targets are said
    before a model is built for them (they would first show as a missing num_classes)."""
    target_shape, target_dtype = info.element_spec['targets']
    if jnp.issubdtype(jnp.dtype(target_dtype), jnp.integer):
      return
    if target_shape:
      raise ValueError(f'task.name=classification: the data\'s targets are {target_dtype} of '
                       f'shape {tuple(target_shape)} per example (one-hot?), expected integer '
                       'class labels: convert one-hot rows with y.argmax(-1), or set '
                       'task.name=regression to fit the floats')
    raise ValueError(f'task.name=classification: the data\'s targets are {target_dtype}, '
                     'expected integer class labels: convert labels stored as floats with '
                     'y.astype(int), or set task.name=regression to fit the floats')

  def check(self, outputs, info):
    self.check_targets(info)
    target_shape, _ = info.element_spec['targets']
    if tuple(outputs.shape[1:-1]) != tuple(target_shape):
      one_hot = (' (one-hot? convert them with y.argmax(-1))'
                 if len(target_shape) == 1 and outputs.ndim == 2 else '')
      raise ValueError(f'model output shape {tuple(outputs.shape[1:])} per example does not '
                       f'match targets of shape {tuple(target_shape)}{one_hot}: classification '
                       f'expects {tuple(target_shape) + ("num_classes",)}')
    if info.num_classes is not None and outputs.shape[-1] != info.num_classes:
      raise ValueError(f'model output size {outputs.shape[-1]} does not match the '
                       f'{info.num_classes} classes of the data (model.options.num_classes)')
