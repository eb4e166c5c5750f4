"""Tests of the config files and of the errors a wrong config or flag gives.

A misspelt model or ablation name must fail at once with the valid names, a misspelt field
with ml_collections' "did you mean", and every optional path must be settable from the
command line.
"""

import importlib
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from rstg_jax import tasks
from rstg_jax.train import setup as setup_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('syncmnist_base', 'syncmnist', 'syncmnist5', 'syncmnist_quick', 'syncmnist_cpu')
# The fields rstg_jax.syncmnist.models.create_model reads (its contract with the trainer).
MODEL_FIELDS = ('model', 'ablation', 'data.num_classes', 'backbone.width',
                'backbone.freeze', 'rstg.dim', 'rstg.num_iters', 'rstg.scales',
                'rstg.gather', 'rstg.adjacency', 'rstg.layer_norm', 'rstg.scalewise',
                'baseline.lstm_dim', 'baseline.conv_lstm_dim', 'baseline.conv_width',
                'baseline.i3d_planes', 'input_norm')


def _load(name):
  return importlib.import_module(f'configs.{name}').get_config()


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def _parse(args, name='syncmnist_quick'):
  """Parses command-line flags the way rstg_jax.main does, into a fresh FlagValues."""
  argv = ['prog', f'--config={os.path.join(REPO, "configs", name + ".py")}', *args]
  flag_values = flags.FlagValues()
  # config_flags reads the overrides from the argv given at definition time.
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('name', CONFIGS)
def test_configs_are_valid_and_complete(name):
  config = _load(name)
  for field in MODEL_FIELDS:
    _get(config, field)  # KeyError/AttributeError if missing
  assert config.data.num_classes == 46
  tasks.for_config(config, check_data=False)
  assert setup_lib.num_train_steps(config) > 0


@pytest.mark.parametrize('name', CONFIGS[1:])
def test_config_docstrings_give_command_runtime_and_result(name):
  doc = importlib.import_module(f'configs.{name}').__doc__
  assert f'--config=configs/{name}.py' in doc
  assert 'Expected runtime:' in doc and 'Expected result:' in doc


def test_paper_recipe():
  config = _load('syncmnist')
  o = config.optim
  assert (o.optimizer, o.learning_rate, o.momentum, o.nesterov) == ('sgd', 1e-4, 0.9, True)
  assert o.plateau.enabled and o.plateau.factor == 0.1
  assert config.data.train_size == 600_000 and config.eval.size == 10_000
  assert (config.backbone.width, config.rstg.dim, config.rstg.scales) == (512, 512, (1, 2, 3))
  assert _load('syncmnist5').data.num_digits == 5


@pytest.mark.parametrize('field,value,valid', [
    ('ablation', 'space_onyl', 'space_only'),
    ('model', 'rstgg', 'mean_lstm'),
])
def test_unknown_names_list_the_valid_ones(field, value, valid):
  config = _load('syncmnist')
  config[field] = value
  with pytest.raises(ValueError, match=f'{value}.*Valid names:.*{valid}'):
    tasks.for_config(config, check_data=False)


@pytest.mark.parametrize('field,value,message', [
    ('motion', 'bounce', "Unknown data.motion 'bounce'. Valid: clean, authors"),
    ('val_size', 0, 'data.val_size must be in 1..10000'),
    ('val_size', 10_001, 'data.val_size must be in 1..10000'),
    ('no_pair_prob', 1.5, r'data.no_pair_prob must be a probability in \[0, 1\]'),
])
def test_syncmnist_data_fields_are_checked(field, value, message):
  config = _load('syncmnist')
  assert (config.data.motion, config.data.val_size) == ('clean', 10_000)
  config.data[field] = value
  with pytest.raises(ValueError, match=message):
    tasks.for_config(config, check_data=False)


@pytest.mark.parametrize('frames,stages,message', [
    (3, ('digit',), r'backbone.frames must be 1 .* or 2'),
    (1, ('digit', 'motion'), r"backbone.pretrain.stages \['motion'\] need a backbone that "
     'sees two frames: set backbone.frames = 2'),
    (2, ('motion', 'digit'), "the one-frame 'digit' stage cannot follow the two-frame "
     "'motion' stage"),
    (2, ('digit', 'digit'), "names 'digit' twice"),
    (2, ('digit', 'moton'), "Unknown stage 'moton' in backbone.pretrain.stages. Valid: "
     'digit, motion, scene'),
])
def test_backbone_frames_and_stages_are_checked(frames, stages, message):
  config = _load('syncmnist_quick')
  config.backbone.frames = frames
  config.backbone.pretrain.stages = stages
  with pytest.raises(ValueError, match=message):
    tasks.for_config(config, check_data=False)
  config.backbone.update(frames=2)
  config.backbone.pretrain.stages = ('digit', 'motion', 'scene')
  tasks.for_config(config, check_data=False)


@pytest.mark.parametrize('field,value,message', [
    ('steps.motion', 0, 'backbone.pretrain.steps.motion=0 must be a positive integer'),
    ('steps.scene', -3, 'backbone.pretrain.steps.scene=-3 must be a positive integer'),
    ('lr', 0.0, 'backbone.pretrain.lr=0.0 must be a positive finite number'),
    ('batch_size', 0, 'backbone.pretrain.batch_size=0 must be a positive integer'),
])
def test_pretrain_numbers_are_checked_only_for_the_stages_that_run(field, value, message):
  config = _load('syncmnist_quick')
  config.backbone.pretrain.stages = ('digit', 'motion', 'scene')
  block, leaf = config.backbone.pretrain, field.split('.')[-1]
  if field.startswith('steps.'):
    block = block.steps
  block[leaf] = value
  with pytest.raises(ValueError, match=message):
    tasks.for_config(config, check_data=False)
  config.backbone.pretrain.stages = ('digit',) if field.startswith('steps.') else ()
  tasks.for_config(config, check_data=False)  # a stage that does not run: not checked


def test_stages_read_from_the_command_line():
  """`stages=digit,motion` (ml_collections reads ('digit,motion',)) and the tuple form
  give the same stages; an empty value is no pre-training."""
  from rstg_jax.syncmnist import protocols  # pylint: disable=g-import-not-at-top
  for value in ('digit,motion', "('digit','motion')", '(digit,motion)'):
    config = _parse([f'--config.backbone.pretrain.stages={value}'])
    assert protocols.stage_names(config.backbone.pretrain.stages) == ('digit', 'motion')
    tasks.for_config(config, check_data=False)
  for value in ('', '()'):
    config = _parse([f'--config.backbone.pretrain.stages={value}',
                     '--config.backbone.pretrain.steps.motion=7'])
    assert protocols.stage_names(config.backbone.pretrain.stages) == ()
    assert config.backbone.pretrain.steps.motion == 7


def test_misspelt_field_suggests_the_right_one():
  with pytest.raises(AttributeError, match='Did you mean "ablation"'):
    _parse(['--config.ablaton=space_only'])


def _main(*args, timeout=120):
  return subprocess.run([sys.executable, '-m', 'rstg_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_every_field_and_optional_path_is_overridable():
  config = _parse(['--config.ablation=space_only', '--config.rstg.num_iters=2',
                   '--config.data.mnist_path=/data/mnist', '--config.init_from.path=runs/a',
                   '--config.rstg.scales=(1,2)', '--config.backbone.freeze=False'])
  assert (config.ablation, config.rstg.num_iters, config.data.mnist_path,
          config.init_from.path, tuple(config.rstg.scales), config.backbone.freeze) == (
              'space_only', 2, '/data/mnist', 'runs/a', (1, 2), False)
  # The Table 1 preset's fields, as launch/sweep.py writes them (None and () defaults).
  config = _parse(['--config.input_norm=batchnorm', '--config.baseline.conv_width=8',
                   '--config.baseline.conv_lstm_dim=64',
                   '--config.baseline.i3d_planes=(9, 18, 36)'])
  assert (config.input_norm, config.baseline.conv_width, config.baseline.conv_lstm_dim,
          tuple(config.baseline.i3d_planes)) == ('batchnorm', 8, 64, (9, 18, 36))


def test_main_rejects_bad_names_and_fields_cleanly_before_any_work(tmp_path):
  workdir = tmp_path / 'w'
  proc = _main('--config=configs/syncmnist.py', '--config.ablation=bogus',
               f'--workdir={workdir}')
  assert proc.returncode != 0
  assert "Unknown ablation 'bogus'. Valid names: all_temp" in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()  # nothing was started
  proc = _main('--config=configs/syncmnist.py', '--config.ablaton=x', f'--workdir={workdir}')
  # Plain text, not the repr of ml_collections' KeyError message.
  assert proc.returncode != 0
  assert proc.stderr.strip() == "ERROR: Unknown field 'ablaton'; did you mean 'ablation'?"
