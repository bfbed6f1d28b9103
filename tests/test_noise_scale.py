"""The gradient noise scale B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018, App. A.1).

(a) the estimator on synthetic group gradients with known G and Sigma; (b) the
estimate the train step logs, on logistic regression at (nearly) frozen
parameters, against tr(Sigma) and |G|^2 computed exactly from per-example
gradients of the whole training set.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx import data
from mbx.training import noise_scale
from mbx.tasks.classification import cross_entropy

from helpers import tiny_config


def test_group_estimates_are_the_two_batch_estimates():
  """k groups of b: |G|^2 = (k total - local)/(k-1), tr = b k (local - total)/(k-1)."""
  local, total, b, k = 3.7, 1.3, 16, 4
  grad_sq, trace = noise_scale.group_estimates(local, total, b, k)
  assert grad_sq == pytest.approx((k * total - local) / (k - 1))
  assert trace == pytest.approx(b * k * (local - total) / (k - 1))


@pytest.mark.parametrize('num_groups,group_size', [(2, 32), (8, 4), (4, 128)])
def test_estimator_converges_on_synthetic_group_gradients(num_groups, group_size):
  """g_i = G + eps_i with eps_i ~ N(0, Sigma / b): the EMA ratio is within 10% of the truth."""
  rng = np.random.default_rng(0)
  dim = 200
  grad = rng.normal(size=dim) * 0.05
  sigma_diag = rng.gamma(0.5, 2.0, size=dim)  # anisotropic, like real gradient noise
  true_b_simple = sigma_diag.sum() / (grad @ grad)
  decay = 0.995
  state = noise_scale.NoiseScaleState.zeros()
  update = jax.jit(noise_scale.update, static_argnums=3)
  for _ in range(3000):
    groups = grad + rng.normal(size=(num_groups, dim)) * np.sqrt(sigma_diag / group_size)
    local = np.mean(np.sum(groups**2, axis=1))
    total = np.sum(groups.mean(0)**2)
    grad_sq, trace = noise_scale.group_estimates(local, total, group_size, num_groups)
    state = update(state, jnp.float32(grad_sq), jnp.float32(trace), decay)
  summary = {k: float(v) for k, v in noise_scale.summarize(state, decay).items()}
  assert summary['trace_sigma'] == pytest.approx(sigma_diag.sum(), rel=0.1)
  assert summary['grad_sq'] == pytest.approx(grad @ grad, rel=0.1)
  assert summary['b_simple'] == pytest.approx(true_b_simple, rel=0.1)


def test_bias_correction_makes_the_first_steps_unbiased():
  state = noise_scale.NoiseScaleState.zeros()
  state = noise_scale.update(state, jnp.float32(2.0), jnp.float32(10.0), 0.99)
  summary = noise_scale.summarize(state, 0.99)
  assert float(summary['grad_sq']) == pytest.approx(2.0)
  assert float(summary['b_simple']) == pytest.approx(5.0)


def test_run_average_divides_the_step_weighted_means():
  """Intervals of 10, 30 and 60 steps: numerator and denominator averaged first."""
  summary = noise_scale.run_average([10, 40, 100], [4.0, 2.0, 1.0], [40.0, 40.0, 40.0])
  grad_sq = (10 * 4 + 30 * 2 + 60 * 1) / 100
  assert summary['grad_sq'] == pytest.approx(grad_sq)
  assert summary['b_simple'] == pytest.approx(40.0 / grad_sq)
  assert noise_scale.run_average([10, 40, 100], [4.0, 2.0, 1.0], [40.0, 40.0, 40.0],
                                 until_step=40)['grad_sq'] == pytest.approx((40 + 60) / 40)
  assert np.isnan(noise_scale.run_average([], [], [])['b_simple'])


def _exact_noise_scale(params, model):
  """|G|^2 and tr(Sigma) over the whole training set from per-example gradients."""
  x, y = data.load_arrays('mnist1d', 'train')

  def loss(p, xi, yi):
    return cross_entropy(model.apply({'params': p}, xi[None], train=False), yi[None])[0]

  per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, jnp.asarray(x),
                                                               jnp.asarray(y))
  flat = jnp.concatenate([g.reshape(len(x), -1) for g in jax.tree.leaves(per_example)], 1)
  flat = np.asarray(flat, dtype=np.float64)
  mean = flat.mean(0)
  trace = float(np.mean(np.sum((flat - mean)**2, axis=1)))  # population covariance
  return float(mean @ mean), trace


@pytest.mark.slow
@pytest.mark.parametrize('groups', [None, 8])
def test_in_step_estimate_matches_exact_logistic_regression(tmp_path, groups):
  """Logistic regression at near-frozen parameters (LR 1e-7): the logged B_simple is within
  10% of tr(Sigma)/|G|^2 computed exactly over the 4000 training examples.

  Batches are drawn without replacement, which biases the estimates by only
  tr/(N-1) and a factor N/(N-1) (N = 4000), well inside the tolerance.
  """
  config = tiny_config(
      model=dict(name='mlp', options={'hidden': ()}),
      optim=dict(name='sgd', learning_rate=1e-7),
      train=dict(batch_size=64, duration='3000 steps', log_every='100 steps',
                 eval_every='3000 steps', checkpoint_every=None, noise_scale=True,
                 probe_groups=groups, noise_scale_ema=0.995))
  run = mbx.train(config, tmp_path, quiet=True)
  logs = run.train_metrics
  assert {'b_simple', 'grad_sq', 'trace_sigma', 'grad_sq_estimate',
          'trace_estimate'} <= set(logs.columns)
  grad_sq, trace = _exact_noise_scale(run.params(), run.build_model())
  exact = trace / grad_sq
  final = logs.iloc[-1]
  assert final['trace_sigma'] == pytest.approx(trace, rel=0.1)
  assert final['grad_sq'] == pytest.approx(grad_sq, rel=0.1)
  assert final['b_simple'] == pytest.approx(exact, rel=0.1)
  averaged = noise_scale.run_average(logs['step'], logs['grad_sq_estimate'],
                                     logs['trace_estimate'])
  assert averaged['b_simple'] == pytest.approx(exact, rel=0.1)
  # Sharper: the run average matches what sampling without replacement predicts.
  n = 4000
  assert averaged['grad_sq'] == pytest.approx(grad_sq - trace / (n - 1), rel=0.03)
  assert averaged['trace_sigma'] == pytest.approx(trace * n / (n - 1), rel=0.03)


def test_every_log_row_carries_the_run_averaged_b_simple_so_far(tmp_path, session_data_dir):
  """b_simple is an EMA (~100 steps); b_simple_run_average is the whole run so far, the value
  the sweep table reports, and it survives a resume (recomputed from the kept rows)."""
  import shutil  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  config = tiny_config(train=dict(noise_scale=True, log_every='2 steps'))
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  rows = run.train_metrics
  for i in range(len(rows)):
    prefix = rows.iloc[:i + 1]
    expected = noise_scale.run_average(prefix['step'], prefix['grad_sq_estimate'],
                                       prefix['trace_estimate'])['b_simple']
    assert rows['b_simple_run_average'].iloc[i] == pytest.approx(expected, rel=1e-9)
  shutil.rmtree(tmp_path / 'run' / 'checkpoints' / '20')  # resume from step 10
  (tmp_path / 'run' / 'status.json').write_text(json.dumps({'status': 'running'}))
  resumed = mbx.train(config, tmp_path / 'run', quiet=True).train_metrics
  np.testing.assert_allclose(resumed['b_simple_run_average'], rows['b_simple_run_average'],
                             rtol=1e-6)
