"""What a run writes besides its checkpoints, from process 0 only.

- metrics.jsonl (`metrics.JsonlWriter`), each row stamped with 'elapsed': wall seconds of
  the run so far, summed over its resumptions (a resumed run continues from the last row
  it kept), so a report can show the wall time of a run that was stopped and restarted;
- TensorBoard event files in the workdir itself, one scalar per numeric field of each row
  under '<split>/<field>' (train/loss, train/lr, train/videos_per_sec, val/top1, test/top5,
  ...), so `tensorboard --logdir SWEEP_DIR` shows the runs of a sweep side by side. They
  are written with tensorboardX, which does not import TensorFlow (the SyncMNIST process
  stays TF-free); a resumed run purges the events after its checkpoint. Without
  tensorboardX installed the run goes on without events, with one warning;
- config.json at start ({'config', 'total_steps', processes, devices, command}) and DONE
  at the end: launch/sweep.py skips runs with DONE; rstg_jax.report reads both.
Every file is replaced atomically (temporary file + rename).
"""

import json
import os
import sys
import time
from typing import Optional

from rstg_jax.train import metrics as metrics_lib

DONE = 'DONE'
CONFIG_JSON = 'config.json'


def _write_json_atomic(path: str, obj):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def write_config_json(workdir: str, config_json: dict, total_steps: int, **extra):
  """workdir/config.json: the resolved config of the run and how it was started."""
  _write_json_atomic(os.path.join(workdir, CONFIG_JSON), {
      'config': config_json, 'total_steps': int(total_steps), 'argv': list(sys.argv),
      'started': time.strftime('%Y-%m-%dT%H:%M:%S'), **extra})


def clear_done(workdir: str):
  """A run that starts (again) is not done until it writes DONE at its end."""
  try:
    os.remove(os.path.join(workdir, DONE))
  except FileNotFoundError:
    pass


def write_done(workdir: str, **info):
  _write_json_atomic(os.path.join(workdir, DONE), {
      'finished': time.strftime('%Y-%m-%dT%H:%M:%S'), **info})


def _tensorboard_writer(workdir: str, resume_step: int):
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('WARNING: tensorboardX is not installed (pip install -r requirements.txt); '
          'no TensorBoard events for this run.', file=sys.stderr, flush=True)
    return None
  # purge_step: events at or after it, left by an interrupted run, are hidden.
  return tensorboardX.SummaryWriter(
      logdir=workdir, purge_step=resume_step + 1 if resume_step > 0 else None,
      flush_secs=30)


class RunLog:
  """metrics.jsonl rows with wall time, mirrored as TensorBoard scalars (process 0).

  Args:
    workdir: the run's folder.
    resume_step: the step the run starts from (rows after it are dropped).
    enabled: False on every process but 0: nothing is written.
    tensorboard: also write TensorBoard events.
    start_time: `time.time()` when the run (this process) started; default now.
  """

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True,
               tensorboard: bool = True, start_time: Optional[float] = None):
    self.enabled = enabled
    self.jsonl = metrics_lib.JsonlWriter(os.path.join(workdir, 'metrics.jsonl'),
                                         resume_step, enabled)
    self.start = time.time() if start_time is None else start_time
    self.offset = 0.0
    self.tb = None
    if not enabled:
      return
    kept = metrics_lib.read_jsonl(self.jsonl.path)
    self.offset = max((r['elapsed'] for r in kept
                       if isinstance(r.get('elapsed'), (int, float))), default=0.0)
    if tensorboard:
      self.tb = _tensorboard_writer(workdir, resume_step)

  def write(self, row: dict):
    if not self.enabled:
      return
    row = dict(row, elapsed=round(self.offset + time.time() - self.start, 3))
    self.jsonl.write(row)
    if self.tb is not None:
      split, step = row.get('split', 'train'), int(row['step'])
      for k, v in row.items():
        if k not in ('step', 'split') and isinstance(v, (int, float)) and not isinstance(
            v, bool):
          self.tb.add_scalar(f'{split}/{k}', v, step)

  def flush(self):
    if self.tb is not None:
      self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()
      self.tb = None
