"""Optimizers, masks and schedules against closed forms."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mbx
from mbx import models
from mbx.optim import build_optimizer, decay_mask, learning_rate_schedule, scaled_learning_rate
from mbx.optim.optimizers import FACTORIES, set_hyperparameters


def _params(name, options, shape):
  model = models.build_model(name, num_classes=10, options=options)
  return model.init(jax.random.key(0), jnp.zeros(shape), train=False)['params']


def _update(optimizer, grads, state, params, learning_rate):
  """One update at this step's LR, as the train step gives it (the injected hyperparameter)."""
  return optimizer.update(grads, set_hyperparameters(state, learning_rate=learning_rate), params)


def _paths(tree, mask):
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  return {jax.tree_util.keystr(path): value for path, value in flat}


@pytest.mark.parametrize('name, options, shape', [
    ('resnet18', {'width': 8}, (1, 32, 32, 3)),
    ('wrn16_4', {'width': 1}, (1, 32, 32, 3)),
    ('vit', {'hidden': 16, 'num_layers': 1, 'num_heads': 2, 'mlp_dim': 16}, (1, 32, 32, 3)),
    ('cnn1d', {}, (1, 40, 1)),
])
def test_decay_mask_excludes_biases_and_norm_parameters(name, options, shape):
  params = _params(name, options, shape)
  mask = _paths(params, decay_mask(params))
  assert any(mask.values())
  for path, decayed in mask.items():
    is_bias_or_norm = "'bias'" in path or 'Norm' in path
    assert decayed == (not is_bias_or_norm), path


def test_weight_decay_skips_biases():
  params = {'Dense_0': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
            'BatchNorm_0': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for name in ('sgd', 'momentum', 'adamw', 'lars', 'lamb'):
    optimizer = build_optimizer(mbx.OptimConfig(name=name, learning_rate=0.1, weight_decay=0.5))
    updates, _ = _update(optimizer, zero_grads, optimizer.init(params), params, 0.1)
    assert np.all(np.asarray(updates['Dense_0']['kernel']) < 0), name
    for leaf in (updates['Dense_0']['bias'], updates['BatchNorm_0']['scale'],
                 updates['BatchNorm_0']['bias']):
      np.testing.assert_allclose(leaf, 0.0, atol=1e-12, err_msg=name)


def test_lars_trust_ratio_applies_to_kernels_only():
  """LARS (You et al. 2017): kernel update scaled by eta*|w|/|g|; bias update is plain."""
  params = {'kernel': jnp.full((3, 4), 2.0), 'bias': jnp.full((4,), 2.0)}
  grads = {'kernel': jnp.full((3, 4), 0.5), 'bias': jnp.full((4,), 0.5)}
  eta, lr = 0.001, 0.1
  optimizer = build_optimizer(mbx.OptimConfig(name='lars', learning_rate=lr, momentum=0.0,
                                              trust_coefficient=eta, eps=0.0))
  updates, _ = _update(optimizer, grads, optimizer.init(params), params, lr)
  trust = eta * float(jnp.linalg.norm(params['kernel'])) / float(jnp.linalg.norm(grads['kernel']))
  np.testing.assert_allclose(updates['kernel'], -lr * trust * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates['bias'], -lr * 0.5, rtol=1e-6)


def test_lamb_trust_ratio_applies_to_kernels_only():
  """LAMB (You et al. 2020): Adam's update rescaled by |w|/|u| per layer, biases excepted."""
  params = {'kernel': jnp.full((3, 4), 2.0), 'bias': jnp.full((4,), 2.0)}
  grads = {'kernel': jnp.full((3, 4), 0.5), 'bias': jnp.full((4,), 0.5)}
  optimizer = build_optimizer(mbx.OptimConfig(name='lamb', learning_rate=0.1, eps=0.0))
  updates, _ = _update(optimizer, grads, optimizer.init(params), params, 0.1)
  adam = 1.0  # first Adam step: m_hat / sqrt(v_hat) = sign(g)
  kernel_trust = float(jnp.linalg.norm(params['kernel'])) / (adam * np.sqrt(12))
  np.testing.assert_allclose(updates['kernel'], -0.1 * kernel_trust * adam, rtol=1e-5)
  np.testing.assert_allclose(updates['bias'], -0.1 * adam, rtol=1e-5)


def test_learning_rate_is_given_per_step():
  params = {'w': jnp.ones(3)}
  optimizer = build_optimizer(mbx.OptimConfig(name='sgd', learning_rate=1.0, clip_grad_norm=1.0))
  updates, _ = _update(optimizer, {'w': jnp.full(3, 10.0)}, optimizer.init(params), params, 0.25)
  # clipped to norm 1 then scaled by 0.25
  np.testing.assert_allclose(np.linalg.norm(updates['w']), 0.25, rtol=1e-6)


@pytest.mark.parametrize('name', ['sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'lars', 'lamb'])
def test_updates_equal_optax_with_a_changing_learning_rate(name):
  """The LR given per step reproduces optax's own optimizer driven by a schedule."""
  config = mbx.OptimConfig(name=name, learning_rate=1.0, weight_decay=0.01, momentum=0.9)
  learning_rates = [0.1, 0.05, 0.2, 0.01]
  schedule = lambda count: jnp.asarray(learning_rates)[count]
  fields = {'momentum': 0.9, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8, 'weight_decay': 0.01,
            'trust_coefficient': 0.001}
  factory = FACTORIES[name]
  takes = factory.__code__.co_varnames[:factory.__code__.co_argcount]
  reference = optax.inject_hyperparams(
      lambda learning_rate: factory(learning_rate, **{k: v for k, v in fields.items()
                                                      if k in takes}))(learning_rate=schedule)
  optimizer = build_optimizer(config)
  params = {'kernel': jnp.linspace(-1, 1, 6).reshape(2, 3), 'bias': jnp.ones(3)}
  ours, theirs = params, params
  state, reference_state = optimizer.init(params), reference.init(params)
  for step, lr in enumerate(learning_rates):
    grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)), ours)
    updates, state = _update(optimizer, grads, state, ours, lr)
    ours = optax.apply_updates(ours, updates)
    grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)), theirs)
    updates, reference_state = reference.update(grads, reference_state, theirs)
    theirs = optax.apply_updates(theirs, updates)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize('rule, expected', [('none', 0.1), ('linear', 0.4), ('sqrt', 0.2)])
def test_scaling_rules(rule, expected):
  config = mbx.OptimConfig(learning_rate=0.1, lr_scaling=rule, base_batch_size=256)
  assert scaled_learning_rate(config, 1024) == pytest.approx(expected)


def test_step_schedule_with_goyal_warmup():
  """Goyal et al.: linear warmup from lr/k to lr over 5 epochs, then x0.1 at 30, 60, 80."""
  n, batch = 1000, 100
  config = mbx.OptimConfig(learning_rate=0.1, lr_scaling='linear', base_batch_size=25,
                           schedule='step', milestones=(30, 60, 80), decay_factor=0.1,
                           warmup='5 epochs', warmup_start_factor=0.25)
  schedule = learning_rate_schedule(config, batch_size=batch, examples_per_epoch=n,
                                    total_examples=90 * n)
  peak = 0.4
  values = {e: float(schedule(e * n)) for e in (0, 2.5, 5, 29.99, 30, 59, 60, 80, 89)}
  assert values[0] == pytest.approx(0.1)
  assert values[2.5] == pytest.approx(0.1 + (peak - 0.1) / 2)
  assert values[5] == pytest.approx(peak)
  assert values[29.99] == pytest.approx(peak)
  assert values[30] == pytest.approx(peak * 0.1)
  assert values[59] == pytest.approx(peak * 0.1)
  assert values[60] == pytest.approx(peak * 0.01)
  assert values[89] == pytest.approx(peak * 0.001)


def test_cosine_schedule_decays_after_warmup():
  config = mbx.OptimConfig(learning_rate=1.0, schedule='cosine', warmup='10 steps',
                           end_lr_factor=0.0)
  schedule = learning_rate_schedule(config, batch_size=10, examples_per_epoch=1000,
                                    total_examples=1100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(50)) == pytest.approx(0.5)
  assert float(schedule(100)) == pytest.approx(1.0)
  assert float(schedule(600)) == pytest.approx(0.5, abs=1e-6)  # half-way: (1 + cos(pi/2)) / 2
  assert float(schedule(1100)) == pytest.approx(0.0, abs=1e-7)


def test_linear_and_polynomial_decay():
  for name, power in (('linear', 1.0), ('polynomial', 2.0)):
    config = mbx.OptimConfig(learning_rate=2.0, schedule=name, power=power, end_lr_factor=0.5)
    schedule = learning_rate_schedule(config, batch_size=1, examples_per_epoch=10,
                                      total_examples=100)
    expected = 1.0 + 1.0 * (1 - 0.25) ** power
    assert float(schedule(25)) == pytest.approx(expected), name


def test_extra_decays_of_the_hybrid_schedule():
  config = mbx.OptimConfig(learning_rate=1.0)
  schedule = learning_rate_schedule(config, batch_size=1, examples_per_epoch=10,
                                    total_examples=100, extra_decays=((50, 0.2),))
  assert float(schedule(49)) == 1.0 and float(schedule(50)) == pytest.approx(0.2)


def test_examples_count_as_float32_is_safe_for_imagenet_budgets():
  config = mbx.OptimConfig(learning_rate=1.0, schedule='step', milestones=(30,))
  n = 1_281_167
  schedule = learning_rate_schedule(config, batch_size=256, examples_per_epoch=n,
                                    total_examples=90 * n)
  assert float(schedule(30 * n - 256)) == 1.0
  assert float(schedule(30 * n + 256)) == pytest.approx(0.1)
  assert math.isclose(float(schedule(89 * n)), 0.1, rel_tol=1e-6)
