"""Figures of a critical-batch-size analysis (matplotlib, no pyplot: the Agg canvas).

- steps_vs_batch_size: Shallue et al. 2019 Fig. 1-style steps-to-result vs B on
  log2-log2 axes with the perfect-scaling line, and McCandlish et al. 2018's fit
  S_min (1 + B_crit / B) with its bootstrap band; per optimizer, the regimes the
  fit implies are shaded (perfect scaling B < B_crit/5, where steps are within
  20% of linear scaling; maximal data parallelism B > 5 B_crit, within 20% of S_min),
  and each run-averaged noise-scale estimator's median over B, where it is measurable
  (the legend says why where it is not).
- pareto: McCandlish Fig. 5-style steps vs examples with the fitted hyperbola
  (S/S_min - 1)(E/E_min - 1) = 1 and its asymptotes.
- best_learning_rate: best LR and lr/(1-momentum) vs B with linear and square-root
  guides (Shallue Fig. 8-style), the searched range shown behind.
- lr_heatmap: steps-to-target over the LR x B grid; infeasible (diverged) and
  not-reached points marked.
- local_cbs: Merrill et al. 2025's branches, final metric vs k B.
"""
from __future__ import annotations

import math
import pathlib
import textwrap

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from mbx.figures.ticks import plain_ticks
from mbx.sweep.critical_batch import CriticalBatchAnalysis, short_label

COLORS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown')
ESTIMATOR_STYLES = {'b_simple': '-.', 'b_simple_preconditioned': (0, (3, 1, 1, 1, 1, 1)),
                    'b_noise': (0, (1, 1)), 'b_noise_preconditioned': (0, (5, 2))}
REGIMES = (('perfect\nscaling', '#d9f0d3'), ('diminishing\nreturns', '#fff2cc'),
           ('maximal data\nparallelism', '#f4cccc'))


def _log2_axes(ax, xlabel: str = 'batch size B', ylabel: str | None = None) -> None:
  ax.set_xscale('log', base=2)
  ax.set_yscale('log', base=2)
  ax.set_xlabel(xlabel)
  if ylabel:
    ax.set_ylabel(ylabel)
  ax.grid(True, which='major', alpha=0.3)


def _title(analysis: CriticalBatchAnalysis) -> str:
  if analysis.target_metric is None:
    return ''
  return f'target: {analysis.target_metric} {">=" if "accuracy" in analysis.target_metric else "<="} {analysis.target_value:g}'


def _curve(analysis: CriticalBatchAnalysis, optimizer: str):
  group = analysis.per_batch_size[analysis.per_batch_size['optimizer'] == optimizer]
  group = group.sort_values('batch_size')
  return group, group['batch_size'].to_numpy(float), group['steps_to_target'].to_numpy(float)


def _draw_steps(ax, analysis, optimizer: str, color: str, *, regimes: bool, band: bool):
  group, b, s = _curve(analysis, optimizer)
  finite = np.isfinite(s)
  ax.plot(b[finite], s[finite], 'o-', color=color, label=f'{optimizer}: measured S(B)', zorder=3)
  for bi, seeds in zip(b[finite], group['seed_steps'].to_numpy()[finite]):
    if len(seeds) > 1:
      ax.plot([bi, bi], [min(seeds), max(seeds)], '-', color=color, alpha=0.5, lw=1)
  if finite.any():
    b0, s0 = b[finite][0], s[finite][0]
    grid = np.geomspace(b.min(), b.max(), 200)
    ax.plot(grid, s0 * b0 / grid, ':', color=color, lw=1, alpha=0.8,
            label=f'{optimizer}: perfect scaling S(B0) B0 / B')
  missing = b[~finite]
  if len(missing):  # along the bottom edge, whatever the y range
    ax.plot(missing, np.full(len(missing), 0.03), 'x', color=color, ms=8,
            transform=ax.get_xaxis_transform(), label=f'{optimizer}: target not reached')
  fit = analysis.fits.get(optimizer)
  if fit is None:
    return
  grid = np.geomspace(b.min(), b.max(), 200)
  ax.plot(grid, fit.steps(grid), '--', color=color, lw=1.5,
          label=f'fit: B_crit = {fit.b_crit:.0f} [{fit.b_crit_ci[0]:.0f}, {fit.b_crit_ci[1]:.0f}]')
  if band:
    low, high = fit.band(grid)
    ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0,
                    label=f'{fit.confidence:.0%} bootstrap band')
  if regimes:
    edges = [b.min() / 1.5, fit.b_crit / 5, fit.b_crit * 5, b.max() * 1.5]
    for (name, shade), lo, hi in zip(REGIMES, edges[:-1], edges[1:]):
      lo, hi = max(lo, edges[0]), min(hi, edges[-1])
      if hi > lo:
        ax.axvspan(lo, hi, color=shade, zorder=0)
        ax.text(math.sqrt(lo * hi), 0.97, name, transform=ax.get_xaxis_transform(),
                ha='center', va='top', fontsize=8, color='0.3')
    ax.axvline(fit.b_crit, color=color, lw=1, alpha=0.8)
    _draw_estimators(ax, analysis, optimizer)
    ax.set_xlim(edges[0], edges[-1])


def _draw_estimators(ax, analysis: CriticalBatchAnalysis, optimizer: str) -> None:
  """A vertical line at each estimator's median over B where some B measured it; where none
  did, a legend entry saying so (a negative estimate carries no batch size to draw)."""
  row = analysis.summary.set_index('optimizer').loc[optimizer]
  for name in analysis.estimators:
    median = row.get(f'{name}_median', np.nan)
    if np.isfinite(median):
      ax.axvline(median, color='k', lw=1, ls=ESTIMATOR_STYLES[name],
                 label=f'run-averaged {short_label(name)} = {median:.0f} (median over B)')
    else:
      reason = textwrap.fill(f'not measurable here ({row.get(f"{name}_reason") or "not measured"})',
                             70, break_on_hyphens=False)
      ax.plot([], [], ' ', label=f'run-averaged {short_label(name)}: {reason}')


def not_measurable(analysis: CriticalBatchAnalysis) -> list[str]:
  """The estimators (short labels) no batch size of some optimizer measured: drawn as a
  legend entry, not a line."""
  return [short_label(name) for name in analysis.estimators
          if not np.isfinite(analysis.summary[f'{name}_median']).all()]


def steps_caption(analysis: CriticalBatchAnalysis) -> str:
  """The steps-vs-B figure's caption, naming the estimators drawn and those not measurable."""
  text = 'steps to target vs B: measured, the fit with its band, perfect scaling, B_crit'
  missing = not_measurable(analysis)
  drawn = [short_label(n) for n in analysis.estimators if short_label(n) not in missing]
  if drawn:
    text += ' and the run-averaged ' + ', '.join(drawn)
  if missing:
    text += f'; {", ".join(missing)} not measurable here (the legend says why)'
  return text


def steps_vs_batch_size(analysis: CriticalBatchAnalysis, path: str | pathlib.Path) -> None:
  plain_ticks(steps_figure(analysis)).savefig(path, dpi=130)


def steps_figure(analysis: CriticalBatchAnalysis) -> Figure:
  """All optimizers overlaid, then one panel per optimizer with the regimes shaded; legends
  below the panels, where they cover no marker (the not-reached ones sit on the x axis)."""
  optimizers = list(analysis.summary['optimizer'])
  panels = ['all'] + optimizers if len(optimizers) > 1 else optimizers
  fig = Figure(figsize=(5.2 * len(panels), 4.6), layout='constrained')
  axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  for ax, panel in zip(axes, panels):
    for i, optimizer in enumerate(optimizers):
      if panel in ('all', optimizer):
        _draw_steps(ax, analysis, optimizer, COLORS[i % len(COLORS)],
                    regimes=panel != 'all', band=True)
    _log2_axes(ax, ylabel='steps to target' if ax is axes[0] else None)
    ax.set_title(('all optimizers' if panel == 'all' else panel) + '\n' + _title(analysis),
                 fontsize=10)
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.14), frameon=False)
  return fig


def pareto(analysis: CriticalBatchAnalysis, path: str | pathlib.Path) -> None:
  """Steps vs examples to target, with the fitted hyperbola and its asymptotes."""
  fig = Figure(figsize=(6, 4.8), layout='constrained')
  ax = fig.subplots()
  for i, optimizer in enumerate(analysis.summary['optimizer']):
    color = COLORS[i % len(COLORS)]
    group, b, s = _curve(analysis, optimizer)
    finite = np.isfinite(s)
    ax.plot(b[finite] * s[finite], s[finite], 'o', color=color, label=f'{optimizer} (measured)')
    for bi, si in zip(b[finite], s[finite]):
      ax.annotate(f'{bi:.0f}', (bi * si, si), fontsize=6, color=color,
                  xytext=(3, 3), textcoords='offset points')
    fit = analysis.fits.get(optimizer)
    if fit is None:
      continue
    grid = np.geomspace(b.min() / 4, b.max() * 4, 300)
    ax.plot(grid * fit.steps(grid), fit.steps(grid), '--', color=color,
            label=f'(S/S_min-1)(E/E_min-1)=1: S_min={fit.s_min:.0f}, E_min={fit.e_min:.3g}')
    ax.axhline(fit.s_min, color=color, lw=0.8, ls=':')
    ax.axvline(fit.e_min, color=color, lw=0.8, ls=':')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('examples to target E = B S')
  ax.set_ylabel('steps to target S')
  ax.set_title('steps-examples Pareto frontier (labels: B)\n' + _title(analysis), fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  plain_ticks(fig).savefig(path, dpi=130)


def best_learning_rate(analysis: CriticalBatchAnalysis, path: str | pathlib.Path) -> None:
  plain_ticks(learning_rate_figure(analysis)).savefig(path, dpi=130)


def heavy_ball_optimizers(analysis: CriticalBatchAnalysis) -> list[str]:
  """The optimizers whose effective LR is lr / (1 - momentum), not the LR itself (Adam's b1
  is not a heavy-ball momentum)."""
  trials = analysis.trials
  return [o for o in analysis.summary['optimizer']
          if (trials.loc[trials['optimizer'] == o, 'effective_learning_rate'] !=
              trials.loc[trials['optimizer'] == o, 'learning_rate']).any()]


def learning_rate_figure(analysis: CriticalBatchAnalysis) -> Figure:
  """Best LR vs B, and lr/(1-momentum) for heavy-ball optimizers only, with linear and sqrt
  guides from the smallest B."""
  panels = [('learning_rate', 'best learning rate', list(analysis.summary['optimizer']))]
  if heavy := heavy_ball_optimizers(analysis):
    panels.append(('effective_learning_rate', 'best lr / (1 - momentum)', heavy))
  fig = Figure(figsize=(5.25 * len(panels), 4.4), layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  trials = analysis.trials
  for ax, (column, label, optimizers) in zip(axes, panels):
    for i, optimizer in enumerate(analysis.summary['optimizer']):
      if optimizer not in optimizers:
        continue
      color = COLORS[i % len(COLORS)]
      group, b, s = _curve(analysis, optimizer)
      searched = trials[trials['optimizer'] == optimizer].groupby('batch_size')[column]
      lo, hi = searched.min(), searched.max()
      ax.vlines(lo.index.to_numpy(float) * (1 + 0.04 * i), lo.to_numpy(), hi.to_numpy(),
                color=color, alpha=0.25, lw=4)
      finite = np.isfinite(s)
      values = group[column].to_numpy(float)
      ax.plot(b[finite], values[finite], 'o-', color=color, label=optimizer)
      if finite.any():
        b0, v0 = b[finite][0], values[finite][0]
        grid = np.geomspace(b.min(), b.max(), 100)
        ax.plot(grid, v0 * grid / b0, '--', color=color, lw=0.8, alpha=0.7,
                label='linear (lr ∝ B)' if i == 0 else None)
        ax.plot(grid, v0 * np.sqrt(grid / b0), ':', color=color, lw=1, alpha=0.9,
                label='square root (lr ∝ √B)' if i == 0 else None)
    _log2_axes(ax, ylabel=label)
    ax.set_yscale('log')
    shown = trials.loc[trials['optimizer'].isin(optimizers), column]
    ax.set_ylim(shown.min() / 2, shown.max() * 2)
    ax.set_title(f'{label} (bars: searched range)\n' + _title(analysis), fontsize=10)
    ax.legend(fontsize=7)
  return fig


def lr_heatmap(analysis: CriticalBatchAnalysis, path: str | pathlib.Path) -> None:
  """Steps-to-target over learning rate x batch size, one panel per optimizer."""
  settings = analysis.settings
  optimizers = list(analysis.summary['optimizer'])
  fig = Figure(figsize=(5.5 * len(optimizers) + 0.8, 4.6), layout='constrained')
  axes = fig.subplots(1, len(optimizers), squeeze=False)[0]
  finite = settings['steps_to_target'][np.isfinite(settings['steps_to_target'])]
  norm = LogNorm(vmin=max(finite.min(), 1), vmax=max(finite.max(), 2)) if len(finite) else None
  image = None
  for ax, optimizer in zip(axes, optimizers):
    rows = settings[settings['optimizer'] == optimizer]
    reached = rows[np.isfinite(rows['steps_to_target'])]
    infeasible = rows[rows['infeasible']]
    missed = rows[~np.isfinite(rows['steps_to_target']) & ~rows['infeasible']]
    image = ax.scatter(reached['batch_size'], reached['learning_rate'],
                       c=reached['steps_to_target'], cmap='viridis_r', norm=norm, marker='s',
                       s=70, edgecolors='none')
    ax.scatter(missed['batch_size'], missed['learning_rate'], marker='o', s=40,
               facecolors='none', edgecolors='0.4', label='target not reached')
    ax.scatter(infeasible['batch_size'], infeasible['learning_rate'], marker='x', s=40,
               color='crimson', label='infeasible (diverged)')
    best = analysis.per_batch_size[analysis.per_batch_size['optimizer'] == optimizer]
    ax.scatter(best['batch_size'], best['learning_rate'], marker='s', s=130,
               facecolors='none', edgecolors='k', lw=1.2, label='best per B')
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('batch size B')
    ax.set_ylabel('learning rate')
    ax.set_title(f'{optimizer}: steps to target (seed mean)\n' + _title(analysis), fontsize=10)
    ax.legend(fontsize=7, loc='upper left')
  if image is not None and norm is not None:
    fig.colorbar(image, ax=list(axes), label='steps to target')
  plain_ticks(fig).savefig(path, dpi=130)


def local_cbs(per_factor, summary: dict, path: str | pathlib.Path) -> None:
  """Final metric of each branch vs its batch size, the tolerance band and the local CBS."""
  metric = summary['metric']
  fig = Figure(figsize=(6, 4.4), layout='constrained')
  ax = fig.subplots()
  ax.errorbar(per_factor['batch_size'], per_factor[metric],
              yerr=per_factor[f'{metric}_std'].fillna(0), fmt='o-', capsize=3)
  sign = -1 if metric.endswith('accuracy') else 1
  baseline, tolerance = summary['baseline'], summary['tolerance']
  ax.axhline(baseline, color='gray', lw=1)
  ax.axhspan(min(baseline, baseline + sign * tolerance), max(baseline, baseline + sign * tolerance),
             color='tab:green', alpha=0.2, label=f'within {tolerance:g} of k = 1')
  if summary.get('noise_limited'):
    ax.plot([], [], ' ', label='local CBS: noise-limited (k = 1 seed spread > tolerance)')
  else:
    ax.axvline(summary['local_cbs'], color='k', ls='--',
               label=f'local CBS = {summary["local_cbs"]}')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('branch batch size k B')
  ax.set_ylabel(f'{metric} after {summary["window"]}')
  ax.set_title(f'local CBS (Merrill et al. 2025) at step {summary["step"]}, B = '
               f'{summary["batch_size"]}, LR scaling {summary["lr_scaling"]}', fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  plain_ticks(fig).savefig(path, dpi=130)


def local_cbs_along_training(points, source_train, source_eval, path: str | pathlib.Path, *,
                             metric: str = 'eval_loss') -> None:
  """Merrill et al.'s question: does the local CBS grow as the loss falls?

  Left: the local CBS at each branch step (open markers: bounds, see the legend), beside the
  source run's B_simple along training. Right: the source's `metric` with the branch points.
  `points`: rows with step, local_cbs, capped (and upper_bound); `source_train` / `source_eval`: the source
  run's train and eval metric tables."""
  fig = Figure(figsize=(10, 4), layout='constrained')
  left, right = fig.subplots(1, 2)
  capped = points['capped'].astype(bool).to_numpy()
  upper = (points['upper_bound'].astype(bool).to_numpy() if 'upper_bound' in points
           else np.zeros(len(points), bool))
  exact = ~capped & ~upper
  left.plot(points['step'], points['local_cbs'], 'k-', lw=1)
  left.plot(points['step'][exact], points['local_cbs'][exact], 'ko', label='local CBS')
  if capped.any():
    left.plot(points['step'][capped], points['local_cbs'][capped], '^', mfc='white', mec='k',
              label='local CBS ≥ (the largest branch was within tolerance)')
  if upper.any():
    left.plot(points['step'][upper], points['local_cbs'][upper], 'v', mfc='white', mec='k',
              label='local CBS ≤ (no branch above the source batch was within tolerance)')
  if 'b_simple' in source_train:
    noise = source_train[np.isfinite(source_train['b_simple'])]
    left.plot(noise['step'], noise['b_simple'], color='tab:orange', alpha=0.8,
              label='B_simple of the source run (interval means)')
  left.set_yscale('log', base=2)
  left.set_xlabel('source step')
  left.set_ylabel('batch size (sequences)')
  left.set_title('local CBS vs training progress', fontsize=9)
  left.grid(True, alpha=0.3)
  left.legend(fontsize=7)
  right.plot(source_eval['step'], source_eval[metric], color='tab:blue')
  at = source_eval.set_index('step')[metric]
  steps = [s for s in points['step'] if s in at.index]
  right.plot(steps, [at[s] for s in steps], 'ks', label='branch points')
  right.set_xlabel('source step')
  right.set_ylabel(metric)
  right.set_title('the source run', fontsize=9)
  right.grid(True, alpha=0.3)
  right.legend(fontsize=7)
  plain_ticks(fig).savefig(path, dpi=130)


FIGURES = {'steps_vs_batch_size.png': steps_vs_batch_size, 'pareto.png': pareto,
           'best_learning_rate.png': best_learning_rate, 'lr_heatmap.png': lr_heatmap}


def save_all(analysis: CriticalBatchAnalysis, out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Writes every figure into `out_dir`; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, draw in FIGURES.items():
    draw(analysis, out_dir / name)
    paths.append(out_dir / name)
  return paths
