"""Tests of the Something-Something-v1 models, configs and the missing-data error.

Full-size networks are only traced (`jax.eval_shape`); what runs is a reduced ResNet
(one block per stage, width 8) on 4-frame 32 px clips, with small graphs (D=16).
"""

import functools
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from rstg_jax import tasks
from rstg_jax.train import optim
from rstg_jax.graph import build_graph
from rstg_jax.model import RSTG
from rstg_jax.ssv1 import models as ssv1_models
from rstg_jax.ssv1 import task as ssv1_task
from rstg_jax.ssv1.resnet3d import count_params, frozen_bn_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSV1_CONFIGS = ('ssv1_i3d', 'ssv1_i3d_vec', 'ssv1_c2d', 'ssv1_i3d_nl')

# Published sizes of the Kinetics ResNet-50s with a 400-way head (tests/test_resnet3d.py
# derives them), re-headed to 174 classes.
HEAD_DIFF = (400 - 174) * (2048 + 1)
I3D_R50_174 = 28_043_472 - HEAD_DIFF
C2D_R50_174 = 24_327_632 - HEAD_DIFF
NL_I3D_R50_174 = 35_401_936 - HEAD_DIFF


def _config(name='ssv1_i3d', **rstg):
  config = importlib.import_module(f'configs.{name}').get_config()
  config.data.num_classes = 174  # the configs read it from the labels file (0); no data here
  for k, v in rstg.items():
    config.rstg[k] = v
  return config


def _tiny_config(placement='res3_4', arch='i3d'):
  config = _config()
  config.data.num_classes = 5
  config.backbone.arch = arch
  config.backbone.blocks = (1, 1, 1, 1)
  config.backbone.base_width = 8
  config.rstg.placement = placement
  config.rstg.dim = 16
  config.rstg.scales = (1, 2)
  config.rstg.num_iters = 2
  return config


X = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
X48 = jax.random.normal(jax.random.key(2), (2, 4, 48, 48, 3))


def _fill(shapes, seed=0, residual_scale=0.5):
  """Well-scaled values for a shape tree, without compiling `init` (slow on a busy CPU).

  Kernels He-scaled, BN scales and variances 1, everything else 0 except the graph
  blocks' residual scales (`residual_scale`, so that the graph changes the output).
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [getattr(p, 'key', str(p)) for p in path]
    if names[-1] in ('kernel', 'ih', 'hh') or names[-1].startswith('w'):
      fan_in = int(np.prod(leaf.shape[:-1])) or 1
      return (rng.normal(size=leaf.shape) * np.sqrt(1 / fan_in)).astype(np.float32)
    if names[-1] == 'residual_scale':
      return np.full(leaf.shape, residual_scale, np.float32)
    if names[-1] in ('scale', 'var', 'gamma'):
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model, variables, x):
  return jax.jit(functools.partial(model.apply, train=False))(variables, x)


def _without_graph(tree):
  return {col: {k: v for k, v in sub.items() if not k.endswith('_graph')}
          for col, sub in tree.items()}


# --- Parameter counts of the full-size models ------------------------------------------


def _core_count(scales, dim=512, t=16):
  """Parameters of the RSTG core alone (its own init), as the configs set it up."""
  config = _config()
  graph = build_graph(scales, 14)
  core = RSTG(graph, dim=dim, **ssv1_models.rstg_kwargs(config))
  shapes = jax.eval_shape(core.init, jax.random.key(0), jnp.zeros((1, t, graph.num_nodes, dim)))
  return count_params(shapes['params'])


def _map_block_count(c, scales, dim=512):
  proj_in = 0 if c == dim else c * dim + dim
  # proj_out (no bias in the Dense; a separate bias after the resize), LayerNorm, scale.
  return proj_in + _core_count(scales, dim) + dim * c + c + 2 * c + 1


def _vec_block_count(c, scales, dim=512):
  return (c * dim + dim) + _core_count(scales, dim) + (dim * c + c) + 2 * c + 1


@pytest.mark.parametrize('name,expected_backbone,blocks', [
    ('ssv1_i3d', I3D_R50_174, {'res3_graph': (512,), 'res4_graph': (1024,)}),
    ('ssv1_i3d_vec', I3D_R50_174, {'res5_graph': (2048, 'vec')}),
    ('ssv1_c2d', C2D_R50_174, {'res5_graph': (2048, 'vec')}),
    ('ssv1_i3d_nl', NL_I3D_R50_174, {}),
])
def test_full_size_parameter_counts(name, expected_backbone, blocks):
  config = _config(name)
  model = ssv1_models.create_ssv1_model(config)
  params = ssv1_models.init_shapes(model, (8, 64, 64, 3))['params']
  summary = ssv1_models.param_summary(params)
  assert summary['backbone'] == expected_backbone
  scales = tuple(config.rstg.scales)
  for block, (c, *kind) in blocks.items():
    want = (_vec_block_count if kind else _map_block_count)(c, scales)
    assert summary[block] == want, block
  assert summary['graph'] == sum(summary[b] for b in blocks)
  assert summary['total'] == count_params(params) == summary['backbone'] + summary['graph']


def test_i3d_rstg_res3_4_count_and_the_papers_4_scale_graph():
  # 44.6M for the paper's best model with the authors' 3 scales; the graph's size does
  # not depend on the number of scales unless the update is per scale.
  params = ssv1_models.init_shapes(ssv1_models.create_ssv1_model(_config()),
                                   (8, 64, 64, 3))['params']
  assert count_params(params) == 44_646_384
  four = _config(scales=(1, 2, 3, 4))
  p4 = ssv1_models.init_shapes(ssv1_models.create_ssv1_model(four), (8, 64, 64, 3))['params']
  s3, s4 = ssv1_models.param_summary(params), ssv1_models.param_summary(p4)
  assert s4['backbone'] == s3['backbone']
  # scalewise=True: one update MLP per scale; the 4th scale adds exactly one more set.
  per_scale = (s4['graph'] - s3['graph']) // 2
  assert per_scale > 0 and s4['graph'] - s3['graph'] == 2 * per_scale
  line = ssv1_models.describe(four, p4)
  assert line.startswith('I3D-R50 + RSTG-to-map res3_4, scales (1, 2, 3, 4)')
  assert f'{s4["total"]:,} parameters' in line and 'res4_graph' in line


def test_table4_graph_is_30_nodes_and_feature_sizes_at_224_and_256():
  assert build_graph((1, 2, 3, 4), 14).num_nodes == 30
  model = ssv1_models.create_ssv1_model(_config(scales=(1, 2, 3, 4)))
  # res2 is the Caffe2 original's 55x55 (Table 4: 56x56, a padded pool1); res3 on agree.
  for size, (h2, h3, h4) in ((224, (55, 28, 14)), (256, (63, 32, 16))):
    (_, stages), _ = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 32, size, size, 3)),
                                       return_stages=True))
    assert stages['res2'].shape == (1, 32, h2, h2, 256)
    assert stages['res3'].shape == (1, 16, h3, h3, 512)
    assert stages['res4'].shape == (1, 16, h4, h4, 1024)
    assert stages['res5'].shape == (1, 16, h4, h4, 2048)  # res5 stride 1 (authors)


def test_stem_comes_from_the_config():
  assert ssv1_models.create_ssv1_model(_config()).stem == 'caffe2'
  config = _config()
  config.backbone.stem = 'pyslowfast'
  assert ssv1_models.create_ssv1_model(config).stem == 'pyslowfast'


# --- Reduced models that run --------------------------------------------------------------


@pytest.mark.parametrize('placement', ['res2', 'res3', 'res4', 'vec'])
def test_placements_build_run_and_change_the_output(placement):
  model = ssv1_models.create_ssv1_model(_tiny_config(placement))
  variables = _fill(ssv1_models.init_shapes(model, X.shape[1:]))
  stage = ssv1_models.PLACEMENT_STAGES[placement][0]
  assert set(k for k in variables['params'] if k.endswith('_graph')) == {f'{stage}_graph'}
  logits = _apply(model, variables, X)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  plain = ssv1_models.create_ssv1_model(_tiny_config('none'))
  base = _apply(plain, _without_graph(variables), X)
  # With a non-zero residual scale the graph's output reaches the logits.
  assert not np.allclose(logits, base, atol=1e-5)


def test_res3_4_is_the_identity_at_init_and_runs_at_two_input_sizes():
  model = ssv1_models.create_ssv1_model(_tiny_config('res3_4'))
  variables = _fill(ssv1_models.init_shapes(model, X.shape[1:]))
  # The graph blocks' own init (compiling the whole model's init would take much longer
  # on a busy CPU): on each block's input map.
  (_, stages), _ = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), X, return_stages=True))
  config = _tiny_config('res3_4')
  for stage in ('res3', 'res4'):
    block = ssv1_models.GraphToMap(scales=(1, 2), dim=16,
                                   rstg=ssv1_models.rstg_kwargs(config))
    own = jax.jit(block.init)(jax.random.key(0), jnp.zeros(stages[stage].shape))
    assert float(own['params']['map']['residual_scale']) == 0.0
    assert (jax.tree.map(jnp.shape, own['params'])
            == jax.tree.map(jnp.shape, variables['params'][f'{stage}_graph']))
    variables['params'][f'{stage}_graph'] = own['params']
  plain = ssv1_models.create_ssv1_model(_tiny_config('none'))
  same = _without_graph(variables)
  for x in (X, X48):
    np.testing.assert_array_equal(_apply(model, variables, x), _apply(plain, same, x))
  # Parameter shapes do not depend on the feature size: the same tree at 48 px (graphs
  # over 6x6 and 3x3 maps instead of 4x4 and 2x2).
  at48 = ssv1_models.init_shapes(model, X48.shape[1:])
  assert (jax.tree.map(lambda a: a.shape, at48['params'])
          == jax.tree.map(lambda a: a.shape, variables['params']))


def test_same_params_at_two_sizes_with_an_active_graph():
  model = ssv1_models.create_ssv1_model(_tiny_config('res3_4'))
  variables = _fill(ssv1_models.init_shapes(model, X.shape[1:]))
  ssv1_models.cached_graph.cache_clear()
  a, b = _apply(model, variables, X), _apply(model, variables, X48)
  assert a.shape == b.shape == (2, 5) and np.all(np.isfinite(b))
  # The model asked for exactly the graphs of the maps it saw (res3 and res4 at both
  # input sizes: 4x4 / 2x2 and 6x6 / 3x3), and no other.
  built = ssv1_models.cached_graph.cache_info()
  assert built.currsize == built.misses == 4
  for h in (2, 3, 4, 6):
    assert ssv1_models.cached_graph((1, 2), h, h, 'sparse').feature_size == (h, h)
  assert ssv1_models.cached_graph.cache_info().misses == 4  # all four were cached hits


def test_frozen_bn_gets_no_update_even_with_weight_decay():
  config = _tiny_config('res3')
  config.optim.weight_decay = 0.1
  model = ssv1_models.create_ssv1_model(config)
  params = _fill(ssv1_models.init_shapes(model, X.shape[1:]))['params']
  tx = optim.create_optimizer(config.optim, optax.constant_schedule(0.1),
                              ssv1_task.TASK.frozen_mask(config, params))
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  mask = traverse_util.flatten_dict(frozen_bn_mask(params))
  flat = traverse_util.flatten_dict(updates)
  assert sum(mask.values()) > 0
  for k, u in flat.items():
    assert bool(np.any(u)) != mask[k], k  # frozen: all zero; the rest: moved


# --- Configs --------------------------------------------------------------------------------


@pytest.mark.parametrize('name', SSV1_CONFIGS)
def test_configs_are_valid_and_documented(name):
  config = _config(name)
  tasks.for_config(check_data=False, config=config)
  assert config.data.num_classes == 174 and config.data.name == 'ssv1'
  assert (config.data.num_frames, config.data.crop_size, config.head.dropout_rate) == (32, 224, 0.3)
  assert config.backbone.bn_frozen and config.backbone.res5_stride == 1
  assert (config.optim.optimizer, config.optim.momentum, config.optim.nesterov) == ('sgd', 0.9, True)
  assert config.data.root is None and config.init_from.path is None
  doc = importlib.import_module(f'configs.{name}').__doc__
  assert f'python -m rstg_jax.main --config=configs/{name}.py' in doc
  assert '--config.data.root=PATH' in doc and '--config.init_from.path=' in doc
  paper = {'ssv1_i3d': '49.2', 'ssv1_i3d_vec': '47.7', 'ssv1_c2d': '42.8',
           'ssv1_i3d_nl': '44.4'}[name]
  assert paper in doc and 'Expected result:' in doc


def test_config_paths_are_overridable_and_placement_typos_list_the_valid_ones():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ['prog', f'--config={os.path.join(REPO, "configs", "ssv1_i3d.py")}',
          '--config.data.root=/data/ssv1', '--config.init_from.path=k.npz',
          '--config.data.tfds_dir=/data/tfds', '--config.rstg.scales=(1,2,3,4)',
          '--config.backbone.stem=pyslowfast']
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  c = fv.config
  assert (c.data.root, c.init_from.path, c.data.tfds_dir, tuple(c.rstg.scales)) == (
      '/data/ssv1', 'k.npz', '/data/tfds', (1, 2, 3, 4))
  assert c.backbone.stem == 'pyslowfast' and _config().backbone.stem == 'caffe2'
  bad = _config()
  bad.rstg.placement = 'res34'
  with pytest.raises(ValueError, match="placement 'res34'.*res3_4"):
    tasks.for_config(check_data=False, config=bad)
  bad = _config()
  bad.backbone.stem = 'torch'
  with pytest.raises(ValueError, match="backbone.stem 'torch'.*caffe2, pyslowfast"):
    tasks.for_config(check_data=False, config=bad)


# --- Missing data -------------------------------------------------------------------------


def test_missing_dataset_fails_at_once_with_where_to_get_it(tmp_path):
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, '-m', 'rstg_jax.main', '--config=configs/ssv1_i3d.py',
       f'--workdir={workdir}', f'--config.data.tfds_dir={tmp_path / "tfds"}'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0
  err = proc.stderr
  assert 'Traceback' not in err
  assert 'Something-Something-v1 is a manual download' in err
  assert '--config.data.root=' in err and 'config.data.tfds_dir' in err
  assert not workdir.exists()


def test_incomplete_root_names_the_missing_file(tmp_path):
  (tmp_path / '20bn-something-something-v1').mkdir()
  config = _config()
  config.data.root = str(tmp_path)
  config.data.tfds_dir = str(tmp_path / 'tfds')
  with pytest.raises(ValueError, match='something-something-v1-labels.csv.*tfds_dir'):
    ssv1_task.TASK.check_data(config)
