"""The protocol each SyncMNIST config and preset follows (`rstg_jax.syncmnist.protocol`),
computed from its backbone fields; the presets after ':' in --config; configs saved
before the pre-training stages, mapped to today's fields."""

import importlib
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from rstg_jax import paper
from rstg_jax import tasks
import rstg_jax.syncmnist
from rstg_jax.syncmnist import protocols

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ is a plain directory of modules

# config file -> {preset after ':' (None: no ':'): its protocol}; every preset a config
# defines must be here (test_every_preset_of_every_config_is_in_the_table).
TABLE = {
    'syncmnist_base': {None: 'paper'},
    'syncmnist': {None: 'paper', 'paper': 'paper', 'motion': 'motion_backbone',
                  'privileged': 'privileged'},
    'syncmnist5': {None: 'paper'},
    'syncmnist_quick': {None: 'motion_backbone', 'motion': 'motion_backbone',
                        'paper': 'paper', 'privileged': 'privileged'},
    'syncmnist_cpu': {None: 'motion_backbone', 'motion': 'motion_backbone',
                      'paper': 'paper', 'privileged': 'privileged'},
}
SSV1 = ('ssv1_c2d', 'ssv1_i3d', 'ssv1_i3d_nl', 'ssv1_i3d_vec')


def _parse(config_arg, *overrides):
  """--config=configs/<config_arg> with overrides, parsed the way rstg_jax.main does."""
  argv = ['prog', f'--config={os.path.join(REPO, "configs", config_arg)}', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def _cases():
  return [(name, preset, want) for name, presets in TABLE.items()
          for preset, want in presets.items()]


@pytest.mark.parametrize('name,preset,want', _cases())
def test_protocol_of_every_config_and_preset(name, preset, want):
  config = _parse(f'{name}.py' + (f':{preset}' if preset else ''))
  tasks.for_config(config, check_data=False)  # a valid config
  assert rstg_jax.syncmnist.protocol(config) == want
  assert tasks.get('syncmnist').protocol(config)[0] == want  # what the trainer prints
  # The baselines get the protocol of their backbone and its pre-training.
  for model in ('mean_lstm', 'conv_lstm', 'i3d', 'nonlocal'):
    config.model = model
    assert rstg_jax.syncmnist.protocol(config) == want, model


def test_every_preset_of_every_config_is_in_the_table():
  configs = {p[:-3] for p in os.listdir(os.path.join(REPO, 'configs'))
             if p.startswith('syncmnist') and p.endswith('.py')}
  assert configs == set(TABLE)
  for name, presets in TABLE.items():
    defined = getattr(importlib.import_module(f'configs.{name}'), 'PRESETS', {})
    assert set(presets) - {None} == set(defined), name


def test_the_defaults_use_no_privileged_label():
  """The main command's config and the 2-hour one: no label of the task's videos but
  their class; the paper's recipe and `:paper` are 'paper'."""
  assert protocols.protocol(_parse('syncmnist_quick.py')) == 'motion_backbone'
  assert protocols.protocol(_parse('syncmnist_cpu.py')) == 'motion_backbone'
  assert protocols.protocol(_parse('syncmnist.py')) == 'paper'
  paper_quick = _parse('syncmnist_quick.py:paper')
  assert paper_quick.backbone.frames == 1
  assert tuple(paper_quick.backbone.pretrain.stages) == ('digit',)
  # The same graph and optimizer as the default: only the backbone fields differ, and
  # the nodes get frame differences (rstg.frame_diff).
  for name in ('syncmnist_quick', 'syncmnist_cpu'):
    preset, default = _flat(_parse(f'{name}.py:paper')), _flat(_parse(f'{name}.py'))
    changed = {k for k, v in preset.items() if default.get(k) != v}
    assert changed == {'backbone.frames', 'backbone.pretrain.stages', 'rstg.frame_diff'}, name


def _flat(config):
  from rstg_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.flatten(config.to_dict())


def test_ssv1_configs_have_no_protocol_and_sweep_presets_are_paper():
  for name in SSV1:
    config = importlib.import_module(f'configs.{name}').get_config()
    assert tasks.get(config.data.name).protocol(config) is None
  for name in ('sync3_table1', 'sync5_table1'):  # launch/sweep.py --preset=NAME
    preset = paper.PRESETS[name]
    for point in preset['points']:
      overrides = [f'--config.{k}={v}' for k, v in point['overrides'].items()]
      config = _parse(preset['config'].removeprefix('configs/'), *overrides)
      assert protocols.protocol(config) == 'paper', point['name']


@pytest.mark.parametrize('frames,stages,want', [
    (1, (), 'paper'),
    (1, ('digit',), 'paper'),
    (2, (), 'motion_backbone'),  # frame pairs, whatever the pre-training
    (2, ('digit',), 'motion_backbone'),
    (2, ('motion',), 'motion_backbone'),
    (2, ('digit', 'motion'), 'motion_backbone'),
    (2, ('scene',), 'privileged'),
    (2, ('digit', 'motion', 'scene'), 'privileged'),  # privileged wins over motion
])
def test_classification_rules(frames, stages, want):
  config = _parse('syncmnist_base.py', f'--config.backbone.frames={frames}')
  config.backbone.pretrain.stages = stages
  name, why = protocols.explain(config)
  assert name == want
  if frames == 2 and want == 'motion_backbone':
    assert 'backbone.frames = 2' in why
  if 'scene' in stages:
    assert "'scene' stage" in why and "videos besides their class" in why
  if want == 'paper':
    assert why.startswith('one-frame backbone ' + ('pre-trained' if stages else 'not'))


def test_unknown_stage_names_are_refused():
  config = _parse('syncmnist_base.py')
  config.backbone.pretrain.stages = ('digits',)
  with pytest.raises(ValueError, match=r"Unknown backbone.pretrain.stages \['digits'\]"):
    protocols.protocol(config)


def test_stage_names_read_the_command_line_forms():
  assert protocols.stage_names(('digit,motion',)) == ('digit', 'motion')
  assert protocols.stage_names(("('digit', 'motion')",)) == ('digit', 'motion')
  assert protocols.stage_names(['digit', 'scene']) == ('digit', 'scene')
  assert protocols.stage_names(('',)) == protocols.stage_names(()) == ()
  assert protocols.stage_names('motion') == ('motion',)


def _old(**backbone):
  return {'data': {'name': 'syncmnist'},
          'backbone': dict(width=32, pretrain_batch_size=32, pretrain_lr=5e-3, **backbone)}


@pytest.mark.parametrize('old,stages,steps', [
    (dict(pretrain_steps=0), (), None),
    (dict(pretrain_steps=0, pretrain_target='digit_motion'), (), None),
    (dict(pretrain_steps=2000, pretrain_target='digit'), ('digit',), dict(digit=2000)),
    (dict(pretrain_steps=1000, pretrain_target='digit_motion', pretrain_motion_steps=3000),
     ('digit', 'motion'), dict(digit=1000, motion=3000)),
    (dict(pretrain_steps=1000, pretrain_target='digit_motion', pretrain_motion_steps=1000,
          pretrain_scene_steps=500), ('digit', 'motion', 'scene'), dict(scene=500)),
    (dict(pretrain_steps=0, pretrain_target='digit_position', coords=False), (), None),
])
def test_old_flat_fields_map_to_the_stages(old, stages, steps):
  new = protocols.upgrade_config(_old(cache_path='/c.npz', **old))
  b = new['backbone']
  assert not set(b) & {'pretrain_steps', 'pretrain_target', 'coords', 'cache_path'}
  assert (b['frames'], new['data']['no_pair_prob']) == (1, 1 / 47)  # older defaults
  assert tuple(b['pretrain']['stages']) == stages
  assert (b['pretrain']['batch_size'], b['pretrain']['lr'],
          b['pretrain']['cache_path']) == (32, 5e-3, '/c.npz')
  for name, n in (steps or {}).items():
    assert b['pretrain']['steps'][name] == n
  assert protocols.upgrade_config(new) == new  # today's fields: unchanged


@pytest.mark.parametrize('old,field', [
    (dict(pretrain_steps=0, coords=True), 'backbone.coords=True'),
    (dict(pretrain_steps=1000, pretrain_target='digit_position'),
     "backbone.pretrain_target='digit_position'"),
])
def test_removed_trial_options_are_one_line_that_says_what_to_do(old, field):
  with pytest.raises(ValueError) as e:
    protocols.upgrade_config(_old(**old))
  msg = str(e.value)
  assert '\n' not in msg and field in msg and 'start fresh' in msg, msg


def test_main_rejects_an_unknown_preset_in_one_line_before_the_workdir(tmp_path):
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, '-m', 'rstg_jax.main', '--config=configs/syncmnist_quick.py:paperr',
       f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      "ERROR: unknown preset 'paperr' of configs/syncmnist_quick.py; valid: motion, paper, "
      'privileged (--config=configs/syncmnist_quick.py:PRESET)'], proc.stderr
  assert not workdir.exists()
