"""The noise-scale estimators of a saved checkpoint (post hoc), with a bootstrap over batches.

    summary = noise_scale_analysis(mbx.load_run('runs/a'), steps=[500, 1000], examples=512)

Per checkpoint and per draw of `examples` training examples (drawn without replacement, split
into `groups` groups), the same unbiased estimates the in-step probes log
(mbx.training.noise_scale; derivations in docs/science.md §20): |G|² and tr(Σ) from the group
norms, their P-weighted forms with the optimizer's declared preconditioner from the restored
optimizer state, GᵀHG and tr(HΣ) (and with PHP) from two Hessian-vector products each, and the
exact per-example tr(Σ) by vmap. Each estimate is averaged over `draws` draws and only then
divided; its interval is a percentile bootstrap over the draws. Gradients are taken as the
step takes them (train mode); H is the Hessian of the drawn examples' mean loss.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbx import config as config_lib
from mbx.optim.declared import undeclared
from mbx.tasks import weighted_sum
from mbx.training import estimators as estimators_lib
from mbx.training.checkpoints import Checkpoints
from mbx.training.noise_scale import group_estimates
from mbx.training.step import (apply_model, contrast_scale, contrast_sign, init_train_state,
                               make_mesh, weighted_sum_sq)
from mbx.training.workload import resolve

PER_EXAMPLE = estimators_lib.PER_EXAMPLE


def check_request(run, steps: Sequence[int] | None, examples: int, groups: int,
                  names: Sequence[str]) -> tuple[list[int], list[str]]:
  """(steps, estimators) to analyse, or a one-line ConfigError naming the bad argument."""
  saved = run.checkpoint_steps
  if not saved:
    raise config_lib.ConfigError(f'{run.workdir}: no checkpoints to analyse (set '
                                 'train.checkpoint_every to keep some)')
  steps = list(saved) if not steps else [int(s) for s in steps]
  missing = [s for s in steps if s not in saved]
  if missing:
    raise config_lib.ConfigError(f'--steps {missing[0]}: no checkpoint there; saved steps: '
                                 f'{", ".join(map(str, saved))}')
  if not (isinstance(groups, int) and groups >= 2):
    raise config_lib.ConfigError(f'--groups {groups}: the estimators need at least 2 gradient '
                                 'groups')
  if not (isinstance(examples, int) and examples >= groups and examples % groups == 0):
    raise config_lib.ConfigError(f'--examples {examples}: must be a multiple of --groups '
                                 f'{groups} (equal groups)')
  allowed = estimators_lib.NAMES + (PER_EXAMPLE,)
  for name in names:
    if name not in allowed:
      raise config_lib.ConfigError(f'--estimators {name}: not an estimator; allowed: '
                                   f'{", ".join(allowed)}')
  return steps, list(names)


def noise_scale_analysis(run, steps: Sequence[int] | None = None, *, examples: int = 512,
                         groups: int = 8, draws: int = 20,
                         estimators: Sequence[str] | None = None, per_example: int = 64,
                         confidence: float = 0.9, seed: int = 0) -> dict:
  """Every requested estimator at each checkpoint step (default: all saved ones): value and
  bootstrap interval, the two averaged estimates, or why it is not measurable there."""
  workload = resolve(run.config)
  optimizer = workload.optimizer
  has_p = optimizer.declared.preconditioner is not None
  if estimators is None:
    estimators = [e.name for e in estimators_lib.ESTIMATORS.values()
                  if has_p or not e.needs_preconditioner] + [PER_EXAMPLE]
  steps, estimators = check_request(run, steps, examples, groups, estimators)
  for name in estimators:
    if name != PER_EXAMPLE and estimators_lib.ESTIMATORS[name].needs_preconditioner \
        and not has_p:
      raise config_lib.ConfigError(str(undeclared(run.config.optim.name, 'preconditioner',
                                                  f'--estimators {name}')))
  wants_p = any(n != PER_EXAMPLE and estimators_lib.ESTIMATORS[n].needs_preconditioner
                for n in estimators)
  mesh = make_mesh(jax.devices()[:1])
  model = workload.model(mesh)
  rows = workload.dataset.arrays(run.config.data.train_split)
  num_rows = len(rows['targets'])
  if examples > num_rows:
    raise config_lib.ConfigError(f'--examples {examples}: the training split has only '
                                 f'{num_rows} examples')
  measure = _measure_fn(model, workload.task, groups, examples // groups,
                        min(per_example, examples) if PER_EXAMPLE in estimators else 0)
  rng = np.random.default_rng(seed)
  results = []
  for step in steps:
    params, model_state, preconditioner = _restore(run, step, workload, model, mesh, wants_p)
    per_draw = []
    for _ in range(draws):
      index = np.sort(rng.choice(num_rows, size=examples, replace=False))
      batch = {k: jnp.asarray(v[index]) for k, v in rows.items()}
      per_draw.append(jax.device_get(measure(params, model_state, batch, preconditioner)))
    results += [_summarize(step, name, [d[name] for d in per_draw], confidence, seed)
                for name in estimators]
  return {'run': str(run.workdir), 'steps': steps, 'examples': examples, 'groups': groups,
          'group_size': examples // groups, 'draws': draws, 'confidence': confidence,
          'estimators': estimators, 'optimizer': run.config.optim.name, 'results': results}


def _restore(run, step, workload, model, mesh, wants_p):
  """(params, model state, P or None) at a checkpoint; P from the restored optimizer state."""
  if not wants_p:
    params, model_state, _ = run.restore(step)
    return params, model_state, None
  sample = jnp.asarray(workload.dataset.arrays(run.config.data.train_split)['inputs'][:1])
  like = init_train_state(model, workload.optimizer.transform(), sample, seed=0, mesh=mesh,
                          task=workload.task, probes=workload.probes)
  state, _ = Checkpoints(run.workdir / 'checkpoints', read_only=True).restore(step, like)
  return (state.params, state.model_state,
          workload.optimizer.preconditioner(state.opt_state, '--estimators (preconditioned)'))


def _measure_fn(model, task, groups: int, group_size: int, per_example: int):
  """One draw's unbiased (|G|²-type, tr(Σ)-type) pair for every estimator, jitted."""
  key = jax.random.key(0)

  def loss(params, model_state, rows):
    outputs, _ = apply_model(model, params, model_state, rows['inputs'], train=True,
                             dropout_key=key)
    losses = task.losses(outputs, rows)
    weights = rows.get('weights')
    if weights is None:
      return losses.mean()
    return weighted_sum(losses, weights) / jnp.maximum(jnp.sum(weights), 1e-12)

  def dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  @jax.jit
  def measure(params, model_state, batch, preconditioner):
    split = jax.tree.map(lambda a: a.reshape(groups, group_size, *a.shape[1:]), batch)
    group_grads = jax.vmap(jax.grad(loss), in_axes=(None, None, 0))(params, model_state, split)
    mean = jax.tree.map(lambda g: g.mean(0), group_grads)
    signs = contrast_sign(jnp.arange(groups), groups)
    contrast = jax.tree.map(lambda g: jnp.tensordot(signs, g, 1) / groups, group_grads)
    hvp = lambda v: jax.jvp(lambda p: jax.grad(loss)(p, model_state, batch), (params,), (v,))[1]
    c = contrast_scale(groups)
    out = {}
    per_group = jax.vmap(lambda g: weighted_sum_sq(g, None))(group_grads).mean()
    out['b_simple'] = group_estimates(per_group, weighted_sum_sq(mean, None), group_size,
                                      groups)
    out['b_simple_preconditioned'] = out['b_simple']  # P = I
    if preconditioner is not None:
      per_group_p = jax.vmap(lambda g: weighted_sum_sq(g, preconditioner))(group_grads).mean()
      out['b_simple_preconditioned'] = group_estimates(
          per_group_p, weighted_sum_sq(mean, preconditioner), group_size, groups)
    scaled = (lambda t: t) if preconditioner is None else (
        lambda t: jax.tree.map(jnp.multiply, preconditioner, t))
    for name, transform in (('b_noise', lambda t: t), ('b_noise_preconditioned', scaled)):
      u, w = transform(mean), transform(contrast)
      u_h, w_h = dot(u, hvp(u)), dot(w, hvp(w))
      out[name] = (u_h - w_h / (groups * c), group_size / c * w_h)
    if per_example:
      rows = jax.tree.map(lambda a: a[:per_example, None], batch)
      grads = jax.vmap(jax.grad(loss), in_axes=(None, None, 0))(params, model_state, rows)
      centred = jax.tree.map(lambda g: g - g.mean(0, keepdims=True), grads)
      exact = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(centred)) / (per_example - 1)
      out[PER_EXAMPLE] = (out['b_simple'][1], exact)  # (two-group tr(Σ), exact tr(Σ))
    return out
  return measure


def _summarize(step: int, name: str, pairs, confidence: float, seed: int) -> dict:
  """The ratio of the mean estimates over draws, with a percentile bootstrap over draws."""
  first, second = (np.asarray(v, np.float64) for v in zip(*pairs))
  row = {'step': step, 'estimator': name, 'draws': len(first)}
  if name == PER_EXAMPLE:  # how far the two-group tr(Σ) scatters around the exact one
    row.update(trace_two_group=float(first.mean()), trace_exact=float(second.mean()),
               two_group_std=float(first.std(ddof=1)), exact_std=float(second.std(ddof=1)),
               value=float(first.mean() / second.mean()), reason=None)
    return row
  grad, trace = float(first.mean()), float(second.mean())
  value, reason = estimators_lib.ratio(grad, trace, estimators_lib.ESTIMATORS[name].denominator)
  row.update(grad_sq=grad, trace=trace, value=value, reason=reason,
             grad_sq_stderr=float(first.std(ddof=1) / math.sqrt(len(first))),
             trace_stderr=float(second.std(ddof=1) / math.sqrt(len(second))))
  if reason is None:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(first), size=(2000, len(first)))
    grads, traces = first[picks].mean(1), second[picks].mean(1)
    ratios = np.where(grads > 0, traces / np.where(grads > 0, grads, 1.0), np.inf)
    q = (1 - confidence) / 2
    # No interpolation between order statistics: an infinite one would make it NaN.
    row['ci_low'], row['ci_high'] = (float(np.quantile(ratios, q, method='inverted_cdf')),
                                     float(np.quantile(ratios, 1 - q, method='inverted_cdf')))
    if not math.isfinite(row['ci_high']):
      row['note'] = ('the |G|² estimate is ≤ 0 in some bootstrap draws: the upper end is '
                     'not resolved at this many draws')
  return row


def text(row: dict) -> str:
  """One line per result: the value [CI], or not measurable here (reason)."""
  if row['estimator'] == PER_EXAMPLE:
    return (f'step {row["step"]}: tr(Σ) two-group {row["trace_two_group"]:.4g} ± '
            f'{row["two_group_std"]:.2g} vs exact per-example {row["trace_exact"]:.4g} ± '
            f'{row["exact_std"]:.2g} (std over {row["draws"]} draws)')
  if row['reason'] is not None:
    return f'step {row["step"]}: {row["estimator"]} not measurable here ({row["reason"]})'
  return (f'step {row["step"]}: {row["estimator"]} = {row["value"]:.4g} '
          f'[{row["ci_low"]:.4g}, {row["ci_high"]:.4g}]')
