"""`mbx report`: one self-contained HTML file (figures embedded) and its Markdown twin, from
sweep directories, study result directories (a trials.csv) and run directories.

For a sweep: what was run (grid, budget, target, machine, versions, command), the
critical-batch analysis (tables, the fit with its CI, sensitivity and warnings) and its
figures. For a run: its config, outcome, curves, and the sharpness / interpolation summaries
`mbx analyze` left in `<run>/analysis/`. Every table is also written as a CSV beside the
report (`<report>_files/`), and the HTML table carries the CSV's name (`data-csv`), so
what the page shows can be checked against it.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import pathlib
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from mbx import config as config_lib
from mbx.figures import critical_batch as cbs_figures
from mbx.figures.ticks import plain_ticks
from mbx.sweep import critical_batch, grid, runner
from mbx.training.records import load_run

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
.warning { background: #fff4e0; border-left: 4px solid #e69500; padding: .4em .8em; }
code { background: #f5f5f5; padding: 0 .25em; } .scroll { overflow-x: auto; }
"""


def _versions() -> dict[str, str]:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  out = {'python': platform.python_version()}
  for package in ('mbx', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy'):
    try:
      out[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      out[package] = 'not installed'
  return out


def _fmt(value: Any) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
    return ''
  if isinstance(value, (float, np.floating)):
    return f'{value:.4g}'
  return str(value)


@dataclasses.dataclass
class Document:
  """Blocks rendered twice: HTML (images inline) and Markdown (images as files)."""
  files_dir: pathlib.Path
  html_parts: list[str] = dataclasses.field(default_factory=list)
  md_parts: list[str] = dataclasses.field(default_factory=list)
  counter: int = 0

  def heading(self, text: str, level: int = 2) -> None:
    self.html_parts.append(f'<h{level}>{html.escape(text)}</h{level}>')
    self.md_parts.append(f'{"#" * level} {text}\n')

  def paragraph(self, text: str, css: str | None = None) -> None:
    cls = f' class="{css}"' if css else ''
    self.html_parts.append(f'<p{cls}>{html.escape(text)}</p>')
    self.md_parts.append(('> **warning:** ' if css == 'warning' else '') + text + '\n')

  def items(self, lines: Sequence[str]) -> None:
    self.html_parts.append('<ul>' + ''.join(f'<li>{html.escape(x)}</li>' for x in lines)
                           + '</ul>')
    self.md_parts.append(''.join(f'- {x}\n' for x in lines))

  def table(self, frame: pd.DataFrame, name: str) -> None:
    """The frame as a table, and as `<files>/<name>.csv` (what the table must equal)."""
    self.files_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(self.files_dir / f'{name}.csv', index=False)
    header = ''.join(f'<th>{html.escape(str(c))}</th>' for c in frame.columns)
    body = ''.join('<tr>' + ''.join(f'<td>{html.escape(_fmt(v))}</td>' for v in row) + '</tr>'
                   for row in frame.itertuples(index=False))
    self.html_parts.append(f'<div class="scroll"><table data-csv="{html.escape(name)}.csv">'
                           f'<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div>')
    lines = ['| ' + ' | '.join(str(c) for c in frame.columns) + ' |',
             '|' + '---|' * len(frame.columns)]
    lines += ['| ' + ' | '.join(_fmt(v).replace('|', '\\|') for v in row) + ' |'  # |G|²
              for row in frame.itertuples(index=False)]
    self.md_parts.append('\n'.join(lines) + '\n')

  def figure(self, draw: Callable[[pathlib.Path], None], name: str, caption: str) -> None:
    """draw(path) writes a PNG; it is embedded in the HTML and linked from the Markdown."""
    self.files_dir.mkdir(parents=True, exist_ok=True)
    path = self.files_dir / f'{name}.png'
    draw(path)
    data = base64.b64encode(path.read_bytes()).decode()
    self.html_parts.append(f'<figure><img alt="{html.escape(caption)}" '
                           f'src="data:image/png;base64,{data}"><figcaption>'
                           f'{html.escape(caption)}</figcaption></figure>')
    self.md_parts.append(f'![{caption}]({self.files_dir.name}/{path.name})\n')

  def code(self, text: str) -> None:
    self.html_parts.append(f'<pre><code>{html.escape(text)}</code></pre>')
    self.md_parts.append(f'```\n{text}\n```\n')


# ------------------------------------------------------------------ sweeps
def _sweep_table(path: pathlib.Path, target: tuple[str, float] | None) -> tuple[pd.DataFrame,
                                                                               dict]:
  """The trial table and the grid (sweep.json) of a sweep or study directory."""
  spec_file = path / runner.SPEC_FILE
  spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
  if (path / 'trials').is_dir() and spec:
    table = runner.load_table(path, refresh=True)
  else:
    table = pd.read_csv(path / runner.TABLE_FILE)
    if spec:
      sweep = grid.from_dict(spec['sweep'])
      table.attrs.update(target_metric=sweep.target_metric, target_value=sweep.target_value)
  if target is not None:
    table.attrs.update(target_metric=target[0], target_value=target[1])
  if 'target_metric' not in table.attrs:
    raise config_lib.ConfigError(f'{path}: no {runner.SPEC_FILE} says what the target was; '
                                 'give it with --target METRIC=VALUE')
  return table, spec


def _what_was_run(doc: Document, path: pathlib.Path, table: pd.DataFrame, spec: dict) -> None:
  lines = [f'directory: {path}', f'trials: {len(table)} ('
           + ', '.join(f'{k} {v}' for k, v in runner.outcome_counts(table).items()) + ')',
           f'target: {table.attrs["target_metric"]} {table.attrs["target_value"]}',
           'batch sizes: ' + ', '.join(str(b) for b in sorted(table['batch_size'].unique())),
           'seeds: ' + ', '.join(str(s) for s in sorted(table['seed'].unique()))]
  budget = budget_line(table, spec)
  if budget:
    lines.append(budget)
  if spec:
    sweep = spec['sweep']
    for space in sweep['search']:
      lines.append(f'search ({space["optimizer"]}): {space["num_learning_rates"]} learning '
                   f'rates over {space["learning_rate"]} ({space["sampling"]}), range '
                   f'scaled as B^{space["lr_scaling_power"]}')
    base = sweep['base']
    lines.append(f'base: data {base["data"]["name"]}, model {base["model"]["name"]} '
                 f'({base["model"]["dtype"]}), task {base["task"]["name"]}')
    lines.append(f'grid identity (spec hash): {spec.get("spec_hash")}')
    lines.append(f'command: {spec.get("command", "not recorded")}')
    for earlier in spec.get('history', []):  # a sweep grown in place
      lines.append(f'grown from the grid {earlier.get("spec_hash")} ({earlier.get("num_trials")} '
                   f'trials, replaced {earlier.get("replaced")}; command: '
                   f'{earlier.get("command")})')
  else:
    lines.append(f'grid: no {runner.SPEC_FILE} here; the table alone')
  for column, label in (('backend', 'backend'), ('num_devices', 'devices')):
    if column in table:
      lines.append(f'{label}: ' + ', '.join(str(v) for v in table[column].dropna().unique()))
  doc.heading('What was run', 3)
  doc.items(lines)


def budget_line(table: pd.DataFrame, spec: dict) -> str | None:
  """'budget per trial: ...' as the trials had it: one budget, or each batch size's
  ('B=1: 8000 steps, B=4: 4000 steps, ...') when they differ. From the table's budget
  column, else from the grid."""
  budgets: dict[int, list[str]] = {}
  if 'budget' in table:
    for batch_size, group in table.dropna(subset=['budget']).groupby('batch_size'):
      budgets[int(batch_size)] = list(dict.fromkeys(str(b) for b in group['budget']))
  elif spec:
    sweep = spec['sweep']
    per_batch = {int(b): v for b, v in sweep.get('budgets', {}).items()}
    budgets = {int(b): [per_batch.get(int(b), sweep['budget'])]
               for b in sorted(table['batch_size'].unique())}
  if not budgets:
    return None
  if len({tuple(v) for v in budgets.values()}) == 1:
    return 'budget per trial: ' + ' / '.join(next(iter(budgets.values())))
  return 'budget per trial: ' + ', '.join(f'B={b}: {" / ".join(v)}'
                                          for b, v in sorted(budgets.items()))


def _fit_lines(analysis: critical_batch.CriticalBatchAnalysis) -> list[str]:
  lines = []
  for _, row in analysis.summary.iterrows():
    if np.isfinite(row.get('b_crit', np.nan)):
      text = (f'{row["optimizer"]}: B_crit = {row["b_crit"]:.4g} [{row["b_crit_lo"]:.4g}, '
              f'{row["b_crit_hi"]:.4g}] (90% bootstrap CI over the fit residuals), S_min = '
              f'{row["s_min"]:.4g} [{row["s_min_lo"]:.4g}, {row["s_min_hi"]:.4g}]')
      if np.isfinite(row.get('b_crit_leave_out_min', np.nan)):
        text += (f'; leaving one batch size out: {row["b_crit_leave_out_min"]:.4g} to '
                 f'{row["b_crit_leave_out_max"]:.4g}')
      if np.isfinite(row.get('lack_of_fit_p', np.nan)):
        text += f'; lack of fit against the seeds\' scatter p = {row["lack_of_fit_p"]:.3g}'
    else:
      text = f'{row["optimizer"]}: no fit (fewer than 3 batch sizes reached the target)'
    if np.isfinite(row.get('lr_exponent', np.nan)):
      text += (f'; best (effective) LR ∝ B^p with p = {row["lr_exponent"]:.2f} '
               f'[{row["lr_exponent_lo"]:.2f}, {row["lr_exponent_hi"]:.2f}] (90% CI)')
    lines.append(text)
  return lines


def sweep_section(doc: Document, path: pathlib.Path, *, target=None, bootstrap: int = 1000,
                  progress=None) -> None:
  table, spec = _sweep_table(path, target)
  doc.heading(f'Sweep: {spec.get("name") or table.attrs.get("name") or path.name}')
  _what_was_run(doc, path, table, spec)
  analysis = critical_batch.analyze(table, num_samples=bootstrap)
  key = path.name
  doc.heading('Critical batch size, every definition side by side', 3)
  doc.table(critical_batch.definitions_table([analysis], digits=4), f'{key}_cbs_definitions')
  doc.items(_fit_lines(analysis))
  for warning in analysis.warnings:
    doc.paragraph(warning, 'warning')
  doc.heading('Steps to target per batch size (best learning rate)', 3)
  names = ['b_simple', *[n for n in analysis.estimators if n != 'b_simple']]
  columns = [c for c in ('optimizer', 'batch_size', 'steps_to_target', 'examples_to_target',
                         'learning_rate', 'momentum', 'num_reached', 'num_not_reached',
                         'num_infeasible', *names) if c in analysis.per_batch_size]
  shown = critical_batch.with_estimate_text(analysis.per_batch_size, names, digits=4)
  doc.table(shown[columns], f'{key}_per_batch_size')
  doc.heading('Fit summary', 3)
  doc.table(analysis.summary, f'{key}_cbs_summary')
  if analysis.sensitivity:
    sensitivity = pd.concat([t.assign(optimizer=o) for o, t in analysis.sensitivity.items()],
                            ignore_index=True)
    doc.heading('Fit sensitivity (one batch size left out, largest sizes dropped)', 3)
    doc.table(sensitivity, f'{key}_fit_sensitivity')
  doc.heading('Figures', 3)
  for name, draw in cbs_figures.FIGURES.items():
    stem = pathlib.Path(name).stem
    caption = (cbs_figures.steps_caption(analysis) if stem == 'steps_vs_batch_size'
               else stem.replace('_', ' '))
    doc.figure(lambda p, draw=draw: draw(analysis, p), f'{key}_{stem}', caption)
    if progress is not None:
      progress.update(1)


# -------------------------------------------------------------------- runs
def curves_figure(metrics: pd.DataFrame) -> Figure:
  """A run's curves (run.metrics) against step, one panel per metric it logged."""
  names = [c for c in ('loss', 'eval_loss', 'eval_accuracy', 'eval_bits_per_character',
                       'learning_rate', 'batch_size', 'b_simple') if c in metrics]
  fig = Figure(figsize=(4.2 * min(len(names), 3), 3.2 * -(-len(names) // 3)),
               layout='constrained')
  axes = fig.subplots(-(-len(names) // 3), min(len(names), 3), squeeze=False).ravel()
  for ax, name in zip(axes, names):
    rows = metrics[['step', name]].dropna()
    ax.plot(rows['step'], rows[name], '.-', ms=3)
    ax.set_xlabel('step')
    ax.set_title(name, fontsize=10)
    ax.grid(True, alpha=0.3)
  for ax in axes[len(names):]:
    ax.set_visible(False)
  return plain_ticks(fig)


def run_section(doc: Document, path: pathlib.Path) -> None:
  run = load_run(path)
  status = run.status
  doc.heading(f'Run: {run.config.name} ({path})')
  c = run.config
  doc.items([f'data {c.data.name}, model {c.model.name} ({c.model.dtype}), task {c.task.name}',
             f'optimizer {c.optim.name}, learning rate {c.optim.learning_rate}, batch size '
             f'{c.train.batch_size}, duration {c.train.duration}, seed {c.train.seed}',
             f'status: {status.get("status")} ({status.get("reason")}) at step '
             f'{status.get("step")}, wall time {_fmt(status.get("wall_time"))} s on '
             f'{status.get("num_devices")} {status.get("backend")} device(s)'])
  final = {k: v for k, v in status.items()
           if k.startswith(('eval_', 'train_', 'test_', 'steps_to'))}
  if final:
    doc.table(pd.DataFrame([final]), f'{path.name}_final')
  if not run.metrics.empty:
    doc.figure(lambda p: curves_figure(run.metrics).savefig(p, dpi=110), f'{path.name}_curves',
               'training curves')
  analysis_dir = path / 'analysis'
  for summary_file in sorted(analysis_dir.glob('*.json')) if analysis_dir.is_dir() else []:
    summary = json.loads(summary_file.read_text())
    scalars = analysis_numbers(summary) if isinstance(summary, dict) else {}
    if scalars:
      doc.heading(summary_file.stem.replace('_', ' '), 3)
      doc.table(pd.DataFrame([scalars]), f'{path.name}_{summary_file.stem}')
    image = summary_file.with_suffix('.png')
    if image.exists():
      doc.figure(lambda p, image=image: p.write_bytes(image.read_bytes()),
                 f'{path.name}_{image.stem}', image.stem.replace('_', ' '))


# ------------------------------------------------------------------ studies
STUDY_FILE = 'summary.json'  # what `mbx study` writes (mbx/study/context.py)


def study_section(doc: Document, path: pathlib.Path) -> None:
  """A study directory: its command, machine and timings, findings, protocol, then the
  tables and figures its README shows, in that order."""
  summary = json.loads((path / STUDY_FILE).read_text())
  doc.heading(f'Study {summary["study"]}: {summary["title"]} ({path})')
  last = summary['invocations'][-1]
  machine = summary['machine']
  doc.items([f'command: {summary["command"]}',
             f'wall time {last["wall_time_s"] / 60:.1f} min ({last["trained_runs"]} runs '
             f'trained, {last["reused_runs"]} reused) on {machine["devices"]} '
             f'{machine["backend"]} device(s), {machine["cpus"]} CPU cores, jax {machine["jax"]}'
             + (' — quick (smoke-sized) run' if summary.get('quick') else '')])
  doc.heading('Findings', 3)
  doc.items(summary['findings'])
  doc.heading('Protocol', 3)
  doc.items(summary['protocol'])
  for item in summary.get('shown', []):
    if 'table' in item:
      doc.heading(item['title'], 3)
      doc.table(pd.read_csv(path / f'{item["table"]}.csv'), f'{path.name}_{item["table"]}')
    elif (path / item['figure']).exists():
      image = path / item['figure']
      doc.figure(lambda p, image=image: p.write_bytes(image.read_bytes()),
                 f'{path.name}_{image.stem}', item['title'])


def analysis_numbers(summary: dict) -> dict:
  """The headline numbers of an analysis JSON (`mbx analyze ...`): metrics per split, the
  generalisation gap, ε-sharpness per space and ε, λ_max, tr(H), and top-level scalars."""
  numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
  for split in ('train', 'validation', 'test', 'generalization_gap'):
    for name, value in (summary.get(split) or {}).items():
      if isinstance(value, (int, float)):
        numbers[f'{split}_{name}'] = value
  for result in (summary.get('sharpness') or {}).get('results', []):
    numbers[f'sharpness_{result["space"]}_{result["epsilon"]:g}'] = result['sharpness']
  curvature = summary.get('hessian') or {}
  if 'top_eigenvalues' in curvature:
    numbers['lambda_max'] = curvature['top_eigenvalues']['eigenvalues'][0]
  if 'trace' in curvature:
    numbers['trace'] = curvature['trace']['trace']
  return numbers


# ------------------------------------------------------------------ driver
def kind_of(path: pathlib.Path) -> str:
  if (path / STUDY_FILE).exists():
    return 'study'
  if (path / runner.TABLE_FILE).exists() or (path / runner.SPEC_FILE).exists():
    return 'sweep'
  if (path / 'config.json').exists():
    return 'run'
  raise config_lib.ConfigError(f'{path}: neither a study ({STUDY_FILE}), a sweep '
                               f'({runner.TABLE_FILE} or {runner.SPEC_FILE}) nor a run '
                               'directory (config.json)')


def write_report(paths: Sequence[str | pathlib.Path], out: str | pathlib.Path, *,
                 target: tuple[str, float] | None = None, command: str = '',
                 bootstrap: int = 1000, quiet: bool = False) -> tuple[pathlib.Path,
                                                                      pathlib.Path]:
  """Writes `out` (.html) and its Markdown twin (.md) with `<out>_files/`; returns both."""
  paths = [pathlib.Path(p) for p in paths]
  kinds = [kind_of(p) for p in paths]  # every bad path before any work
  out = pathlib.Path(out).with_suffix('.html')
  doc = Document(files_dir=out.with_name(out.stem + '_files'))
  doc.heading('mbx report', 1)
  versions = _versions()
  doc.items([f'generated {time.strftime("%Y-%m-%d %H:%M")} by `{command or "mbx report"}`',
             f'machine: {platform.machine()}, {platform.system()} {platform.release()}',
             'versions: ' + ', '.join(f'{k} {v}' for k, v in versions.items())])
  steps = sum(len(cbs_figures.FIGURES) if k == 'sweep' else 1 for k in kinds)
  with tqdm(total=steps, desc='report', unit='figure', disable=quiet) as progress:
    for path, kind in zip(paths, kinds):
      if kind == 'study':
        study_section(doc, path)
        progress.update(1)
      elif kind == 'sweep':
        sweep_section(doc, path, target=target, bootstrap=bootstrap, progress=progress)
      else:
        run_section(doc, path)
        progress.update(1)
  title = 'mbx report: ' + ', '.join(p.name for p in paths)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
                 f'{html.escape(title)}</title><style>{CSS}</style></head><body>\n'
                 + '\n'.join(doc.html_parts) + '\n</body></html>\n')
  markdown = out.with_suffix('.md')
  markdown.write_text('\n'.join(doc.md_parts))
  return out, markdown
