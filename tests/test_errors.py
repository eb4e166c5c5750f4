"""Bad input meets a newcomer's commands: one line naming what to fix, no traceback.

Every entry point is run as a command (a subprocess, as a user types it) on each bad
input of issues 30 (item 4), 31 and 32: the exit status is not 0, nothing reads
"Traceback", the error is one line that names the field or path, and no workdir is
created where none existed. The errors are `rstg_jax.errors` types that the entry points
catch, so `test_every_setup_error_is_one_project_error` also walks the error paths of the
setup in-process. The traps (an epoch-based run, a misspelt sweep key, duplicated SLURM
flags, a silent evaluation) are checked to do what the README says instead.
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rstg_jax import errors
from rstg_jax import evaluate
from rstg_jax import report
from rstg_jax import tasks
from rstg_jax.syncmnist import figures
from rstg_jax.train import checkpoints
from rstg_jax.train import init_from
from rstg_jax.train import setup as setup_lib

from test_recipe import ToyTask, toy_config
from tiny_run import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = '--config=configs/syncmnist_quick.py'


def _run(*argv, timeout=300, env=None):
  """A command from the repository root; argv[0] a module (-m) or a script path."""
  head = [sys.executable, '-m', argv[0]] if not argv[0].endswith('.py') else [
      sys.executable, argv[0]]
  return subprocess.run([*head, *argv[1:]], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})))


def _one_line_error(proc, *needles) -> str:
  """The command failed with exactly one non-empty line on stderr, naming `needles`."""
  out = proc.stdout + proc.stderr
  assert proc.returncode not in (0, None), out[-3000:]
  assert 'Traceback' not in out, out[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


# ------------------------------------------------------------------------------------
# main: every bad value stops before the workdir exists.
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize('flag,needles', [
    ('--config.rstg.adjacency=foo', ["Unknown rstg.adjacency 'foo'", 'sparse, full']),
    ('--config.rstg.num_iters=0', ['rstg.num_iters=0 must be a positive integer']),
    ('--config.rstg.scales=(1,2,3,7)', ['rstg.scales=(1, 2, 3, 7) does not fit',
                                        '6x6', 'use scales up to 6']),
    ('--config.data.num_digits=1', ['data.num_digits=1 must be an integer in 2..5']),
    ('--config.data.num_digits=11', ['data.num_digits=11 must be an integer in 2..5']),
    ('--config.batchsize=8', ["ERROR: Unknown field 'batchsize'; did you mean 'batch_size'?"]),
    ('--config=configs/does_not_exist.py',
     ["config file 'configs/does_not_exist.py' does not exist"]),
    ('--config.data.mnist_path=/nonexistent/mnist', ['/nonexistent/mnist']),
])
def test_main_refuses_bad_input_in_one_line_before_the_workdir(tmp_path, flag, needles):
  workdir = tmp_path / 'w'
  proc = _run('rstg_jax.main', QUICK, f'--workdir={workdir}', flag)
  _one_line_error(proc, *needles)
  assert not workdir.exists()


def test_every_setup_error_is_one_project_error(tmp_path):
  """The setup's error paths raise `RSTGError`s (what main and evaluate catch) with a
  one-line message; the toy task stands in for a task whose data set disagrees."""
  tasks.register('toy', ToyTask())
  config = toy_config()
  wrong_classes = toy_config()
  wrong_classes.data.num_classes = 5
  bad_value = toy_config()
  bad_value.seed = -1
  cases = {
      'unknown task': lambda: tasks.get('imagenet'),
      'meaningless value': lambda: setup_lib.validate(bad_value, tasks.get('toy')),
      'num_classes vs the data set': lambda: setup_lib.make_setup(wrong_classes,
                                                                  tasks.get('toy')),
      'init_from without a run': lambda: init_from.load_run(str(tmp_path)),
      'weights that do not fit': lambda: init_from.merge_params(
          {'w': np.zeros(2)}, {'v': np.zeros(2)}),
      'resume with another model': lambda: checkpoints.check_resume(
          {'rstg': {'dim': 64}}, {'rstg': {'dim': 32}}, False, 'here'),
      'evaluate without a workdir': lambda: evaluate.check_workdir(str(tmp_path / 'x')),
  }
  for what, call in cases.items():
    with pytest.raises(errors.RSTGError) as e:
      call()
    assert '\n' not in str(e.value) or what == 'weights that do not fit', (what, e.value)
    assert str(e.value).strip(), what


# ------------------------------------------------------------------------------------
# --help everywhere, and output paths checked before any work.
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize('argv,needle', [
    (['rstg_jax.main', '--help'], '--workdir'),
    (['rstg_jax.evaluate', '--help'], '--checkpoint'),
    (['rstg_jax.report', '--help'], 'report.md'),
    (['rstg_jax.bench', '--help'], 'graph'),
    (['rstg_jax.syncmnist.figures', '--help'], 'show'),
])
def test_help_exits_0(argv, needle):
  proc = _run(*argv, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert needle in proc.stdout


def test_figures_help_lists_its_subcommands(capsys):
  with pytest.raises(SystemExit) as e:
    figures.main(['--help'])
  assert e.value.code == 0
  assert re.search(r'^\s+show\s+a PNG grid', capsys.readouterr().out, re.MULTILINE)


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    figures.main(['show', '--out', '/nonexistent_dir/x.png'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.endswith("--out='/nonexistent_dir/x.png': the folder '/nonexistent_dir' does "
                      'not exist; create it first.') and '\n' not in err
  with pytest.raises(SystemExit) as e:
    figures.main(['show', '--out', str(tmp_path)])
  assert 'is a folder' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    report.main(['report', str(tmp_path / 'missing')])
  assert str(e.value) == f"ERROR: DIR='{tmp_path / 'missing'}': no such folder."


# ------------------------------------------------------------------------------------
# Launchers: sweep keys checked first, no flag twice.
# ------------------------------------------------------------------------------------

def test_sweep_checks_every_grid_key_and_value_before_printing(tmp_path):
  workdir = tmp_path / 'sweep'
  proc = _run('launch/sweep.py', QUICK, '--grid=ablation=space_only,ablaton_typo',
              f'--workdir={workdir}', '--dry_run', timeout=120)
  assert proc.returncode == 1 and proc.stdout == '', proc.stdout
  assert "Unknown ablation 'ablaton_typo'" in _one_line_error(proc)
  proc = _run('launch/sweep.py', QUICK, '--grid=ablaton=a', f'--workdir={workdir}',
              '--dry_run', timeout=120)
  assert proc.stdout == ''
  _one_line_error(proc, "ERROR: run ablaton=a: Unknown field 'ablaton'; did you mean "
                  "'ablation'?")
  proc = _run('launch/sweep.py', QUICK, '--grid=ablation=one_temp', f'--workdir={workdir}',
              '--dry_run', '--', '--config.rstg.num_iters=0', timeout=120)
  _one_line_error(proc, 'rstg.num_iters=0 must be')
  assert not workdir.exists()


def test_slurm_script_passes_each_flag_once():
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  proc = subprocess.run(['bash', 'launch/slurm.sbatch', '--workdir=runs/other',
                         '--config.ablation=one_temp'], cwd=REPO, capture_output=True,
                        text=True, timeout=60, env=dict(env, DRY_RUN='1'), check=True)
  command = proc.stdout.splitlines()[-1]
  assert command.count('--workdir=') == 1 and '--workdir=runs/other' in command
  assert '--config=configs/syncmnist.py' in command  # ARGS' other flags stay


# ------------------------------------------------------------------------------------
# A tiny epoch-based run, then evaluate on it.
# ------------------------------------------------------------------------------------

RUN = [QUICK, *TINY, '--config.model=mean_lstm', '--config.num_train_steps=-1',
       '--config.num_epochs=3', '--config.data.train_size=16']  # 3 x 16 / 8 = 6 steps


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, main's output) of a 6-step run with checkpoints at steps 2, 4 and 6."""
  workdir = tmp_path_factory.mktemp('errors') / 'run'
  proc = _run('rstg_jax.main', f'--workdir={workdir}', *RUN, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stdout


def test_an_epoch_based_run_says_its_length_and_estimated_time(trained):
  _, out = trained
  assert ('Run length from num_epochs: 3 epochs of 16 videos at batch 8 = 6 steps '
          '(num_train_steps <= 0;') in out
  # After the second logged window (step 4): the 2 steps left, at a measured rate.
  assert re.search(r'^Estimated time: \d+ s for the remaining 2 steps at [\d.e-]+ s/step',
                   out, re.MULTILINE), out


def test_evaluate_names_a_missing_workdir(tmp_path):
  proc = _run('rstg_jax.evaluate', f'--workdir={tmp_path / "nonexistent"}', timeout=120)
  _one_line_error(proc, f"workdir '{tmp_path / 'nonexistent'}' does not exist")
  assert not (tmp_path / 'nonexistent').exists()


def test_evaluate_names_each_field_that_differs_from_the_checkpoint(trained):
  workdir, _ = trained
  proc = _run('rstg_jax.evaluate', f'--workdir={workdir}', *RUN,
              '--config.baseline.lstm_dim=32')
  line = _one_line_error(proc, 'baseline.lstm_dim 16 -> 32', 'Leave out --config')
  assert 'partial_restore' not in line


@pytest.mark.parametrize('flag,needle', [
    ('--config.data.mnist_path=/nonexistent/mnist', 'MNIST path /nonexistent/mnist'),
    ('HOSTILE', "refusing dtype 'V8'"),
])
def test_evaluate_one_line_for_missing_or_refused_data(trained, tmp_path, flag, needle):
  workdir, _ = trained
  if flag == 'HOSTILE':
    from test_safe_pickle import HOSTILE, mnist_file  # pylint: disable=g-import-not-at-top
    flag = ('--config.data.mnist_path='
            f'{mnist_file(tmp_path / "mnist.pkl.gz", HOSTILE["forged_dtype"][0])}')
  _one_line_error(_run('rstg_jax.evaluate', f'--workdir={workdir}', *RUN, flag), needle)


def test_evaluate_falls_back_past_unreadable_checkpoints(trained, tmp_path):
  """Step 6's arrays are garbled and step 2's metadata is a JSON list (not an object):
  latest falls back to step 4 with a line; asked for step 6, it names step 4."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained[0], workdir)
  (workdir / 'checkpoints' / '6' / 'state' / 'manifest.ocdbt').write_bytes(b'garbage')
  (workdir / 'checkpoints' / '2' / 'meta' / 'metadata').write_text('[1, 2]')
  proc = _run('rstg_jax.evaluate', f'--workdir={workdir}')
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stdout.startswith('Checkpoint latest (step 6) cannot be read (')
  assert 'evaluating step 4, the newest that restores' in proc.stdout.splitlines()[0]
  assert 'Checkpoint step 4: top-1' in proc.stdout and (workdir / 'eval_4').is_dir()
  proc = _run('rstg_jax.evaluate', f'--workdir={workdir}', '--checkpoint=6')
  _one_line_error(proc, 'Checkpoint step 6 in', 'cannot be restored', 'readable steps: [4].')


def test_evaluate_draws_a_progress_bar_with_an_eta(trained):
  workdir, _ = trained
  proc = _run('rstg_jax.evaluate', f'--workdir={workdir}', *RUN,
              '--config.progress_bar=True', '--config.eval.batch_size=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  bars = re.split(r'[\r\n]', proc.stderr)
  # tqdm's bar over the 4 test batches: the count, elapsed<remaining, and a rate.
  assert any(re.match(r'eval: 100%\|.*\| 4/4 \[\d\d:\d\d<\d\d:\d\d, ', b) for b in bars), bars
  assert 'Checkpoint step 6: top-1' in proc.stdout
