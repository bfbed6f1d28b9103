"""What every study shares: training its grids (only the unfinished runs), timing its phases,
and writing its directory.

    <runs>/trials/<trial_id>/  one ordinary run directory per configuration the study trains
                               (runs defaults to out)
    <out>/<table>.csv|.md      each table, as data and as Markdown
    <out>/<figure>.png         each figure
    <out>/summary.json         the command, machine, options, timings and every table's rows
    <out>/README.md            command, machine, wall time, protocol, findings, tables, figures;
                               its '## Interpretation' section is written by hand and kept

A trial's identity is its hyperparameters and the hash of its resolved config (the sweep's
trial id), so re-running a study, or growing it (more seeds, learning rates or batch sizes),
trains only what is new.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from mbx import config as config_lib
from mbx.figures import readme as readme_text

SUMMARY_FILE = 'summary.json'


def machine() -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  return {'cpus': os.cpu_count(), 'arch': platform.machine(), 'python': platform.python_version(),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': jax.device_count(), 'device_kind': jax.devices()[0].device_kind,
          'load_average_1min': os.getloadavg()[0]}


def machine_text(info: Mapping[str, Any]) -> str:
  return (f'{info["devices"]} {info["backend"]} device(s) ({info["device_kind"]}), '
          f'{info["cpus"]} CPU cores ({info["arch"]}), jax {info["jax"]}'
          + (f'; load average {info["load_average_1min"]:.1f} when it ended (other work on the '
             'machine stretches wall times)' if info.get('load_average_1min', 0) > 1.5 * (
                 info['cpus'] or 1) else ''))


@dataclasses.dataclass
class StudyContext:
  """Handed to a study's `run`: its config and options, and where its outputs go."""
  study: str
  config: config_lib.Config
  options: Any
  out: pathlib.Path
  quick: bool = False
  workers: int = 1
  submit: str | None = None
  command: str = ''
  log: Callable[[str], None] = functools.partial(print, file=sys.stderr, flush=True)
  trained: int = 0
  reused: int = 0
  phases: dict[str, float] = dataclasses.field(default_factory=dict)
  sections: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
  tables: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
  findings: list[str] = dataclasses.field(default_factory=list)
  protocol: list[str] = dataclasses.field(default_factory=list)
  results: dict[str, Any] = dataclasses.field(default_factory=dict)
  shown: list[dict[str, str]] = dataclasses.field(default_factory=list)  # README order

  runs: pathlib.Path | None = None  # where trials/ goes (None: `out`); tables stay in out

  def __post_init__(self):
    self.runs = pathlib.Path(self.runs) if self.runs is not None else self.out

  # ------------------------------------------------------------------ training
  def train(self, configs: Mapping[Any, config_lib.Config], phase: str, *,
            pack_max_batch_size: int | None = None) -> dict[Any, Any]:
    """Trains every config not already finished in this study's directory (in `workers`
    processes, or as a job array with `submit`); returns {key: Run}. Trials that fail stop
    the study with one line naming them (re-running retries them).

    `pack_max_batch_size`: configs with B at most this that differ only in the LR, momentum
    or seed train as one vmapped program (mbx.training.loop.train_packed); None: one by one.
    Workers are dealt whole packs, in the order of `configs`."""
    from mbx.sweep import grid, runner  # pylint: disable=import-outside-toplevel
    from mbx.training.records import load_run  # pylint: disable=import-outside-toplevel
    tic = time.perf_counter()
    trials = {key: grid.Trial.of(config) for key, config in configs.items()}
    unique = list({t.id: t for t in trials.values()}.values())
    for trial in unique:
      config_lib.validate(trial.config)
    todo = [t for t in unique if not runner.is_finished(self.runs, t)]
    self.reused += len(unique) - len(todo)
    self.log(f'{self.study}: {phase}: {len(unique)} runs, {len(unique) - len(todo)} '
             f'already finished, training {len(todo)}')
    if todo:
      self._train(todo, phase, pack_max_batch_size)
    failed = [t.id for t in todo if not runner.is_finished(self.runs, t)]
    self.trained += len(todo) - len(failed)
    if failed:
      reasons = {runner.read_status(runner.trial_dir(self.runs, t)).get('reason') for t in failed}
      raise config_lib.ConfigError(
          f'{phase}: {len(failed)} run(s) failed ({"; ".join(sorted(map(str, reasons)))}); '
          f'first: {runner.trial_dir(self.runs, failed[0])}; re-running the study retries them')
    self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - tic
    return {key: load_run(runner.trial_dir(self.runs, t)) for key, t in trials.items()}

  def _train(self, trials: list, phase: str, pack_max_batch_size: int | None) -> None:
    from mbx.sweep import runner, submit  # pylint: disable=import-outside-toplevel
    pack = dict(pack=pack_max_batch_size is not None, pack_max_batch_size=pack_max_batch_size)
    run = functools.partial(runner.run_trials, name=f'{self.study}/{phase}', table=False,
                            **pack)
    if self.submit:
      submit.submit_trials(trials, self.runs, cluster=self.submit, num_workers=self.workers,
                           name=f'{self.study}-{phase}', wait=True, **pack)
    elif self.workers > 1:
      runner.in_processes(run, (trials, str(self.runs)), min(self.workers, len(trials)))
    else:
      run(trials, self.runs, log=self.log)

  def timed(self, phase: str):
    """`with ctx.timed('analysis'):` adds the block's wall time to the phase."""
    return _Timer(self, phase)

  # ------------------------------------------------------------------ outputs
  def table(self, name: str, rows: Sequence[Mapping[str, Any]] | pd.DataFrame,
            title: str | None = None, markdown: list[str] | None = None,
            note: str | None = None) -> pd.DataFrame:
    """Writes <name>.csv and <name>.md and adds the table (`markdown`, else every column) to
    the README under `title` (None: files only)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    self.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(self.out / f'{name}.csv', index=False)
    lines = markdown if markdown is not None else markdown_table(frame)
    (self.out / f'{name}.md').write_text('\n'.join(lines) + '\n')
    self.tables[name] = json.loads(frame.to_json(orient='records'))
    if title is not None:
      self.shown.append({'table': name, 'title': title})
      self.sections.append((title, [*lines, *([''] + [note] if note else []),
                                    '', f'(`{name}.csv`)']))
    return frame

  def figure(self, name: str, caption: str) -> pathlib.Path:
    """The path to draw <name>.png at; the README shows it under the last section."""
    path = self.out / f'{name}.png'
    self.shown.append({'figure': f'{name}.png', 'title': caption})
    self.sections.append(('', [f'![{caption}]({name}.png)', '', f'*{caption}*']))
    return path

  def section(self, title: str, lines: Sequence[str]) -> None:
    self.sections.append((title, list(lines)))


class _Timer:

  def __init__(self, ctx: StudyContext, phase: str):
    self.ctx, self.phase = ctx, phase

  def __enter__(self):
    self.tic = time.perf_counter()
    return self

  def __exit__(self, *exc):
    elapsed = time.perf_counter() - self.tic
    self.ctx.phases[self.phase] = self.ctx.phases.get(self.phase, 0.0) + elapsed


# ------------------------------------------------------------------ checks
def task_metrics(config: config_lib.Config) -> dict[str, str]:
  """The metrics the config's task declares, with which way is better."""
  from mbx.tasks import resolve_task  # pylint: disable=import-outside-toplevel
  try:
    return dict(resolve_task(config.task.name, config.task.options).metrics)
  except ValueError as error:
    raise config_lib.ConfigError(str(error)) from None


def check_metric(value: str, field: str, config: config_lib.Config,
                 prefixes: tuple[str, ...] = ('eval', 'train')) -> str:
  """`value` = '<prefix>_<metric>' with a metric the task declares; returns the metric."""
  metrics = task_metrics(config)
  prefix, _, name = str(value).partition('_')
  if prefix not in prefixes or name not in metrics:
    allowed = ', '.join(f'{p}_{m}' for p in prefixes for m in metrics)
    raise config_lib.ConfigError(f'{field}={value!r}: not a metric of task '
                                 f'{config.task.name!r}; allowed: {allowed}')
  return name


def check_seeds(seeds, tuning_seed: int | None = None) -> None:
  """At least one reported seed, and a tuning seed that none of them is."""
  if not seeds:
    raise config_lib.ConfigError('study.seeds=(): at least one seed')
  if tuning_seed is not None and tuning_seed in seeds:
    raise config_lib.ConfigError(f'study.tuning_seed={tuning_seed}: also in study.seeds='
                                 f'{tuple(seeds)}; the LR must be tuned on a seed no reported '
                                 'run uses')


# ------------------------------------------------------------------ writing
def _cell(value: Any) -> str:
  if isinstance(value, float):
    return readme_text.fmt(value, 4)
  return '—' if value is None else str(value).replace('|', '\\|')  # |G|² in a table cell


def markdown_table(frame: pd.DataFrame) -> list[str]:
  columns = list(frame.columns)
  lines = ['| ' + ' | '.join(map(str, columns)) + ' |', '|' + '---|' * len(columns)]
  for row in frame.itertuples(index=False):
    lines.append('| ' + ' | '.join(_cell(v) for v in row) + ' |')
  return lines


def _jsonable(value: Any) -> Any:
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if hasattr(value, 'item'):
    return value.item()
  return value


def write(ctx: StudyContext, title: str, wall_time: float) -> dict[str, Any]:
  """summary.json and README.md of a finished study; returns the summary."""
  path = ctx.out / SUMMARY_FILE
  previous = json.loads(path.read_text()) if path.exists() else {}
  invocation = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
                'command': ctx.command, 'wall_time_s': wall_time, 'trained_runs': ctx.trained,
                'reused_runs': ctx.reused, 'phases_s': ctx.phases}
  invocations = [*previous.get('invocations', []), invocation]
  info = machine()
  summary = {'study': ctx.study, 'title': title, 'command': ctx.command, 'quick': ctx.quick,
             'machine': info, 'options': _jsonable(ctx.options),
             'config': config_lib.to_dict(ctx.config), 'invocations': invocations,
             'protocol': ctx.protocol, 'findings': ctx.findings,
             'results': _jsonable(ctx.results), 'shown': ctx.shown,
             'tables': _jsonable(ctx.tables)}
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_text(json.dumps(summary, indent=1, default=str) + '\n')
  os.replace(tmp, path)
  trained_wall = sum(i['wall_time_s'] for i in invocations)
  phases = ', '.join(f'{k} {v:.0f} s' for k, v in ctx.phases.items())
  lines = [f'# {title}', '',
           f'Command: `{ctx.command}`', '',
           f'Wall time: {wall_time / 60:.1f} min for this invocation ({phases}; '
           f'{ctx.trained} runs trained, {ctx.reused} found finished and reused)'
           + (f', {trained_wall / 60:.1f} min over all {len(invocations)} invocations that '
              'built this directory' if len(invocations) > 1 else '')
           + f', on {machine_text(info)}. Config: `{ctx.config.name}`'
           + (' (--quick: a smoke-sized version; its numbers are not the study\'s answer)'
              if ctx.quick else '') + '.', '',
           '## Findings (computed from the tables below)', '',
           *(f'- {f}' for f in ctx.findings), '',
           '## Protocol', '', *(f'- {p}' for p in ctx.protocol), '']
  for heading, body in ctx.sections:
    if heading:
      lines += [f'## {heading}', '']
    lines += [*body, '']
  lines += ['## Interpretation', '', readme_text.PLACEHOLDER, '', '## Files', '',
            'summary.json holds every table\'s rows, the options, the resolved config and the '
            'timings of each invocation; trials/ holds one run directory per trained '
            'configuration (`mbx.load_run`).', '']
  readme_text.write_keeping_interpretation(ctx.out / 'README.md', '\n'.join(lines))
  return summary
