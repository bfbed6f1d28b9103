"""Does the optimizer move the critical batch size? Six optimizers on MNIST-1D, AdamW vs Muon
on the KJV language model, each through `mbx study cbs` with the committed CBS protocol.

    python experiments/optimizer_cbs.py                  # both parts, then the summary
    python experiments/optimizer_cbs.py --part mnist1d   # configs/optimizer_cbs_mnist1d_cnn.py
    python experiments/optimizer_cbs.py --part kjv       # configs/optimizer_cbs_lm_kjv.py

Outputs: results/optimizer_cbs/README.md (the answer, with its uncertainty), and per part
results/optimizer_cbs/<part>/ (the cbs study's tables and figures: S(B) of every optimizer
on one figure, B_crit and S_min with bootstrap CIs, the fit's sensitivity, the best-LR
exponent); the noisy quadratic model's exact S(B) for SGD, momentum and a preconditioned
step (nqm_exact.png); run directories under studies/optimizer_cbs/<part>/ (re-running reuses
them).
"""
import argparse
import json
import pathlib
import time

import numpy as np

import mbx.study
from mbx.optim.declared import of_name
from mbx.sweep import load_sweep
from mbx.sweep.critical_batch import fit_pareto

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / 'results' / 'optimizer_cbs'
PARTS = {'mnist1d': 'optimizer_cbs_mnist1d_cnn.py', 'kjv': 'optimizer_cbs_lm_kjv.py'}
# Each part's optimizers are compared with the one its committed CBS study measured first.
REFERENCE = {'mnist1d': 'momentum', 'kjv': 'adamw'}
TITLES = {'mnist1d': 'MNIST-1D CNN, target validation accuracy 0.85',
          'kjv': 'KJV character-level Transformer, target validation loss 1.75'}
CONFIDENCE = 0.9
LABELS = {'momentum': 'heavy-ball SGD'}  # its declared label, 'SGD', would read as plain SGD here


def run_part(part: str, workers: int) -> dict:
  sweep = load_sweep(REPO / 'configs' / PARTS[part])
  options = mbx.study.options_of('cbs', grid=sweep, local_cbs=False)
  return mbx.study.run('cbs', sweep.base, REPO / 'results' / 'optimizer_cbs' / part,
                       options=options, runs=REPO / 'studies' / 'optimizer_cbs' / part,
                       workers=workers)


def _fits(part: str) -> tuple[dict, dict]:
  """Per optimizer: McCandlish's fit to the study's per-B minimum steps (the study's own
  residual bootstrap, same seed, so the same intervals) and its row of per-B results."""
  tables = json.loads((OUT / part / 'summary.json').read_text())['tables']
  per_b, fits = {}, {}
  for row in tables['per_batch_size']:
    per_b.setdefault(row['optimizer'], []).append(row)
  for optimizer, rows in per_b.items():
    b = np.array([r['batch_size'] for r in rows], float)
    steps = np.array([np.nan if r['steps_to_target'] is None else r['steps_to_target']
                      for r in rows], float)
    if np.isfinite(steps).sum() >= 3:
      fits[optimizer] = fit_pareto(b, steps, confidence=CONFIDENCE)
  summary = {}
  for r in tables['cbs_summary']:  # the first row of each optimizer: the sweep's own target
    summary.setdefault(r['optimizer'], r)
  return fits, {o: dict(summary.get(o, {}), per_b=per_b[o]) for o in per_b}


def _ratio(a, b) -> tuple[float, float, float]:
  """Point estimate and bootstrap interval of a / b from independent bootstrap samples."""
  q = (1 - CONFIDENCE) / 2
  samples = a[1] / b[1]
  return a[0] / b[0], float(np.quantile(samples, q)), float(np.quantile(samples, 1 - q))


def _verdict(ratio: tuple[float, float, float], what: str) -> str:
  point, lo, hi = ratio
  if lo > 1:
    return f'{what}, {point:.2f}× the reference\'s (higher; {CONFIDENCE:.0%} CI {lo:.2f}–{hi:.2f})'
  if hi < 1:
    return f'{what}, {point:.2f}× the reference\'s (lower; {CONFIDENCE:.0%} CI {lo:.2f}–{hi:.2f})'
  return (f'{what}, not distinguishable from the reference\'s ({point:.2f}×, '
          f'{CONFIDENCE:.0%} CI {lo:.2f}–{hi:.2f})')


def summarize(parts) -> None:
  """results/optimizer_cbs/README.md and b_crit_by_optimizer.png from the parts' tables."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  lines = ['# Does the optimizer move the critical batch size?', '',
           'Command: `python experiments/optimizer_cbs.py`', '']
  walls = []
  for part in parts:
    summary = json.loads((OUT / part / 'summary.json').read_text())
    total = sum(i['wall_time_s'] for i in summary['invocations']) / 60
    walls.append(f'{part}: {total:.0f} min over {len(summary["invocations"])} invocation(s) '
                 f'({summary["invocations"][-1]["trained_runs"]} runs trained in the last, '
                 f'{summary["invocations"][-1]["reused_runs"]} reused)')
  lines += ['Wall time: ' + '; '.join(walls) + '. Trials shared with the committed CBS '
            'studies (momentum and Adam on MNIST-1D, AdamW on KJV: the same configs, so the same '
            'ids) were trained for those studies and reused. '
            + context_machine(), '']
  findings, table, figure_rows = [], [], []
  for part in parts:
    fits, rows = _fits(part)
    reference = REFERENCE[part]
    ref = fits[reference]
    lines += [f'## {TITLES[part]}', '',
              f'Protocol and per-B tables: [{part}/README.md]({part}/README.md); S(B) of every '
              f'optimizer on one figure: [{part}/steps_vs_batch_size.png]'
              f'({part}/steps_vs_batch_size.png). Ratios are to {reference} '
              f'(independent residual bootstraps of the two fits, {CONFIDENCE:.0%} intervals).',
              '', '| optimizer | B_crit [90% CI] | leave one B out | S_min [90% CI] | '
              'B_crit / ref [90% CI] | S_min / ref [90% CI] | best-LR exponent [90% CI] | '
              'batch sizes reaching the target | best LR at the grid edge |',
              '|---|---|---|---|---|---|---|---|---|']
    for optimizer in sorted(rows, key=lambda o: (o != reference, o)):
      row, fit = rows[optimizer], fits.get(optimizer)
      label = f'{LABELS.get(optimizer) or of_name(optimizer).label or optimizer} (`{optimizer}`)'
      edges = [str(r['batch_size']) for r in row['per_b'] if r.get('best_lr_at_edge')]
      edge_text = ('B = ' + ', '.join(edges)) if edges else 'none'
      reached = [r['batch_size'] for r in row['per_b'] if r['steps_to_target'] is not None]
      reach_text = f'{len(reached)} of {len(row["per_b"])}' + (
          f' (B ≤ {max(reached)})' if reached and len(reached) < len(row['per_b']) else '')
      if fit is None:
        lines.append(f'| {label} | not measurable here (fewer than 3 batch sizes reached the '
                     f'target) | — | — | — | — | — | {reach_text} | {edge_text} |')
        continue
      b_ratio = _ratio((fit.b_crit, fit.samples[:, 1] / fit.samples[:, 0]),
                       (ref.b_crit, ref.samples[:, 1] / ref.samples[:, 0]))
      s_ratio = _ratio((fit.s_min, fit.samples[:, 0]), (ref.s_min, ref.samples[:, 0]))
      exponent = (f'{row["lr_exponent"]:.2f} [{row["lr_exponent_lo"]:.2f}, '
                  f'{row["lr_exponent_hi"]:.2f}]' if 'lr_exponent' in row else '—')
      ratio_cell = lambda r: f'{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]'
      lines.append(
          f'| {label} | **{fit.b_crit:.0f}** [{fit.b_crit_ci[0]:.0f}, {fit.b_crit_ci[1]:.0f}] | '
          f'{row.get("b_crit_leave_out_min", np.nan):.0f} – '
          f'{row.get("b_crit_leave_out_max", np.nan):.0f} | {fit.s_min:.0f} '
          f'[{fit.s_min_ci[0]:.0f}, {fit.s_min_ci[1]:.0f}] | '
          + ('—' if optimizer == reference else ratio_cell(b_ratio)) + ' | '
          + ('—' if optimizer == reference else ratio_cell(s_ratio))
          + f' | {exponent} | {reach_text} | {edge_text} |')
      table.append(dict(part=part, optimizer=optimizer, b_crit=fit.b_crit,
                        b_crit_lo=fit.b_crit_ci[0], b_crit_hi=fit.b_crit_ci[1],
                        s_min=fit.s_min, s_min_lo=fit.s_min_ci[0], s_min_hi=fit.s_min_ci[1],
                        b_crit_ratio=b_ratio, s_min_ratio=s_ratio, edges=edges))
      figure_rows.append((part, label, fit))
      if optimizer != reference:
        partial = (f' (fitted on the {len(reached)} batch sizes, B ≤ {max(reached)}, that '
                   'reached the target within the common budget)'
                   if len(reached) < len(row['per_b']) else '')
        findings.append(f'{TITLES[part].split(",")[0]}: {label}: '
                        + _verdict(b_ratio, f'B_crit {fit.b_crit:.0f}') + '; '
                        + _verdict(s_ratio, f'S_min {fit.s_min:.0f}') + partial + '.')
    lines.append('')
  nqm_lines, nqm_finding = nqm_section()
  lines[6:6] = ['## Answer (computed from the tables below)', '',
                *[f'- {f}' for f in findings], f'- {nqm_finding}', '']
  lines += nqm_lines
  (OUT / 'summary.json').write_text(json.dumps(table, indent=1, default=float) + '\n')
  fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 3.8), squeeze=False)
  for ax, part in zip(axes[0], parts):
    group = [(label, fit) for p, label, fit in figure_rows if p == part]
    y = np.arange(len(group))
    ax.errorbar([f.b_crit for _, f in group], y, fmt='o', capsize=3,
                xerr=[[f.b_crit - f.b_crit_ci[0] for _, f in group],
                      [f.b_crit_ci[1] - f.b_crit for _, f in group]])
    ax.set_yticks(y, [label for label, _ in group])
    ax.set_xscale('log')
    ax.set_xlabel('B_crit (McCandlish fit, 90% CI)')
    ax.set_title(TITLES[part].split(',')[0], fontsize=10)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(OUT / 'b_crit_by_optimizer.png', dpi=120)
  lines += ['![B_crit per optimizer](b_crit_by_optimizer.png)', '']
  (OUT / 'README.md').write_text('\n'.join(lines))


NQM_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
NQM_TARGET = 0.30


def nqm_section() -> tuple[list[str], str]:
  """The noisy quadratic model's exact S(B) (mbx.measure.nqm, configs/cbs_nqm.py's problem
  and target) for SGD, heavy-ball momentum 0.9 and SGD preconditioned by P = H^-1/2: the
  answer Zhang et al. 2019 predict, with no sampling."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from mbx.data import nqm as nqm_data  # pylint: disable=import-outside-toplevel
  from mbx.measure import nqm  # pylint: disable=import-outside-toplevel
  curves = nqm.exact_curve(nqm_data.problem_of({}), NQM_BATCH_SIZES, NQM_TARGET)
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  rows = ['| optimizer | B_crit (fit of the exact curve) | S_min | S(1) | S(4096) | best LR at '
          'a grid edge |', '|---|---:|---:|---:|---:|---|']
  for i, (name, curve) in enumerate(curves.items()):
    ax.loglog(curve.batch_sizes, curve.steps, 'o-', color=f'C{i}', ms=3,
              label=f'{name}: B_crit {curve.b_crit:.0f}')
    rows.append(f'| {name} | {curve.b_crit:.0f} | {curve.s_min:.1f} | {curve.steps[0]:.0f} | '
                f'{curve.steps[-1]:.0f} | {"yes" if curve.at_edge.any() else "no"} |')
  ax.set_xlabel('batch size B')
  ax.set_ylabel(f'steps to expected loss {NQM_TARGET}')
  ax.set_title('noisy quadratic model, exact S(B)', fontsize=10)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(OUT / 'nqm_exact.png', dpi=120)
  plt.close(fig)
  sgd, mom, pre = curves['sgd'], curves['momentum'], curves['preconditioned']
  finding = (f'The noisy quadratic model (exact, no sampling): momentum needs as many steps as '
             f'SGD at B = 1 ({mom.steps[0]:.0f} vs {sgd.steps[0]:.0f}) but extends perfect '
             f'scaling (B_crit {mom.b_crit:.0f} vs {sgd.b_crit:.0f}); preconditioning by '
             f'H^-1/2 extends it further (B_crit {pre.b_crit:.0f}) and helps at every B, as '
             'Zhang et al. 2019 predict.')
  lines = ['## The noisy quadratic model: exact S(B)', '',
           f'`mbx.measure.nqm.exact_curve` on configs/cbs_nqm.py\'s problem (dim 100, h_i = 1/i, '
           f'σ = 0.5), steps until the expected loss reaches {NQM_TARGET}, the LR chosen per B '
           'from 12 per decade; momentum 0.9; the preconditioned step uses P = H^-1/2 '
           '(docs/science.md §19).', '', *rows, '', '![NQM exact S(B)](nqm_exact.png)', '']
  return lines, finding


def context_machine() -> str:
  from mbx.study.context import machine, machine_text  # pylint: disable=import-outside-toplevel
  return f'Machine: {machine_text(machine())}.'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=(*PARTS, 'all'), default='all')
  parser.add_argument('--workers', type=int, default=2)
  args = parser.parse_args()
  parts = tuple(PARTS) if args.part == 'all' else (args.part,)
  minutes = {}
  for part in parts:
    start = time.perf_counter()
    summary = run_part(part, args.workers)
    minutes[part] = (time.perf_counter() - start) / 60
    print(f'{part}: {minutes[part]:.1f} min')
    print('\n'.join(summary['findings']))
  done = tuple(p for p in PARTS if (OUT / p / 'summary.json').exists())
  summarize(done)
  print((OUT / 'README.md').read_text())


if __name__ == '__main__':
  main()
