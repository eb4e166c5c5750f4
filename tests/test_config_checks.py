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


@pytest.mark.parametrize('name', ['syncmnist_base', 'syncmnist', 'syncmnist5', 'syncmnist_quick',
                                  'syncmnist_cpu', 'ssv1_c2d', 'ssv1_i3d', 'ssv1_i3d_nl',
                                  'ssv1_i3d_vec'])
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
    ('backbone.pretrain.lr', float('nan'), 'backbone.pretrain.lr=nan must be'),
    ('optim.momentum', 1.5, 'optim.momentum=1.5 must be in [0, 1)'),
    ('optim.weight_decay', -1.0, 'optim.weight_decay=-1.0 must be a finite number >= 0'),
])
def test_meaningless_values_are_named(field, value, message):
  config = _config('syncmnist')  # a pre-training stage, epoch-based
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


# ------------------------------------------------------------------------------------
# What the check accepts builds: every model and data set, for a representative set of
# values of every field they read (issue 32). A field that a model or data set reads must
# be listed in TRIES, or in NOT_BUILT when no model or data set reads it; a new field
# that is in neither fails `test_every_field_is_tried_or_known_not_to_be_built`, so it
# cannot slip past the check unseen.
# ------------------------------------------------------------------------------------

TRIES = {
    'syncmnist': {
        'model': ['rstg', 'mean_lstm', 'conv_lstm', 'i3d', 'nonlocal', 'bogus'],
        'ablation': ['all_temp', 'one_temp', 'homogeneous', 'space_only', 'time_only',
                     'positional', 'bogus'],
        'rstg.dim': [-1, 0, 4],
        'rstg.num_iters': [-1, 0, 2],
        'rstg.scales': [(), (0, 1), (1, 1), (1, 6), (1, 7), (3, 2)],
        'rstg.gather': ['sum', 'mean'],
        'rstg.adjacency': ['sparse', 'full', 'dense'],
        'rstg.layer_norm': [True, False],
        'rstg.scalewise': [True, False],
        'rstg.frame_diff': [True, False],
        'input_norm': ['rstg', 'batchnorm', 'none', 'layernorm'],
        'baseline.lstm_dim': [0, 4],
        'baseline.conv_lstm_dim': [None, 0, 4],
        'baseline.conv_width': [None, -1, 4],
        'baseline.i3d_planes': [(), (0, 4, 4), (4, 4), (4, 4, 4)],
        'backbone.width': [0, 4],
        'backbone.freeze': [True, False],
        'backbone.frames': [1, 2, 3],
        'backbone.train_layers': [0, 1, 4, -1],  # 1 refused: freeze is False here
        'data.num_classes': [0, 45, 46, 47],
        'data.num_digits': [1, 2, 5, 6, 11],  # 6+: the generator's redraws cannot succeed
        'data.seed': [-1, 0, 7],
        'data.motion': ['clean', 'authors', 'bounce'],
        'data.no_pair_prob': [-0.1, 0.0, 1.0, 1.5],
        'data.train_size': [0, 8, 600_000, 600_001],
        'data.val_size': [0, 4, 10_001],
        'eval.size': [0, 4, 10_000, 10_001],
        'eval.batch_size': [0, 4],
        'batch_size': [0, 4],
        'seed': [-1, 0, 3],
    },
    'ssv1': {
        'model': ['resnet3d', 'rstg'],
        'ablation': ['all_temp', 'time_only', 'positional', 'bogus'],
        'rstg.placement': ['res2', 'res3', 'res4', 'res3_4', 'vec', 'none', 'res6'],
        'rstg.dim': [0, 8],
        'rstg.num_iters': [0, 2],
        'rstg.scales': [(), (1, 2), (1, 3), (2, 2)],  # res4 of a 32 px crop is 2x2
        'rstg.gather': ['sum', 'mean'],
        'rstg.adjacency': ['full', 'dense'],
        'rstg.layer_norm': [False],
        'rstg.scalewise': [False],
        'backbone.arch': ['c2d', 'i3d', 'x3d'],
        'backbone.blocks': [(1, 1, 1), (1, 1, 0, 1), (1, 2, 1, 1)],
        'backbone.base_width': [0, 4],
        'backbone.res5_stride': [1, 2, 3],
        'backbone.stem': ['caffe2', 'pyslowfast', 'torch'],
        'backbone.bn_frozen': [False],
        'backbone.nonlocal_blocks': [True],
        'head.dropout_rate': [-0.1, 0.0, 1.0],
        'data.num_classes': [-1, 0, 5],
        'data.num_frames': [0, 1, 2, 3],
        'data.crop_size': [0, 16, 33, 40],
        'data.short_side': [16, 24, 48],
        'eval.split': ['validation', 'validation[:2]', 'val'],
        'eval.views': ['center', 'dense', 'all'],
        'eval.periodic_views': ['dense', 'all'],
    },
}
# The baselines' widths are read by their model only: tried with it.
READ_BY = {'baseline.lstm_dim': 'mean_lstm', 'baseline.conv_lstm_dim': 'conv_lstm',
           'baseline.conv_width': 'conv_lstm', 'baseline.i3d_planes': 'i3d'}
# Read by no model and no data set: the optimizer, the loop, checkpoints, paths checked by
# `Task.check_data`, and the pre-training stages (their own checks and tests:
# test_configs.py, test_protocols.py, test_pretrain.py).
NOT_BUILT = ('optim.*', 'num_epochs', 'num_train_steps', 'log_every', 'checkpoint_every',
             'keep_checkpoints', 'progress_bar', 'resume_changes_ok', 'init_from.*',
             'eval.every', 'data.prefetch', 'data.name', 'data.mnist_path', 'data.root',
             'data.tfds_dir', 'data.rebuild', 'backbone.pretrain.*')
# The SSv1 data set needs TensorFlow and a converted tree: tests/test_ssv1_source.py
# builds it for values of these fields (TRIES above builds the SSv1 models only).
SSV1_DATA_FIELDS = ('data.train_size', 'data.num_frames', 'data.crop_size',
                    'data.short_side', 'eval.split', 'eval.size', 'eval.batch_size',
                    'batch_size', 'seed')
BASES = {'syncmnist': 'syncmnist', 'ssv1': 'ssv1_i3d'}


def _small(task: str):
  """The shipped config, with sizes that build in a fraction of a second."""
  config = _config(BASES[task])
  config.batch_size = config.eval.batch_size = 4
  config.eval.size = 4
  config.rstg.dim = 8
  if task == 'syncmnist':
    config.backbone.width, config.baseline.lstm_dim = 4, 4
    config.data.val_size, config.data.train_size = 4, 8
  else:
    config.backbone.blocks, config.backbone.base_width = (1, 1, 1, 1), 4
    config.data.num_frames, config.data.crop_size, config.data.short_side = 2, 32, 40
    config.rstg.scales = (1, 2)
  return config


def _with(config, field, value):
  node = config
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  return config


def _build(task, config, shapes_seen: dict):
  """Builds the model (its variables' shapes, at every input size the task feeds it) and,
  for SyncMNIST, the data set and one batch of each split."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  t = tasks.get(config.data.name)
  if task == 'syncmnist':
    dataset = t.create_dataset(config)
    dataset.batch(0), list(dataset.eval_batches()), list(dataset.test_batches())
    sizes = [dataset.input_shape]
  else:  # the training crop and the dense evaluation's views
    d = config.data
    sizes = [(d.num_frames, s, s, 3) for s in (d.crop_size, d.short_side)]
  num_classes = config.data.num_classes or 5  # 0: the data set's (SSv1: its labels file)
  config.data.num_classes = num_classes
  key = config.to_json_best_effort()
  if key not in shapes_seen:
    model = t.create_model(config)
    for shape in sizes:
      out = jax.eval_shape(lambda k, s=shape: model.init_with_output(
          k, jnp.zeros((1, *s)), train=False), jax.random.key(0))[0]
      assert out.shape == (1, num_classes), (config, out.shape)
    shapes_seen[key] = True


@pytest.mark.parametrize('task', sorted(TRIES))
def test_every_accepted_config_builds_and_every_refusal_names_its_field(task):
  seen, accepted, refused = {}, 0, 0
  for field, values in TRIES[task].items():
    for value in values:
      config = _with(_small(task), field, value)
      config.model = READ_BY.get(field, config.model)
      problems = value_errors(config)
      if problems:
        refused += 1
        assert any(field in p for p in problems), (field, value, problems)
        continue
      accepted += 1
      try:
        _build(task, config, seen)
      except Exception as e:  # pylint: disable=broad-except
        pytest.fail(f'{task}: {field}={value!r} passed the config check but building '
                    f'failed: {type(e).__name__}: {e}')
  assert accepted > 20 and refused > 20, (accepted, refused)


@pytest.mark.parametrize('task', sorted(TRIES))
def test_every_field_is_tried_or_known_not_to_be_built(task):
  import fnmatch  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from rstg_jax import cli  # pylint: disable=g-import-not-at-top
  fields = cli.flatten(json.loads(_config(BASES[task]).to_json_best_effort()))
  elsewhere = SSV1_DATA_FIELDS if task == 'ssv1' else ()
  unseen = [f for f in fields if f not in TRIES[task] and f not in elsewhere
            and not any(fnmatch.fnmatchcase(f, p) for p in NOT_BUILT)]
  assert not unseen, (f'{task} config fields neither tried by the build test nor listed '
                      f'as read by no model or data set: {unseen}')
