"""The statistics every study reports: paired differences and ratios over seeds, two-sample
comparisons, means with t-intervals. Pure numpy/scipy (no JAX), so tables can be re-derived
from CSVs anywhere."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1; 0 for a single value)."""
  values = np.asarray([float(v) for v in values], float)
  if values.size == 0:
    return math.nan, math.nan
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
  """Mean with a Student-t interval: n, mean, std, ci_low, ci_high (NaN bounds for n < 2)."""
  values = np.asarray([float(v) for v in values], float)
  values = values[np.isfinite(values)]
  mean, std = mean_std(values)
  if values.size < 2:
    return {'n': int(values.size), 'mean': mean, 'std': std, 'ci_low': math.nan,
            'ci_high': math.nan}
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, values.size - 1) * std
               / math.sqrt(values.size))
  return {'n': int(values.size), 'mean': mean, 'std': std, 'ci_low': mean - half,
          'ci_high': mean + half}


def paired(baseline: Sequence[float], other: Sequence[float], kind: str = 'difference',
           scale: float = 1.0, confidence: float = 0.95) -> dict[str, float]:
  """`other` against `baseline`, paired by position (seed).

  kind 'difference': (other − baseline) × scale; 'ratio': other / baseline, averaged as log
  ratios (a geometric mean; pairs with a non-positive value are dropped). Returns n, the
  estimate with its t-interval, the paired t-test p, the exact Wilcoxon signed-rank p and how
  many pairs point each way. NaN where n < 2."""
  if kind not in ('difference', 'ratio'):
    raise ValueError(f'kind={kind!r}: allowed: difference, ratio')
  pairs = [(float(a), float(b)) for a, b in zip(baseline, other)
           if math.isfinite(float(a)) and math.isfinite(float(b))
           and (kind == 'difference' or (float(a) > 0 and float(b) > 0))]
  a = np.array([p[0] for p in pairs])
  b = np.array([p[1] for p in pairs])
  values = (b - a) * scale if kind == 'difference' else np.log(b / a) if pairs else a
  out = {'kind': kind, 'n': len(pairs), 'estimate': math.nan, 'ci_low': math.nan,
         'ci_high': math.nan, 'p_t': math.nan, 'p_wilcoxon': math.nan,
         'higher': int((values > 0).sum()), 'lower': int((values < 0).sum())}
  if len(pairs) < 2:
    if len(pairs) == 1:
      out['estimate'] = float(values[0]) if kind == 'difference' else float(np.exp(values[0]))
    return out
  interval = mean_ci(values, confidence)
  sem = float(scipy.stats.sem(values))
  out['p_t'] = float(scipy.stats.ttest_1samp(values, 0.0).pvalue) if sem > 0 else math.nan
  out['p_wilcoxon'] = (float(scipy.stats.wilcoxon(values, method='exact').pvalue)
                       if np.any(values != 0) else math.nan)
  estimate, lo, hi = interval['mean'], interval['ci_low'], interval['ci_high']
  if kind == 'ratio':
    estimate, lo, hi = (float(np.exp(v)) for v in (estimate, lo, hi))
  out.update(estimate=estimate, ci_low=lo, ci_high=hi)
  return out


def welch(a: Sequence[float], b: Sequence[float], scale: float = 1.0,
          confidence: float = 0.95) -> dict[str, float]:
  """Unpaired mean(b) − mean(a) (× scale) with a Welch interval and p (NaN for n < 2 each)."""
  a = np.asarray([float(v) * scale for v in a if math.isfinite(float(v))])
  b = np.asarray([float(v) * scale for v in b if math.isfinite(float(v))])
  out = {'n_a': int(a.size), 'n_b': int(b.size),
         'estimate': float(b.mean() - a.mean()) if a.size and b.size else math.nan,
         'ci_low': math.nan, 'ci_high': math.nan, 'p': math.nan}
  if a.size < 2 or b.size < 2:
    return out
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  if va + vb == 0:
    return out
  dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, dof) * math.sqrt(va + vb))
  out.update(ci_low=out['estimate'] - half, ci_high=out['estimate'] + half,
             p=float(scipy.stats.ttest_ind(b, a, equal_var=False).pvalue))
  return out


def interval_text(result: dict[str, float], unit: str = '', digits: int = 3) -> str:
  """'+1.30 [−2.43, −0.17]' for a difference, '0.93× [0.50, 1.73]' for a ratio."""
  if not math.isfinite(result.get('estimate', math.nan)):
    return '—'
  if result.get('kind') == 'ratio':
    return (f'{result["estimate"]:.2f}× [{result["ci_low"]:.2f}, {result["ci_high"]:.2f}]'
            if math.isfinite(result['ci_low']) else f'{result["estimate"]:.2f}×')
  body = f'{result["estimate"]:+.{digits}g}{unit}'
  if math.isfinite(result.get('ci_low', math.nan)):
    body += f' [{result["ci_low"]:+.{digits}g}, {result["ci_high"]:+.{digits}g}]'
  return body
