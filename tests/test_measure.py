"""Sharpness, curvature and interpolation against closed forms, and on checkpoints of real runs."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx import models
from mbx.measure import analysis, hessian, landscape, loss_fn, sharpness
from mbx.tasks import Classification
from mbx.tasks.classification import cross_entropy

from helpers import run_python, tiny_config


def _quadratic(eigenvalues, seed=0, rotate=True):
  """H = Q diag(λ) Qᵀ with a random orthogonal Q: the Hessian of f(w) = ½ wᵀHw."""
  eigenvalues = np.asarray(eigenvalues, np.float64)
  q = (np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))[0]
       if rotate else np.eye(len(eigenvalues)))
  h = jnp.asarray((q * eigenvalues) @ q.T, jnp.float32)
  return jax.jit(lambda v: h @ v)


def _relative_error(estimate, exact):
  return np.max(np.abs(np.asarray(estimate) - exact) / np.abs(exact))


# ------------------------------------------------------------------ Hessian: closed forms
def test_top_eigenvalues_of_a_quadratic_with_known_spectrum():
  top = np.array([12.0, 9.0, 6.5, 4.0, 3.0])
  bulk = np.random.default_rng(1).uniform(-0.5, 1.0, 295)  # negative curvature too
  hvp = _quadratic(np.concatenate([top, bulk]))
  result = hessian.top_eigenvalues(hvp, 300, k=5, num_steps=60)
  assert _relative_error(result['eigenvalues'], top) <= 1e-3
  assert max(result['residuals']) < 1e-3 * top[0]


def test_hutchinson_trace_of_quadratics_with_known_spectra():
  spectrum = np.random.default_rng(2).uniform(-1.0, 5.0, 64)
  exact = spectrum.sum()
  # Rademacher probes give zᵀDz = tr(D) exactly for a diagonal Hessian.
  diagonal = hessian.hutchinson_trace(_quadratic(spectrum, rotate=False), 64, num_samples=10)
  assert abs(diagonal['trace'] - exact) / abs(exact) <= 1e-3
  rotated = _quadratic(spectrum)
  # Hutch++ computes the trace on the sketched range exactly: all of it when rank <= sketch.
  sketched = hessian.hutchinson_trace(rotated, 64, num_samples=4, sketch=64)
  assert abs(sketched['trace'] - exact) / abs(exact) <= 1e-3
  # Plain Hutchinson is unbiased: within a few standard errors, which it reports.
  plain = hessian.hutchinson_trace(rotated, 64, num_samples=400)
  assert abs(plain['trace'] - exact) <= 4 * plain['stderr']
  assert plain['hvps'] == 400 and sketched['hvps'] == 4 + 2 * 64


def test_spectral_density_integrates_to_one_with_its_mass_at_the_eigenvalues():
  eigenvalues = np.linspace(-1.0, 5.0, 30)
  quadrature = hessian.spectral_density_quadrature(_quadratic(eigenvalues), 30, num_runs=3,
                                                   num_steps=30)
  for nodes, weights in zip(quadrature['nodes'], quadrature['weights']):
    # A full Lanczos run on a 30-dim matrix recovers every eigenvalue as a node.
    assert np.max(np.abs(np.sort(nodes) - eigenvalues)) <= 1e-3 * np.max(np.abs(eigenvalues))
    assert sum(weights) == pytest.approx(1.0, abs=1e-6)
  density = hessian.density_on_grid(quadrature['nodes'], quadrature['weights'])
  assert density['integral'] == pytest.approx(1.0, abs=1e-3)
  grid, values = density['grid'], density['density']
  sigma = np.sqrt(density['variance'])
  near = np.zeros_like(grid, bool)
  for eigenvalue in eigenvalues:
    near |= np.abs(grid - eigenvalue) <= 6 * sigma
  assert np.trapezoid(np.where(near, values, 0.0), grid) >= 0.999


# ------------------------------------------------------------------ ε-sharpness: closed forms
def _linear(g, offset):
  g32 = jnp.asarray(g, jnp.float32)
  return lambda w: (offset + float(jnp.dot(g32, jnp.asarray(w))), g32)


@pytest.mark.parametrize('epsilon', [1e-3, 5e-4])
def test_epsilon_sharpness_of_a_linear_function_is_its_box_corner(epsilon):
  """max over |y_i| <= ε(|x_i| + 1) of gᵀ(x + y) is at the corner y = sign(g)·bound."""
  rng = np.random.default_rng(3)
  g, x = rng.normal(size=200), rng.normal(size=200)
  offset = 5.0 - g @ x  # f(x) = 5
  result = sharpness.epsilon_sharpness(_linear(g, offset), x, epsilon)
  exact = np.abs(g) @ (epsilon * (np.abs(x) + 1)) / (1 + 5.0) * 100
  assert result['sharpness'] == pytest.approx(exact, rel=1e-4)
  assert result['fraction_at_bound'] == 1.0
  assert result['iterations'] <= result['maxiter'] == 10


def test_epsilon_sharpness_of_a_separable_quadratic():
  """f = ½ Σ d_i (w_i − c_i)² is maximised on the box by moving each coordinate away from c_i."""
  rng = np.random.default_rng(4)
  n, epsilon = 100, 1e-3
  x = rng.normal(size=n)
  c, d = x + 0.01 * rng.normal(size=n), rng.uniform(0.5, 3.0, n)
  value_and_grad = jax.jit(jax.value_and_grad(lambda w: 0.5 * jnp.sum(d * (w - c) ** 2)))
  result = sharpness.epsilon_sharpness(value_and_grad, x, epsilon, maxiter=20)
  bound = epsilon * (np.abs(x) + 1)
  f_x = 0.5 * np.sum(d * (x - c) ** 2)
  f_max = 0.5 * np.sum(d * (np.abs(x - c) + bound) ** 2)
  assert result['sharpness'] == pytest.approx((f_max - f_x) / (1 + f_x) * 100, rel=1e-3)


def test_epsilon_sharpness_in_a_known_subspace():
  """With y ∈ R^p, f(x + Ay) = f(x) + (Aᵀg)ᵀy and |y_j| <= ε(|(A⁺x)_j| + 1)."""
  rng = np.random.default_rng(5)
  n, p, epsilon = 300, 7, 1e-3
  g, x, a = rng.normal(size=n), rng.normal(size=n), rng.normal(size=(n, p))
  offset = 0.5 - g @ x
  result = sharpness.epsilon_sharpness(_linear(g, offset), x, epsilon, projection=a)
  bound = epsilon * (np.abs(np.linalg.pinv(a) @ x) + 1)
  exact = np.abs(a.T @ g) @ bound / 1.5 * 100
  assert result['space'] == 'subspace' and result['dim'] == p
  assert result['sharpness'] == pytest.approx(exact, rel=1e-4)
  subspace = sharpness.random_subspace(n, 100, seed=0, std=0.5)
  assert subspace.shape == (n, 100) and np.std(subspace) == pytest.approx(0.5, rel=0.02)


# ------------------------------------------------------------------ the loss of a real model
def _small_problem(model_name='mlp', options=None, shape=(40, 1), n=48, seed=0):
  """A model with random parameters (N(0, 1/fan_in) kernels; initialising a ResNet eagerly or
  under jit takes ~30 s on XLA:CPU) and random data."""
  model = models.build_model(model_name, num_classes=10, options=options or {})
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *shape)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
  variables = jax.tree.map(
      lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1
                 else rng.uniform(0.5, 1.5, s.shape)).astype(np.float32),
      dict(shapes))
  params = variables.pop('params')
  return model, params, variables, loss_fn.Data({'inputs': x, 'targets': y}, 'random test data')


def test_loss_function_hvp_and_top_eigenvalue_match_the_dense_hessian():
  model, params, state, data = _small_problem(options={'hidden': (4,)})
  loss = loss_fn.LossFunction(model, Classification(), params, state, data, batch_size=20)  # 3 padded batches
  unravel = loss.unravel

  def f(w):
    logits = model.apply({'params': unravel(w)}, jnp.asarray(data.rows['inputs']), train=False)
    return jnp.mean(cross_entropy(logits, jnp.asarray(data.rows['targets'])))

  theta = loss.theta
  dense = np.asarray(jax.jit(jax.hessian(f))(theta), np.float64)
  v = jax.random.normal(jax.random.key(1), theta.shape)
  np.testing.assert_allclose(loss.hvp(v), dense @ np.asarray(v), rtol=1e-4, atol=1e-5)
  value, grad = loss.value_and_grad()
  assert value == pytest.approx(float(f(theta)), rel=1e-6)
  np.testing.assert_allclose(grad, jax.grad(f)(theta), rtol=1e-5, atol=1e-7)
  exact = np.sort(np.linalg.eigvalsh(dense))[::-1][:3]
  result = hessian.top_eigenvalues(loss.hvp, loss.dim, k=3, num_steps=40)
  assert _relative_error(result['eigenvalues'], exact) <= 1e-3


def test_batch_norm_models_are_evaluated_in_inference_mode():
  model, params, state, data = _small_problem('resnet18', {'width': 2}, shape=(8, 8, 3), n=16)
  # The running statistics are random (uniform in [0.5, 1.5]), far from the batch statistics,
  # so inference and training mode disagree.
  loss = loss_fn.LossFunction(model, Classification(), params, state, data)
  inference = model.apply({'params': params, **state}, data.rows['inputs'], train=False)
  expected = float(jnp.mean(cross_entropy(inference, data.rows['targets'])))
  training, _ = model.apply({'params': params, **state}, data.rows['inputs'], train=True,
                            mutable=['batch_stats'])
  assert loss.loss() == pytest.approx(expected, rel=1e-5)
  assert abs(float(jnp.mean(cross_entropy(training, data.rows['targets']))) - expected) > 1e-3
  assert 'BatchNorm in inference mode' in loss.mode


def _sharded_problem() -> dict:
  model, params, _, data = _small_problem(options={'hidden': (8,)}, n=50)
  loss = loss_fn.LossFunction(model, Classification(), params, {}, data, batch_size=16)
  v = np.asarray(jax.random.normal(jax.random.key(1), (loss.dim,)))
  return {'devices': int(loss.mesh.devices.size), 'loss': loss.loss(),
          'hvp': np.asarray(loss.hvp(v)).tolist(),
          'top': hessian.top_eigenvalues(loss.hvp, loss.dim, k=2, num_steps=20)['eigenvalues'],
          'trace': hessian.hutchinson_trace(loss.hvp, loss.dim, 3, sketch=2)['trace']}


def test_hvp_is_the_same_on_two_devices():
  """The data are sharded over the 'data' axis; the sums, hence f and H v, do not change."""
  two = run_python("""
      import json, sys
      sys.path.insert(0, 'tests')
      from test_measure import _sharded_problem
      print(json.dumps(_sharded_problem()))
      """, devices=2)
  one = _sharded_problem()
  assert two['devices'] == 2 and one['devices'] == 1
  assert two['loss'] == pytest.approx(one['loss'], rel=1e-6)
  np.testing.assert_allclose(two['hvp'], one['hvp'], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(two['top'], one['top'], rtol=1e-4)
  assert two['trace'] == pytest.approx(one['trace'], rel=1e-4)


# ------------------------------------------------------------------ checkpoints of real runs
@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  """Two tiny runs from the same initialisation (train.seed 0) at batch sizes 32 and 128."""
  root = tmp_path_factory.mktemp('runs')
  runs = []
  for batch_size in (32, 128):
    config = tiny_config(train=dict(batch_size=batch_size, eval_on_train=True,
                                    checkpoint_every='10 steps'), name=f'b{batch_size}')
    runs.append(mbx.train(config, root / f'b{batch_size}', quiet=True))
  return runs


def test_interpolation_endpoints_reproduce_the_runs_metrics_exactly(two_runs):
  run_a, run_b = two_runs
  summary = analysis.interpolation_analysis(run_a, run_b, alphas=[-1.0, 0.0, 0.5, 1.0, 2.0])
  assert summary['same_initialization']
  rows = {row['alpha']: row for row in summary['rows']}
  for alpha, run in ((0.0, run_a), (1.0, run_b)):
    for metric in ('loss', 'accuracy'):
      assert rows[alpha][f'train_{metric}'] == run.status[f'train_{metric}']
      assert rows[alpha][f'test_{metric}'] == run.status[f'test_{metric}']
  assert rows[0.5]['train_loss'] != rows[0.0]['train_loss']
  params_a, params_b = run_a.params(), run_b.params()
  midpoint = landscape.interpolate(params_a, params_b, 0.25)
  bias_a, bias_b = params_a['Dense_0']['bias'], params_b['Dense_0']['bias']
  np.testing.assert_allclose(midpoint['Dense_0']['bias'], 0.25 * bias_b + 0.75 * bias_a, rtol=1e-6)


def test_filter_normalized_direction_matches_filter_norms(two_runs):
  params = two_runs[0].params()
  direction = landscape.filter_normalized_direction(jax.random.key(0), params)
  kernel, d = np.asarray(params['Conv_0']['kernel']), np.asarray(direction['Conv_0']['kernel'])
  np.testing.assert_allclose(np.linalg.norm(d.reshape(-1, d.shape[-1]), axis=0),
                             np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0),
                             rtol=1e-5)
  assert not np.any(np.asarray(direction['Conv_0']['bias']))


def test_cli_analyses_a_checkpoint_written_by_train(two_runs, tmp_path, capsys):
  from mbx.cli import main
  run_a, run_b = two_runs
  main(['analyze', 'sharpness', str(run_a.workdir), '--step', '10', '--top-k', '2',
        '--trace-samples', '4', '--density-runs', '1', '--density-steps', '8',
        '--subspace-dim', '10', '--subset', '1000', '--out', str(tmp_path)])
  summary = json.loads((tmp_path / 'sharpness_step10.json').read_text())
  assert summary['run']['step'] == 10 and summary['parameters'] == 5210
  assert 'first 1000 of 4000' in summary['data'] and 'inference mode' in summary['mode']
  assert [(r['space'], r['epsilon']) for r in summary['sharpness']['results']] == [
      ('full', 1e-3), ('subspace', 1e-3), ('full', 5e-4), ('subspace', 5e-4)]
  assert all(r['sharpness'] >= 0 and r['maxiter'] == 10 for r in summary['sharpness']['results'])
  assert len(summary['hessian']['top_eigenvalues']['eigenvalues']) == 2
  assert (tmp_path / 'hessian_density_step10.png').stat().st_size > 0
  main(['analyze', 'interpolate', str(run_a.workdir), str(run_b.workdir),
        '--alphas', '-1', '2', '7'])
  out = run_a.workdir / 'analysis'
  interpolation = json.loads((out / 'interpolation_b32_b128.json').read_text())
  assert [row['alpha'] for row in interpolation['rows']] == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
  assert (out / 'interpolation_b32_b128.png').stat().st_size > 0
  main(['analyze', 'landscape', str(run_b.workdir), '--dims', '2', '--points', '3'])
  grid = json.loads((run_b.workdir / 'analysis' / 'landscape2d_step20.json').read_text())['grid']
  assert np.asarray(grid['loss']).shape == (3, 3)
  assert 'wrote' in capsys.readouterr().out


# ------------------------------------------------------------------ ε-sharpness at minimisers
def _value_and_grad_of_quadratic(h, c):
  """f(w) = ½ (w − c)ᵀ H (w − c), H positive semi-definite: its minimiser is c."""
  h32, c32 = jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)
  return jax.jit(jax.value_and_grad(lambda w: 0.5 * (w - c32) @ h32 @ (w - c32)))


def _phi(f_max, f_x):
  return (f_max - f_x) / (1 + f_x) * 100


CASES = ['at the minimiser', 'near it', 'zero-gradient coordinates']


def _offset(case, rng, n):
  """x − c: zero, small, or small on half the coordinates and exactly zero on the rest."""
  return {'at the minimiser': np.zeros(n), 'near it': 1e-4 * rng.normal(size=n),
          'zero-gradient coordinates': np.r_[np.zeros(n // 2), 1e-4 * rng.normal(size=n // 2)]
          }[case]


@pytest.mark.parametrize('epsilon', [1e-3, 5e-4])
@pytest.mark.parametrize('case', CASES)
def test_epsilon_sharpness_is_the_exact_box_maximum_of_a_quadratic_near_its_minimiser(
    epsilon, case):
  """f = ½ Σ d_i (w_i − c_i)²: over |y_i| <= b_i the maximum moves every coordinate away from
  c_i, f_max = ½ Σ d_i (|x_i − c_i| + b_i)². From y = 0 alone L-BFGS-B reports 0 at c."""
  rng = np.random.default_rng(7)
  n = 200
  x = rng.normal(size=n)
  c = x - _offset(case, rng, n)
  d = rng.uniform(0.5, 3.0, n)
  bounds = epsilon * (np.abs(x) + 1)
  f_x = 0.5 * np.sum(d * (x - c) ** 2)
  exact = _phi(0.5 * np.sum(d * (np.abs(x - c) + bounds) ** 2), f_x)
  result = sharpness.epsilon_sharpness(_value_and_grad_of_quadratic(np.diag(d), c), x, epsilon)
  assert result['sharpness'] == pytest.approx(exact, rel=1e-3)
  assert result['num_starts'] == 4 and len(result['start_sharpness']) == 4
  if case == 'at the minimiser':
    assert result['start_sharpness'][0] == 0.0  # the paper's single start, from y = 0
    assert sharpness.epsilon_sharpness(_value_and_grad_of_quadratic(np.diag(d), c), x, epsilon,
                                       num_starts=1)['sharpness'] == 0.0


@pytest.mark.parametrize('epsilon', [1e-3, 5e-4])
@pytest.mark.parametrize('case', CASES)
def test_epsilon_sharpness_is_the_exact_box_maximum_in_a_subspace(epsilon, case):
  """H = Q diag(λ) Qᵀ and A = Q[:, :p] s (s > 0 per column): f(x + A y) − f(x) is separable in
  y, ½ Σ λ_j s_j² y_j² + Σ λ_j s_j (Qᵀ(x − c))_j y_j, so its box maximum is analytic."""
  rng = np.random.default_rng(8)
  n, p = 60, 6
  q = np.linalg.qr(rng.normal(size=(n, n)))[0]
  lam = rng.uniform(0.5, 3.0, n)
  h = q @ np.diag(lam) @ q.T
  x = rng.normal(size=n)
  c = x - q[:, :p] @ _offset(case, rng, p)  # the offset lies in the subspace
  scale = rng.uniform(0.5, 2.0, p)
  a = q[:, :p] * scale
  bounds = epsilon * (np.abs(np.linalg.pinv(a) @ x) + 1)
  u = a.T @ h @ (x - c)  # the linear coefficients, per subspace coordinate
  curvature = lam[:p] * scale**2
  f_x = 0.5 * (x - c) @ h @ (x - c)
  exact = _phi(f_x + np.sum(0.5 * curvature * bounds**2 + np.abs(u) * bounds), f_x)
  result = sharpness.epsilon_sharpness(_value_and_grad_of_quadratic(h, c), x, epsilon, projection=a)
  assert result['space'] == 'subspace' and result['dim'] == p
  assert result['sharpness'] == pytest.approx(exact, rel=1e-3)


def test_epsilon_sharpness_of_a_dense_quadratic_is_a_lower_bound_that_starts_improve():
  """For a dense H the box maximum is a vertex found here by enumerating all 2^10; the
  multi-start result never exceeds it and is at least the single start's."""
  rng = np.random.default_rng(9)
  n, epsilon = 10, 1e-3
  x = rng.normal(size=n)
  root = rng.normal(size=(n, n))
  h = root @ root.T / n
  c = x + 1e-4 * rng.normal(size=n)
  bounds = epsilon * (np.abs(x) + 1)
  signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * n)).reshape(n, -1).T
  w = x[None] + signs * bounds - c[None]
  f_x = 0.5 * (x - c) @ h @ (x - c)
  exact = _phi(np.max(0.5 * np.einsum('ki,ij,kj->k', w, h, w)), f_x)
  single = sharpness.epsilon_sharpness(_value_and_grad_of_quadratic(h, c), x, epsilon, num_starts=1)
  several = sharpness.epsilon_sharpness(_value_and_grad_of_quadratic(h, c), x, epsilon, num_starts=8)
  assert single['sharpness'] <= several['sharpness'] <= exact * (1 + 1e-4)
  assert several['sharpness'] >= 0.8 * exact
  assert several['start_spread'] == pytest.approx(max(several['start_sharpness']) -
                                                  min(several['start_sharpness']))
