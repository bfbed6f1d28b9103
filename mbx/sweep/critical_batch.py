"""Critical batch size from a sweep, three ways, and the noise scale beside them.

- Shallue et al. 2019 (arXiv 1811.03600): steps-to-result S(B) is the minimum
  over the metaparameter search at each batch size. Here a search point's
  steps are the mean over its seeds, and a point counts only if every seed
  reached the target (a lucky seed cannot set the curve).
- McCandlish et al. 2018 (arXiv 1812.06162, eq. 2.11): S(B) = S_min (1 + B_crit / B),
  i.e. (S/S_min - 1)(E/E_min - 1) = 1 with E = B S and B_crit = E_min / S_min.
  Fitted by least squares on log S (errors in steps are relative), with a
  bootstrap confidence interval.
- Zhang et al. 2024 (arXiv 2410.21676): the CBS is where steps-to-target exceed
  perfect linear scaling by 20%, S(B) B / (S(B0) B0) = 1.2; B0 the smallest batch that
  reached the target, or the one given (`zhang_reference_batch`).
- Merrill et al. 2025 (arXiv 2505.23971): the *local* CBS at a checkpoint, by
  branching with k x B for a fixed amount of data (mbx.sweep.local_cbs, which trains).

Beside them, the run-averaged noise-scale estimators (mbx.training.estimators) of each best
trial. An estimate that is negative or undefined is never reported as a number: its value is
NaN and its `<name>_reason` says why, shown as "not measurable here (<reason>)".

The fits and tables here work on numbers and DataFrames and import no JAX.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mbx import config as config_lib
from mbx.sweep import trials
from mbx.training import estimators as estimators_lib

ZHANG_OVERHEAD = 0.2
GROUP = ['optimizer', 'batch_size']
SETTING = ['optimizer', 'batch_size', 'learning_rate', 'momentum']


# ------------------------------------------------------ noise-scale estimates
def estimators_in(table: pd.DataFrame) -> list[str]:
  """The noise-scale estimators a trial table holds: a number or a reason in some row."""
  names = []
  for name in estimators_lib.NAMES:
    if name not in table:
      continue
    reasons = table.get(f'{name}_reason')
    if table[name].notna().any() or (reasons is not None and
                                      reasons.fillna('').astype(str).str.len().gt(0).any()):
      names.append(name)
  return names


def _reason_of(value: float, reason) -> str:
  """Why a trial's estimate is no number; tables written before the reasons were recorded
  hold a negative run average instead."""
  if isinstance(reason, str) and reason:
    return reason
  if math.isfinite(value):
    return f'the run-averaged estimate is {value:.3g} ≤ 0'
  return 'not measured'


def _seed_estimate(group: pd.DataFrame, name: str) -> tuple[float, str]:
  """(median over seeds of the measurable estimates, ''), or (NaN, why none is)."""
  values = group[name].astype(float).to_numpy()
  reasons = group[f'{name}_reason'] if f'{name}_reason' in group else [''] * len(group)
  measurable = [v for v in values if math.isfinite(v) and v > 0]
  if measurable:
    return float(np.median(measurable)), ''
  return np.nan, '; '.join(dict.fromkeys(_reason_of(v, r) for v, r in zip(values, reasons)))


def estimate_text(value: float, reason: str, digits: int = 3) -> str:
  """A run-averaged estimate as text: the number, "not measurable here (<reason>)", or '—'
  where there is nothing to measure (no best trial: the target was not reached)."""
  value = float(value)
  if math.isfinite(value) and value > 0:
    return f'{value:.{digits}g}'
  reason = reason if isinstance(reason, str) else ''
  if not reason and not math.isfinite(value):
    return '—'
  return f'not measurable here ({_reason_of(value, reason)})'


def with_estimate_text(frame: pd.DataFrame, names: Sequence[str], digits: int = 3
                       ) -> pd.DataFrame:
  """`frame` (per batch size) with each estimator's column as text (estimate_text) and its
  reason column dropped: what a table shows."""
  out = frame.copy()
  for name in names:
    if name in out:
      reasons = out[f'{name}_reason'] if f'{name}_reason' in out else [''] * len(out)
      out[name] = [estimate_text(v, r, digits) for v, r in zip(out[name], reasons)]
  return out.drop(columns=[f'{n}_reason' for n in names if f'{n}_reason' in out])


def short_label(name: str) -> str:
  """'B_simple', 'B_simple,P', 'B_noise', 'B_noise,P'."""
  return estimators_lib.ESTIMATORS[name].label.split(' = ')[0]


def _number_free(reason: str) -> str:
  return re.sub(r'-?\d[\d.]*(?:e[-+]?\d+)?', '#', reason)


def not_measurable_text(batch_sizes: Sequence[int], reasons: Sequence[str]) -> str:
  """Which batch sizes were not measurable and why, reasons that differ only in their numbers
  grouped: 'at B = 4, 16 (e.g. B = 4: the |G|² estimate averages to -0.1 ≤ 0: ...)'."""
  groups: dict[str, list[tuple[int, str]]] = {}
  for b, reason in zip(batch_sizes, reasons):
    groups.setdefault(_number_free(reason), []).append((int(b), reason))
  parts = []
  for members in groups.values():
    sizes = ', '.join(str(b) for b, _ in members)
    if len({r for _, r in members}) == 1:
      parts.append(f'at B = {sizes}: {members[0][1]}')
    else:
      parts.append(f'at B = {sizes} (e.g. B = {members[0][0]}: {members[0][1]})')
  return '; '.join(parts)


def estimator_summary(group: pd.DataFrame, name: str) -> dict[str, Any]:
  """An estimator over the batch sizes that reached the target (one optimizer's per-B rows):
  median, min and max of the measurable ones, how many were not and why."""
  reached = group[np.isfinite(group['steps_to_target'].astype(float))]
  values = reached[name].astype(float)
  measurable = values[np.isfinite(values) & (values > 0)]
  missing = reached[~(np.isfinite(values) & (values > 0))]
  reasons = (missing[f'{name}_reason'] if f'{name}_reason' in missing
             else pd.Series('', index=missing.index))
  return {f'{name}_median': float(measurable.median()) if len(measurable) else np.nan,
          f'{name}_min': float(measurable.min()) if len(measurable) else np.nan,
          f'{name}_max': float(measurable.max()) if len(measurable) else np.nan,
          f'{name}_measurable': len(measurable), f'{name}_not_measurable': len(missing),
          f'{name}_reason': not_measurable_text(
              missing['batch_size'], [_reason_of(v, r) for v, r in
                                      zip(missing[name].astype(float), reasons)])}


def estimator_summary_text(row, name: str, digits: int = 3) -> str:
  """The summary row's estimator as text: 'median [min, max] over n B' and the batch sizes
  that were not measurable; "not measurable here (...)" when none was; 'not measured' when
  the sweep did not log it."""
  measured = int(_get(row, f'{name}_measurable', 0))
  missing = int(_get(row, f'{name}_not_measurable', 0))
  reason = _get(row, f'{name}_reason', '')
  reason = reason if isinstance(reason, str) else ''
  if not measured:
    return f'not measurable here ({reason})' if missing else 'not measured'
  text = ' '.join((f'{row[f"{name}_median"]:.{digits}g}', f'[{row[f"{name}_min"]:.{digits}g},',
                   f'{row[f"{name}_max"]:.{digits}g}]', f'over {measured} B'))
  if missing:
    text += f'; not measurable here ({reason})'
  return text


def _get(row, key: str, default):
  """row[key] (a dict or a DataFrame row), `default` when absent or NaN."""
  value = row.get(key, default)
  return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


# ------------------------------------------------------------- Shallue S(B)
def settings_table(table: pd.DataFrame) -> pd.DataFrame:
  """One row per search point (optimizer, B, lr, momentum): steps averaged over seeds.

  Incomplete trials are left out; a point reaches the target only if all its
  finished seeds did (else its steps are inf), and is infeasible if any diverged. Each
  estimator is the median over the seeds where it is measurable, else NaN with the reason.
  """
  names = estimators_in(table)
  finished = table[table['outcome'] != 'incomplete'].copy()
  finished['momentum'] = finished['momentum'].astype(float).fillna(-1.0)  # groupby-able
  finished['reached'] = finished['outcome'] == 'reached'
  finished['steps'] = finished['steps_to_target'].astype(float).where(finished['reached'],
                                                                      np.inf)
  rows = []
  for key, group in finished.groupby(SETTING, sort=True):
    all_reached = bool(group['reached'].all())
    rows.append({
        **dict(zip(SETTING, key)),
        'effective_learning_rate': float(group['effective_learning_rate'].iloc[0]),
        'steps_to_target': float(group['steps'].mean()) if all_reached else np.inf,
        'seed_steps': tuple(float(s) for s in group['steps']),
        'num_seeds': len(group), 'all_reached': all_reached,
        'infeasible': bool((group['outcome'] == 'infeasible').any()), 'b_simple': np.nan})
    for name in names:
      rows[-1][name], rows[-1][f'{name}_reason'] = _seed_estimate(group, name)
  settings = pd.DataFrame(rows)
  if not settings.empty:
    settings['momentum'] = settings['momentum'].where(settings['momentum'] >= 0)
  return settings


def steps_to_result(table: pd.DataFrame) -> pd.DataFrame:
  """Shallue's S(B) per optimizer and batch size, with the best learning rate.

  Columns: optimizer, batch_size, steps_to_target (inf if no point reached it),
  examples_to_target, learning_rate, momentum, effective_learning_rate (of the
  best point), seed_steps (its seeds), b_simple (its run-averaged noise scale) and each
  other estimator the trials logged, with `<name>_reason` where it is not measurable,
  best_lr_at_edge (the best LR is the smallest or largest searched, or fewer than
  three were), and counts of trials by outcome.
  """
  names = estimators_in(table)
  settings = settings_table(table)
  rows = []
  for (optimizer, batch_size), group in table.groupby(GROUP, sort=True):
    counts = group['outcome'].value_counts()
    row = {'optimizer': optimizer, 'batch_size': int(batch_size),
           'num_trials': len(group), 'num_reached': int(counts.get('reached', 0)),
           'num_not_reached': int(counts.get('not_reached', 0)),
           'num_infeasible': int(counts.get('infeasible', 0)),
           'num_incomplete': int(counts.get('incomplete', 0)),
           'steps_to_target': np.inf, 'examples_to_target': np.inf,
           'learning_rate': np.nan, 'momentum': np.nan, 'effective_learning_rate': np.nan,
           'seed_steps': (), 'b_simple': np.nan, 'best_lr_at_edge': False,
           **{name: np.nan for name in names}, **{f'{name}_reason': '' for name in names}}
    points = settings[(settings['optimizer'] == optimizer) &
                      (settings['batch_size'] == batch_size)] if not settings.empty else settings
    if len(points) and np.isfinite(points['steps_to_target']).any():
      best = points.loc[points['steps_to_target'].idxmin()]
      searched = points['learning_rate']
      # A best LR at the end of its search may not be the best: the search was too narrow.
      row['best_lr_at_edge'] = bool(len(searched.unique()) < 3 or best['learning_rate'] in (
          searched.min(), searched.max()))
      row.update(steps_to_target=float(best['steps_to_target']),
                 examples_to_target=float(best['steps_to_target']) * int(batch_size),
                 learning_rate=best['learning_rate'], momentum=best['momentum'],
                 effective_learning_rate=best['effective_learning_rate'],
                 seed_steps=best['seed_steps'],
                 **{c: best[c] for name in names for c in (name, f'{name}_reason')})
    rows.append(row)
  return pd.DataFrame(rows)


# ------------------------------------------------------------ McCandlish fit
@dataclasses.dataclass(frozen=True)
class ParetoFit:
  """S(B) = S_min (1 + B_crit / B) with bootstrap percentile intervals."""
  s_min: float
  e_min: float
  b_crit: float
  s_min_ci: tuple[float, float]
  e_min_ci: tuple[float, float]
  b_crit_ci: tuple[float, float]
  confidence: float
  num_points: int
  rms_log_residual: float
  samples: np.ndarray = dataclasses.field(repr=False)  # (R, 2): bootstrap S_min, E_min

  def steps(self, batch_size) -> np.ndarray:
    return self.s_min + self.e_min / np.asarray(batch_size, dtype=float)

  def band(self, batch_size, confidence: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise bootstrap interval of the fitted S(B)."""
    level = self.confidence if confidence is None else confidence
    b = np.asarray(batch_size, dtype=float)
    curves = self.samples[:, :1] + self.samples[:, 1:] / b[None, :]
    q = (1 - level) / 2
    return np.quantile(curves, q, axis=0), np.quantile(curves, 1 - q, axis=0)


def _fit_log_least_squares(batch_sizes: np.ndarray, steps: np.ndarray,
                           iterations: int = 200) -> np.ndarray:
  """Minimises sum (log S - log(S_min + E_min / B))^2 for each row of `steps`.

  batch_sizes (n,), steps (R, n) with NaN for missing points -> (R, 2) [S_min, E_min].
  Levenberg-Marquardt on (log S_min, log E_min), vectorised over rows; starts from
  the least-squares line S = S_min + E_min / B weighted by 1 / S^2.
  """
  steps = np.atleast_2d(np.asarray(steps, dtype=float))
  mask = np.isfinite(steps) & (steps > 0)
  log_s = np.where(mask, np.log(np.where(mask, steps, 1.0)), 0.0)
  inv_b = 1.0 / np.asarray(batch_sizes, dtype=float)
  log_b = np.log(np.asarray(batch_sizes, dtype=float))
  # Start: weighted linear least squares, clipped to positive values.
  w = np.where(mask, 1.0 / np.where(mask, steps, 1.0), 0.0)  # 1/S: relative residuals
  a11, a12, a22 = (w**2).sum(1), (w**2 * inv_b).sum(1), (w**2 * inv_b**2).sum(1)
  s_w = np.where(mask, steps, 0.0) * w**2
  r1, r2 = s_w.sum(1), (s_w * inv_b).sum(1)
  det = a11 * a22 - a12**2
  with np.errstate(divide='ignore', invalid='ignore'):
    s_min0 = (a22 * r1 - a12 * r2) / det
    e_min0 = (a11 * r2 - a12 * r1) / det
  smallest = np.where(mask, steps, np.inf).min(1)
  smallest_e = np.where(mask, steps * np.asarray(batch_sizes)[None, :], np.inf).min(1)
  s_min0 = np.where(np.isfinite(s_min0) & (s_min0 > 0), s_min0, 0.5 * smallest)
  e_min0 = np.where(np.isfinite(e_min0) & (e_min0 > 0), e_min0, 0.5 * smallest_e)
  theta = np.stack([np.log(s_min0), np.log(e_min0)], 1)
  damping = np.full(len(steps), 1e-3)

  def residuals(theta):
    pred = np.logaddexp(theta[:, :1], theta[:, 1:] - log_b[None, :])
    return np.where(mask, log_s - pred, 0.0), pred

  r, pred = residuals(theta)
  cost = (r**2).sum(1)
  for _ in range(iterations):
    d_a = np.exp(theta[:, :1] - pred) * mask  # d pred / d log S_min
    d_c = (1.0 - np.exp(theta[:, :1] - pred)) * mask
    jtj = np.stack([np.stack([(d_a * d_a).sum(1), (d_a * d_c).sum(1)], -1),
                    np.stack([(d_a * d_c).sum(1), (d_c * d_c).sum(1)], -1)], -2)
    jtr = np.stack([(d_a * r).sum(1), (d_c * r).sum(1)], -1)
    diag = np.diagonal(jtj, axis1=1, axis2=2)
    lhs = jtj + (damping[:, None] * diag + 1e-12)[:, :, None] * np.eye(2)[None]
    delta = np.linalg.solve(lhs, jtr[..., None])[..., 0]
    new_theta = np.clip(theta + delta, -50, 50)
    new_r, new_pred = residuals(new_theta)
    new_cost = (new_r**2).sum(1)
    better = new_cost < cost
    theta = np.where(better[:, None], new_theta, theta)
    r = np.where(better[:, None], new_r, r)
    pred = np.where(better[:, None], new_pred, pred)
    converged = np.abs(cost - new_cost) <= 1e-12 * (1 + cost)
    cost = np.where(better, new_cost, cost)
    damping = np.where(better, damping / 3, damping * 3)
    if np.all(converged | (damping > 1e12)):
      break
  return np.exp(theta)


def fit_steps(batch_sizes: Sequence[float], steps: Sequence[float]) -> tuple[float, float]:
  """(S_min, E_min) of S(B) = S_min + E_min / B, least squares on log S."""
  s_min, e_min = _fit_log_least_squares(np.asarray(batch_sizes), np.asarray(steps)[None])[0]
  return float(s_min), float(e_min)


def fit_pareto(batch_sizes: Sequence[float], steps: Sequence[float], *,
               num_samples: int = 2000, confidence: float = 0.9, seed: int = 0,
               samples: np.ndarray | None = None) -> ParetoFit:
  """McCandlish's fit with a bootstrap interval for S_min, E_min and B_crit.

  The bootstrap resamples the log-residuals of the fit (inflated by sqrt(n/(n-2))
  for the two fitted parameters), adds them to the fitted curve and refits: it
  works with one seed per point and captures all scatter around the model. Pass
  `samples` (R, n) to refit given bootstrap curves instead (e.g. seed resampling).
  """
  b = np.asarray(batch_sizes, dtype=float)
  s = np.asarray(steps, dtype=float)
  keep = np.isfinite(s) & (s > 0)
  if keep.sum() < 3:
    raise ValueError(f'the fit needs steps-to-target at >= 3 batch sizes, got {keep.sum()}')
  s_min, e_min = fit_steps(b[keep], s[keep])
  log_residuals = np.log(s[keep]) - np.log(s_min + e_min / b[keep])
  n = int(keep.sum())
  if samples is None:
    rng = np.random.default_rng(seed)
    centred = (log_residuals - log_residuals.mean()) * math.sqrt(n / (n - 2)) if n > 2 else 0
    draws = rng.choice(centred, size=(num_samples, n), replace=True)
    samples = (s_min + e_min / b[keep])[None, :] * np.exp(draws)
    fits = _fit_log_least_squares(b[keep], samples)
  else:
    fits = _fit_log_least_squares(b, np.asarray(samples, dtype=float))
  q = (1 - confidence) / 2
  interval = lambda values: (float(np.quantile(values, q)), float(np.quantile(values, 1 - q)))
  return ParetoFit(s_min=s_min, e_min=e_min, b_crit=e_min / s_min,
                   s_min_ci=interval(fits[:, 0]), e_min_ci=interval(fits[:, 1]),
                   b_crit_ci=interval(fits[:, 1] / fits[:, 0]), confidence=confidence,
                   num_points=n, rms_log_residual=float(np.sqrt(np.mean(log_residuals**2))),
                   samples=fits)


def fit_sensitivity(batch_sizes: Sequence[float], steps: Sequence[float]) -> pd.DataFrame:
  """McCandlish's fit refitted on subsets of the batch sizes: how much B_crit depends on
  which were measured. Rows: all; each batch size left out; the two smallest left out; the
  two largest left out (subsets with < 3 points are skipped)."""
  b = np.asarray(batch_sizes, dtype=float)
  s = np.asarray(steps, dtype=float)
  keep = np.isfinite(s) & (s > 0)
  b, s = b[keep], s[keep]
  order = np.argsort(b)
  b, s = b[order], s[order]
  subsets = [('all', np.ones(len(b), bool))]
  subsets += [(f'without B={b[i]:g}', np.arange(len(b)) != i) for i in range(len(b))]
  subsets += [('without the 2 smallest', np.arange(len(b)) >= 2),
              ('without the 2 largest', np.arange(len(b)) < len(b) - 2)]
  rows = []
  for name, mask in subsets:
    if mask.sum() < 3:
      continue
    s_min, e_min = fit_steps(b[mask], s[mask])
    rows.append({'subset': name, 'num_batch_sizes': int(mask.sum()), 's_min': s_min,
                 'e_min': e_min, 'b_crit': e_min / s_min if s_min > 0 else np.inf})
  return pd.DataFrame(rows)


def lack_of_fit(batch_sizes: Sequence[float], seed_steps: Sequence[Sequence[float]],
                s_min: float, e_min: float) -> dict[str, float]:
  """The classical lack-of-fit F test of S = S_min + E_min / B on log steps: the scatter of the
  per-B mean around the curve against the scatter of the seeds around their mean (pure
  error). A small p says the curve's shape, not noise, explains the residuals; nan without
  repeated seeds."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  lack, pure, n_points, n_total = 0.0, 0.0, 0, 0
  for b, seeds in zip(batch_sizes, seed_steps):
    values = np.log(np.asarray(seeds, dtype=float))
    if not len(values) or not np.all(np.isfinite(values)):
      continue
    lack += len(values) * (values.mean() - math.log(s_min + e_min / b)) ** 2
    pure += float(np.sum((values - values.mean()) ** 2))
    n_points, n_total = n_points + 1, n_total + len(values)
  df_lack, df_pure = n_points - 2, n_total - n_points
  if df_lack < 1 or df_pure < 1 or pure <= 0:
    return {'lack_of_fit_f': float('nan'), 'lack_of_fit_p': float('nan')}
  f = (lack / df_lack) / (pure / df_pure)
  return {'lack_of_fit_f': float(f), 'lack_of_fit_p': float(stats.f.sf(f, df_lack, df_pure))}


def fit_warnings(per_batch_size: pd.DataFrame, summary: pd.DataFrame, *, bootstrap: str,
                 sensitivity: dict[str, pd.DataFrame] | None = None) -> list[str]:
  """One line per reason to distrust a fit: a best LR at the edge of its search, fewer than 4
  batch sizes or a single seed behind it, trials that ran out of budget, a seed bootstrap
  with fewer than 3 seeds, B_crit moving outside its CI when batch sizes are left out, and a
  significant lack of fit."""
  lines = []
  for optimizer, group in per_batch_size.groupby('optimizer', sort=True):
    reached = group[np.isfinite(group['steps_to_target'])]
    edges = reached[reached['best_lr_at_edge']]['batch_size'].tolist()
    if edges:
      lines.append(f'{optimizer}: the best learning rate is at the edge of its search at B = '
                   f'{", ".join(map(str, edges))}; widen the search there (mbx sweep on the '
                   'same directory then trains only the new trials)')
    if len(reached) < 4:
      lines.append(f'{optimizer}: only {len(reached)} batch sizes reached the target; a fit of '
                   'two parameters needs at least 4 to be checked')
    seeds = max((len(s) for s in reached['seed_steps']), default=0)
    if seeds < 2:
      lines.append(f'{optimizer}: one seed per point: the seed-to-seed spread is unknown')
    elif bootstrap == 'seeds' and seeds < 3:
      lines.append(f'{optimizer}: a seed bootstrap with {seeds} seeds underestimates the '
                   'spread; use --bootstrap-method residuals or more seeds')
    not_reached = int(group['num_not_reached'].sum())
    if not_reached:
      lines.append(f'{optimizer}: {not_reached} trials ran out of budget before the target')
    row = summary[summary['optimizer'] == optimizer]
    if sensitivity and optimizer in sensitivity and len(row) and 'b_crit_lo' in row:
      values = sensitivity[optimizer]['b_crit'].to_numpy()
      lo, hi = float(row['b_crit_lo'].iloc[0]), float(row['b_crit_hi'].iloc[0])
      if np.isfinite(lo) and (values.min() < lo or values.max() > hi):
        lines.append(f'{optimizer}: leaving batch sizes out moves B_crit to {values.min():.3g}–'
                     f'{values.max():.3g}, outside its CI [{lo:.3g}, {hi:.3g}]: the CI covers '
                     'scatter under the assumed curve only')
    if len(row) and row.get('lack_of_fit_p', pd.Series([np.nan])).iloc[0] < 0.05:
      lines.append(f'{optimizer}: lack of fit (F = {row["lack_of_fit_f"].iloc[0]:.3g}, '
                   f'p = {row["lack_of_fit_p"].iloc[0]:.2g}): the residuals are larger than the '
                   'seeds\' scatter, so the curve does not describe S(B) within noise')
  return lines


def seed_bootstrap_curves(settings: pd.DataFrame, batch_sizes: Sequence[int],
                          num_samples: int = 2000, seed: int = 0) -> np.ndarray:
  """(R, n) bootstrap S(B): each search point's seeds resampled, then the minimum per B."""
  rng = np.random.default_rng(seed)
  curves = np.full((num_samples, len(batch_sizes)), np.inf)
  for j, batch_size in enumerate(batch_sizes):
    for seed_steps in settings.loc[settings['batch_size'] == batch_size, 'seed_steps']:
      values = np.asarray(seed_steps, dtype=float)
      means = values[rng.integers(0, len(values), (num_samples, len(values)))].mean(1)
      curves[:, j] = np.minimum(curves[:, j], means)
  return np.where(np.isfinite(curves), curves, np.nan)


# ---------------------------------------------------------------- Zhang CBS
def zhang_cbs(batch_sizes: Sequence[float], steps: Sequence[float],
              overhead: float = ZHANG_OVERHEAD, reference_batch: float | None = None) -> float:
  """The B where S(B) B / (S(B0) B0) first reaches 1 + overhead, B0 = `reference_batch` (one
  of `batch_sizes` with steps) or, by default, the smallest B with steps.

  Interpolated linearly in (log B, log ratio) between the last batch size below and
  the first at or above; inf if the curve never gets there, nan without data.
  """
  b = np.asarray(batch_sizes, dtype=float)
  s = np.asarray(steps, dtype=float)
  keep = np.isfinite(s) & (s > 0)
  if reference_batch is not None:
    if not np.any(keep & (b == reference_batch)):
      raise ValueError(f'reference_batch={reference_batch:g}: no steps to target at that B')
    keep &= b >= reference_batch
  b, s = b[keep], s[keep]
  if len(b) < 2:
    return float('nan')
  order = np.argsort(b)
  b, s = b[order], s[order]
  log_ratio = np.log(s * b / (s[0] * b[0]))
  threshold = math.log1p(overhead)
  above = np.nonzero(log_ratio >= threshold)[0]
  if not len(above):
    return float('inf')
  i = above[0]
  if i == 0:
    return float(b[0])
  x0, x1, y0, y1 = math.log(b[i - 1]), math.log(b[i]), log_ratio[i - 1], log_ratio[i]
  frac = (threshold - y0) / (y1 - y0) if y1 != y0 else 1.0
  return float(math.exp(x0 + min(max(frac, 0.0), 1.0) * (x1 - x0)))


def zhang_cbs_of_fit(s_min: float, e_min: float, reference_batch: float,
                     overhead: float = ZHANG_OVERHEAD) -> float:
  """Zhang's CBS on the fitted curve: E(B)/E(B0) = 1 + overhead <=> B = (1+o) B0 + o B_crit."""
  return (1 + overhead) * reference_batch + overhead * e_min / s_min


def check_zhang_reference_batch(per_batch_size: pd.DataFrame, reference_batch: int | None,
                                field: str) -> None:
  """ConfigError naming `field` unless `reference_batch` (None: each optimizer's smallest B)
  is a measured batch size at which every optimizer reached the target."""
  if reference_batch is None:
    return
  reached = per_batch_size[np.isfinite(per_batch_size['steps_to_target'].astype(float))]
  optimizers = sorted(per_batch_size['optimizer'].unique())
  allowed = [int(b) for b, group in reached.groupby('batch_size')
             if set(group['optimizer']) == set(optimizers)]
  allowed_text = (f'allowed: {", ".join(map(str, allowed))} (the measured batch sizes at which '
                  'every optimizer reached the target)' if allowed else
                  'no measured batch size reached the target for every optimizer')
  measured = set(int(b) for b in per_batch_size['batch_size'])
  if reference_batch not in measured:
    raise config_lib.ConfigError(f'{field}={reference_batch}: not a batch size of this sweep; '
                                 + allowed_text)
  if reference_batch not in allowed:
    missed = [o for o in optimizers if not ((reached['optimizer'] == o) &
                                            (reached['batch_size'] == reference_batch)).any()]
    raise config_lib.ConfigError(f'{field}={reference_batch}: {", ".join(missed)} did not reach '
                                 f'the target at B = {reference_batch}; {allowed_text}')


# ------------------------------------------------------------- the analysis
@dataclasses.dataclass
class CriticalBatchAnalysis:
  """Everything `mbx analyze cbs` reports; DataFrames for tables, fits for figures."""
  trials: pd.DataFrame          # the sweep's trial table
  settings: pd.DataFrame        # per search point, seeds averaged
  per_batch_size: pd.DataFrame  # Shallue's S(B) and best LR, per optimizer
  summary: pd.DataFrame         # one row per optimizer: fit, CIs, Zhang CBS, the estimators
  fits: dict[str, ParetoFit]
  sensitivity: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
  warnings: list[str] = dataclasses.field(default_factory=list)  # see fit_warnings
  target_metric: str | None = None
  target_value: float | None = None
  estimators: list[str] = dataclasses.field(default_factory=list)  # those the trials logged
  confidence: float = 0.9


def learning_rate_exponent(batch_sizes, learning_rates, confidence: float = 0.9) -> dict:
  """The power p of best lr ∝ B^p: least squares in log-log over the batch sizes that reached
  the target, with a t-interval on the slope. A search grid that itself moves as B^q puts the
  best LR on grid points, so read p against q and its CI, not "the rule holds exactly"."""
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  b = np.asarray(batch_sizes, float)
  lr = np.asarray(learning_rates, float)
  keep = np.isfinite(b) & np.isfinite(lr) & (b > 0) & (lr > 0)
  out = {'lr_exponent': np.nan, 'lr_exponent_lo': np.nan, 'lr_exponent_hi': np.nan,
         'lr_exponent_n': int(keep.sum())}
  if keep.sum() < 3:
    return out
  fit = scipy_stats.linregress(np.log(b[keep]), np.log(lr[keep]))
  half = scipy_stats.t.ppf(0.5 + confidence / 2, keep.sum() - 2) * fit.stderr
  out.update(lr_exponent=float(fit.slope), lr_exponent_lo=float(fit.slope - half),
             lr_exponent_hi=float(fit.slope + half))
  return out


def analyze(table: pd.DataFrame, *, num_samples: int = 2000, confidence: float = 0.9,
            bootstrap: str = 'residuals', seed: int = 0,
            zhang_reference_batch: int | None = None) -> CriticalBatchAnalysis:
  """Shallue per-B minimum, McCandlish fit with CI, Zhang CBS, the run-averaged noise-scale
  estimators, per optimizer.

  bootstrap: 'residuals' (log-residuals of the fit; works with one seed) or 'seeds'
  (each search point's seeds resampled, S(B) re-minimised; needs >= 2 seeds, and
  with few seeds underestimates the spread by (n-1)/n).
  zhang_reference_batch: B0 of Zhang's CBS, a batch size every optimizer reached the target
  at (ConfigError otherwise); None: each optimizer's smallest batch size that reached it.
  """
  per_b = steps_to_result(table)
  check_zhang_reference_batch(per_b, zhang_reference_batch, 'zhang_reference_batch')
  names = estimators_in(table)
  settings = settings_table(table)
  rows, fits, sensitivity = [], {}, {}
  for optimizer, group in per_b.groupby('optimizer', sort=True):
    group = group.sort_values('batch_size')
    b, s = group['batch_size'].to_numpy(float), group['steps_to_target'].to_numpy(float)
    finite = np.isfinite(s)
    smallest = float(b[finite].min()) if finite.any() else np.nan
    reference = smallest if zhang_reference_batch is None else float(zhang_reference_batch)
    row: dict[str, Any] = {
        'optimizer': optimizer, 'num_batch_sizes': int(finite.sum()),
        'smallest_batch_size': smallest, 'zhang_reference_batch': reference,
        'zhang_cbs': zhang_cbs(b, s, reference_batch=zhang_reference_batch),
        'b_simple_median': np.nan, 'b_simple_min': np.nan, 'b_simple_max': np.nan}
    for name in names:
      row.update(estimator_summary(group, name))
    column = ('effective_learning_rate' if 'effective_learning_rate' in group
              else 'learning_rate')
    row.update(learning_rate_exponent(b[finite], group[column].to_numpy(float)[finite],
                                      confidence))
    if finite.sum() >= 3:
      curves = None
      if bootstrap == 'seeds':
        curves = seed_bootstrap_curves(settings[settings['optimizer'] == optimizer],
                                       list(group['batch_size']), num_samples, seed)
      fit = fit_pareto(b, s, num_samples=num_samples, confidence=confidence, seed=seed,
                       samples=curves)
      fits[optimizer] = fit
      zhang_samples = [zhang_cbs_of_fit(sm, em, reference) for sm, em in fit.samples]
      q = (1 - confidence) / 2
      row.update(s_min=fit.s_min, s_min_lo=fit.s_min_ci[0], s_min_hi=fit.s_min_ci[1],
                 e_min=fit.e_min, e_min_lo=fit.e_min_ci[0], e_min_hi=fit.e_min_ci[1],
                 b_crit=fit.b_crit, b_crit_lo=fit.b_crit_ci[0], b_crit_hi=fit.b_crit_ci[1],
                 rms_log_residual=fit.rms_log_residual,
                 zhang_cbs_fit=zhang_cbs_of_fit(fit.s_min, fit.e_min, reference),
                 zhang_cbs_fit_lo=float(np.quantile(zhang_samples, q)),
                 zhang_cbs_fit_hi=float(np.quantile(zhang_samples, 1 - q)))
      for name in names:
        if np.isfinite(row[f'{name}_median']):
          row[f'b_crit_over_{name}'] = fit.b_crit / row[f'{name}_median']
      sensitivity[optimizer] = fit_sensitivity(b, s)
      row.update(b_crit_leave_out_min=float(sensitivity[optimizer]['b_crit'].min()),
                 b_crit_leave_out_max=float(sensitivity[optimizer]['b_crit'].max()),
                 b_crit_without_largest=float(sensitivity[optimizer].set_index('subset').loc[
                     'without the 2 largest', 'b_crit']) if len(b[finite]) >= 5 else np.nan,
                 **lack_of_fit(b[finite], group['seed_steps'][finite], fit.s_min, fit.e_min))
    rows.append(row)
  summary = pd.DataFrame(rows)
  return CriticalBatchAnalysis(trials=table, settings=settings, per_batch_size=per_b,
                               summary=summary, fits=fits, sensitivity=sensitivity,
                               warnings=fit_warnings(per_b, summary, bootstrap=bootstrap,
                                                     sensitivity=sensitivity),
                               target_metric=table.attrs.get('target_metric'),
                               target_value=table.attrs.get('target_value'),
                               estimators=names, confidence=confidence)


def definitions_table(analyses: Sequence[CriticalBatchAnalysis], *,
                      local: dict[str, str] | None = None, digits: int = 3) -> pd.DataFrame:
  """Every definition of the CBS side by side (text), one row per optimizer and target:
  McCandlish's B_crit [CI]; Zhang's 20% CBS with its B0 named (in the header when every row
  shares it), and on the fit; each estimator the trials logged (B_simple always), run-averaged
  to the target, as median [min, max] over the batch sizes and B_crit over its median; and
  Merrill's local CBS when `local` (text per optimizer) is given, for the first analysis's
  target (it is measured at one point of one run, not per target)."""
  names = ['b_simple'] + [n for n in estimators_lib.NAMES[1:]
                          if any(n in a.estimators for a in analyses)]
  def g(value: float) -> str:
    return f'{value:.{digits}g}' if math.isfinite(value) else ('∞' if value > 0 else '—')

  references = {float(r['zhang_reference_batch']) for a in analyses
                for _, r in a.summary.iterrows() if math.isfinite(r['zhang_reference_batch'])}
  zhang = (f'Zhang 20% CBS (B0 = {references.pop():g})' if len(references) == 1
           else 'Zhang 20% CBS')
  rows = []
  for i, analysis in enumerate(analyses):
    for _, r in analysis.summary.iterrows():
      fitted = math.isfinite(_get(r, 'b_crit', math.nan))
      row = {'optimizer': r['optimizer'],
             'target': '' if analysis.target_value is None else f'{analysis.target_value:g}',
             f'McCandlish B_crit [{analysis.confidence:.0%} CI]':
                 f'{g(r["b_crit"])} [{g(r["b_crit_lo"])}, {g(r["b_crit_hi"])}]' if fitted
                 else 'no fit (fewer than 3 batch sizes reached the target)'}
      cell = g(r['zhang_cbs'])
      if zhang == 'Zhang 20% CBS' and math.isfinite(r['zhang_reference_batch']):
        cell += f' (B0 = {r["zhang_reference_batch"]:g})'
      if fitted:
        cell += f'; on the fit {g(r["zhang_cbs_fit"])}'
      row[zhang] = cell
      for name in names:
        label = short_label(name)
        row[f'{label}, run-averaged: median [min, max] over B'] = estimator_summary_text(
            r, name, digits)
        ratio = _get(r, f'b_crit_over_{name}', math.nan)
        row[f'B_crit / {label}'] = g(ratio)
      if local is not None:
        row['Merrill local CBS'] = local.get(r['optimizer'], 'not measured') if i == 0 else '—'
      rows.append(row)
  return pd.DataFrame(rows)


def analyze_sweep(sweep_dir: str | pathlib.Path, *, target_value: float | None = None,
                  **options) -> CriticalBatchAnalysis:
  """`analyze` on a sweep directory's trial table, rebuilt from its run directories;
  `target_value`: another target than the sweep's, from the same evaluations. trials.csv is
  rewritten (for the sweep's own target) only once the analysis has accepted its options."""
  table = trials.trial_table(sweep_dir, target_value)
  analysis = analyze(table, **options)
  if target_value is None:
    trials.write_table(sweep_dir, table)
  return analysis
