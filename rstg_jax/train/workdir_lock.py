"""One run per workdir, and safe sharing of files between runs: OS-level file locks.

A run (`python -m rstg_jax.main`, process 0 of a multi-process run) holds an exclusive
`fcntl.flock` on WORKDIR/.lock for its whole life: `hold_for_run(workdir)`. The kernel
releases it when the process ends, however it ends (kill -9 included), so a lock is never
stale. A second run on a live workdir stops before touching anything, with one line that
names the workdir and the holder's pid and host (written into the lock file by the holder).

- `launch/sweep.py` takes a run's lock itself (`acquire`) before it writes into the run's
  folder, and hands it to the `main` it starts (an inherited file descriptor named in
  RSTG_WORKDIR_LOCK_FD): two sweeps over one folder cannot start the same run twice.
- `live_run(workdir)` says whether a run holds the lock (the report's "running" status);
  it never creates the lock file and holds nothing.
- `reading(workdir)` is for readers of checkpoints (`rstg_jax.evaluate`): a shared lock,
  so that no run starts, saves or prunes checkpoints while they read. While a run holds
  the workdir the reader does not wait: it is told so and must cope with a checkpoint the
  run prunes (fall back to another).
- `exclusive(path)` is a blocking lock on any file, e.g. around "load the cached
  backbone, or pre-train and save it", so that runs sharing a cache pre-train once.

flock works across hosts on local file systems and on NFSv4 (Linux emulates it with
byte-range locks there); on a file system without locks, `flock` fails with an OSError
that is reported as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator, Optional

LOCK_NAME = '.lock'
#: The environment variable through which launch/sweep.py hands a held lock to `main`.
ENV_FD = 'RSTG_WORKDIR_LOCK_FD'
#: How long a run retries before it calls a workdir busy (a probe holds it for
#: microseconds; a run for hours).
RETRY_SECONDS = 1.0

_HELD: dict[str, int] = {}  # lock path -> file descriptor, held until the process ends


class WorkdirBusy(RuntimeError):
  """Another process holds the lock; the message is one line naming it."""


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def _try(fd: int, mode: int) -> bool:
  try:
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


def _write_holder(fd: int, role: str) -> None:
  info = {'pid': os.getpid(), 'host': socket.gethostname(), 'role': role,
          'since': time.strftime('%Y-%m-%d %H:%M:%S')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)


def holder(path: str) -> str:
  """Who holds the lock at `path`, as the holder wrote it: 'pid 123 on host h (a run,
  since ...)'."""
  for _ in range(20):  # the holder writes its line just after it locks
    try:
      with open(path, encoding='utf-8') as f:
        info = json.loads(f.read() or 'null')
    except (OSError, ValueError):
      info = None
    if isinstance(info, dict):
      pid, host = info.get('pid'), info.get('host')
      if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        break  # the last holder has ended: now a reader holds it (readers write nothing)
      return f'pid {pid} on host {host} ({info.get("role")}, since {info.get("since")})'
    time.sleep(0.05)
  return 'a reader that did not say which (such as rstg_jax.evaluate)'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # another user's process
    return True
  return True


def _inherited(path: str) -> Optional[int]:
  """The descriptor of `path`'s lock that launch/sweep.py handed down, if it is one."""
  try:
    fd = int(os.environ.get(ENV_FD, ''))
    same = os.path.samestat(os.fstat(fd), os.stat(path))
  except (ValueError, OSError):
    return None
  return fd if same and _try(fd, fcntl.LOCK_EX) else None  # ours: re-locking succeeds


def acquire(workdir: str, role: str = 'a run') -> int:
  """Holds `workdir`'s lock exclusively until `release` or the end of the process.

  Returns:
    The lock file's descriptor (launch/sweep.py passes it to the run it starts).

  Raises:
    WorkdirBusy: another process holds it (after `RETRY_SECONDS`).
    OSError: the lock file cannot be created or locked.
  """
  path = lock_path(workdir)
  fd = _HELD.get(path) or _inherited(path)
  if fd is None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + RETRY_SECONDS
    while not _try(fd, fcntl.LOCK_EX):
      if time.monotonic() > deadline:
        os.close(fd)
        raise WorkdirBusy(
            f'workdir {workdir} is in use by {holder(path)}; wait for that run to end '
            '(or stop it), or choose another --workdir.')
      time.sleep(0.05)
  elif not _try(fd, fcntl.LOCK_EX):  # held shared by this process (a reader): upgrade
    raise WorkdirBusy(f'workdir {workdir} is being read by another process; try again.')
  _HELD[path] = fd
  _write_holder(fd, role)
  return fd


def release(workdir: str) -> None:
  fd = _HELD.pop(lock_path(workdir), None)
  if fd is not None:
    os.close(fd)  # closing the last descriptor of the open file releases the lock


def hold_for_run(workdir: str) -> None:
  """`main`'s call once the workdir exists: process 0 takes the lock for the whole run;
  every process stops with one line (SystemExit) if another run holds it."""
  import jax  # pylint: disable=g-import-not-at-top  # keeps this module light for report
  error = None
  if jax.process_index() == 0:
    try:
      acquire(workdir)
    except (WorkdirBusy, OSError) as e:
      error = f'{e}' if isinstance(e, WorkdirBusy) else f'cannot lock {workdir}: {e}'
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    busy = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if busy and error is None:
      error = f'process 0 could not lock workdir {workdir} (see its output)'
  if error:
    raise SystemExit(f'ERROR: {error}')


def live_run(workdir: str) -> Optional[str]:
  """'pid .. on host ..' of the run that holds `workdir`, or None; creates nothing."""
  path = lock_path(workdir)
  if path in _HELD:
    return holder(path)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    return None if _try(fd, fcntl.LOCK_SH) else holder(path)
  finally:
    os.close(fd)  # releases the shared lock the probe may have taken


@contextlib.contextmanager
def reading(workdir: str, say: Callable[[str], None] = print) -> Iterator[Optional[str]]:
  """A shared lock on `workdir` for the block, so that no run starts in it meanwhile.

  Yields None, or, while a run holds the workdir, that run's description (after saying
  that a checkpoint may disappear while it is read); then nothing is held.
  """
  path = lock_path(workdir)
  fd = None
  if path not in _HELD:
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # a read-only copy: no lock
      with contextlib.suppress(OSError):
        fd = os.open(path, flags, 0o644)
        break
  try:
    if fd is not None and not _try(fd, fcntl.LOCK_SH):
      live = holder(path)
      say(f'note: a run ({live}) is training in {workdir}; a checkpoint it removes while '
          'it is read is skipped.')
      yield live
    else:
      yield None
  finally:
    if fd is not None:
      os.close(fd)


@contextlib.contextmanager
def exclusive(path: str, waiting: Optional[str] = None,
              role: str = 'a lock') -> Iterator[None]:
  """Holds an exclusive lock on the file `path` (created) for the block, waiting for it;
  prints `waiting` (with the holder) to stderr when it has to wait."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    if not _try(fd, fcntl.LOCK_EX):
      if waiting:
        print(f'{waiting} (held by {holder(path)})', file=sys.stderr, flush=True)
      fcntl.flock(fd, fcntl.LOCK_EX)
    _write_holder(fd, role)
    yield
  finally:
    os.close(fd)
