"""The run directory and its lock, importable without JAX: the CLI checks the lock before
loading the training stack, so a second `mbx train` on a busy run exits at once."""
from __future__ import annotations

import fcntl
import os
import pathlib
import time

from mbx import config as config_lib

LOCK_FILE = '.lock'


def default_workdir(config: config_lib.Config) -> pathlib.Path:
  """Where a run goes without --workdir: runs/<config name>."""
  return pathlib.Path('runs') / config.name


def holder_of(workdir: str | pathlib.Path) -> str | None:
  """The PID holding `workdir`'s lock, or None when no process trains it (nothing written)."""
  path = pathlib.Path(workdir) / LOCK_FILE
  if not path.exists():
    return None
  with open(path, 'r') as file:  # pylint: disable=unspecified-encoding
    try:
      fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return file.read().strip() or 'unknown'
    fcntl.flock(file, fcntl.LOCK_UN)
  return None


def busy_error(workdir: str | pathlib.Path, holder: str) -> config_lib.ConfigError:
  return config_lib.ConfigError(
      f'{workdir}: another process (PID {holder}) is training this run; wait for it '
      'to finish (then re-run to resume) or choose another --workdir')


class RunLock:
  """An exclusive flock on <run>/.lock, held while one process trains the run; the kernel
  releases it when the process dies, even on SIGKILL, so a crashed run never stays locked."""

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self.created = not self.workdir.exists()
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.file = open(self.workdir / LOCK_FILE, 'a+')  # pylint: disable=consider-using-with
    for attempt in range(3):  # `holder_of`'s probe holds a shared lock for microseconds
      try:
        fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if attempt < 2:
          time.sleep(0.05)
          continue
        self.file.seek(0)
        holder = self.file.read().strip() or 'unknown'
        self.file.close()
        raise busy_error(self.workdir, holder) from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f'{os.getpid()}\n')
    self.file.flush()

  def release(self, *, remove_if_new: bool = False) -> None:
    """Unlocks; with remove_if_new, a run directory this lock created and nothing else wrote
    to is removed again (a run that failed before it started leaves nothing behind)."""
    if self.file.closed:
      return
    self.file.close()
    if remove_if_new and self.created:
      (self.workdir / LOCK_FILE).unlink(missing_ok=True)
      try:
        self.workdir.rmdir()
      except OSError:
        pass  # something else was written: keep it
