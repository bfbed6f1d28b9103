"""Figures for batch-size schedules and large-batch scaling (matplotlib, Agg).

Smith et al. 2018 (arXiv 1711.00489) Figs. 1-2: schedules, and test accuracy against epochs
and against parameter updates, one curve per schedule (mean over seeds, band = min..max).
Goyal et al. 2017 (arXiv 1706.02677) Fig. 1 style: final test accuracy against batch size,
one line per scaling rule or optimizer.
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


def schedule_comparison(runs: Mapping[str, Sequence], out_dir: str | pathlib.Path,
                        suffix: str = '', title: str = '',
                        ylim: tuple[float, float] | None = None) -> list[pathlib.Path]:
  """Writes schedules{suffix}.png, accuracy_vs_epochs{suffix}.png, accuracy_vs_updates{suffix}.png.

  Args:
    runs: schedule name -> runs (mbx.Run) of that schedule over seeds, in plot order.
    out_dir: where the PNGs go.
    suffix: appended to the file names.
    title: prefixed to the figure titles.
    ylim: test-accuracy axis limits in percent (default: from the data).
  """
  out_dir = pathlib.Path(out_dir)
  colors = dict(zip(runs, plt.rcParams['axes.prop_cycle'].by_key()['color']))
  # Dashes keep curves that coincide (e.g. schedules equal until late) both visible.
  styles = dict(zip(runs, ['-', '--', ':', '-.'] * len(runs)))
  paths = []

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
  paths.append(out_dir / f'schedules{suffix}.png')
  plain_ticks(fig).savefig(paths[-1], dpi=120)
  plt.close(fig)

  for x, xlabel, filename in [('epoch', 'epoch', f'accuracy_vs_epochs{suffix}.png'),
                              ('step', 'parameter updates', f'accuracy_vs_updates{suffix}.png')]:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, group in runs.items():
      _mean_band(ax, [r.eval_metrics for r in group], x, 'eval_accuracy', name, colors[name],
                 scale=100, linestyle=styles[name])
    ax.set_xlabel(xlabel)
    ax.set_ylabel('validation accuracy (%)' if 'test_accuracy' in group[0].status
                  else 'test accuracy (%)')
    values = np.concatenate([r.eval_metrics['eval_accuracy'].to_numpy()[1:] * 100
                             for group in runs.values() for r in group])
    ax.set_ylim(ylim or (np.percentile(values, 5) - 2, values.max() + 0.5))
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right')
    seeds = min(len(g) for g in runs.values())
    ax.set_title(f'{title}mean of {seeds} seed{"s" * (seeds > 1)}, band = min..max')
    fig.tight_layout()
    paths.append(out_dir / filename)
    plain_ticks(fig).savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths


def accuracy_vs_batch_size(table: pd.DataFrame, path: str | pathlib.Path, *,
                           group: str = 'method', title: str = '') -> pathlib.Path:
  """Final test accuracy (mean over seeds, min-max bars) against batch size, per `group`.

  `table` has one row per run with columns batch_size, test_accuracy (0..1) and `group`;
  diverged runs have test_accuracy NaN and are drawn as crosses at the bottom.
  """
  path = pathlib.Path(path)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  floor = np.nanmin(table['test_accuracy']) * 100 - 3 if table['test_accuracy'].notna().any() else 0
  markers = ['o', 's', '^', 'v', 'D', 'P', 'X', '*']
  for i, (name, rows) in enumerate(table.groupby(group, sort=False)):
    stats = rows.groupby('batch_size')['test_accuracy'].agg(['mean', 'min', 'max']) * 100
    # Markers and dashes tell apart lines that coincide (e.g. runs that all stopped learning).
    line, = ax.plot(stats.index, stats['mean'], marker=markers[i % len(markers)], label=name,
                    linestyle='-' if i % 2 == 0 else '--', alpha=0.85)
    ax.fill_between(stats.index, stats['min'], stats['max'], color=line.get_color(), alpha=0.15,
                    lw=0)
    failed = rows[rows['test_accuracy'].isna()]['batch_size'].unique()
    if len(failed):
      ax.scatter(failed, np.full(len(failed), floor), marker='x', color=line.get_color())
  ax.set_xscale('log', base=2)
  sizes = sorted(table['batch_size'].unique())
  ax.set_xticks(sizes, [str(b) for b in sizes])
  ax.minorticks_off()
  ax.set_xlabel('batch size')
  ax.set_ylabel('final test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path
