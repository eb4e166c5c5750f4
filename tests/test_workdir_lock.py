"""One run per workdir (`rstg_jax.train.workdir_lock`), with real processes.

The lock is an `fcntl.flock` that the kernel drops when its holder dies, so every test
here holds it from another process (a lock taken in this process would not stop this
process) and kills that process with SIGKILL where the point is that nothing is stale.
"""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rstg_jax.train import workdir_lock
import tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'launch'))
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

_HOLD = '''
import sys, time
from rstg_jax.train import workdir_lock
workdir_lock.acquire(sys.argv[1])
print('held', flush=True)
time.sleep(600)
'''

_TRY = '''
import sys
from rstg_jax.train import workdir_lock
workdir_lock.RETRY_SECONDS = 0.2
try:
  workdir_lock.acquire(sys.argv[1])
except workdir_lock.WorkdirBusy as e:
  print(e)
  sys.exit(3)
print('acquired')
'''


def _env(**extra):
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', **extra)


def _holder(workdir):
  proc = subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir)], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'held'
  return proc


def _kill(proc):
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)


def test_a_held_workdir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, monkeypatch):
  """Planted bugs caught: no lock (acquire succeeds), a lock file used as a marker (a
  SIGKILLed holder leaves it behind and the last acquire fails), no holder in the
  message."""
  monkeypatch.setattr(workdir_lock, 'RETRY_SECONDS', 0.2)
  holder = _holder(tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirBusy) as e:
      workdir_lock.acquire(str(tmp_path))
    who = f'pid {holder.pid} on host {socket.gethostname()}'
    assert str(e.value).startswith(f'workdir {tmp_path} is in use by {who} (a run, since ')
    assert '\n' not in str(e.value)
    assert workdir_lock.live_run(str(tmp_path)).startswith(who)
  finally:
    _kill(holder)
  assert workdir_lock.live_run(str(tmp_path)) is None
  workdir_lock.acquire(str(tmp_path))
  try:
    assert workdir_lock.live_run(str(tmp_path)).startswith(f'pid {os.getpid()} ')
  finally:
    workdir_lock.release(str(tmp_path))
  assert workdir_lock.live_run(str(tmp_path / 'never_used')) is None
  assert not (tmp_path / 'never_used').exists()  # the probe creates nothing


def test_readers_share_the_lock_and_keep_runs_out(tmp_path):
  """Planted bugs caught: `reading` holding nothing (a run starts and prunes under the
  reader), or waiting for a live run (evaluate would hang for the whole training)."""
  wd = str(tmp_path)
  with workdir_lock.reading(wd) as live:
    assert live is None
    other = subprocess.run([sys.executable, '-c', _TRY, wd], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 3, other.stdout + other.stderr
    assert other.stdout.startswith(f'workdir {wd} is in use by a reader'), other.stdout
    with workdir_lock.reading(wd) as again:  # readers share
      assert again is None
  after = subprocess.run([sys.executable, '-c', _TRY, wd], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=60)
  assert after.stdout.strip() == 'acquired', after.stdout + after.stderr
  holder = _holder(tmp_path)
  try:
    said = []
    with workdir_lock.reading(wd, say=said.append) as live:
      assert live.startswith(f'pid {holder.pid} ')
    assert len(said) == 1 and said[0].startswith(f'note: a run (pid {holder.pid} ')
  finally:
    _kill(holder)


def test_the_sweep_does_not_start_a_run_another_process_holds(tmp_path, capsys):
  """The sweep's status check and its start are two steps: between them another sweep
  may start the run. Planted bug caught: the sweep writing sweep.json and log.txt and
  starting `main` without taking the run's lock first."""
  runs = sweep.plan_runs(sweep.parse_args([
      '--config=configs/syncmnist.py', '--grid=ablation=space_only',
      f'--workdir={tmp_path}']))
  (tmp_path / 'ablation=space_only').mkdir()
  holder = _holder(tmp_path / 'ablation=space_only')
  try:
    args = sweep.parse_args(['--config=configs/syncmnist.py', '--grid=ablation=space_only',
                             f'--workdir={tmp_path}'])
    assert sweep.status_of(runs[0]) == 'running'
    assert sweep.run_local(runs, args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'skip     ablation=space_only: running (workdir '), out
    assert f'in use by pid {holder.pid} ' in out
    assert sorted(os.listdir(tmp_path / 'ablation=space_only')) == ['.lock']
  finally:
    _kill(holder)


# --------------------------------------------------------------- rstg_jax.main, twice


def _main(workdir, *extra):
  return [sys.executable, '-m', 'rstg_jax.main', '--config=configs/syncmnist_base.py',
          '--config.model=mean_lstm', *tiny_run.TINY, f'--workdir={workdir}', *extra]


def _wait_for_lock(proc, workdir, log):
  deadline = time.time() + 300
  while not (workdir_lock.live_run(str(workdir)) or '').startswith(f'pid {proc.pid} '):
    assert proc.poll() is None, log.read_text()
    assert time.time() < deadline, 'the first run never took the lock'
    time.sleep(0.1)


def test_a_second_main_on_a_live_workdir_stops_in_one_line(tmp_path, mnist_digits):
  """Two real `main` processes on one workdir. The first is stopped (SIGSTOP) once it
  holds the lock, so the second certainly meets a live run; the second must stop in one
  line naming the workdir and the first's pid and host, and the first, resumed, must
  finish with every row and DONE. Planted bugs caught: no lock (the second trains too,
  clears DONE and prunes checkpoints), a lock taken only after the workdir is touched
  (the second removes the first's in-flight save)."""
  wd = tmp_path / 'run'
  env = _env(RSTG_MNIST_PATH=mnist_digits)
  log = tmp_path / 'first.log'
  with open(log, 'w') as f:
    first = subprocess.Popen(_main(wd), cwd=REPO, env=env, stdout=f,
                             stderr=subprocess.STDOUT)
  try:
    _wait_for_lock(first, wd, log)
    first.send_signal(signal.SIGSTOP)
    second = subprocess.run(_main(wd), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGCONT)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, second.stdout + second.stderr
    assert lines[0].startswith(f'ERROR: workdir {wd} is in use by pid {first.pid} on host '
                               f'{socket.gethostname()} (a run, since '), lines[0]
    assert 'Training steps' not in second.stdout
    assert first.wait(timeout=300) == 0, log.read_text()
  finally:
    if first.poll() is None:
      first.send_signal(signal.SIGCONT)
      _kill(first)
  rows = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['step'], r['split']) for r in rows] == [
      (2, 'train'), (2, 'val'), (4, 'train'), (4, 'val'), (4, 'test')]
  assert (wd / 'DONE').exists() and sorted(os.listdir(wd / 'checkpoints')) == ['2', '4']


def test_a_run_after_a_kill_9_starts_normally(tmp_path, mnist_digits):
  """Planted bug caught: a lock that outlives its holder (a pid file, a marker): the
  run after the SIGKILL would stop with 'in use'."""
  wd = tmp_path / 'run'
  env = _env(RSTG_MNIST_PATH=mnist_digits)
  log = tmp_path / 'first.log'
  with open(log, 'w') as f:
    first = subprocess.Popen(_main(wd), cwd=REPO, env=env, stdout=f,
                             stderr=subprocess.STDOUT)
  try:
    _wait_for_lock(first, wd, log)
  finally:
    _kill(first)
  again = subprocess.run(_main(wd), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stdout + again.stderr
  assert (wd / 'DONE').exists() and 'Done: step 4' in again.stdout


# ------------------------------------------------------------ a shared backbone cache


def _held(path) -> bool:
  """Whether some process holds an flock on `path` (probed with a shared lock)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)


def _wait_until(condition, proc, log, what):
  deadline = time.time() + 300
  while not condition():
    assert proc.poll() is None, log.read_text()
    assert time.time() < deadline, what
    time.sleep(0.1)


def test_two_runs_sharing_a_backbone_cache_pretrain_once(tmp_path, mnist_digits):
  """Two runs (two workdirs) with one `backbone.pretrain.cache_path`. The first is stopped while it
  holds the cache's lock (pre-training); the second must wait for it, then read the cache
  it wrote. Planted bug caught: no lock around "load or pre-train and save" (the second
  finds no cache and pre-trains too, and both write the file)."""
  cache = tmp_path / 'shared' / 'backbone.npz'
  extra = ['--config.backbone.pretrain.stages=digit', '--config.backbone.pretrain.steps.digit=20',
           '--config.backbone.pretrain.batch_size=16',
           f'--config.backbone.pretrain.cache_path={cache}']
  env = _env(RSTG_MNIST_PATH=mnist_digits)
  logs = [tmp_path / 'first.log', tmp_path / 'second.log']
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, 'w') as f:
        procs.append(subprocess.Popen(_main(tmp_path / f'run{i}', *extra), cwd=REPO,
                                      env=env, stdout=f, stderr=subprocess.STDOUT))
      if i == 0:
        _wait_until(lambda: _held(f'{cache}.lock'), procs[0], log, 'no lock on the cache')
        procs[0].send_signal(signal.SIGSTOP)
    _wait_until(lambda: 'Backbone: waiting for the process that is pre-training'
                in logs[1].read_text(), procs[1], logs[1], 'the second run did not wait')
    assert f'(held by pid {procs[0].pid} ' in logs[1].read_text()
    procs[0].send_signal(signal.SIGCONT)
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [l.read_text() for l in logs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGCONT)
        _kill(p)
  first, second = (l.read_text() for l in logs)
  assert 'pretraining in stages: 20 steps on' in first, first
  assert 'pretraining in stages' not in second, second
  assert f'Backbone: loading the pretrained backbone cached at {cache}' in second
  assert sorted(os.listdir(cache.parent)) == ['backbone.npz', 'backbone.npz.lock']
