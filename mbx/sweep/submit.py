"""`mbx sweep --submit slurm`: a sweep's worker shards as one SLURM job array, through submitit.

Each array task runs `run_sweep(..., worker=i, num_workers=n)`, exactly what `mbx sweep
--worker i --num-workers n` does on a machine of its own; the trials' locks and resume rules
are the same. `--submit local` runs the same jobs as local processes (submitit's local
executor), which is how the path is tested without SLURM.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from mbx import config as config_lib
from mbx import registry
from mbx.optim import declared as optim_declared
from mbx.sweep import grid as grid_lib

CLUSTERS = ('slurm', 'local')
LOG_DIR = 'submitit'


@dataclasses.dataclass(frozen=True)
class SubmitOptions:
  """What the job array asks for; from the sweep config's `submit` mapping, then the CLI."""
  partition: str | None = None
  """The SLURM partition; None: the cluster's default."""
  time: str = '4:00:00'
  """Time limit per array task: minutes, or [D-]HH:MM:SS."""
  gpus_per_task: int = 0
  """GPUs per array task."""
  cpus_per_task: int | None = None
  """CPUs per array task; None: the cluster's default."""
  mem_gb: float | None = None
  """Memory per array task in GB; None: the cluster's default."""
  array_parallelism: int | None = None
  """At most this many array tasks at once; None: no limit."""
  slurm_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  """Further sbatch options, e.g. {'account': 'my_lab'}."""

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any], where: str) -> 'SubmitOptions':
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
      raise config_lib.ConfigError(f'{where}: unknown field {unknown[0]}; '
                                   f'{registry.suggest(unknown[0], fields)}')
    options = cls(**values)
    options.timeout_minutes()  # checks the format
    return options

  def timeout_minutes(self) -> int:
    text = str(self.time).strip()
    if re.fullmatch(r'\d+', text):
      return int(text)
    match = re.fullmatch(r'(?:(\d+)-)?(\d+):(\d{2}):(\d{2})', text)
    if not match:
      raise config_lib.ConfigError(f'time={self.time!r}: use minutes or [D-]HH:MM:SS, e.g. '
                                   "'4:00:00'")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return max(1, days * 1440 + hours * 60 + minutes + (seconds > 0))

  def executor_parameters(self, name: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters (the slurm_ ones are ignored by the local executor)."""
    parameters: dict[str, Any] = {'name': name, 'timeout_min': self.timeout_minutes(),
                                  'gpus_per_node': self.gpus_per_task, 'tasks_per_node': 1,
                                  'nodes': 1}
    if self.cpus_per_task is not None:
      parameters['cpus_per_task'] = self.cpus_per_task
    if self.mem_gb is not None:
      parameters['mem_gb'] = self.mem_gb
    if self.partition is not None:
      parameters['slurm_partition'] = self.partition
    if self.array_parallelism is not None:
      parameters['slurm_array_parallelism'] = self.array_parallelism
    if self.slurm_options:
      parameters['slurm_additional_parameters'] = dict(self.slurm_options)
    return parameters


def _array_task(sweep: grid_lib.SweepConfig, sweep_dir: str, worker: int,
                num_workers: int) -> dict[str, int]:
  from mbx.sweep import runner  # pylint: disable=import-outside-toplevel  (jax)
  progress = runner.run_sweep(sweep, sweep_dir, worker=worker, num_workers=num_workers,
                              compilation_cache=True)
  if progress.failed:
    raise RuntimeError(f'worker {worker}: trials failed: {", ".join(progress.failed)}; '
                       're-submit to retry them')
  return {'trained': len(progress.trained), 'skipped': len(progress.skipped),
          'locked': len(progress.locked)}


def submit(sweep: grid_lib.SweepConfig, sweep_dir: str | pathlib.Path, *, cluster: str,
           num_workers: int, options: SubmitOptions) -> list:
  """Submits the job array; returns the submitit jobs (one per worker shard)."""
  if cluster not in CLUSTERS:
    raise config_lib.ConfigError(f'--submit={cluster!r}: {registry.suggest(cluster, CLUSTERS)}')
  if num_workers < 1:
    raise config_lib.ConfigError(f'--num-workers={num_workers}: must be at least 1')
  for trial in grid_lib.expand(sweep):  # every config error before anything is submitted
    optim_declared.validate(trial.config)
  from mbx.sweep import runner  # pylint: disable=import-outside-toplevel  (jax)
  runner.check_spec(sweep_dir, sweep)
  import submitit  # pylint: disable=import-outside-toplevel  (only this command needs it)
  sweep_dir = pathlib.Path(sweep_dir).absolute()
  executor = submitit.AutoExecutor(folder=sweep_dir / LOG_DIR / '%j', cluster=cluster)
  executor.update_parameters(**options.executor_parameters(f'mbx-{sweep.name}'))
  workers = list(range(num_workers))
  return executor.map_array(_array_task, [sweep] * num_workers, [str(sweep_dir)] * num_workers,
                            workers, [num_workers] * num_workers)


def _trials_task(trials: list[grid_lib.Trial], sweep_dir: str, worker: int,
                 num_workers: int, name: str, pack: bool = False,
                 pack_max_batch_size: int | None = None) -> dict[str, int]:
  from mbx.sweep import runner  # pylint: disable=import-outside-toplevel  (jax)
  progress = runner.run_trials(trials, sweep_dir, worker=worker, num_workers=num_workers,
                               name=name, compilation_cache=True, table=False, pack=pack,
                               pack_max_batch_size=pack_max_batch_size)
  if progress.failed:
    raise RuntimeError(f'worker {worker}: trials failed: {", ".join(progress.failed)}')
  return {'trained': len(progress.trained), 'skipped': len(progress.skipped)}


def submit_trials(trials: list[grid_lib.Trial], sweep_dir: str | pathlib.Path, *, cluster: str,
                  num_workers: int, name: str, options: SubmitOptions | None = None,
                  wait: bool = True, pack: bool = False,
                  pack_max_batch_size: int | None = None) -> list[str]:
  """A study phase's `trials` as a job array of `num_workers` shards (packed as
  `runner.run_trials` packs them); with `wait`, returns one line per failed job once all have
  ended (the trials' status.json say the rest)."""
  if cluster not in CLUSTERS:
    raise config_lib.ConfigError(f'--submit={cluster!r}: allowed: {", ".join(CLUSTERS)}')
  import submitit  # pylint: disable=import-outside-toplevel
  sweep_dir = pathlib.Path(sweep_dir).absolute()
  options = options or SubmitOptions()
  executor = submitit.AutoExecutor(folder=sweep_dir / LOG_DIR / '%j', cluster=cluster)
  executor.update_parameters(**options.executor_parameters(f'mbx-{name}'))
  n = max(1, min(num_workers, len(trials)))
  jobs = executor.map_array(_trials_task, [trials] * n, [str(sweep_dir)] * n, list(range(n)),
                            [n] * n, [name] * n, [pack] * n, [pack_max_batch_size] * n)
  return _failures(jobs) if wait else []


def _failures(jobs) -> list[str]:
  failures = []
  for worker, job in enumerate(jobs):
    try:
      job.result()
    except Exception as error:  # pylint: disable=broad-except  (reported, the others go on)
      lines = [line for line in str(error).strip().splitlines() if line.strip()]
      failures.append(f'worker {worker} (job {job.job_id}): {lines[-1] if lines else error}'
                      f'; log: {job.paths.stderr}')
  return failures


def wait(jobs, sweep_dir: str | pathlib.Path) -> list[str]:
  """Waits for every job; rewrites trials.csv; returns one line per failed job."""
  failures = _failures(jobs)
  from mbx.sweep import runner  # pylint: disable=import-outside-toplevel  (jax)
  runner.write_table(pathlib.Path(sweep_dir))
  return failures
