"""Sharpness, curvature, interpolation and landscapes of runs, from their checkpoints.

    summary = sharpness_analysis(mbx.load_run('runs/a'))          # φ_ε, λ_max..k, tr(H), SLQ
    summary = interpolation_analysis(load_run('runs/a'), load_run('runs/b'))
    summary = landscape_analysis(load_run('runs/a'), dims=2)

Each returns a JSON-ready dict that states the data, the evaluation mode and every estimator
setting next to the numbers. `mbx analyze ...` (mbx/measure/cli.py) writes them with figures.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from mbx.measure import hessian, landscape, loss_fn, sharpness
from mbx.training.workload import resolve

EPSILONS = (1e-3, 5e-4)  # Keskar et al. 2017, Tables 3-4
INTERPOLATION_ALPHAS = tuple(np.linspace(-1.0, 2.0, 25).tolist())  # Keskar et al. 2017, Fig. 3


def checkpoint_sha256(run, step: int) -> str:
  """loss_fn.parameters_sha256 of the checkpoint of `run` at `step`."""
  params, model_state, _ = run.restore(step)
  return loss_fn.parameters_sha256(params, model_state)


def _run_info(run, meta: dict) -> dict:
  return {'workdir': str(run.workdir), 'name': run.config.name, 'step': meta['step'],
          'examples_seen': meta.get('examples_seen'), 'batch_size': run.config.train.batch_size,
          'seed': run.config.train.seed, 'status': run.status.get('status'),
          'parameters_sha256': meta['parameters_sha256']}


def _train_and_held_out(run, step, subset, batch_size, data=None):
  """The training loss at the run's checkpoint (on `subset` examples) and the same
  parameters on the held-out splits, batched alike: {'test': the test split (the eval split
  when the dataset has no separate one), 'validation': the eval split when it is separate}."""
  train, meta = loss_fn.from_run(run, step, subset=subset, batch_size=batch_size, data=data)
  workload = resolve(run.config, data=data)
  splits = {'test': workload.test_split or workload.eval_split}
  if workload.test_split is not None:
    splits['validation'] = workload.eval_split
  held_out = {name: loss_fn.LossFunction(
      train.model, train.task, train.unravel(train.theta), train.model_state,
      loss_fn.load_data(workload, split), batch_size=batch_size or
      run.config.train.eval_batch_size, mesh=train.mesh) for name, split in splits.items()}
  return train, held_out, meta


def sharpness_analysis(run, step: int | None = None, *,
                       epsilons: Sequence[float] = EPSILONS, subspace_dim: int | None = 100,
                       subspace_std: float = 1.0,
                       maxiter: int = 10, num_starts: int = 4,
                       top_k: int = 5, lanczos_steps: int | None = None,
                       trace_samples: int = 100, trace_sketch: int = 0, density_runs: int = 5,
                       density_steps: int = 80, subset: int | None = None,
                       batch_size: int | None = None, seed: int = 0, data=None,
                       quiet: bool = True) -> dict:
  """ε-sharpness (Keskar et al. 2017) in the full space and a random `subspace_dim`-dimensional
  one, top-k Hessian eigenvalues, Hutchinson trace and SLQ density of the training loss at a
  checkpoint of `run`, with train/test loss and accuracy. Zero counts skip a measurement;
  quiet=False shows a progress bar over the measurements."""
  settings = dict(epsilons=list(epsilons), subspace_dim=subspace_dim, subspace_std=subspace_std,
                  maxiter=maxiter, num_starts=num_starts, top_k=top_k,
                  lanczos_steps=lanczos_steps,
                  trace_samples=trace_samples, trace_sketch=trace_sketch,
                  density_runs=density_runs, density_steps=density_steps, subset=subset,
                  batch_size=batch_size, seed=seed)
  timings = {}
  tic = time.perf_counter()
  train, held_out, meta = _train_and_held_out(run, step, subset, batch_size, data)
  test = held_out['test']
  train_metrics, test_metrics = train.evaluate(), test.evaluate()
  # A large gradient means the point is not a minimiser and first-order terms dominate φ.
  train_metrics['grad_norm'] = float(np.linalg.norm(np.asarray(train.value_and_grad()[1])))
  timings['load_and_evaluate'] = time.perf_counter() - tic
  summary = {
      'run': _run_info(run, meta), 'settings': settings, 'parameters': train.dim,
      'data': train.data.description, 'test_data': test.data.description, 'mode': train.mode,
      'devices': int(train.mesh.devices.size), 'backend': jax.default_backend(),
      'train': train_metrics, 'test': test_metrics,
      **({'validation': held_out['validation'].evaluate(),
          'validation_data': held_out['validation'].data.description}
         if 'validation' in held_out else {}),
      'generalization_gap': {
          name: (train_metrics[name] - test_metrics[name] if better == 'max' else
                 test_metrics[name] - train_metrics[name])
          for name, better in train.task.metrics.items() if name in test_metrics}}

  tic = time.perf_counter()
  theta = np.asarray(jax.device_get(train.theta), np.float64)
  projection = (sharpness.random_subspace(train.dim, subspace_dim, seed, subspace_std)
                if subspace_dim else None)
  results = []
  stages = len(epsilons) * (2 if projection is not None else 1) + sum(
      bool(n) for n in (top_k, trace_samples, density_runs))
  progress = tqdm(total=stages, desc='sharpness and curvature', unit='measurement',
                  disable=quiet)
  for epsilon in epsilons:
    options = dict(maxiter=maxiter, num_starts=num_starts, seed=seed)
    results.append(sharpness.epsilon_sharpness(train.value_and_grad, theta, epsilon, **options))
    progress.update(1)
    if projection is not None:
      results.append(sharpness.epsilon_sharpness(train.value_and_grad, theta, epsilon,
                                                 projection=projection, **options))
      progress.update(1)
  summary['sharpness'] = {
      'definition': 'Keskar et al. 2017 eq. (3): (max_{y in C_eps} f(x + A y) - f(x)) / '
                    '(1 + f(x)) * 100, f = training loss; L-BFGS-B (SciPy) with bounds from '
                    f'{num_starts} starts (y = 0, the sign(gradient) vertex, random vertices), '
                    'the best kept',
      'subspace': (f'A = n x {subspace_dim} with i.i.d. N(0, {subspace_std:g}^2) entries '
                   f'(seed {seed})' if subspace_dim else None),
      'maxiter': maxiter, 'num_starts': num_starts, 'results': results}
  timings['sharpness'] = time.perf_counter() - tic

  curvature = {'hvp': 'jvp of grad of the training loss over all its examples'}
  if top_k:
    tic = time.perf_counter()
    curvature['top_eigenvalues'] = hessian.top_eigenvalues(
        train.hvp, train.dim, top_k, num_steps=lanczos_steps, seed=seed)
    timings['top_eigenvalues'] = time.perf_counter() - tic
    progress.update(1)
  if trace_samples:
    tic = time.perf_counter()
    curvature['trace'] = hessian.hutchinson_trace(train.hvp, train.dim, trace_samples,
                                                  sketch=trace_sketch, seed=seed)
    timings['trace'] = time.perf_counter() - tic
    progress.update(1)
  if density_runs:
    tic = time.perf_counter()
    curvature['density'] = hessian.spectral_density_quadrature(
        train.hvp, train.dim, num_runs=density_runs, num_steps=density_steps, seed=seed)
    curvature['density']['sigma_squared'] = 1e-5
    timings['density'] = time.perf_counter() - tic
    progress.update(1)
  progress.close()
  summary['hessian'] = curvature
  summary['timings_s'] = timings
  return summary


def same_initialization(run_a, run_b) -> bool:
  """Whether two runs start from the same parameters: same model, `train.seed` and branch."""
  a, b = run_a.config, run_b.config
  return (a.model == b.model and a.train.seed == b.train.seed
          and a.train.init_from == b.train.init_from and a.data.name == b.data.name)


def interpolation_analysis(run_a, run_b, step_a: int | None = None, step_b: int | None = None,
                           *, alphas: Sequence[float] = INTERPOLATION_ALPHAS,
                           subset: int | None = None, batch_size: int | None = None,
                           data=None) -> dict:
  """Train/test loss and accuracy of θ(α) = α·θ_B + (1−α)·θ_A (Keskar et al. 2017, Fig. 3).
  Evaluated with run A's data, eval batch size and evaluation code, so α = 0 reproduces A's
  recorded metrics exactly (and α = 1 B's, when B evaluates with the same batch size)."""
  if run_a.config.model != run_b.config.model or run_a.config.data.name != run_b.config.data.name:
    raise ValueError(f'{run_a.workdir} and {run_b.workdir} train different models or data; '
                     'interpolation needs the same architecture')
  tic = time.perf_counter()
  train, held_out, meta_a = _train_and_held_out(run_a, step_a, subset, batch_size, data)
  test = held_out['test']
  params_b, state_b, meta_b = run_b.restore(step_b)  # None: the newest that restores
  step_b = int(meta_b['step']) if step_b is None else step_b
  meta_b = {**meta_b, 'step': step_b,
            'parameters_sha256': loss_fn.parameters_sha256(params_b, state_b)}
  params_a, state_a = train.unravel(train.theta), train.model_state
  rows = landscape.interpolation(params_a, params_b, alphas,
                                 {'train': train.evaluate, 'test': test.evaluate},
                                 state_a, state_b)
  return {'run_a': _run_info(run_a, meta_a), 'run_b': _run_info(run_b, meta_b),
          'same_initialization': same_initialization(run_a, run_b),
          'definition': 'theta(alpha) = alpha * theta_B + (1 - alpha) * theta_A',
          'batch_norm_statistics': ('interpolated like the parameters' if train.has_batch_norm
                                    else None),
          'data': train.data.description, 'test_data': test.data.description,
          'mode': train.mode, 'rows': rows, 'wall_time_s': time.perf_counter() - tic}


def landscape_analysis(run, step: int | None = None, *, dims: int = 1, span: float = 1.0,
                       points: int | None = None, subset: int | None = None,
                       batch_size: int | None = None, seed: int = 0, data=None) -> dict:
  """Training loss and accuracy along one, or over a plane of two, filter-normalised random
  directions (Li et al. 2018) through the checkpoint's parameters; coordinates in [−span, span].
  """
  if dims not in (1, 2):
    raise ValueError(f'dims={dims}: a landscape is 1- or 2-dimensional')
  tic = time.perf_counter()
  train, meta = loss_fn.from_run(run, step, subset=subset, batch_size=batch_size, data=data)
  params = train.unravel(train.theta)
  points = points or (51 if dims == 1 else 21)
  coordinates = np.linspace(-span, span, points).tolist()
  keys = jax.random.split(jax.random.key(seed), dims)
  directions = [landscape.filter_normalized_direction(k, params) for k in keys]
  summary = {'run': _run_info(run, meta), 'data': train.data.description, 'mode': train.mode,
             'directions': 'Gaussian, filter-normalised (Li et al. 2018); biases and '
                           'BatchNorm parameters get direction 0; BatchNorm statistics kept',
             'seed': seed, 'dims': dims}
  if dims == 1:
    summary['rows'] = landscape.landscape_1d(params, directions[0], coordinates, train.evaluate)
  else:
    grid = landscape.landscape_2d(params, directions, coordinates, train.evaluate)
    summary['grid'] = {k: np.asarray(v).tolist() for k, v in grid.items()}
  summary['wall_time_s'] = time.perf_counter() - tic
  return summary
