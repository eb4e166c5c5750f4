"""Honest resume: a changed config stops with one line naming the field, a corrupted
latest checkpoint falls back to the one before, killed saves leave no litter, and
metrics.jsonl keeps every row over any number of resumes (issue 9)."""

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest

from rstg_jax.train import checkpoints
from rstg_jax.train import orbax_quiet
from rstg_jax.train import metrics as metrics_lib
from test_train import make_config, run_fake  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _saved_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit())


# ------------------------------------------------------------------- the config checks

def test_model_and_stream_changes_are_named_old_to_new():
  saved = {'seed': 0, 'batch_size': 8, 'rstg': {'dim': 8, 'num_iters': 1},
           'data': {'seed': 1, 'root': '/a', 'prefetch': 2},
           'backbone': {'width': 4, 'pretrain': {'lr': 0.1}}, 'num_train_steps': 10}
  now = {'seed': 0, 'batch_size': 16, 'rstg': {'dim': 32, 'num_iters': 1},
         'data': {'seed': 1, 'root': '/b', 'prefetch': 4},
         'backbone': {'width': 4, 'pretrain': {'lr': 0.2}}, 'num_train_steps': 20,
         'resume_changes_ok': False}
  model, stream, other = checkpoints.resume_problems(saved, now)
  assert model == ['rstg.dim 8 -> 32'] and stream == ['batch_size 8 -> 16']
  assert other == ['backbone.pretrain.lr', 'data.prefetch', 'data.root', 'num_train_steps']
  with pytest.raises(checkpoints.ResumeError) as e:
    checkpoints.check_resume(saved, now, False, 'W')
  msg = str(e.value)
  assert '\n' not in msg and 'rstg.dim 8 -> 32' in msg and 'batch_size 8 -> 16' in msg
  assert 'new --workdir' in msg
  # resume_changes_ok accepts the stream change, never the model change.
  with pytest.raises(checkpoints.ResumeError, match='rstg.dim'):
    checkpoints.check_resume(saved, now, True, 'W')
  now['rstg']['dim'] = 8
  assert 'batch_size' in checkpoints.check_resume(saved, now, True, 'W')
  # input_norm adds or removes the node BatchNorm: a model field (a saved config from
  # before the field has none to compare).
  saved['input_norm'], now['input_norm'] = 'rstg', 'batchnorm'
  assert checkpoints.resume_problems(saved, now)[0] == ["input_norm 'rstg' -> 'batchnorm'"]


def test_resume_with_a_changed_batch_size_stops_unless_accepted(tmp_path):
  workdir = str(tmp_path)
  run_fake(workdir, make_config(num_train_steps=3))
  with pytest.raises(checkpoints.ResumeError, match=r'batch_size 8 -> 16'):
    run_fake(workdir, make_config(num_train_steps=6, batch_size=16))
  state = run_fake(workdir, make_config(num_train_steps=6, batch_size=16,
                                        resume_changes_ok=True))
  assert int(state['step']) == 6


def test_a_shape_mismatch_names_the_parameter_path(tmp_path):
  import test_train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  run_fake(workdir, make_config(num_train_steps=3))
  config = make_config(num_train_steps=6)
  model = test_train.TinyModel(num_classes=test_train.NUM_CLASSES + 1)
  data = test_train.FakeData(config.batch_size)
  from rstg_jax.train import loop  # pylint: disable=g-import-not-at-top
  with pytest.raises(checkpoints.ResumeError) as e:
    loop.train_and_evaluate(config, workdir, test_train.FakeTask(model, data))
  msg = str(e.value)
  assert 'params/Dense_0/kernel: stored (4, 4), model (4, 5)' in msg, msg
  assert '\n' not in msg


# ------------------------------------------------- corrupted checkpoints, stale folders

def _garble_state(workdir, step, only_arrays):
  """Overwrites the files of the step's state (only the array data files under d/ with
  `only_arrays`, else the index too) with junk of the same size."""
  state_dir = os.path.join(workdir, 'checkpoints', str(step), 'state')
  garbled = 0
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name in ('_METADATA', 'commit_success.txt', '_sharding'):
        continue
      if only_arrays and os.path.basename(root) != 'd':
        continue
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, 'wb') as f:
        f.write(b'\x5a' * max(size, 1))
      garbled += 1
  assert garbled


@pytest.mark.parametrize('only_arrays', [False, True])
def test_a_corrupted_latest_checkpoint_resumes_from_the_one_before(tmp_path, capsys,
                                                                   only_arrays):
  workdir = str(tmp_path)
  run_fake(workdir)  # 6 steps: saves at 2, 3, 4, 6
  assert _saved_steps(workdir)[-2:] == [4, 6]
  _garble_state(workdir, 6, only_arrays)
  capsys.readouterr()
  state = run_fake(workdir, make_config(num_train_steps=8))
  out = capsys.readouterr().out
  assert 'Checkpoint step 6 cannot be' in out and 'skipping it' in out, out
  assert 'Resuming from step 4, the newest checkpoint that restores' in out, out
  assert int(state['step']) == 8
  assert 8 in _saved_steps(workdir) and 6 in _saved_steps(workdir)  # saved again
  assert os.listdir(tmp_path / 'checkpoints_skipped')[0].startswith('6-')
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in rows if r['split'] == 'train'] == list(range(1, 9))


def _failing_read_with_a_late_sibling():
  """What orbax's read of a checkpoint with one garbled array does when the timing is
  unlucky (CI, 2026-12-04): the first read fails, and a sibling read fails while
  asyncio.run shuts down, which asyncio logs at ERROR with a traceback."""
  async def late():
    try:
      await asyncio.sleep(10)
    except asyncio.CancelledError:
      raise ValueError('DATA_LOSS: the sibling array') from None

  async def first():
    raise ValueError('DATA_LOSS: the first array')

  async def read():
    await asyncio.gather(first(), late())

  asyncio.run(read())


def test_a_failed_read_is_reported_once_without_asyncio_tracebacks(caplog):
  caplog.set_level(logging.ERROR)
  with pytest.raises(ValueError, match='the first array'):
    _failing_read_with_a_late_sibling()
  assert any('the sibling array' in r.getMessage() + str(r.exc_info) for r in caplog.records)
  caplog.clear()
  with pytest.raises(ValueError, match='the first array'):
    with orbax_quiet.reading():
      _failing_read_with_a_late_sibling()
  assert not caplog.records, [r.getMessage() for r in caplog.records]
  # The filter is gone afterwards: other asyncio errors are still logged.
  logging.getLogger('asyncio').error('Task exception was never retrieved')
  assert len(caplog.records) == 1


def test_stale_temporary_checkpoint_folders_are_removed_at_start(tmp_path, capsys):
  workdir = str(tmp_path)
  run_fake(workdir, make_config(num_train_steps=3))
  stale = tmp_path / 'checkpoints' / '5.orbax-checkpoint-tmp-1712345678901234'
  (stale / 'state').mkdir(parents=True)
  (stale / 'state' / 'junk').write_bytes(b'x' * 100)
  capsys.readouterr()
  run_fake(workdir, make_config(num_train_steps=4))
  assert not stale.exists()
  assert 'removed 1 temporary folder(s) of interrupted saves' in capsys.readouterr().out


# ------------------------------------------------------------------- metrics.jsonl

def test_metrics_survive_several_resumes(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(KeyboardInterrupt):
    run_fake(workdir, kill_at=5)  # saved up to 4; rows of step 5 written, then dropped
  run_fake(workdir, make_config(num_train_steps=6))
  run_fake(workdir, make_config(num_train_steps=9))
  run_fake(workdir, make_config(num_train_steps=10))
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train = [r['step'] for r in rows if r['split'] == 'train']
  assert train == list(range(1, 11))
  test = [r['step'] for r in rows if r['split'] == 'test']
  assert test == sorted(set(test)) and test[-1] == 10


def _write_rows(path, steps, tail=b''):
  with open(path, 'wb') as f:
    for s in steps:
      f.write(json.dumps({'step': s, 'split': 'train'}).encode() + b'\n')
    f.write(tail)


def test_truncate_jsonl_drops_later_rows_and_a_cut_line(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  _write_rows(path, [1, 2, 3, 4], tail=b'{"step": 5, "spl')
  assert metrics_lib.truncate_jsonl(path, 3) == 2
  assert [r['step'] for r in metrics_lib.read_jsonl(path)] == [1, 2, 3]
  inode = os.stat(path).st_ino
  assert metrics_lib.truncate_jsonl(path, 3) == 0  # nothing to drop: not rewritten
  assert os.stat(path).st_ino == inode
  assert os.listdir(tmp_path) == ['metrics.jsonl']  # no temporary file left


def test_an_error_during_the_rewrite_loses_no_history(tmp_path, monkeypatch):
  """An exception (KeyboardInterrupt before the rename, a full disk at fsync): the old
  file stays and `atomic_open` removes its temporary. Planted bug caught: no removal in
  atomic_open's `except` (a temporary file is left). A real SIGKILL runs no cleanup:
  see the next test."""
  path = str(tmp_path / 'metrics.jsonl')
  _write_rows(path, [1, 2, 3, 4])
  before = open(path, 'rb').read()

  def killed(*args, **kwargs):
    raise KeyboardInterrupt  # the process dies between writing the copy and the rename

  monkeypatch.setattr(os, 'replace', killed)
  with pytest.raises(KeyboardInterrupt):
    metrics_lib.truncate_jsonl(path, 2)
  assert open(path, 'rb').read() == before
  assert os.listdir(tmp_path) == ['metrics.jsonl']

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.undo()
  monkeypatch.setattr(os, 'fsync', full_disk)
  with pytest.raises(OSError):
    metrics_lib.truncate_jsonl(path, 2)
  assert open(path, 'rb').read() == before
  assert os.listdir(tmp_path) == ['metrics.jsonl']


_KILLED_REWRITE = """
import os, sys, time
from rstg_jax.train import metrics
def stop_here(fd):  # the copy is written, not yet renamed: the test kills us here
  print('copy written', flush=True)
  time.sleep(600)
os.fsync = stop_here
metrics.truncate_jsonl(sys.argv[1], 4)
"""


def test_a_sigkill_during_the_rewrite_leaves_a_copy_that_the_next_start_removes(tmp_path):
  """A run killed at step 5 (rows of step 5 written after the step-4 checkpoint); the
  rewrite that drops them is SIGKILLed between writing its copy and the rename (a real
  kill: no `except`, no `finally` runs); then the next start. Planted bug caught: no
  removal of stale `.metrics.jsonl.*.tmp` files at start (in `metrics.JsonlWriter`):
  the killed rewrite's copy stays in the workdir for good."""
  workdir = str(tmp_path)
  path = os.path.join(workdir, 'metrics.jsonl')
  with pytest.raises(KeyboardInterrupt):
    run_fake(workdir, kill_at=5)
  before = open(path, 'rb').read()
  proc = subprocess.Popen([sys.executable, '-c', _KILLED_REWRITE, path], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == 'copy written'
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  litter = [n for n in os.listdir(workdir) if n.startswith('.metrics.jsonl.')]
  assert len(litter) == 1 and litter[0].endswith('.tmp'), os.listdir(workdir)
  assert open(path, 'rb').read() == before  # the rename never happened: nothing lost
  run_fake(workdir)  # the next start: resumes from step 4
  assert not [n for n in os.listdir(workdir) if n.startswith('.metrics.jsonl.')]
  rows = metrics_lib.read_jsonl(path)
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3, 4, 5, 6]


def test_rows_with_a_bad_step_are_dropped_with_one_line(tmp_path, capsys):
  """Hand-edited or damaged rows: a step that is text, null, negative, missing, or a
  line that is not an object. Planted bug caught: comparing `row['step'] > last_step`
  unchecked (TypeError on resume: a traceback instead of a run)."""
  path = str(tmp_path / 'metrics.jsonl')
  _write_rows(path, [1, 2])
  with open(path, 'a') as f:
    for bad in ({'step': '3', 'split': 'train'}, {'step': None}, {'step': -1},
                {'split': 'val'}, [4], {'step': True}):
      f.write(json.dumps(bad) + '\n')
  _write_rows(path + '.tail', [3, 9])
  with open(path, 'ab') as f:
    f.write(open(path + '.tail', 'rb').read())
  os.remove(path + '.tail')
  assert metrics_lib.truncate_jsonl(path, 3) == 7
  assert [r['step'] for r in metrics_lib.read_jsonl(path)] == [1, 2, 3]
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'WARNING: {path}: dropped 6 row(s) whose "step" is not a whole number '
                 ">= 0 (the first on line 3: '3')."]


def test_atomic_open_keeps_the_old_file_on_error_and_the_usual_mode(tmp_path):
  path = tmp_path / 'summary.json'
  path.write_text('old')
  with pytest.raises(RuntimeError):
    with metrics_lib.atomic_open(str(path)) as f:
      f.write('half')
      raise RuntimeError('killed')
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['summary.json']
  with metrics_lib.atomic_open(str(path)) as f:
    f.write('new')
  assert path.read_text() == 'new'
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------ the command, end to end

TINY = ('--config=configs/syncmnist_base.py', '--config.backbone.pretrain.stages=()',
        '--config.backbone.width=8', '--config.rstg.dim=16', '--config.rstg.num_iters=1',
        '--config.batch_size=4', '--config.eval.batch_size=4', '--config.eval.size=4',
        '--config.num_train_steps=2', '--config.log_every=1', '--config.eval.every=2',
        '--config.checkpoint_every=1', '--config.progress_bar=False',
        '--config.data.val_size=4')  # the default val split is 10,000 videos


def _main(workdir, *args):
  return subprocess.run([sys.executable, '-m', 'rstg_jax.main', f'--workdir={workdir}',
                         *TINY, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _one_error_line(proc):
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('ERROR:')]
  assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
  return errors[0]


@pytest.fixture(scope='module')
def tiny_run_dir(tmp_path_factory, mnist_digits):
  """(workdir, stdout) of one finished 2-step `main` run with TINY, shared by the tests
  below: each resumes its own copy (`_copy_of`)."""
  workdir = tmp_path_factory.mktemp('resume') / 'run'
  first = _main(workdir, f'--config.data.mnist_path={mnist_digits}')
  assert first.returncode == 0, first.stderr[-3000:]
  return workdir, first.stdout


def _copy_of(tiny_run_dir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run_dir[0], workdir)
  return workdir


def test_main_resume_with_changed_width_or_batch_size_stops_in_one_line(tmp_path,
                                                                        tiny_run_dir,
                                                                        mnist_digits):
  workdir = _copy_of(tiny_run_dir, tmp_path)
  line = _one_error_line(_main(workdir, '--config.rstg.dim=32',
                               '--config.num_train_steps=3',
                               f'--config.data.mnist_path={mnist_digits}'))
  assert 'rstg.dim 16 -> 32' in line and 'new --workdir' in line, line
  line = _one_error_line(_main(workdir, '--config.batch_size=8',
                               '--config.num_train_steps=3',
                               f'--config.data.mnist_path={mnist_digits}'))
  assert 'batch_size 4 -> 8' in line and 'resume_changes_ok=True' in line, line
  ok = _main(workdir, '--config.batch_size=8', '--config.num_train_steps=3',
             '--config.resume_changes_ok=True', f'--config.data.mnist_path={mnist_digits}')
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'Resuming from' in ok.stdout and 'Done: step 3' in ok.stdout, ok.stdout


def test_evaluate_command_on_a_tiny_trained_workdir(tmp_path, mnist_digits):
  """`python -m rstg_jax.evaluate` as a user runs it, on a 4-step Mean+LSTM run:
  'latest' is step 4; 'best' names a saved step and writes its files; a step that was
  never saved is one error line. Planted bugs caught: an import or flag error in the
  command's own module (only `evaluate.run` was tested in-process), outputs written
  elsewhere than WORKDIR/eval_STEP/."""
  import tiny_run  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', RSTG_MNIST_PATH=mnist_digits)
  train = subprocess.run([sys.executable, '-m', 'rstg_jax.main',
                          '--config=configs/syncmnist_base.py', '--config.model=mean_lstm',
                          *tiny_run.TINY, f'--workdir={workdir}'],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert train.returncode == 0, train.stderr[-3000:]

  def evaluate(checkpoint):
    return subprocess.run([sys.executable, '-m', 'rstg_jax.evaluate', f'--workdir={workdir}',
                           f'--checkpoint={checkpoint}'], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)

  for checkpoint in ('latest', 'best'):
    proc = evaluate(checkpoint)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = int(proc.stdout.split('Checkpoint step ')[1].split(':')[0])
    assert step == 4 if checkpoint == 'latest' else step in (2, 4), proc.stdout
    summary = json.loads((workdir / f'eval_{step}' / 'summary.json').read_text())
    assert summary['step'] == step and summary['count'] == 8 and 'note:' not in proc.stdout
    assert f'top-1 {summary["top1"]:.4f}' in proc.stdout
  line = _one_error_line(evaluate('3'))  # saved: 2 and 4 only
  assert '3' in line, line


def _make_old(workdir, **backbone):
  """Rewrites every checkpoint's saved config as a version from before the pre-training
  stages wrote it: flat `backbone.pretrain_*` fields, `backbone.coords`, no
  `backbone.frames` nor `data.no_pair_prob`; `backbone` entries override those."""
  for meta in sorted((workdir / 'checkpoints').glob('*/meta/metadata')):
    data = json.loads(meta.read_text())
    b, d = data['config']['backbone'], data['config']['data']
    b.pop('pretrain', None), b.pop('frames', None), d.pop('no_pair_prob', None)
    b.update(dict(pretrain_steps=0, pretrain_batch_size=64, pretrain_lr=1e-3,
                  pretrain_target='digit', cache_path=None, coords=False), **backbone)
    meta.write_text(json.dumps(data))


def test_main_resumes_and_evaluates_a_workdir_saved_before_the_stages(tmp_path, tiny_run_dir,
                                                                     mnist_digits):
  """The protocol line and entry of a SyncMNIST run; a run saved with the old flat
  pre-training fields resumes (mapped field by field by the task's `upgrade_config`, then
  checked as usual) and evaluates from its saved config; one trained with a removed trial
  option stops with one line saying what to do.
  Without the mapping the evaluate path fails (AttributeError on `backbone.frames`)."""
  from rstg_jax import evaluate  # pylint: disable=g-import-not-at-top
  from rstg_jax import tasks  # pylint: disable=g-import-not-at-top
  workdir, data = _copy_of(tiny_run_dir, tmp_path), f'--config.data.mnist_path={mnist_digits}'
  # The protocol, printed at the start and stored in config.json (its rules:
  # test_protocols.py).
  assert 'Protocol: paper (one-frame backbone not pre-trained;' in tiny_run_dir[1]
  assert json.loads((workdir / 'config.json').read_text())['protocol'] == 'paper'
  _make_old(workdir, pretrain_steps=500, pretrain_target='digit_motion',
            pretrain_motion_steps=300, pretrain_scene_steps=0)
  config = evaluate.config_from_checkpoint(str(workdir))
  assert tuple(config.backbone.pretrain.stages) == ('digit', 'motion')
  assert (config.backbone.pretrain.steps.digit, config.backbone.pretrain.steps.motion,
          config.backbone.frames) == (500, 300, 1)
  assert 'coords' not in config.backbone and 'pretrain_steps' not in config.backbone
  with pytest.raises(ValueError, match='need a backbone that sees two frames'):
    tasks.for_config(config, check_data=False)  # as that old config was: invalid today
  _make_old(workdir)
  tasks.for_config(evaluate.config_from_checkpoint(str(workdir)), check_data=False)
  ok = _main(workdir, '--config.num_train_steps=3', data)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'Resuming from' in ok.stdout and 'Done: step 3' in ok.stdout, ok.stdout
  _make_old(workdir, coords=True)
  line = _one_error_line(_main(workdir, '--config.num_train_steps=4', data))
  assert 'backbone.coords=True' in line and 'start fresh' in line, line
