"""Config values that parse but mean nothing, an unusable workdir and refused data stop
`python -m rstg_jax.main` with one error line per problem, before the workdir exists."""

import importlib
import os
import subprocess
import sys

import pytest

from rstg_jax import errors
from rstg_jax import tasks
from rstg_jax.train import config_checks
from rstg_jax.train import setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ is a plain directory of modules


def _config(name='syncmnist'):
  return importlib.import_module(f'configs.{name}').get_config()


def value_errors(config) -> list[str]:
  """What `tasks.for_config` reports: the task's and the trainer's checks."""
  try:
    setup.validate(config, tasks.get(config.data.name))
  except errors.ConfigError as e:
    lines = str(e).splitlines()  # one problem: on the first line; several: one per line
    return lines[1:] if len(lines) > 1 else [lines[0][len('Invalid config: '):]]
  return []


@pytest.mark.parametrize('name', ['default', 'syncmnist', 'syncmnist5', 'syncmnist_quick', 'syncmnist_cpu',
                                  'ssv1_c2d', 'ssv1_i3d', 'ssv1_i3d_nl', 'ssv1_i3d_vec'])
def test_shipped_configs_have_no_value_errors(name):
  assert value_errors(_config(name)) == []


@pytest.mark.parametrize('field,value,message', [
    ('optim.learning_rate', float('nan'),
     'optim.learning_rate=nan must be a positive finite number'),
    ('optim.learning_rate', 0.0, 'optim.learning_rate=0.0 must be a positive finite number'),
    ('optim.learning_rate', -1e-4, 'optim.learning_rate=-0.0001 must be'),
    ('optim.learning_rate', float('inf'), 'optim.learning_rate=inf must be'),
    ('rstg.dim', 0, 'rstg.dim=0 must be a positive integer'),
    ('rstg.dim', -8, 'rstg.dim=-8 must be a positive integer'),
    ('baseline.lstm_dim', 0, 'baseline.lstm_dim=0 must be'),
    ('backbone.width', 0, 'backbone.width=0 must be'),
    ('rstg.scales', (), 'rstg.scales=() must name at least one grid size'),
    ('rstg.scales', (1, 0), 'rstg.scales=(1, 0) must hold positive integers'),
    ('data.train_size', 0, 'data.train_size=0 must be a positive integer'),
    ('num_epochs', float('nan'), 'num_epochs=nan must be a finite number'),
    ('backbone.pretrain_lr', float('nan'), 'backbone.pretrain_lr=nan must be'),
    ('optim.momentum', 1.5, 'optim.momentum=1.5 must be in [0, 1)'),
    ('optim.weight_decay', -1.0, 'optim.weight_decay=-1.0 must be a finite number >= 0'),
])
def test_meaningless_values_are_named(field, value, message):
  config = _config('syncmnist')  # pretrain_steps > 0, epoch-based
  node = config
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  errors = value_errors(config)
  assert len(errors) == 1 and errors[0].strip().startswith(message), errors


def test_train_size_only_matters_where_it_is_used():
  config = _config('ssv1_i3d')
  config.data.train_size = 0
  assert value_errors(config)  # epoch-based: 0 videos -> 0 steps
  config.num_train_steps = 100
  assert value_errors(config) == []  # SSv1 counts its videos itself


def test_ssv1_model_sizes_are_checked_too():
  config = _config('ssv1_i3d')
  config.rstg.dim, config.rstg.scales = 0, ()
  errors = [e.strip() for e in value_errors(config)]
  assert errors[0].startswith('rstg.dim=0 must be a positive integer'), errors
  assert errors[1].startswith('rstg.scales=() must name at least one grid size'), errors


def test_workdir_error(tmp_path):
  assert config_checks.workdir_error(str(tmp_path / 'new' / 'dir')) is None
  assert (tmp_path / 'new' / 'dir').is_dir() and not os.listdir(tmp_path / 'new' / 'dir')
  (tmp_path / 'file').write_text('x')
  msg = config_checks.workdir_error(str(tmp_path / 'file' / 'run'))
  assert msg.startswith(f"workdir '{tmp_path / 'file' / 'run'}' is not usable: ")
  assert '\n' not in msg


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'rstg_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_main_stops_on_meaningless_values_before_the_workdir(tmp_path):
  workdir = tmp_path / 'w'
  proc = _main('--config=configs/syncmnist_quick.py', f'--workdir={workdir}',
               '--config.optim.learning_rate=nan', '--config.rstg.dim=0',
               '--config.rstg.scales=()', '--config.data.train_size=0',
               '--config.num_train_steps=-1', '--config.num_epochs=1')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  for message in ('optim.learning_rate=nan must be', 'rstg.dim=0 must be',
                  'rstg.scales=() must name', 'data.train_size=0 must be'):
    assert message in proc.stderr
  assert not workdir.exists()


def test_main_one_line_for_an_unusable_workdir_and_a_refused_mnist(tmp_path):
  (tmp_path / 'file').write_text('x')
  proc = _main('--config=configs/syncmnist_quick.py', f'--workdir={tmp_path / "file" / "w"}')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith('ERROR: workdir ')

  from test_safe_pickle import HOSTILE, mnist_file  # pylint: disable=g-import-not-at-top
  evil = mnist_file(tmp_path / 'mnist.pkl.gz', HOSTILE['forged_dtype'][0])
  workdir = tmp_path / 'w'
  proc = _main('--config=configs/syncmnist_quick.py', f'--workdir={workdir}',
               f'--config.data.mnist_path={evil}')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"ERROR: {evil}: refusing dtype 'V8'"), last
  assert not workdir.exists()
