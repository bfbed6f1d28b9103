"""Figures for sharp-minima analyses: Keskar et al.'s parametric plot, the Hessian eigenvalue
density, loss landscapes, and sharpness / generalisation gap against batch size.

Each function takes plain dicts and lists (the JSON the analyses write) and saves a PNG.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mbx.figures.ticks import plain_ticks  # pylint: disable=wrong-import-position

COLORS = ('tab:blue', 'tab:red', 'tab:green', 'tab:purple', 'tab:orange', 'tab:brown')


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  plain_ticks(fig).savefig(path, dpi=130, bbox_inches='tight')
  plt.close(fig)
  return path


def parametric_plot(curves: Sequence[Sequence[dict]], path, *, title: str = '',
                    label_a: str = 'A', label_b: str = 'B') -> pathlib.Path:
  """Keskar et al. 2017, Fig. 3: cross-entropy (left, log scale) and accuracy (right) of
  θ(α) = α·θ_B + (1−α)·θ_A against α; train solid, test dashed; one line set per curve
  (e.g. per seed)."""
  fig, loss_ax = plt.subplots(figsize=(6.4, 4.2))
  acc_ax = loss_ax.twinx()
  faint = 0.45 if len(curves) > 1 else 1.0
  for i, rows in enumerate(curves):
    alpha = [r['alpha'] for r in rows]
    first = i == 0
    loss_ax.plot(alpha, [r['train_loss'] for r in rows], '-', color='tab:blue', alpha=faint,
                 label='train cross-entropy' if first else None)
    loss_ax.plot(alpha, [r['test_loss'] for r in rows], '--', color='tab:blue', alpha=faint,
                 label='test cross-entropy' if first else None)
    acc_ax.plot(alpha, [100 * r['train_accuracy'] for r in rows], '-', color='tab:red',
                alpha=faint, label='train accuracy' if first else None)
    acc_ax.plot(alpha, [100 * r['test_accuracy'] for r in rows], '--', color='tab:red',
                alpha=faint, label='test accuracy' if first else None)
  loss_ax.set_yscale('log')
  loss_ax.set_xlabel(f'α   (0: {label_a}, 1: {label_b})')
  loss_ax.set_ylabel('cross-entropy', color='tab:blue')
  acc_ax.set_ylabel('accuracy (%)', color='tab:red')
  acc_ax.set_ylim(0, 100)
  for x in (0, 1):
    loss_ax.axvline(x, color='0.8', lw=0.8, zorder=0)
  handles = loss_ax.get_legend_handles_labels()
  more = acc_ax.get_legend_handles_labels()
  loss_ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc='upper center',
                 bbox_to_anchor=(0.5, -0.16), ncol=4)
  loss_ax.set_title(title or f'θ(α) = α·θ_{label_b} + (1−α)·θ_{label_a}', fontsize=10)
  return _save(fig, path)


def density_plot(densities: dict[str, dict], path, *, title: str = '') -> pathlib.Path:
  """Hessian eigenvalue densities (SLQ, Gaussian-smoothed) on a log scale, one per label."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for i, (label, density) in enumerate(densities.items()):
    ax.semilogy(density['grid'], np.maximum(density['density'], 1e-12),
                color=COLORS[i % len(COLORS)], lw=1, label=label)
  ax.set_ylim(bottom=1e-6)
  ax.set_xlabel('eigenvalue')
  ax.set_ylabel('density')
  ax.legend(fontsize=8)
  ax.set_title(title or 'Hessian eigenvalue density (stochastic Lanczos quadrature)', fontsize=10)
  return _save(fig, path)


def landscape_1d_plot(curves: dict[str, Sequence[dict]], path, *, title: str = '') -> pathlib.Path:
  """Loss (log, left) and accuracy (right) along a filter-normalised direction (Li et al.
  2018), one colour per label."""
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9.0, 3.8))
  for i, (label, rows) in enumerate(curves.items()):
    t = [r['t'] for r in rows]
    color = COLORS[i % len(COLORS)]
    loss_ax.semilogy(t, [r['loss'] for r in rows], color=color, label=label)
    acc_ax.plot(t, [100 * r['accuracy'] for r in rows], color=color, label=label)
  for ax in (loss_ax, acc_ax):
    ax.set_xlabel('t  (θ + t·d, d filter-normalised)')
    ax.grid(alpha=0.3)
  loss_ax.set_ylabel('training cross-entropy')
  acc_ax.set_ylabel('training accuracy (%)')
  loss_ax.legend(fontsize=8)
  fig.suptitle(title or '1-D loss landscape (Li et al. 2018)', fontsize=10)
  return _save(fig, path)


def landscape_2d_plot(grid: dict, path, *, title: str = '') -> pathlib.Path:
  """Contours of log10 loss over the plane θ + a·d₁ + b·d₂ (Li et al. 2018, Fig. 1 style)."""
  fig, ax = plt.subplots(figsize=(5.2, 4.4))
  c = np.asarray(grid['coordinates'])
  a, b = np.meshgrid(c, c, indexing='ij')
  contours = ax.contourf(a, b, np.log10(np.asarray(grid['loss'])), levels=30, cmap='viridis')
  fig.colorbar(contours, ax=ax, label='log10 cross-entropy')
  ax.plot([0], [0], 'r+')
  ax.set_xlabel('a (d₁)')
  ax.set_ylabel('b (d₂)')
  ax.set_title(title or '2-D loss landscape (filter-normalised directions)', fontsize=10)
  return _save(fig, path)


def versus_batch_size(rows: Sequence[dict], path, *, metrics: Sequence[tuple[str, str]],
                      series: str | None = None, title: str = '') -> pathlib.Path:
  """One panel per (key, label) in `metrics` against batch size (log2 axis); rows hold
  'batch_size', the keys, optionally '<key>_std' for error bars, and one line per value of
  row[series] when `series` is given."""
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
  groups: dict[str, list[dict]] = {}
  for row in rows:
    groups.setdefault(str(row[series]) if series else '', []).append(row)
  for ax, (key, label) in zip(axes[0], metrics):
    everything = []
    for i, (name, group) in enumerate(groups.items()):
      group = sorted(group, key=lambda r: r['batch_size'])
      values = np.asarray([r[key] for r in group], np.float64)
      errors = np.asarray([r.get(f'{key}_std', 0.0) or 0.0 for r in group], np.float64)
      ax.errorbar([r['batch_size'] for r in group], values, yerr=errors, marker='o', capsize=3,
                  color=COLORS[i % len(COLORS)], label=name or None)
      everything.extend(values)
    everything = np.asarray(everything)
    if np.all(everything > 0) and everything.max() / everything.min() > 30:
      ax.set_yscale('log')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('batch size')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if series:
      ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)
