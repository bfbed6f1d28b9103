"""Figures for batch-size schedules and large-batch scaling (matplotlib, Agg).

Smith et al. 2018 (arXiv 1711.00489) Figs. 1-2: schedules, and test accuracy against epochs
and against parameter updates, one curve per schedule (mean over seeds, band = min..max).
Goyal et al. 2017 (arXiv 1706.02677) Fig. 1 style: final test accuracy against batch size,
one line per scaling rule or optimizer. Masters & Luschi 2018 (arXiv 1804.07612): the range of
learning rates that give good results at each batch size, as η and as the base LR η/B.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pandas as pd  # pylint: disable=wrong-import-position

from mbx.figures.ticks import plain_ticks  # pylint: disable=wrong-import-position


def _mean_band(ax, frames: Sequence[pd.DataFrame], x: str, y: str, label: str, color,
               scale: float = 1.0, linestyle: str = '-') -> None:
  """Mean of y over runs that share the x grid, with a min-max band."""
  xs = frames[0][x].to_numpy()
  ys = np.stack([f[y].to_numpy()[:len(xs)] * scale for f in frames])
  ax.plot(xs, ys.mean(0), label=label, color=color, lw=1.5, linestyle=linestyle)
  if len(frames) > 1:
    ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0)


def schedules(runs: Mapping[str, Sequence], path: str | pathlib.Path,
              title: str = '') -> pathlib.Path:
  """Smith et al. 2018 Fig. 1: learning rate, batch size and noise scale g against epochs, one
  line per schedule (its first run).

  Args:
    runs: schedule name -> runs (mbx.Run) of that schedule over seeds, in plot order.
    path: the PNG to write.
    title: prefixed to the figure title.
  """
  path = pathlib.Path(path)
  colors, styles = _styles(runs)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for name, group in runs.items():
    train = group[0].train_metrics
    style = dict(where='pre', color=colors[name], linestyle=styles[name])
    axes[0].step(train['epoch'], train['learning_rate'], label=name, **style)
    axes[1].step(train['epoch'], train['batch_size'], **style)
    axes[2].step(train['epoch'], train['sgd_noise_scale'], **style)
  for ax, label in zip(axes, ['learning rate', 'batch size', 'noise scale g = εN / (B(1−m))']):
    ax.set_xlabel('epoch')
    ax.set_ylabel(label)
    ax.set_yscale('log')
  axes[0].legend()
  fig.suptitle(f'{title}Schedules (Smith et al. 2018, Fig. 1)')
  fig.tight_layout()
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path


def metric_curves(runs: Mapping[str, Sequence], path: str | pathlib.Path, *,
                  x: str = 'epoch', metric: str = 'eval_accuracy', ylabel: str = '',
                  scale: float = 100.0, higher_is_better: bool = True, title: str = '',
                  ylim: tuple[float, float] | None = None) -> pathlib.Path:
  """Smith et al. 2018 Fig. 2: an evaluation metric against epochs (x='epoch') or parameter
  updates (x='step'), one curve per schedule (mean over seeds, band = min..max).

  Args:
    runs: schedule name -> runs (mbx.Run) of that schedule over seeds, in plot order.
    path: the PNG to write.
    metric: the eval-log column; scale: its values are multiplied by this (100: percent).
    higher_is_better: sets the default limits, which leave out the first evaluations.
    ylim: the metric axis limits (default: from the data).
  """
  path = pathlib.Path(path)
  colors, styles = _styles(runs)
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, group in runs.items():
    _mean_band(ax, [r.eval_metrics for r in group], x, metric, name, colors[name],
               scale=scale, linestyle=styles[name])
  ax.set_xlabel({'epoch': 'epoch', 'step': 'parameter updates'}.get(x, x))
  ax.set_ylabel(ylabel or metric)
  values = np.concatenate([r.eval_metrics[metric].to_numpy()[1:] * scale
                           for group in runs.values() for r in group])
  values = values[np.isfinite(values)]
  if ylim is None and values.size:
    spread = max(float(values.max() - values.min()), 1e-12)
    ylim = ((np.percentile(values, 5) - 0.05 * spread, values.max() + 0.02 * spread)
            if higher_is_better else
            (values.min() - 0.02 * spread, np.percentile(values, 95) + 0.05 * spread))
  if ylim is not None:
    ax.set_ylim(ylim)
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right' if higher_is_better else 'upper right')
  seeds = min(len(g) for g in runs.values())
  ax.set_title(f'{title}mean of {seeds} seed{"s" * (seeds > 1)}, band = min..max')
  fig.tight_layout()
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path


def _styles(runs: Mapping[str, Sequence]) -> tuple[dict, dict]:
  colors = dict(zip(runs, plt.rcParams['axes.prop_cycle'].by_key()['color']))
  # Dashes keep curves that coincide (e.g. schedules equal until late) both visible.
  styles = dict(zip(runs, ['-', '--', ':', '-.'] * len(runs)))
  return colors, styles


def accuracy_vs_batch_size(table: pd.DataFrame, path: str | pathlib.Path, *,
                           group: str = 'method', title: str = '',
                           column: str = 'test_accuracy', scale: float = 100.0,
                           ylabel: str = 'final test accuracy (%)') -> pathlib.Path:
  """Final test accuracy (mean over seeds, min-max band) against batch size, per `group`.

  `table` has one row per run with columns batch_size, `column` (an accuracy in 0..1, drawn
  × `scale`; or any final metric) and `group`; diverged runs have `column` NaN and are drawn as
  crosses at the bottom.
  """
  path = pathlib.Path(path)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  values = table[column] * scale
  floor = 0.0  # where diverged runs are drawn: a little below the lowest value
  if values.notna().any():
    span = np.nanmax(values) - np.nanmin(values)
    floor = np.nanmin(values) - 0.03 * (span if span > 0 else 1.0)
  markers = ['o', 's', '^', 'v', 'D', 'P', 'X', '*']
  for i, (name, rows) in enumerate(table.groupby(group, sort=False)):
    stats = rows.groupby('batch_size')[column].agg(['mean', 'min', 'max']) * scale
    # Markers and dashes tell apart lines that coincide (e.g. runs that all stopped learning).
    line, = ax.plot(stats.index, stats['mean'], marker=markers[i % len(markers)], label=name,
                    linestyle='-' if i % 2 == 0 else '--', alpha=0.85)
    ax.fill_between(stats.index, stats['min'], stats['max'], color=line.get_color(), alpha=0.15,
                    lw=0)
    failed = rows[rows[column].isna()]['batch_size'].unique()
    if len(failed):
      ax.scatter(failed, np.full(len(failed), floor), marker='x', color=line.get_color())
  ax.set_xscale('log', base=2)
  sizes = sorted(table['batch_size'].unique())
  ax.set_xticks(sizes, [str(b) for b in sizes])
  ax.minorticks_off()
  ax.set_xlabel('batch size')
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path


def learning_rate_ranges(rows: Sequence[Mapping], path: str | pathlib.Path, *,
                         series: str | None = None, title: str = '') -> pathlib.Path:
  """The good learning rates per batch size (band from good_lr_min to good_lr_max) and the
  chosen one (best_learning_rate, dots), as η (left) and as the base LR η/B (right), one
  colour per value of row[series]. Rows: batch_size, good_lr_min, good_lr_max,
  best_learning_rate."""
  path = pathlib.Path(path)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  groups: dict[str, list[Mapping]] = {}
  for row in rows:
    groups.setdefault(str(row[series]) if series else '', []).append(row)
  for i, (name, group) in enumerate(groups.items()):
    group = sorted(group, key=lambda r: r['batch_size'])
    b = np.asarray([r['batch_size'] for r in group], float)
    low, high, best = (np.asarray([r[k] for r in group], float)
                       for k in ('good_lr_min', 'good_lr_max', 'best_learning_rate'))
    color = f'C{i}'
    for ax, divisor in ((axes[0], 1.0), (axes[1], b)):
      ax.fill_between(b, low / divisor, high / divisor, color=color, alpha=0.25, lw=0,
                      label=f'{name}: good range'.lstrip(': '))
      # Markers and dashes tell apart series whose chosen LRs coincide.
      ax.plot(b, best / divisor, marker='os^vD'[i % 5], linestyle='-' if i % 2 == 0 else '--',
              ms=4, lw=1, color=color, label=f'{name}: chosen'.lstrip(': '))
  for ax, label in ((axes[0], 'learning rate η'), (axes[1], 'base learning rate η / B')):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('batch size B')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path
