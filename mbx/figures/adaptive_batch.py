"""Figures of adaptive batch-size runs (train.batch_policy).

- decisions: what each policy decided, one panel per quantity against examples seen: the batch
  size, the learning rate, and the statistic the decisions read (B_simple; AdaScale's gain
  where the LR rule uses it).
- metric_curves: the target metric against steps and against examples seen.
- frontier: steps against examples to the target, fixed batches (with McCandlish's fitted
  hyperbola) beside each policy's mean ± std over seeds.
"""
from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.ticker  # pylint: disable=wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mbx.figures.ticks import plain_ticks  # pylint: disable=wrong-import-position


def decisions(runs: Mapping[str, object], path: str | pathlib.Path) -> pathlib.Path:
  """Writes B, LR, B_simple and the AdaScale gain against examples seen, one line per run.

  runs: label -> mbx.Run (its train_metrics hold the decision columns of the loop's log).
  """
  # A row's batch_size and learning_rate are over the interval that ends at it; its decision
  # columns hold for the interval that starts there.
  panels = (('batch_size', 'batch size B', True, 'pre'),
            ('learning_rate', 'learning rate', True, 'pre'),
            ('policy_b_simple', 'noise scale (decision input)', True, 'post'),
            ('adascale_gain', 'AdaScale gain r', False, 'post'))
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
  for index, (label, run) in enumerate(runs.items()):
    rows = run.train_metrics
    for ax, (column, title, log, where) in zip(axes, panels):
      if column not in rows:  # one colour per run in every panel, whichever it appears in
        continue
      ax.step(rows['examples_seen'], rows[column], where=where, label=label, lw=1.2,
              color=f'C{index % 10}')
      ax.set_title(title)
      ax.set_xlabel('examples seen')
      if log and (rows[column] > 0).any():  # a noisy early B_simple can be negative
        ax.set_yscale('log')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path


def metric_curves(runs: Mapping[str, object], path: str | pathlib.Path, *, metric: str,
                  target: float | None = None) -> pathlib.Path:
  """`metric` (an eval_metrics column, e.g. eval_accuracy) against steps and against examples
  seen, one line per run (label -> mbx.Run); a dotted line at `target`."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for index, (label, run) in enumerate(runs.items()):
    evals = run.eval_metrics
    if metric not in evals:
      continue
    for ax, x in zip(axes, ('step', 'examples_seen')):
      ax.plot(evals[x], evals[metric], label=label, lw=1.2, color=f'C{index % 10}')
  for ax, x in zip(axes, ('steps', 'examples seen')):
    ax.set_xscale('log')
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if target is not None:
      ax.axhline(target, color='0.5', ls=':')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def frontier(fixed_rows: Sequence[Mapping], policy_rows: Sequence[Mapping],
             path: str | pathlib.Path, *, fit=None, title: str = '') -> pathlib.Path:
  """Steps against examples to the target on log axes.

  fixed_rows: one per fixed-batch run (batch_size, steps_to_target, examples_to_target; NaN
  where the target was missed): seeds as small dots, their mean per B labelled with B.
  policy_rows: one per run with a 'policy' label; those not starting with 'fixed' are drawn as
  their mean ± std over the seeds that reached the target.
  fit: a mbx.sweep.critical_batch.ParetoFit (S = S_min + E_min / B), drawn as its hyperbola.
  """
  fig, ax = plt.subplots(figsize=(6.4, 4.8))
  reached = lambda r: math.isfinite(r['steps_to_target']) and math.isfinite(
      r['examples_to_target'])
  sizes = sorted({r['batch_size'] for r in fixed_rows})
  means = []
  for b in sizes:
    group = [r for r in fixed_rows if r['batch_size'] == b and reached(r)]
    if not group:
      continue
    ax.plot([r['examples_to_target'] for r in group], [r['steps_to_target'] for r in group],
            '.', color='0.6', ms=4)
    point = (np.mean([r['examples_to_target'] for r in group]),
             np.mean([r['steps_to_target'] for r in group]))
    means.append(point)
    ax.annotate(f'{b}', point, fontsize=7, color='0.3', xytext=(3, 3),
                textcoords='offset points')
  if means:
    ax.plot(*zip(*means), 'o-', color='0.3', ms=4, lw=1, label='fixed B (mean over seeds)')
  if fit is not None and sizes:
    grid = np.geomspace(min(sizes) / 2, max(sizes) * 2, 200)
    ax.plot(grid * fit.steps(grid), fit.steps(grid), '--', color='0.5', lw=1,
            label=f'fit: B_crit = {fit.b_crit:.3g}')
  labels = [p for p in dict.fromkeys(r['policy'] for r in policy_rows)
            if not str(p).startswith('fixed')]
  for index, label in enumerate(labels):
    group = [r for r in policy_rows if r['policy'] == label and reached(r)]
    if not group:
      continue
    e = [r['examples_to_target'] for r in group]
    s = [r['steps_to_target'] for r in group]
    ax.errorbar(np.mean(e), np.mean(s), xerr=np.std(e, ddof=1) if len(e) > 1 else None,
                yerr=np.std(s, ddof=1) if len(s) > 1 else None, fmt='s', ms=6, capsize=3,
                color=f'C{index % 10}', label=f'{label} (n = {len(group)})')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # crowded within a decade
  ax.set_xlabel('examples to target')
  ax.set_ylabel('steps to target')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
