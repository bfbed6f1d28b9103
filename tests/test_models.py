"""Tests for the model zoo (mbx.models): shapes, dtypes, reference sizes, BN and ghost BN, validation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbx.models import (MODEL_NAMES, GhostBatchNorm, build_model, has_batch_norm, model_options,
                        validate_model)

# Natural input shape and tiny options for each model, so the whole file runs in seconds.
CASES = {
    'mlp': ((4, 40, 1), {'hidden': (16,)}),
    'cnn1d': ((4, 40, 1), {}),
    'cnn2d': ((4, 28, 28, 1), {'channels': (4, 8), 'dense': 16}),
    'resnet18': ((4, 32, 32, 3), {'width': 4}),
    'resnet50': ((4, 32, 32, 3), {'width': 2}),
    'wrn16_4': ((4, 32, 32, 3), {'depth': 10, 'width': 1}),
    'vit': ((4, 32, 32, 3), {'patch_size': 8, 'hidden': 16, 'num_layers': 2, 'num_heads': 2,
                             'mlp_dim': 32}),
    # Token ids in, logits per position out.
    'transformer': ((4, 12), {'num_layers': 1, 'width': 16, 'num_heads': 2, 'max_len': 12,
                              'dropout': 0.0}),
    'linear': ((4, 40, 1), {'outputs': 10}),
}
BN_MODELS = [n for n in MODEL_NAMES if has_batch_norm(n)]
# XLA:CPU takes ~6 s to compile a ResNet's threefry initialisation and ~2 s with rbg keys.
KEY = jax.random.key(0, impl='rbg')


def build(name, dtype=jnp.float32, **options):
  return build_model(name, num_classes=10, options={**CASES[name][1], **options}, dtype=dtype)


@functools.cache
def _init(name, options):
  model = build(name, **dict(options))
  shape = CASES[name][0]
  x = (jax.random.randint(jax.random.key(1), shape, 0, 10) if name == 'transformer' else
       jax.random.normal(jax.random.key(1), shape))
  return model, jax.jit(lambda x: model.init(KEY, x, False))(x), x


def init(name, **options):
  """(model, variables, input) for the tiny case of `name`, initialised once per option set."""
  return _init(name, tuple(sorted(options.items())))


def jit_apply(model, train):
  """`model.apply` under jit, returning (logits, state): eager dispatch of a ResNet is slow."""
  return jax.jit(lambda v, x, rngs=None: model.apply(v, x, train, rngs=rngs,
                                                     mutable=['batch_stats']))


def ghost_names(tree):
  """Variables of a 'batch' model renamed for the same model with 'ghost' norm."""
  if not isinstance(tree, dict):
    return tree
  return {k.replace('BatchNorm', 'GhostBatchNorm'): ghost_names(v) for k, v in tree.items()}


def test_every_model_has_a_case():
  assert set(CASES) == set(MODEL_NAMES)
  assert set(BN_MODELS) == {'resnet18', 'resnet50', 'wrn16_4'}


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16], ids=['f32', 'bf16'])
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_logits_shape_and_float32(name, dtype):
  _, variables, x = init(name)
  model = build(name, dtype)
  # Parameters are float32 whatever the compute dtype, so the float32 init serves both.
  shapes = jax.eval_shape(lambda x: model.init(KEY, x, False), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  assert ('batch_stats' in variables) == has_batch_norm(model)
  logits, state = jit_apply(model, True)(variables, x)
  assert logits.shape == (*x.shape[:1 + (name == 'transformer')], 10)
  assert logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(state))


def test_vit_cls_pooling_and_bad_input():
  model, variables, x = init('vit', pool='cls')
  assert variables['params']['cls'].shape == (1, 1, 16)
  assert jit_apply(model, False)(variables, x)[0].shape == (4, 10)
  with pytest.raises(ValueError, match='NHWC'):
    jax.eval_shape(lambda x: model.apply(variables, x, False), jnp.zeros((2, 40, 1)))
  with pytest.raises(ValueError, match='divisible by patch_size'):
    jax.eval_shape(lambda x: model.init(KEY, x, False), jnp.zeros((2, 30, 30, 3)))


@pytest.mark.parametrize('name', ['wrn16_4', 'vit'])
def test_dropout_is_active_in_train_mode_only(name):
  _, variables, x = init(name)
  model = build(name, dropout=0.5)
  train = jit_apply(model, True)
  logits = [train(variables, x, {'dropout': jax.random.key(i)})[0] for i in (0, 1)]
  assert not np.allclose(*logits)
  # Active dropout would fail here for want of a 'dropout' rng.
  assert np.isfinite(jit_apply(model, False)(variables, x)[0]).all()


def test_cnn1d_matches_pytorch_reference():
  model, variables, x = init('cnn1d')
  # PyTorch ConvBase: conv1 25*1*5+25, conv2 and conv3 25*25*3+25 each, linear 125*10+10.
  assert sum(p.size for p in jax.tree.leaves(variables['params'])) == 150 + 2 * 1900 + 1260
  _, state = model.apply(variables, x, False, capture_intermediates=True)
  lengths = [state['intermediates'][f'Conv_{i}']['__call__'][0].shape[1] for i in range(3)]
  assert lengths == [19, 10, 5]


def test_biases_and_norm_params_are_1d_and_kernels_are_not():
  for name in MODEL_NAMES:
    _, variables, _ = init(name)
    for path, p in jax.tree_util.tree_leaves_with_path(variables['params']):
      keys = [k.key for k in path]
      in_norm = any('Norm' in k for k in keys[:-1])
      assert (p.ndim == 1) == (keys[-1] == 'bias' or in_norm), (name, keys, p.shape)
      if in_norm:
        assert keys[-1] in ('scale', 'bias')


@pytest.mark.parametrize('norm', ['batch', 'ghost'])
@pytest.mark.parametrize('name', BN_MODELS)
def test_bn_models_update_stats_in_train_and_are_deterministic_in_eval(name, norm):
  _, variables, x = init(name)
  model = build(name, norm=norm, ghost_batch_size=2)
  if norm == 'ghost':
    variables = ghost_names(variables)
    assert (jax.tree.structure(jax.eval_shape(lambda x: model.init(KEY, x, False), x))
            == jax.tree.structure(variables))
  _, updates = jit_apply(model, True)(variables, x)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables['batch_stats'],
                         updates['batch_stats'])
  assert all(jax.tree.leaves(changed))
  variables = {**variables, **updates}
  evaluate = jit_apply(model, False)
  logits = evaluate(variables, x)[0]
  np.testing.assert_array_equal(logits, evaluate(variables, x)[0])
  # Eval uses the running averages only: an example's logits do not depend on its batch.
  other = x.at[2:].set(0.0)
  np.testing.assert_allclose(evaluate(variables, other)[0][:2], logits[:2], atol=1e-5)


def test_zero_init_residual_zeroes_last_bn_scale_of_each_block():
  def zero_scales(variables):
    return sum(not np.any(p) for path, p in jax.tree_util.tree_leaves_with_path(
        variables['params']) if path[-1].key == 'scale')
  assert zero_scales(init('resnet50')[1]) == 3 + 4 + 6 + 3
  assert zero_scales(init('resnet18')[1]) == 0
  assert zero_scales(init('resnet18', zero_init_residual=True)[1]) == 2 + 2 + 2 + 2


def bn_pair(shape, ghost_batch_size, momentum=0.9):
  x = jax.random.normal(jax.random.key(0), shape) * 3 + 1
  bn = nn.BatchNorm(momentum=momentum, use_fast_variance=False)
  ghost = GhostBatchNorm(ghost_batch_size, momentum=momentum)
  variables = bn.init(jax.random.key(1), x, use_running_average=False)
  variables['params']['scale'] = jnp.linspace(0.5, 2, shape[-1])
  variables['params']['bias'] = jnp.linspace(-1, 1, shape[-1])
  assert (jax.tree.structure(ghost.init(jax.random.key(1), x, use_running_average=False))
          == jax.tree.structure(variables))
  return x, bn, ghost, variables


@functools.partial(jax.jit, static_argnums=(0, 3))
def norm_apply(module, variables, x, train=True):
  """(output, updated batch_stats) of a norm layer in train mode, or its output in eval mode."""
  if train:
    return module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  return module.apply(variables, x, use_running_average=True)


def assert_trees_close(a, b, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol), a, b)


def test_ghost_bn_with_one_ghost_batch_equals_batch_norm():
  x, bn, ghost, variables = bn_pair((8, 5, 5, 3), ghost_batch_size=8)
  (y_bn, s_bn), (y_g, s_g) = norm_apply(bn, variables, x), norm_apply(ghost, variables, x)
  np.testing.assert_allclose(y_g, y_bn, atol=1e-5)
  assert_trees_close(s_g, s_bn)
  variables = {**variables, **s_bn}
  np.testing.assert_allclose(norm_apply(ghost, variables, x, False),
                             norm_apply(bn, variables, x, False), atol=1e-5)


def test_ghost_bn_with_two_ghost_batches_equals_batch_norm_per_half():
  x, bn, ghost, variables = bn_pair((8, 5, 3), ghost_batch_size=4)
  y, stats = norm_apply(ghost, variables, x)
  halves = [norm_apply(bn, variables, h) for h in (x[:4], x[4:])]
  np.testing.assert_allclose(y, jnp.concatenate([h[0] for h in halves]), atol=1e-5)
  # Running averages move towards the mean of the ghost-batch statistics.
  assert_trees_close(stats, jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1]))


def test_ghost_bn_syncs_only_running_averages_across_devices():
  x, _, local, variables = bn_pair((8, 3), ghost_batch_size=2)  # 2 devices x local batch 4
  synced = GhostBatchNorm(2, momentum=0.9, axis_name='data')
  y, stats = jax.vmap(lambda xl: norm_apply(synced, variables, xl), axis_name='data')(
      x.reshape(2, 4, 3))
  per_device = [norm_apply(local, variables, xl) for xl in x.reshape(2, 4, 3)]
  np.testing.assert_allclose(y, jnp.stack([o for o, _ in per_device]), atol=1e-5)
  expected = jax.tree.map(lambda a, b: (a + b) / 2, per_device[0][1], per_device[1][1])
  for device in range(2):
    assert_trees_close(jax.tree.map(lambda a: a[device], stats), expected)


def test_ghost_bn_rejects_indivisible_batch():
  x, _, ghost, variables = bn_pair((6, 3), ghost_batch_size=4)
  with pytest.raises(ValueError, match='not divisible by ghost_batch_size=4'):
    norm_apply(ghost, variables, x)


def test_model_options_and_has_batch_norm():
  assert MODEL_NAMES == ('mlp', 'cnn1d', 'cnn2d', 'resnet18', 'resnet50', 'wrn16_4', 'vit',
                         'transformer', 'linear')
  assert model_options('linear') == {'outputs': 1}
  assert model_options('mlp') == {'hidden': (100, 100), 'residual': False}
  assert model_options('cnn1d') == {'channels': 25, 'norm': 'none', 'ghost_batch_size': 32,
                                    'bn_momentum': 0.9}
  assert not has_batch_norm('cnn1d') and has_batch_norm(build_model(
      'cnn1d', num_classes=10, options={'norm': 'batch'}))
  assert model_options('wrn16_4')['depth'] == 16 and model_options('wrn16_4')['width'] == 4
  assert model_options('resnet50')['zero_init_residual'] is True
  assert not has_batch_norm('vit') and has_batch_norm('resnet18')
  model = build_model('wrn16_4', num_classes=10, options={'dropout': 0, 'depth': 28},
                      batch_norm_axis_name='data')
  assert (model.dropout, model.depth, model.batch_norm_axis_name) == (0.0, 28, 'data')
  assert build_model('mlp', num_classes=3, options={'hidden': [7]}).hidden == (7,)


@pytest.mark.parametrize('name, options, match', [
    ('resnet', {}, r"model\.name='resnet': not a built-in name \(did you mean resnet50 or "
                   r"resnet18\?\)"),
    ('nosuchnet', {}, r"model\.name='nosuchnet': not a built-in name \(allowed: mlp, cnn1d, "
                      r".*vit, transformer, linear\)"),
    ('mlp', {'width': 3}, r'model\.options\.width is not an option .*; allowed: .*hidden'),
    ('mlp', {'hiden': (8,)}, r"model\.options\.hiden is not an option of model 'mlp'; did you "
                             r"mean model\.options\.hidden\?"),
    ('mlp', {'hidden': 100}, r'model\.options\.hidden=100 must be a tuple of positive ints'),
    ('mlp', {'hidden': (100, 0)}, r'model\.options\.hidden=\(100, 0\) must be'),
    ('cnn1d', {'channels': 25.0}, r'model\.options\.channels=25\.0 must be a positive int'),
    ('cnn1d', {'channels': True}, r'model\.options\.channels=True must be a positive int'),
    ('resnet50', {'zero_init_residual': 1}, r'zero_init_residual=1 must be a bool'),
    ('resnet18', {'norm': 'layer'},
     r"model\.options\.norm='layer' must be one of \('batch', 'ghost'\)"),
    ('resnet18', {'bn_momentum': 1.5}, r'bn_momentum=1\.5 must be a number in \[0, 1\)'),
    ('vit', {'pool': 'max'}, r"model\.options\.pool='max' must be one of \('cls', 'gap'\)"),
    ('vit', {'hidden': 64, 'num_heads': 3}, r'hidden=64 must be divisible by .*num_heads=3'),
    ('wrn16_4', {'depth': 15}, r'model\.options\.depth=15 must be 6n \+ 4'),
])
def test_validate_model_errors(name, options, match):
  with pytest.raises(ValueError, match=match):
    validate_model(name, options)
  with pytest.raises(ValueError, match=match):
    build_model(name, num_classes=10, options=options)


@pytest.mark.parametrize('kernel, stride, padding', [(5, 2, 1), (3, 2, 1), (3, 1, 0)])
def test_conv1d_as_matmul_equals_flax_conv(kernel, stride, padding):
  from mbx.models.cnn import Conv1DAsMatmul
  x = jax.random.normal(jax.random.key(0), (4, 40, 3))
  ours = Conv1DAsMatmul(7, kernel, stride=stride, padding=padding)
  params = ours.init(jax.random.key(1), x)
  params['params']['bias'] = jnp.linspace(-1, 1, 7)
  reference = nn.Conv(7, (kernel,), strides=(stride,), padding=((padding, padding),))
  np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-5,
                             atol=1e-5)
