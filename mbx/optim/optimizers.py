"""optax optimizers by name, with the learning rate injected per step.

The learning rate is a hyperparameter in the optimizer state
(`optax.inject_hyperparams`) so the train step can set it from the number of
examples seen: schedules then stay correct when the batch size changes.
"""
from __future__ import annotations

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


def _base_optimizer(config: OptimConfig, learning_rate: float):
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
    return optax.lamb(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=wd, mask=decay_mask)
  raise ValueError(f'optim.name={name!r}: unknown optimizer')


def build_optimizer(config: OptimConfig) -> optax.GradientTransformation:
  """The configured optimizer; its LR is set each step by `set_learning_rate`.

  The state is always (clip_state, injected_state) so the LR has a fixed home.
  """
  clip = (optax.clip_by_global_norm(config.clip_grad_norm)
          if config.clip_grad_norm is not None else optax.identity())
  injected = optax.inject_hyperparams(
      lambda learning_rate: _base_optimizer(config, learning_rate))(learning_rate=0.0)
  return optax.chain(clip, injected)


def set_learning_rate(opt_state, learning_rate):
  """Returns opt_state with the injected learning rate replaced."""
  clip_state, injected = opt_state
  hyperparams = dict(injected.hyperparams, learning_rate=learning_rate)
  return (clip_state, injected._replace(hyperparams=hyperparams))


def learning_rate_of(opt_state):
  return opt_state[1].hyperparams['learning_rate']
