"""Where a run stands, read from its folder: done, running, queued, failed or partial.

The report (`rstg_jax.report`) shows it per run, and launch/sweep.py asks it which runs
still need starting. A run is done when the trainer wrote DONE (or, for runs from before
DONE existed, when metrics.jsonl has a test row at the last step); running while a process
holds the run folder's lock (WORKDIR/.lock, `rstg_jax.train.workdir_lock`: the run itself
or the local sweep that started it); running or queued while the SLURM array task a sweep
submitted is in `squeue`; failed when the local sweep recorded a non-zero exit code in
sweep.json. The readers tolerate a line being written or cut short by a kill, so all of
this works while the runs go on; metrics rows whose 'step' is not a whole number >= 0 are
skipped with one warning line per file.
"""

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Optional

from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import workdir_lock


def read_json(path: str) -> Optional[Any]:
  """The JSON value in a file; None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


_WARNED: set[str] = set()  # metrics files whose bad rows were reported


def read_jsonl(path: str) -> list[dict]:
  """The rows of a metrics.jsonl, skipping lines cut short; [] when it is missing.

  Rows whose 'step' is not a whole number >= 0 are skipped, with one line on stderr per
  file.
  """
  rows, bad = [], []
  try:
    with open(path) as f:
      for number, line in enumerate(f, start=1):
        line = line.strip()
        if not line:
          continue
        try:
          row = json.loads(line)
        except ValueError:
          continue  # a line cut short by a kill, or being written right now
        if metrics_lib.bad_step(row):
          bad.append((number, row))
        else:
          rows.append(row)
  except OSError:
    pass
  if bad and path not in _WARNED:
    _WARNED.add(path)
    print(metrics_lib.bad_step_line(path, bad, 'skipped'), file=sys.stderr, flush=True)
  return rows


def slurm_state(rundir: str) -> Optional[str]:
  """'running' or 'queued' while the SLURM array task a sweep submitted for the run
  is in `squeue`; None otherwise (or without squeue)."""
  job = (read_json(os.path.join(rundir, 'sweep.json')) or {}).get('slurm_job')
  if not job or not shutil.which('squeue'):
    return None
  try:
    out = subprocess.run(['squeue', '-h', '-j', str(job), '-o', '%T'], capture_output=True,
                         text=True, timeout=30).stdout.split()
  except (OSError, subprocess.SubprocessError):
    return None
  if not out:
    return None
  return 'queued' if out[0] in ('PENDING', 'CONFIGURING', 'REQUEUED') else 'running'


def run_status(rundir: str, rows: Optional[list] = None,
               total: Optional[int] = None) -> str:
  """'done', 'running', 'queued', 'failed (EXIT CODE)', 'partial' (started, unfinished,
  idle) or 'new'.

  Finished: the trainer wrote DONE at the end, or metrics.jsonl has a test row at the
  last training step (runs from before DONE existed).
  """
  if os.path.exists(os.path.join(rundir, 'DONE')):
    return 'done'
  if rows is None:
    rows = read_jsonl(os.path.join(rundir, 'metrics.jsonl'))
  if total is not None and any(r.get('split') == 'test' and r.get('step', -1) >= total
                               for r in rows):
    return 'done'
  if workdir_lock.live_run(rundir):
    return 'running'
  state = slurm_state(rundir)
  if state:
    return state
  exit_code = (read_json(os.path.join(rundir, 'sweep.json')) or {}).get('exit_code')
  if exit_code:  # the local sweep's last attempt failed (see its log.txt)
    return f'failed ({exit_code})'
  if rows or os.path.isdir(os.path.join(rundir, 'checkpoints')):
    return 'partial'
  return 'new'
