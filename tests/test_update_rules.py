"""Update rules (optim.update_rule): SAM's gradient against a hand computation, per device and
micro-batch on 8 devices, packed like solo, a rule of the user's by import path, and bad input
in one line. That the plain rule is bitwise the step of before is experiments/bitwise_check.py's
job (run on one machine before and after a change)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx.config import ConfigError, OptimConfig
from mbx.optim import build_optimizer
from mbx.optim.optimizers import resolve_optimizer
from mbx.optim.update_rules import SAM, resolve_update_rule
from mbx.tasks import Classification
from mbx.training.loop import train_packed
from mbx.training.plan import StepShape
from mbx.training.step import (StepParts, init_train_state, make_mesh, make_step, metric_names,
                               replicated, trial_hyperparameters)

from helpers import assert_one_line_error, mbx_train, run_python, tiny_config

RHO = 0.05


class TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(jnp.tanh(nn.Dense(5)(x)))


def _sgd_step(model, rule, batch, num_micro: int = 1, accumulation: str = 'unrolled', mesh=None):
  """Initial params, the params after one step of SGD at LR 1 (so the update is minus the
  step's gradient) and the step's logged loss."""
  mesh = mesh or make_mesh(jax.devices()[:1])
  task, optim = Classification(), OptimConfig(name='sgd', learning_rate=1.0)
  parts = StepParts(model=model, task=task, optimizer=resolve_optimizer(optim), lr_schedule=lambda examples: 1.0,
                    update_rule=rule)
  shape = StepShape(len(batch['targets']), num_micro, accumulation)
  state = init_train_state(model, build_optimizer(optim), batch['inputs'][:1], seed=0, mesh=mesh,
                           task=task)
  before = jax.device_get(state.params)
  step = make_step(parts, shape, mesh, on_device_data=False)
  hyper = jax.device_put(trial_hyperparameters(1.0, 0.0, 0), replicated(mesh))
  state, metrics = step(state, hyper, batch)
  return before, jax.device_get(state.params), float(metrics[metric_names(task, ()).index('loss')])


def _loss(model, params, x, y):
  return Classification().losses(model.apply({'params': params}, x), {'targets': y}).mean()


def _hand_sam(model, params, x, y, rho=RHO):
  """Foret et al.'s SAM gradient of one group, written out: grad L at θ + ρ g / |g|."""
  g = jax.grad(_loss, argnums=1)(model, params, x, y)
  norm = jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(g)))
  ascent = jax.tree.map(lambda p, gi: p + rho * gi / norm, params, g)
  return jax.grad(_loss, argnums=1)(model, ascent, x, y)


def _relative_error(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_sam_gradient_is_the_gradient_at_the_ascent_point():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = rng.integers(0, 3, 8).astype(np.int32)
  model = TinyMLP()
  before, after, loss = _sgd_step(model, SAM(rho=RHO), {'inputs': x, 'targets': y})
  step_gradient = jax.tree.map(np.subtract, before, after)
  assert _relative_error(step_gradient, _hand_sam(model, before, x, y)) <= 1e-5
  plain = jax.grad(_loss, argnums=1)(model, before, x, y)
  assert _relative_error(step_gradient, plain) > 1e-3  # the ascent changed the gradient
  # The logged loss is the loss at θ, not at the ascent point.
  assert loss == pytest.approx(float(_loss(model, before, x, y)), rel=1e-6)


EIGHT_DEVICES = '''
  import json, os, sys, numpy as np, jax
  sys.path.insert(0, 'tests')
  import mbx
  from mbx.data.example_order import device_major_arrangement
  from mbx.training.step import batch_sharded, make_mesh
  from mbx.optim.update_rules import SAM
  from helpers import tiny_config
  from test_update_rules import RHO, TinyMLP, _hand_sam, _relative_error, _sgd_step
  mesh, model = make_mesh(), TinyMLP()
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  # Row order as the loop feeds it: 8 devices x 2 micro-batches of 4, device-major.
  arrangement = device_major_arrangement(64, 8, 2)
  batch = {k: jax.device_put(v[arrangement], batch_sharded(mesh)) for k, v in
           (('inputs', x), ('targets', y))}
  xs, ys = x[arrangement].reshape(16, 4, 4), y[arrangement].reshape(16, 4)
  errors, hand = {}, None
  for accumulation in ('unrolled', 'scan'):
    before, after, _ = _sgd_step(model, SAM(rho=RHO), batch, 2, accumulation, mesh)
    step_gradient = jax.tree.map(np.subtract, before, after)
    if hand is None:  # both start from the same initialisation
      hand = jax.jit(lambda x, y: _hand_sam(model, before, x, y))
      per_group = jax.tree.map(lambda g: np.mean(g, axis=0), jax.vmap(hand)(xs, ys))
      whole_batch = hand(x, y)
    errors[accumulation] = [_relative_error(step_gradient, per_group),
                            _relative_error(step_gradient, whole_batch)]
  config = tiny_config(data=dict(test_split='none'), model=dict(name='mlp'),
                       optim=dict(update_rule='sam', update_rule_options={'rho': RHO}),
                       train=dict(batch_size=64, micro_batch_size=32, duration='20 steps',
                                  log_every='10 steps', eval_every='20 steps',
                                  checkpoint_every=None))
  run = mbx.train(config, os.environ['SAM_RUN'], quiet=True)
  print(json.dumps({'devices': jax.device_count(), 'errors': errors,
                    'loss': run.train_metrics['loss'].tolist(), 'status': run.status['status']}))
'''


def test_sam_ascends_per_device_and_micro_batch_on_eight_devices(tmp_path):
  """Batch 64 over 8 devices x 2 micro-batches: the step's gradient is the mean of the 16
  groups' own SAM gradients (m-sharpness with m = 4), on both accumulation paths; not the SAM
  gradient of the whole batch. SAM trains there."""
  result = run_python(EIGHT_DEVICES, devices=8, env={'SAM_RUN': str(tmp_path / 'run')})
  assert result['devices'] == 8
  for accumulation, (per_group, whole_batch) in result['errors'].items():
    assert per_group <= 1e-5, accumulation
    assert whole_batch > 1e-3, accumulation
  loss = result['loss']
  assert result['status'] == 'done' and np.all(np.isfinite(loss)) and loss[-1] < loss[0]


def _close(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    scale = np.max(np.abs(np.asarray(y))) + 1e-12
    assert np.max(np.abs(np.asarray(x) - np.asarray(y))) / scale <= rtol


def _sam_trials(rule='sam', options=None, **train):
  options = {'rho': RHO} if options is None else options
  base = dict(batch_size=16, duration='20 steps', log_every='10 steps', eval_every='20 steps',
              checkpoint_every=None, **train)
  return [tiny_config(data=dict(test_split='none'), model=dict(name='mlp'),
                      optim=dict(name='momentum', learning_rate=lr, update_rule=rule,
                                 update_rule_options=options), train=dict(seed=seed, **base))
          for lr, seed in ((0.05, 0), (0.2, 1))]


def test_packed_sam_trials_equal_solo_trials(tmp_path):
  configs = _sam_trials()
  packed = train_packed(configs, [tmp_path / f'packed{i}' for i in range(2)], quiet=True)
  for i, (config, run) in enumerate(zip(configs, packed)):
    solo = mbx.train(config, tmp_path / f'solo{i}', quiet=True)
    assert run.status['packed_trials'] == 2 and solo.status['status'] == 'done'
    _close(run.params(), solo.params())
    np.testing.assert_allclose(run.train_metrics['loss'], solo.train_metrics['loss'], rtol=1e-4)


USER_RULE = '''
import dataclasses
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ASAM:
  """Adaptive SAM (Kwon et al. 2021): the ascent scaled elementwise by |θ|."""
  rho: float = 0.5
  packable: bool = True
  accumulates: bool = True
  name = 'asam'
  gradient_evaluations = 2

  def group_gradient(self, value_and_grad, params):
    (loss, aux), grads = value_and_grad(params)
    scaled = jax.tree.map(lambda p, g: jnp.abs(p) * g, params, grads)
    norm = jnp.sqrt(sum(jnp.sum(s ** 2) for s in jax.tree.leaves(scaled)))
    ascent = jax.tree.map(lambda p, s: p + self.rho * jnp.abs(p) * s / (norm + 1e-12),
                          params, scaled)
    return (loss, aux), value_and_grad(ascent)[1]


class NotARule:
  name = 'nothing'


class NeedsRadius(ASAM):
  def __init__(self, radius):
    super().__init__(rho=radius)
'''


@pytest.fixture
def user_rules(tmp_path, monkeypatch):
  (tmp_path / 'my_rules.py').write_text(USER_RULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  return 'my_rules'


def test_a_user_rule_by_import_path_trains_and_is_recorded(tmp_path, user_rules):
  """One file of the user's; packable=False runs the trials one by one."""
  configs = _sam_trials(f'{user_rules}:ASAM', {'rho': 0.5, 'packable': False})
  runs = train_packed(configs, [tmp_path / f'run{i}' for i in range(2)], quiet=True)
  for run in runs:
    loss = run.train_metrics['loss']
    assert run.status['status'] == 'done' and 'packed_trials' not in run.status
    assert np.all(np.isfinite(loss)) and loss.iloc[-1] < loss.iloc[0]
    assert run.config.optim.update_rule.endswith('my_rules.py:ASAM')  # any process finds it


def _resolve_error(**optim) -> str:
  with pytest.raises(ConfigError) as error:
    mbx.resolve(tiny_config(optim=optim))
  message = str(error.value)
  assert len(message.splitlines()) == 1, message
  return message


@pytest.mark.parametrize('optim, fragments', [
    (dict(update_rule='nowhere.rules:SAM'), ("optim.update_rule='nowhere.rules:SAM'",
                                             'cannot import')),
    (dict(update_rule='sma'), ("optim.update_rule='sma'", 'did you mean sam?')),
    (dict(update_rule='my_rules:NotARule'), ("optim.update_rule='my_rules:NotARule'",
                                             'not an update rule', 'group_gradient')),
    (dict(update_rule='my_rules:Missing'), ('optim.update_rule', 'no attribute')),
    (dict(update_rule='my_rules:NeedsRadius'), ('optim.update_rule_options.radius',
                                                'required by update rule')),
    (dict(update_rule='sam', update_rule_options={'rh': 0.05}),
     ('optim.update_rule_options.rh', "update rule 'sam'", 'allowed: rho')),
    (dict(update_rule='sam', update_rule_options={'rho': 0.0}),
     ('optim.update_rule_options.rho=0.0', 'must be a positive number')),
    (dict(update_rule='sam', update_rule_options={'rho': -1}),
     ('optim.update_rule_options.rho=-1', 'must be a positive number')),
    (dict(update_rule='plain', update_rule_options={'rho': 0.05}),
     ('optim.update_rule_options.rho', "update rule 'plain'", 'allowed: none')),
])
def test_bad_update_rules_are_one_line_errors_naming_the_field(user_rules, optim, fragments):
  message = _resolve_error(**optim)
  for fragment in fragments:
    assert fragment in message, (fragment, message)


@pytest.mark.parametrize('train, field', [
    (dict(micro_batch_size=32), 'train.micro_batch_size=32'),
    (dict(max_device_batch_size=16), 'train.max_device_batch_size=16'),
    (dict(micro_batch_size='auto'), "train.micro_batch_size='auto'"),
    (dict(noise_scale=True), 'train.noise_scale'),
])
def test_a_rule_that_cannot_accumulate_refuses_micro_batches(tmp_path, user_rules, train, field):
  config = tiny_config(optim=dict(update_rule=f'{user_rules}:ASAM',
                                  update_rule_options={'accumulates': False}), train=train)
  with pytest.raises(ConfigError) as error:
    mbx.train(config, tmp_path / 'run', quiet=True)
  message = str(error.value)
  assert len(message.splitlines()) == 1, message
  assert "optim.update_rule='" in message and field in message, message
  assert 'accumulates=False' in message
  assert not (tmp_path / 'run').exists()


def test_a_bad_rule_option_on_the_command_line_is_one_line(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_mlp.py', '--workdir', str(tmp_path / 'run'),
                     'optim.update_rule=sam', 'optim.update_rule_options={"rh": 0.05}')
  assert_one_line_error(result, 'optim.update_rule_options.rh', 'rho')
  assert not (tmp_path / 'run').exists()


def test_rules_resolve_from_python():
  assert resolve_update_rule('sam', {'rho': 0.1}) == SAM(rho=0.1)
  assert resolve_update_rule('plain').gradient_evaluations == 1
  assert SAM().gradient_evaluations == 2 and SAM().packable and SAM().accumulates
