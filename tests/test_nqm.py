"""The noisy quadratic model: its data, its exact theory against Monte-Carlo simulation, against
mbx's own training, and the critical batch size of a real sweep against the exact one.

Monte-Carlo checks compare a mean with the exact value within 4 standard errors (fixed seeds,
so each check is deterministic; 4 SE would be exceeded by chance with probability 6e-5), and
each also shows it has the power to see an error: a wrong noise term lies many SE away.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

import mbx
from mbx.data import nqm as data_nqm
from mbx.data import resolve_dataset
from mbx.measure import nqm
from mbx.models import build_model
from mbx.sweep import analyze, grid, load_sweep, load_table, run_sweep

from helpers import REPO

TARGET = 0.30  # configs/cbs_nqm.py: the noise floor σ² = 0.25 plus 0.05
BATCH_SIZES = [2**i for i in range(13)]  # configs/cbs_nqm.py's, 1 ... 4096


def simulate(problem, batch_size, learning_rate, steps, runs, *, optimizer='sgd',
             momentum=nqm.MOMENTUM, power=nqm.POWER, seed=0):
  """Independent runs of actual mini-batch training on fresh examples (v' = μv + ĝ,
  θ' = θ − ηPv'): the losses L(θ_t), t = 0..steps, and each step's batch loss, per run."""
  rng = np.random.default_rng(seed)
  h, sigma = problem.curvature, problem.noise
  rates = learning_rate * (nqm.preconditioner(problem, power) if optimizer == 'preconditioned'
                           else np.ones_like(h))
  mu = momentum if optimizer == 'momentum' else 0.0
  delta = np.tile(-problem.optimum, (runs, 1))
  velocity = np.zeros_like(delta)
  losses, batch_losses = np.empty((steps + 1, runs)), np.empty((steps, runs))
  for t in range(steps):
    losses[t] = delta**2 @ h + sigma**2
    x = rng.standard_normal((runs, batch_size, problem.dim)) * np.sqrt(h)
    residual = np.einsum('rbd,rd->rb', x, delta) - sigma * rng.standard_normal((runs, batch_size))
    batch_losses[t] = np.mean(residual**2, axis=1)
    velocity = mu * velocity + 2 * np.einsum('rbd,rb->rd', x, residual) / batch_size
    delta = delta - rates * velocity
  losses[steps] = delta**2 @ h + sigma**2
  return losses, batch_losses


# ------------------------------------------------------------------ data and model
def test_the_dataset_is_seeded_and_its_inputs_have_the_spectrum():
  dataset = data_nqm.dataset()
  problem = data_nqm.problem()
  info = dataset.info()
  assert info.splits == {'train': 2**16, 'validation': 2**13, 'test': 2**13}
  assert info.element_spec == {'inputs': ((100,), 'float32'), 'targets': ((), 'float32')}
  assert info.num_classes is None and info.eval_split == 'validation'
  np.testing.assert_allclose(problem.curvature, 1 / np.arange(1, 101))
  # θ* ~ N(0, 1/tr H): the initial excess loss is 1 on average; this seed's is 0.966.
  assert problem.curvature @ problem.optimum**2 == pytest.approx(0.96636, abs=1e-5)

  train = dataset.arrays('train')
  x, y = train['inputs'].astype(np.float64), train['targets'].astype(np.float64)
  n = len(y)
  # E[x_i²] = h_i with relative SD √(2/n) (0.55%); E[x_i x_j] = 0 with SD √(h_i h_j / n).
  # 5 and 6 SD over the 100 diagonal and 4950 off-diagonal entries: a false alarm ~1e-5.
  second = x.T @ x / n
  scale = np.sqrt(np.outer(problem.curvature, problem.curvature))
  relative = second / scale
  assert np.max(np.abs(np.diag(relative) - 1)) < 5 * np.sqrt(2 / n)
  assert np.max(np.abs(relative[~np.eye(100, dtype=bool)])) < 6 / np.sqrt(n)
  noise = y - x @ problem.optimum  # σε, with the float32 rounding of y (~1e-8)
  assert np.mean(noise**2) / 0.25 - 1 == pytest.approx(0, abs=5 * np.sqrt(2 / n))
  assert abs(np.mean(x * noise[:, None], axis=0) / np.sqrt(problem.curvature * 0.25)).max() \
      < 5 / np.sqrt(n)

  again = data_nqm.dataset()
  for split in ('train', 'validation', 'test'):
    for key in ('inputs', 'targets'):
      np.testing.assert_array_equal(dataset.arrays(split)[key], again.arrays(split)[key])
  assert not np.array_equal(dataset.arrays('validation')['inputs'], train['inputs'][:2**13])
  # num_train changes neither θ* nor the evaluation splits; another seed changes all.
  smaller = data_nqm.dataset(num_train=1000)
  np.testing.assert_array_equal(smaller.arrays('validation')['targets'],
                                dataset.arrays('validation')['targets'])
  np.testing.assert_array_equal(smaller.arrays('train')['inputs'], train['inputs'][:1000])
  assert not np.array_equal(data_nqm.problem(seed=1).optimum, problem.optimum)


def test_nqm_resolves_by_name_and_checks_its_options():
  config = mbx.DataConfig(name='nqm', options={'dim': 8, 'alpha': 0.5, 'noise': 0.1,
                                               'num_train': 64, 'num_eval': 32, 'seed': 3})
  dataset = resolve_dataset(config)
  direct = data_nqm.dataset(dim=8, alpha=0.5, noise=0.1, num_train=64, num_eval=32, seed=3)
  np.testing.assert_array_equal(dataset.arrays('test')['targets'], direct.arrays('test')['targets'])
  problem = data_nqm.problem_of(config.options)
  np.testing.assert_allclose(problem.curvature, np.arange(1, 9) ** -0.5)
  np.testing.assert_array_equal(problem.optimum, data_nqm.problem(8, 0.5, 0.1, 3).optimum)
  with pytest.raises(ValueError, match='data.options.dim=0'):
    resolve_dataset(mbx.DataConfig(name='nqm', options={'dim': 0}))
  with pytest.raises(ValueError, match='data.options.noise=-1'):
    data_nqm.problem_of({'noise': -1})
  with pytest.raises(ValueError, match='nqm does not take them'):
    resolve_dataset(mbx.DataConfig(name='nqm', options={'width': 3}))
  with pytest.raises(ValueError, match='nqm does not take them'):
    data_nqm.problem_of({'width': 3})
  with pytest.raises(ValueError, match="did you mean.*nqm"):
    resolve_dataset(mbx.DataConfig(name='nqmm'))


def test_the_linear_model_starts_at_zero_without_a_bias():
  model = build_model('linear')
  variables = model.init(jax.random.key(0), np.ones((2, 100), np.float32))
  assert jax.tree.map(np.shape, variables['params']) == {'Dense_0': {'kernel': (100, 1)}}
  assert not np.any(variables['params']['Dense_0']['kernel'])
  # The MLP without hidden layers would not do: a bias, and a random initial kernel.
  mlp = build_model('mlp', num_classes=1, options={'hidden': ()})
  params = mlp.init(jax.random.key(0), np.ones((2, 100), np.float32))['params']['Dense_0']
  assert 'bias' in params and np.any(params['kernel'])


# ------------------------------------------------------------------ closed forms
def test_gradient_covariance_matches_monte_carlo_gradients():
  """tr Σ, tr(H_L Σ), |G|², GᵀH_L G from 200k per-example gradients at a fixed δ: unbiased
  estimates per chunk of 5000 (the two-batch algebra: |ḡ|² − tr Σ̂/n), their mean over 40
  chunks, and its SE from the chunks' spread (t with 39 dof: 4 SE is p ~ 3e-4)."""
  problem = data_nqm.problem()
  rng = np.random.default_rng(1)
  h, sigma = problem.curvature, problem.noise
  delta = rng.standard_normal(problem.dim) * h  # weight on the top dims, where HδδᵀH matters
  chunks, n = 40, 5000
  estimates = []
  for _ in range(chunks):
    x = rng.standard_normal((n, problem.dim)) * np.sqrt(h)
    g = 2 * x * (x @ delta - sigma * rng.standard_normal(n))[:, None]
    mean = g.mean(0)
    centred = g - mean
    trace = np.sum(centred**2) / (n - 1)
    trace_h = np.sum(centred**2 * 2 * h) / (n - 1)
    estimates.append([trace, trace_h, mean @ mean - trace / n, mean @ (2 * h * mean) - trace_h / n])
  estimates = np.array(estimates)
  measured, se = estimates.mean(0), estimates.std(0, ddof=1) / np.sqrt(chunks)
  cov = nqm.gradient_covariance(problem, delta)
  gradient = 2 * h * delta
  exact = np.array([np.trace(cov), np.trace(2 * h[:, None] * cov), gradient @ gradient,
                    gradient @ (2 * h * gradient)])
  assert np.all(np.abs(measured - exact) < 4 * se), (measured, exact, se)
  # Power: without the HδδᵀH term (a Σ off by that much) the traces are > 10 SE away.
  without = exact[:2] - np.array([4 * np.sum((h * delta)**2), 8 * np.sum(h**3 * delta**2)])
  assert np.all(np.abs(measured[:2] - without) > 10 * se[:2])
  scales = nqm.noise_scales(problem, delta**2)
  assert [scales[k] for k in ('trace_sigma', 'trace_hsigma', 'grad_sq', 'grad_hgrad')] == \
      pytest.approx(exact, rel=1e-12)


def test_noise_scales_are_the_ratios_of_the_covariance_and_the_one_step_gain():
  """The closed forms equal tr(DΣ)/(GᵀDG) from the matrix; one exact step from a fixed δ
  changes L by −η|G|² + η²/2 (GᵀH_L G + tr(H_L Σ)/B), so the best η's gain is
  ΔL_max/(1 + B_noise/B), and likewise for −ηPĝ with B_noise_p."""
  problem = data_nqm.problem()
  h, p = problem.curvature, nqm.preconditioner(problem)
  delta = -problem.optimum
  scales = nqm.noise_scales(problem, delta**2)
  cov, gradient = nqm.gradient_covariance(problem, delta), 2 * h * delta
  for key, d in (('b_simple', np.ones_like(h)), ('b_noise', 2 * h), ('b_simple_p', p),
                 ('b_noise_p', 2 * p * h * p)):
    assert scales[key] == pytest.approx(np.sum(d * np.diag(cov)) / (gradient @ (d * gradient)))
  # P = H^-1/2 makes P H_L P = 2I: its B_noise is B_simple; with H ∝ I, B_noise = B_simple.
  assert scales['b_noise_p'] == pytest.approx(scales['b_simple'])
  flat = data_nqm.problem(alpha=0.0)
  flat_scales = nqm.noise_scales(flat, flat.optimum**2)
  assert flat_scales['b_noise'] == pytest.approx(flat_scales['b_simple'])

  for optimizer, key, d in (('sgd', 'b_noise', np.ones_like(h)),
                            ('preconditioned', 'b_noise_p', p)):
    signal = gradient @ (d * gradient)                     # GᵀPG
    curvature = gradient @ (d * 2 * h * d * gradient)      # GᵀP H_L P G
    noise = np.sum(d * 2 * h * d * np.diag(cov))           # tr(P H_L P Σ)
    for batch_size in (1, 16, 10**9):
      eta = 0.05
      step = nqm.expected_loss(problem, batch_size, eta, 1, optimizer=optimizer)
      assert step[1] - step[0] == pytest.approx(
          -eta * signal + eta**2 / 2 * (curvature + noise / batch_size), rel=1e-10)
      best = signal / (curvature + noise / batch_size)   # the best η for this B
      gain = signal * best / 2
      assert gain == pytest.approx(signal**2 / curvature / 2 / (1 + scales[key] / batch_size))


# ------------------------------------------------------------------ the recursion
@pytest.mark.parametrize('optimizer, learning_rate', [('sgd', 0.3), ('momentum', 0.03),
                                                      ('preconditioned', 0.15)])
def test_the_recursion_is_the_mean_of_simulated_training(optimizer, learning_rate):
  """4000 runs of mini-batch training (B = 4, dim 20, fresh examples each step): the mean of
  L(θ_t) equals the exact E[L] within 4 SE at every checked step, while the recursion with
  half the gradient noise (B = 8) is > 8 SE away and the noiseless one further still."""
  problem = data_nqm.problem(dim=20)
  losses, _ = simulate(problem, 4, learning_rate, 100, 4000, optimizer=optimizer)
  steps = [1, 5, 10, 20, 50, 100]
  mean = losses.mean(1)[steps]
  se = losses.std(1, ddof=1)[steps] / np.sqrt(losses.shape[1])
  exact = nqm.expected_loss(problem, 4, learning_rate, 100, optimizer=optimizer)[steps]
  assert np.all(np.abs(mean - exact) < 4 * se), ((mean - exact) / se)
  half_noise = nqm.expected_loss(problem, 8, learning_rate, 100, optimizer=optimizer)[steps]
  assert np.all(np.abs(mean - half_noise)[2:] > 8 * se[2:]), ((mean - half_noise) / se)


def test_the_sgd_recursion_is_the_one_written_out():
  """m' = (1 − 2ηh)² m + (η²/B)·4(h² m + h Σ_j h_j m_j + σ² h); momentum 0 and preconditioning
  power 0 are SGD."""
  problem = data_nqm.problem(dim=10)
  h, eta, batch_size = problem.curvature, 0.05, 8
  m = problem.optimum**2
  expected = [m]
  for _ in range(30):
    m = (1 - 2 * eta * h)**2 * m + eta**2 / batch_size * 4 * (
        h**2 * m + h * (h @ m) + problem.noise**2 * h)
    expected.append(m)
  for optimizer, options in (('sgd', {}), ('momentum', {'momentum': 0.0}),
                             ('preconditioned', {'power': 0.0})):
    np.testing.assert_allclose(
        nqm.second_moments(problem, batch_size, eta, 30, optimizer=optimizer, **options),
        expected, rtol=1e-12)
  with pytest.raises(ValueError, match="optimizer='adam'"):
    nqm.expected_loss(problem, 8, 0.05, 3, optimizer='adam')


def test_steps_to_target_and_the_learning_rate_search():
  problem = data_nqm.problem()
  curve = nqm.expected_loss(problem, 16, 0.2, 400)
  steps = nqm.steps_to_target(problem, 16, 0.2, TARGET)
  assert curve[int(steps)] <= TARGET < curve[:int(steps)].min()
  assert nqm.steps_to_target(problem, 16, 1e-4, TARGET, max_steps=500) == np.inf
  assert nqm.steps_to_target(problem, 16, 1.5, TARGET) == np.inf  # 2η h_1 > 2: diverges
  assert nqm.steps_to_target(problem, 16, 0.2, 2.0) == 0  # the start is below 2.0
  grid = np.geomspace(0.01, 1, 9)
  best = nqm.best_steps(problem, 16, TARGET, grid)
  assert best.steps == min(nqm.steps_to_target(problem, 16, lr, TARGET) for lr in grid)
  assert best.learning_rate in grid and not best.at_edge
  assert nqm.best_steps(problem, 16, TARGET, grid[:4]).at_edge


# ------------------------------------------------------------------ S(B) and B_crit
def test_exact_steps_scale_perfectly_then_flatten_and_momentum_and_preconditioning_help():
  """Zhang et al. 2019: S(B) ∝ 1/B at small B, flat at large B; momentum does not help at
  small B but extends perfect scaling; preconditioning extends it further."""
  curves = nqm.exact_curve(data_nqm.problem(), BATCH_SIZES, TARGET)
  for curve in curves.values():
    s = dict(zip(BATCH_SIZES, curve.steps))
    assert all(s[b] * b / s[1] < 1.05 for b in (2, 4))   # perfect scaling
    assert s[2048] / s[4096] < 1.1                      # flat
    assert not curve.at_edge.any()
    assert curve.rms_log_residual < 0.15                # McCandlish's form fits it
  sgd, momentum, preconditioned = (curves[k] for k in nqm.OPTIMIZERS)
  assert momentum.steps[0] / sgd.steps[0] == pytest.approx(1, abs=0.02)
  assert momentum.steps[-1] < 0.7 * sgd.steps[-1]
  assert preconditioned.steps[-1] < 0.3 * sgd.steps[-1]
  assert 1.3 * sgd.b_crit < momentum.b_crit and 1.3 * momentum.b_crit < preconditioned.b_crit
  # The values docs/science.md and configs/cbs_nqm.py quote.
  assert [round(curves[k].b_crit) for k in nqm.OPTIMIZERS] == [70, 108, 212]
  assert (round(sgd.s_min, 1), round(sgd.e_min)) == (26.7, 1871)


def test_the_theory_imports_no_jax():
  code = ('import sys; from mbx.data import nqm as d; from mbx.measure import nqm; '
          'c = nqm.exact_curve(d.problem(dim=10), [1, 4, 16, 64], 0.3); '
          'print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "optax")))')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == '[]'


# ------------------------------------------------------------------ mbx's training
def test_mbx_training_follows_the_exact_expected_loss(tmp_path):
  """configs/nqm_sgd.py (B = 64, LR 0.25, 300 steps, all within the first epoch, so every
  example is fresh: the online process the recursion describes). Each logged training loss
  averages 10 batch losses at θ_{t-10} .. θ_{t-1}; it must lie within 4 SD of the exact mean
  of those steps' E[L], the SD measured over 128 simulated runs of the same process (its
  estimate is within ~15% of the true SD). Validation losses likewise, with the SD of L(θ_t)
  plus that of a fixed 8192-example evaluation set, L √(2/8192)."""
  config = mbx.load_config(REPO / 'configs' / 'nqm_sgd.py')
  run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['status'] == 'done' and run.status['epoch'] < 1
  problem = data_nqm.problem_of(config.data.options)
  batch, lr, steps = config.train.batch_size, config.optim.learning_rate, 300
  exact = nqm.expected_loss(problem, batch, lr, steps)
  losses, batch_losses = simulate(problem, batch, lr, steps, 128, seed=2)

  rows = run.train_metrics
  logged = rows['step'].to_numpy()
  assert list(logged) == list(range(10, 301, 10))
  windows = [slice(t - 10, t) for t in logged]
  expected = np.array([exact[w].mean() for w in windows])
  simulated = np.array([batch_losses[w].mean(0) for w in windows])
  sd = simulated.std(1, ddof=1)
  assert np.all(np.abs(simulated.mean(1) - expected) < 4 * sd / np.sqrt(128))
  z = (rows['loss'].to_numpy() - expected) / sd
  assert np.all(np.abs(z) < 4), z
  # Shifted by one step the first rows miss by far more: the alignment is tested too.
  assert abs(rows['loss'].iloc[0] - exact[1:11].mean()) > 0.02

  evals = run.eval_metrics
  at = evals['step'].to_numpy()
  sd = np.sqrt(losses[at].var(1, ddof=1) + 2 * exact[at]**2 / 8192)
  z = (evals['eval_loss'].to_numpy() - exact[at]) / sd
  assert np.all(np.abs(z) < 4), z


def test_single_runs_reach_the_target_early_at_small_batches():
  """Why a sweep's B_crit sits below the exact one: a run's loss fluctuates around E[L], and
  its first passage below the target comes before E[L]'s crossing where the curve is flat
  near the target, i.e. at small B (here 10-30% early at the best LR), not at large B."""
  problem = data_nqm.problem()
  for batch_size, runs, low, high in ((4, 32, 0.7, 0.9), (1024, 8, 0.95, 1.05)):
    best = nqm.best_steps(problem, batch_size, TARGET)
    losses, _ = simulate(problem, batch_size, best.learning_rate, int(best.steps) + 5, runs)
    first = np.argmax(losses <= TARGET, axis=0)
    assert np.all(losses[first, np.arange(runs)] <= TARGET)
    assert low < first.mean() / best.steps < high, (batch_size, first.mean(), best.steps)


@pytest.mark.slow
def test_a_sweep_recovers_the_exact_critical_batch_size(tmp_path):
  """configs/cbs_nqm.py, SGD only, B = 4 ... 512, 2 seeds: 96 trials (~35 s on 2 cores).
  Compared on the same learning-rate grid, the fitted S_min is within 15% of the exact
  curve's and B_crit within [0.6, 1.1] of it: single runs reach the target early at small B
  (the test above), so the sweep's E_min, and with it B_crit, comes out 10-30% low."""
  sweep = load_sweep(REPO / 'configs' / 'cbs_nqm.py')
  sizes = (4, 8, 16, 32, 64, 128, 256, 512)
  sweep = dataclasses.replace(sweep, search=sweep.search[:1], batch_sizes=sizes, seeds=(0, 1))
  run_sweep(sweep, tmp_path, log=lambda _: None)
  analysis = analyze(load_table(tmp_path), num_samples=200)
  measured = analysis.fits['sgd']

  space = sweep.search[0]
  exact = nqm.exact_curve(
      data_nqm.problem_of(sweep.base.data.options), sizes, sweep.target_value,
      learning_rates=lambda _, b: [lr for lr, _ in grid.search_points(space, b, 0.0)],
      optimizers=['sgd'])['sgd']
  assert measured.s_min / exact.s_min == pytest.approx(1, abs=0.15)
  assert 0.6 < measured.b_crit / exact.b_crit < 1.1, (measured.b_crit, exact.b_crit)
  per_b = analysis.per_batch_size.set_index('batch_size')['steps_to_target']
  assert np.all(per_b.to_numpy() <= 1.1 * exact.steps)   # never later, only earlier
  assert np.all(per_b.loc[[128, 256, 512]].to_numpy() >= 0.85 * exact.steps[-3:])
