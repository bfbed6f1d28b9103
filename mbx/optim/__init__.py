"""Optimizers (optax) with weight-decay / trust-ratio masks, and LR schedules."""
from mbx.optim.optimizers import (build_optimizer, decay_mask, learning_rate_of,
                                  set_learning_rate)
from mbx.optim.schedules import learning_rate_schedule, scaled_learning_rate

__all__ = ['build_optimizer', 'decay_mask', 'learning_rate_of', 'set_learning_rate',
           'learning_rate_schedule', 'scaled_learning_rate']
