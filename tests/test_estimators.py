"""The noise-scale estimators: one measuring step against a dense computation of the same
quantities, the preconditioned estimator reducing to the plain one when P = I, and the bad
input each estimator stops on in one line."""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import mbx
from mbx.training import estimators
from mbx.training.noise_scale import (CurvatureNoiseScaleProbe, PerExampleTraceProbe,
                                      PreconditionedNoiseScaleProbe)
from mbx.training.plan import StepShape
from mbx.training.step import (StepParts, TrainState, apply_model, contrast_scale, contrast_sign,
                               hyper_field, init_train_state, make_mesh, make_update,
                               trial_hyperparameters)
from mbx.training.workload import resolve

from helpers import tiny_config

K, B_GROUP = 4, 8  # 4 gradient groups of 8 examples


def _one_measuring_step(optimizer: str, probes):
  """A tiny MLP's measuring step on a fixed batch: (the step's metrics by name, the batch,
  the state before it, the workload)."""
  config = tiny_config(model=dict(name='mlp', options={'hidden': (6,)}),
                       optim=dict(name=optimizer, learning_rate=0.05),
                       train=dict(batch_size=K * B_GROUP))
  workload = resolve(config)
  mesh = make_mesh(jax.devices()[:1])
  model = workload.model(mesh)
  arrays = workload.dataset.arrays(config.data.train_split)
  batch = {'inputs': jnp.asarray(arrays['inputs'][:K * B_GROUP]),
           'targets': jnp.asarray(arrays['targets'][:K * B_GROUP])}
  transform = workload.optimizer.transform()
  state = init_train_state(model, transform, batch['inputs'][:1], seed=0, mesh=mesh,
                           task=workload.task, probes=probes)
  parts = StepParts(model=model, task=workload.task, optimizer=workload.optimizer,
                    lr_schedule=lambda examples: 0.05, probes=tuple(probes))
  shape = StepShape(batch_size=K * B_GROUP, num_micro_batches=K, accumulation='unrolled')
  update, arrangement = make_update(parts, shape, mesh)
  assert np.array_equal(arrangement, np.arange(K * B_GROUP))
  hyper = jnp.asarray(trial_hyperparameters(1.0, 0.9, 0))
  # A first step gives Adam a preconditioner; the second is the one compared.
  state, _ = jax.jit(update)(state, hyper, batch)
  new_state, metrics = jax.jit(update)(state, hyper, batch)
  from mbx.training.step import step_metric_names  # pylint: disable=import-outside-toplevel
  names = step_metric_names(workload.task, probes, True)
  return dict(zip(names, np.asarray(metrics))), batch, state, workload, model


def _dense(model, task, state, batch):
  """Group gradients, their mean, and the dense Hessian of the batch loss, flattened."""
  flat, unravel = ravel_pytree(state.params)

  def loss(theta, rows):
    outputs, _ = apply_model(model, unravel(theta), state.model_state, rows['inputs'],
                             train=False)  # the MLP has no dropout or BatchNorm
    return task.losses(outputs, rows).mean()
  groups = [jax.tree.map(lambda a: a[i * B_GROUP:(i + 1) * B_GROUP], batch) for i in range(K)]
  g = np.stack([np.asarray(jax.grad(loss)(flat, rows), np.float64) for rows in groups])
  hessian = np.asarray(jax.hessian(loss)(flat, batch), np.float64)
  return g, hessian


def test_the_curvature_estimates_of_a_step_equal_a_dense_hessian_computation():
  probes = (CurvatureNoiseScaleProbe(every=1), CurvatureNoiseScaleProbe(every=1,
                                                                         preconditioned=True))
  metrics, batch, state, workload, model = _one_measuring_step('adam', probes)
  g, hessian = _dense(model, workload.task, state, batch)
  mean = g.mean(0)
  signs = np.array([float(contrast_sign(i, K)) for i in range(K)])
  assert signs.sum() == 0 and contrast_scale(K) == pytest.approx((signs**2).sum() / K**2)
  contrast = (signs[:, None] * g).mean(0)
  c = contrast_scale(K)
  expected = {'b_noise': (mean @ hessian @ mean - contrast @ hessian @ contrast / (K * c),
                          B_GROUP / c * contrast @ hessian @ contrast)}
  p, _ = ravel_pytree(workload.optimizer.preconditioner(state.opt_state, 'test'))
  p = np.asarray(p, np.float64)
  php = p[:, None] * hessian * p[None, :]
  expected['b_noise_preconditioned'] = (mean @ php @ mean - contrast @ php @ contrast / (K * c),
                                        B_GROUP / c * contrast @ php @ contrast)
  for name, (grad, trace) in expected.items():
    e = estimators.ESTIMATORS[name]
    assert metrics[e.weight_column] == 1.0
    np.testing.assert_allclose(metrics[e.grad_column], grad, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(metrics[e.trace_column], trace, rtol=2e-3)


def test_the_contrast_estimates_are_unbiased_for_any_group_count():
  """E[DᵀAD] = c tr(AΣ)/b and E[G_kᵀAG_k] = GᵀAG + tr(AΣ)/(kb), checked by simulation."""
  rng = np.random.default_rng(0)
  dim, b = 5, 3
  true_mean = rng.normal(size=dim)
  root = rng.normal(size=(dim, dim)) / 2
  sigma = root @ root.T  # per-example covariance
  a = np.diag(rng.uniform(0.5, 2, dim))
  for k in (2, 3, 5, 8):
    signs = np.array([float(contrast_sign(i, k)) for i in range(k)])
    c = contrast_scale(k)
    groups = true_mean + rng.multivariate_normal(np.zeros(dim), sigma / b, size=(20000, k))
    mean, contrast = groups.mean(1), (signs[None, :, None] * groups).mean(1)
    quad = lambda v: np.einsum('ni,ij,nj->n', v, a, v)
    trace = b / c * quad(contrast)
    grad = quad(mean) - quad(contrast) / (k * c)
    for estimate, exact in ((trace, np.trace(a @ sigma)), (grad, true_mean @ a @ true_mean)):
      stderr = estimate.std() / math.sqrt(len(estimate))
      assert abs(estimate.mean() - exact) < 4 * stderr, (k, estimate.mean(), exact, stderr)


def test_the_preconditioned_estimator_is_the_plain_one_when_p_is_the_identity(tmp_path):
  config = tiny_config(optim=dict(name='momentum', learning_rate=0.05),
                       train=dict(noise_scale=True, checkpoint_every=None,
                                  noise_scale_estimators=('b_simple_preconditioned',)))
  rows = mbx.train(config, tmp_path / 'run', quiet=True).train_metrics
  np.testing.assert_array_equal(rows['grad_sq_p_estimate'], rows['grad_sq_estimate'])
  np.testing.assert_array_equal(rows['trace_p_estimate'], rows['trace_estimate'])
  np.testing.assert_array_equal(rows['b_simple_preconditioned'], rows['b_simple'])


def test_per_example_gradients_give_the_exact_trace_beside_the_two_group_estimate():
  probe = PerExampleTraceProbe(every=1, count=B_GROUP)
  metrics, batch, state, workload, model = _one_measuring_step('sgd', (probe,))
  flat, unravel = ravel_pytree(state.params)

  def loss(theta, x, y):
    outputs, _ = apply_model(model, unravel(theta), state.model_state, x[None], train=False)
    return workload.task.losses(outputs, {'targets': y[None]}).mean()
  per_example = np.stack([np.asarray(jax.grad(loss)(flat, batch['inputs'][i],
                                                    batch['targets'][i]), np.float64)
                          for i in range(B_GROUP)])
  exact = ((per_example - per_example.mean(0))**2).sum() / (B_GROUP - 1)
  np.testing.assert_allclose(metrics['trace_per_example_estimate'], exact, rtol=1e-3)
  assert metrics['per_example_steps'] == 1.0 and metrics['trace_two_group_estimate'] > 0


def test_a_negative_estimate_is_not_a_number_but_a_reason():
  rows = [{'step': 10, 'grad_sq_estimate': -0.5, 'trace_estimate': 3.0},
          {'step': 20, 'grad_sq_estimate': 0.2, 'trace_estimate': 2.0}]
  result = estimators.run_average('b_simple', rows)
  assert math.isnan(result['value']) and '≤ 0' in result['reason']
  weighted = [{'step': 10, 'curvature_grad_estimate': 0.0, 'curvature_trace_estimate': 0.0,
               'curvature_steps': 0.0},
              {'step': 20, 'curvature_grad_estimate': 0.5, 'curvature_trace_estimate': 4.0,
               'curvature_steps': 0.5}]
  # Only the second interval measured, on half its steps: the means are 1.0 and 8.0.
  result = estimators.run_average('b_noise', weighted)
  assert (result['grad_sq'], result['trace'], result['value']) == (1.0, 8.0, 8.0)
  assert estimators.run_average('b_noise', weighted[:1])['reason'] == 'b_noise was not measured'


@pytest.mark.parametrize('train, optim, message', [
    (dict(noise_scale_estimators=('b_nois',)), {},
     "train.noise_scale_estimators='b_nois': one of b_simple_preconditioned, b_noise"),
    (dict(noise_scale_estimators=('b_simple_preconditioned',)), dict(name='lion'),
     "train.noise_scale_estimators=b_simple_preconditioned needs the optimizer's "
     "preconditioner, and optim.name='lion' declares none"),
    (dict(noise_scale_estimators=('b_noise',), probe_groups=1), {},
     'train.probe_groups=1: must be an integer >= 2'),
    (dict(batch_policy='noise_scale', batch_policy_estimator='b_noise', noise_scale=True,
          min_batch_size=16, max_batch_size=256), {},
     "train.batch_policy_estimator='b_noise': train.batch_policy=noise_scale reads it, so it "
     'must be measured'),
    (dict(batch_policy='noise_scale', batch_policy_estimator='b_noize', noise_scale=True,
          min_batch_size=16, max_batch_size=256), {},
     "train.batch_policy_estimator='b_noize': one of b_simple"),
])
def test_bad_estimator_input_stops_in_one_line_before_compiling(train, optim, message):
  config = tiny_config(train=train, optim=optim)
  with pytest.raises(mbx.ConfigError) as error:
    resolve(config)
  assert str(error.value).startswith(message), str(error.value)
  assert '\n' not in str(error.value)


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory):
  config = tiny_config(train=dict(duration='20 steps', checkpoint_every='10 steps',
                                  keep_checkpoints=2))
  return mbx.train(config, tmp_path_factory.mktemp('posthoc') / 'run', quiet=True)


def test_post_hoc_estimates_carry_a_bootstrap_interval_and_the_per_example_trace(saved_run):
  from mbx.measure import noise_scale  # pylint: disable=import-outside-toplevel
  summary = noise_scale.noise_scale_analysis(saved_run, [20], examples=64, groups=4, draws=6,
                                             per_example=16)
  by_name = {r['estimator']: r for r in summary['results']}
  assert set(by_name) == set(estimators.NAMES) | {estimators.PER_EXAMPLE}  # Adam declares P
  for name in estimators.NAMES:
    row = by_name[name]
    if row['reason'] is None:
      assert row['ci_low'] <= row['value'] <= row['ci_high'], row
      assert row['value'] == pytest.approx(row['trace'] / row['grad_sq'])
    else:
      assert math.isnan(row['value'])
  exact = by_name[estimators.PER_EXAMPLE]
  assert exact['trace_exact'] > 0 and exact['two_group_std'] > 0


def test_post_hoc_group_estimates_are_the_two_batch_formula(saved_run):
  """b_simple of one draw equals McCandlish's two-batch estimate computed here by hand."""
  from mbx.measure import noise_scale  # pylint: disable=import-outside-toplevel
  workload = resolve(saved_run.config)
  model = workload.model(jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',)))
  params, model_state, _ = saved_run.restore(20)
  rows = workload.dataset.arrays('train')
  batch = {k: jnp.asarray(v[:32]) for k, v in rows.items()}
  measure = noise_scale._measure_fn(model, workload.task, 4, 8, 0)  # pylint: disable=protected-access
  grad_sq, trace = jax.device_get(measure(params, model_state, batch, None))['b_simple']
  flat, unravel = ravel_pytree(params)

  def loss(theta, part):
    outputs, _ = apply_model(model, unravel(theta), model_state, part['inputs'], train=False)
    return workload.task.losses(outputs, part).mean()
  g = np.stack([np.asarray(jax.grad(loss)(flat, jax.tree.map(lambda a: a[i * 8:(i + 1) * 8],
                                                             batch))) for i in range(4)])
  small, big = (g**2).sum(1).mean(), (g.mean(0)**2).sum()
  np.testing.assert_allclose(grad_sq, (32 * big - 8 * small) / 24, rtol=1e-4)
  np.testing.assert_allclose(trace, (small - big) / (1 / 8 - 1 / 32), rtol=1e-4)


@pytest.mark.parametrize('args, message', [
    (['--steps', '15'], '--steps 15: no checkpoint there; saved steps: 10, 20'),
    (['--estimators', 'b_nose'], '--estimators b_nose: not an estimator; allowed: b_simple'),
    (['--examples', '30', '--groups', '4'], '--examples 30: must be a multiple of --groups 4'),
    (['--groups', '1'], '--groups 1: the estimators need at least 2 gradient groups'),
])
def test_bad_post_hoc_requests_stop_in_one_line(saved_run, args, message):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  result = subprocess.run([sys.executable, '-m', 'mbx.cli', 'analyze', 'noise-scale',
                           str(saved_run.workdir), *args], capture_output=True, text=True,
                          timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert message in lines[0]
  assert not (saved_run.workdir / 'analysis' / 'noise_scale.json').exists()


# ----------------------------------------------------- the noisy quadratic model's closed forms
NQM_OPTIONS = {'dim': 20, 'num_train': 2**15, 'num_eval': 2**10}


def _nqm_config(optimizer: str, **train):
  return mbx.Config(
      data=mbx.DataConfig(name='nqm', options=NQM_OPTIONS),
      model=mbx.ModelConfig(name='linear'), task=mbx.TaskConfig(name='regression'),
      optim=mbx.OptimConfig(name=optimizer, learning_rate=1e-9),  # θ stays at 0: δ = −θ*
      train=mbx.TrainConfig(**{'batch_size': 256, 'duration': '1 steps', 'log_every': '5 steps',
                               'eval_every': '1000 steps', 'checkpoint_every': None, **train}),
      name='nqm_estimators')


def _closed_form(weights):
  """(GᵀDG, tr(DΣ)) at δ = −θ* for a diagonal D given by its entries (mbx.measure.nqm)."""
  from mbx.data import nqm as nqm_data  # pylint: disable=import-outside-toplevel
  from mbx.measure import nqm  # pylint: disable=import-outside-toplevel
  problem = nqm_data.problem_of(NQM_OPTIONS)
  delta = -problem.optimum
  sigma = nqm.gradient_covariance(problem, delta)
  gradient = 2 * problem.curvature * delta
  return gradient @ (weights * gradient), float(np.sum(weights * np.diag(sigma)))


def _within(estimates, exact, sigmas=4.0):
  estimates = np.asarray(estimates, np.float64)
  stderr = estimates.std(ddof=1) / math.sqrt(len(estimates))
  assert abs(estimates.mean() - exact) < sigmas * stderr, (estimates.mean(), exact, stderr)


def test_the_in_step_estimators_hold_to_the_nqm_closed_forms(tmp_path):
  """At a fixed θ (LR 1e-9), every step's unbiased estimates scatter around the exact
  numerator and denominator; their mean over 200 measuring steps is held to 4 standard
  errors (the standard error from the steps' own spread)."""
  from mbx.data import nqm as nqm_data  # pylint: disable=import-outside-toplevel
  config = _nqm_config('sgd', duration='200 steps', noise_scale=True, log_every='1 steps',
                       noise_scale_estimators=('b_noise',), curvature_every=1, probe_every=1)
  rows = mbx.train(config, tmp_path / 'run', quiet=True).train_metrics
  h = nqm_data.problem_of(NQM_OPTIONS).curvature
  for (grad_column, trace_column), weights in (
      (('grad_sq_estimate', 'trace_estimate'), np.ones_like(h)),
      (('curvature_grad_estimate', 'curvature_trace_estimate'), 2 * h)):  # H_L = 2H
    grad, trace = _closed_form(weights)
    _within(rows[grad_column], grad)
    _within(rows[trace_column], trace)


def test_post_hoc_preconditioned_estimators_hold_to_the_nqm_closed_forms(tmp_path):
  """Adam's P after one step, restored from the checkpoint, in the closed forms
  tr(PΣ)/GᵀPG and tr(PH_LPΣ)/GᵀPH_LPG; 30 draws of 2048 examples."""
  from mbx.data import nqm as nqm_data  # pylint: disable=import-outside-toplevel
  from mbx.measure import noise_scale  # pylint: disable=import-outside-toplevel
  run = mbx.train(_nqm_config('adam'), tmp_path / 'run', quiet=True)
  summary = noise_scale.noise_scale_analysis(
      run, examples=2048, groups=8, draws=30,
      estimators=('b_simple', 'b_simple_preconditioned', 'b_noise_preconditioned'))
  workload = resolve(run.config)
  from mbx.measure.noise_scale import _restore  # pylint: disable=import-outside-toplevel
  _, _, preconditioner = _restore(run, 1, workload, workload.model(make_mesh(jax.devices()[:1])),
                                  make_mesh(jax.devices()[:1]), True)
  p = np.asarray(jax.tree.leaves(preconditioner)[0], np.float64).ravel()
  h = nqm_data.problem_of(NQM_OPTIONS).curvature
  assert p.std() / p.mean() > 0.1  # a preconditioner far from the identity
  for row in summary['results']:
    weights = {'b_simple': np.ones_like(h), 'b_simple_preconditioned': p,
               'b_noise_preconditioned': p * 2 * h * p}[row['estimator']]
    grad, trace = _closed_form(weights)
    assert abs(row['grad_sq'] - grad) < 4 * row['grad_sq_stderr'], (row, grad)
    assert abs(row['trace'] - trace) < 4 * row['trace_stderr'], (row, trace)
    assert row['value'] == pytest.approx(row['trace'] / row['grad_sq'])


def test_the_run_average_interval_covers_it_and_widens_with_scatter():
  steady = [{'step': 10 * (i + 1), 'grad_sq_estimate': 1.0, 'trace_estimate': 50.0}
            for i in range(20)]
  assert estimators.run_average_interval('b_simple', steady) == (50.0, 50.0)
  rng = np.random.default_rng(0)
  noisy = [{'step': 10 * (i + 1), 'grad_sq_estimate': 1.0 + rng.normal(0, 0.5),
            'trace_estimate': 50.0} for i in range(20)]
  low, high = estimators.run_average_interval('b_simple', noisy)
  value = estimators.run_average('b_simple', noisy)['value']
  assert low < value < high and high - low > 5
  negative = [{'step': 10, 'grad_sq_estimate': -1.0, 'trace_estimate': 5.0}]
  assert all(math.isnan(v) for v in estimators.run_average_interval('b_simple', negative))


@pytest.mark.slow
def test_every_estimator_runs_sharded_over_eight_devices(tmp_path):
  """One group per device: the contrast, the HVP through shard_map and the replicated P."""
  from helpers import run_python  # pylint: disable=import-outside-toplevel
  config = tiny_config(train=dict(
      batch_size=64, duration='20 steps', noise_scale=True, checkpoint_every=None,
      curvature_every=1, per_example_count=8,
      noise_scale_estimators=('b_simple_preconditioned', 'b_noise', 'b_noise_preconditioned',
                              'trace_per_example')))
  (tmp_path / 'config.json').write_text(json.dumps(mbx.config.to_dict(config)))
  result = run_python(f'''
import json
import jax
import mbx
config = mbx.config.from_dict(json.loads(open({str(tmp_path / 'config.json')!r}).read()))
rows = mbx.train(config, {str(tmp_path / 'run')!r}, quiet=True).train_metrics
columns = ('grad_sq_p_estimate', 'curvature_grad_estimate', 'curvature_trace_p_estimate',
           'trace_per_example_estimate', 'curvature_steps')
print(json.dumps(dict(devices=jax.device_count(),
                      columns=dict((c, [float(v) for v in rows[c]]) for c in columns))))
''', devices=8)
  assert result['devices'] == 8
  for column, values in result['columns'].items():
    assert all(math.isfinite(v) for v in values), column
  assert result['columns']['curvature_steps'][-1] == 1.0  # measured on every step (8 groups)
