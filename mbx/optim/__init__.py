"""Optimizers (optax) with weight-decay / trust-ratio masks, and LR schedules."""
from mbx.optim.optimizers import Optimizer, build_optimizer, decay_mask
from mbx.optim.schedules import learning_rate_schedule, scaled_learning_rate

__all__ = ['Optimizer', 'build_optimizer', 'decay_mask', 'learning_rate_schedule',
           'scaled_learning_rate']
