"""optax optimizers by name; the train step supplies the learning rate each step.

Schedules are functions of examples seen (see schedules.py), so the learning rate
is an input to the update rather than a function of optax's step count. For every
optimizer whose LR multiplies its final update (sgd, momentum, nesterov, adam,
adamw, lamb) the optax transform is built around the current LR inside the step
(the optimizer state does not depend on it). LARS applies momentum after the LR
(optax.lars) and keeps it in its state, so its LR goes in through
`optax.inject_hyperparams`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from mbx.config import OptimConfig


def decay_mask(params):
  """True for kernels and embeddings; False for biases and norm scales/offsets.

  Every bias and normalisation parameter in mbx models is 1-D, every weight
  matrix, convolution kernel and embedding is >= 2-D (You et al. exclude the
  same set from LARS/LAMB adaptation and weight decay).
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _optax_transform(config: OptimConfig, learning_rate) -> optax.GradientTransformation:
  name, wd = config.name, config.weight_decay
  coupled_decay = optax.add_decayed_weights(wd, mask=decay_mask) if wd else optax.identity()
  if name == 'sgd':
    return optax.chain(coupled_decay, optax.sgd(learning_rate))
  if name in ('momentum', 'nesterov'):
    return optax.chain(coupled_decay, optax.sgd(learning_rate, momentum=config.momentum,
                                                nesterov=name == 'nesterov'))
  if name == 'adam':
    return optax.chain(coupled_decay, optax.adam(learning_rate, b1=config.b1, b2=config.b2,
                                                 eps=config.eps))
  if name == 'adamw':
    return optax.adamw(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=wd, mask=decay_mask)
  if name == 'lars':
    return optax.lars(learning_rate, weight_decay=wd, weight_decay_mask=decay_mask,
                      trust_coefficient=config.trust_coefficient, eps=config.eps,
                      trust_ratio_mask=decay_mask, momentum=config.momentum)
  if name == 'lamb':
    # optax.lamb's chain with a trust-ratio mask (which optax.lamb lacks): biases and norm
    # parameters are neither decayed nor layer-adapted (You et al. 2020, as in BERT).
    return optax.chain(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
                       optax.add_decayed_weights(wd, mask=decay_mask),
                       optax.masked(optax.scale_by_trust_ratio(), decay_mask),
                       optax.scale_by_learning_rate(learning_rate))
  raise ValueError(f'optim.name={name!r}: unknown optimizer')


class Optimizer(NamedTuple):
  """init(params) -> state; update(grads, state, params, learning_rate) -> (updates, state).

  `updates` already include the learning rate: params + updates is the new point.
  """
  init: Any
  update: Any


def build_optimizer(config: OptimConfig) -> Optimizer:
  clip = (optax.clip_by_global_norm(config.clip_grad_norm)
          if config.clip_grad_norm is not None else optax.identity())
  if config.name == 'lars':
    transform = optax.chain(clip, optax.inject_hyperparams(
        lambda learning_rate: _optax_transform(config, learning_rate))(learning_rate=0.0))

    def update(grads, state, params, learning_rate):
      clip_state, injected = state
      injected = injected._replace(
          hyperparams=dict(injected.hyperparams, learning_rate=learning_rate))
      return transform.update(grads, (clip_state, injected), params)
    return Optimizer(transform.init, update)

  # The state does not depend on the LR, so the transform is rebuilt around each step's
  # (traced) LR: one scale inside optax's own fused update instead of a second pass.
  def update(grads, state, params, learning_rate):
    return optax.chain(clip, _optax_transform(config, learning_rate)).update(grads, state, params)
  return Optimizer(optax.chain(clip, _optax_transform(config, 1.0)).init, update)
