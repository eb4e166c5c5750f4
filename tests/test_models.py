"""Tests of the SyncMNIST models: backbone, baselines, RSTG classifier, factory.

Tiny widths and 32x32 frames (backbone map 2x2) keep every model fast on a shared CPU;
the parameter counts at the paper's widths are checked with `jax.eval_shape`, which
allocates nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from rstg_jax.graph import build_graph, pool_nodes
from rstg_jax.layers import NonLocalBlock
from rstg_jax.model import ABLATIONS, SCHEDULES, ablation_to_core_args
from rstg_jax.syncmnist import models
from rstg_jax.syncmnist import baselines
from rstg_jax.syncmnist.rstg_classifier import with_frame_difference
from rstg_jax.syncmnist.backbone import SmallCNN, apply_per_frame, feature_size, max_pool_2x2
from flax import linen as nn

NUM_CLASSES = 5


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def tiny_config(model='rstg', ablation='all_temp', freeze=False, width=8, input_norm=None):
  """A small config; without `input_norm`, one from before that field existed."""
  c = config_dict.ConfigDict()
  c.model = model
  c.ablation = ablation
  c.data = config_dict.ConfigDict(dict(num_classes=NUM_CLASSES))
  c.baseline = config_dict.ConfigDict(dict(lstm_dim=8))
  c.backbone = config_dict.ConfigDict(dict(width=width, freeze=freeze, frames=1))
  c.rstg = config_dict.ConfigDict(dict(dim=8, num_iters=2, scales=(1, 2), gather='attention',
                                       adjacency='sparse', layer_norm=False, scalewise=False))
  if input_norm is not None:
    c.input_norm = input_norm
  return c


def paper_config(model, ablation='all_temp'):
  c = tiny_config(model, ablation, width=512)
  c.data.num_classes = 46
  c.baseline.lstm_dim = 512
  c.rstg.update(dim=512, num_iters=3, scales=(1, 2, 3))
  return c


def videos(n=2, t=3, size=32, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, t, size, size, 1))


def test_backbone_shapes_follow_valid_padding():
  assert feature_size(64) == 6  # 64 -> 62 -> 31 -> 29 -> 14 -> 12 -> 6
  assert feature_size(64, padding='SAME') == 8
  assert feature_size(32) == 2
  with pytest.raises(ValueError):
    feature_size(8)
  cnn = SmallCNN(width=4)
  frames = jnp.ones((1, 64, 64, 1))
  variables = cnn.init(jax.random.PRNGKey(0), frames)
  assert cnn.apply(variables, frames).shape == (1, 6, 6, 4)
  assert count(variables) == (9 * 1 + 1) * 4 + 2 * (9 * 4 + 1) * 4


def test_backbone_on_video_equals_per_frame():
  cnn = SmallCNN(width=4)
  video = videos(n=2, t=3)
  variables = cnn.init(jax.random.PRNGKey(0), video[:, 0])
  out = cnn.apply(variables, video, method=SmallCNN.video)
  assert out.shape == (2, 3, 2, 2, 4)
  np.testing.assert_allclose(out[1, 2], cnn.apply(variables, video[1, 2:3])[0], rtol=1e-5,
                             atol=1e-6)
  # The helper works for any frame-wise function.
  assert apply_per_frame(lambda x: x.sum(axis=(1, 2)), video).shape == (2, 3, 1)


@pytest.mark.parametrize('size', [6, 7])  # even, and odd (last row/column dropped)
def test_max_pool_2x2_equals_flax_max_pool_and_its_gradient(size):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 2, 3))
  ref = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2), padding='VALID')
  np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
  w = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  grad = lambda f: jax.grad(lambda a: jnp.sum(w * f(a)))(x)
  np.testing.assert_array_equal(grad(max_pool_2x2), grad(ref))


@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
def test_kernel_grad_as_matmuls_equals_xla_gradients(padding):
  """SmallCNN's kernel gradients as matmuls ('matmul', the CPU default: over the patches
  for the 2-frame input's 18 patch channels, per tap for the 72 of the 8-wide second
  layer) give XLA's gradients (kernels, biases and the frames) and the same parameters
  and output. Catches a tap read at the wrong offset, patches in another order than the
  kernel's, a transposed kernel, or SAME padding on the wrong side."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 20, 23, 2))
  cnns = {k: SmallCNN(8, num_layers=2, padding=padding, frames=2, kernel_grad=k)
          for k in ('matmul', 'xla')}
  params = cnns['xla'].init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, cnns['matmul'].init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, params)
  w = jax.random.normal(jax.random.PRNGKey(2), cnns['xla'].apply(params, x).shape)
  grads = {k: jax.grad(lambda p, a, m=m: jnp.sum(w * m.apply(p, a) ** 2), argnums=(0, 1))(
      params, x) for k, m in cnns.items()}
  np.testing.assert_array_equal(cnns['matmul'].apply(params, x), cnns['xla'].apply(params, x))
  for a, b in zip(jax.tree.leaves(grads['matmul']), jax.tree.leaves(grads['xla'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
  assert float(jnp.abs(grads['xla'][0]['params']['conv0']['kernel']).max()) > 0
  with pytest.raises(ValueError, match="kernel_grad must be 'auto', 'matmul' or 'xla'"):
    SmallCNN(5, kernel_grad='fast').init(jax.random.PRNGKey(1), x[..., :1])


def check_model(model, video, train_mode=True):
  """Shapes, finiteness, input dependence and the train-mode contract; returns logits."""
  variables = model.init(jax.random.PRNGKey(0), video, train=False)
  assert 'backbone' in variables['params']
  logits = model.apply(variables, video, train=False)
  assert logits.shape == (video.shape[0], NUM_CLASSES)
  assert np.all(np.isfinite(logits))
  # Different videos in the batch must give different logits (nothing ignores the input).
  assert not np.allclose(logits[0], logits[1], atol=1e-6)
  if train_mode:
    # Train mode: BatchNorm statistics come back through the mutable collection.
    out, updates = model.apply(variables, video, train=True, mutable=['batch_stats'])
    assert out.shape == logits.shape
    assert set(updates) <= {'batch_stats'}
  return np.asarray(logits)


@pytest.mark.parametrize('name', ['mean_lstm', 'conv_lstm', 'i3d', 'nonlocal'])
def test_baselines_shapes_and_input_dependence(name):
  check_model(models.create_model(tiny_config(name)), videos())


def test_rstg_classifier_and_positional_ablation():
  """The classifier runs; "positional" really switches the core's positional maps on.

  Every schedule itself is tested with the core (tests/test_model.py); here only the
  wiring of two ablations through the classifier, to keep this file fast.
  """
  video = videos(t=2)
  plain = check_model(models.create_model(tiny_config('rstg', 'all_temp')), video)
  positional = check_model(models.create_model(tiny_config('rstg', 'positional')), video,
                           train_mode=False)
  assert not np.allclose(plain, positional, atol=1e-6)


def test_frame_difference_adds_each_nodes_change_since_the_frame_before():
  nodes = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3, 5))
  out = np.asarray(with_frame_difference(nodes))
  assert out.shape == (2, 4, 3, 10)
  np.testing.assert_array_equal(out[..., :5], nodes)
  np.testing.assert_array_equal(out[:, 0, :, 5:], 0)  # nothing before frame 0
  np.testing.assert_allclose(out[:, 1:, :, 5:], nodes[:, 1:] - nodes[:, :-1], atol=1e-6)
  # Through the config: the core's input projection reads both halves (2 x width).
  config = tiny_config('rstg')
  config.rstg.frame_diff = True
  model = models.create_model(config)
  params = model.init(jax.random.PRNGKey(0), videos(t=2))['params']
  assert params['rstg']['embed']['kernel'].shape == (2 * 8, 8)
  del config.rstg.frame_diff  # a value of another type, as a hand-made config may hold
  config.rstg.frame_diff = 'yes'
  with pytest.raises(ValueError, match='rstg.frame_diff'):
    models.create_model(config)


def test_space_only_logits_ignore_the_frame_order():
  # The paper's space-only ablation has no notion of time: an average pool across time.
  # Permuting a video's frames leaves its logits unchanged (eval and train mode: the
  # node BatchNorm's batch statistics are order-free too); all_temp does notice.
  video = videos(t=4)
  perm = np.array([2, 0, 3, 1])
  for ablation, order_free in (('space_only', True), ('all_temp', False)):
    model = models.create_model(tiny_config('rstg', ablation))
    variables = model.init(jax.random.PRNGKey(0), video)
    for train in (False, True):
      run = lambda v: model.apply(variables, v, train=train, mutable=['batch_stats'])[0]
      a, b = run(video), run(video[:, perm])
      assert np.allclose(a, b, rtol=1e-5, atol=1e-5) == order_free, (ablation, train)


def test_ablation_names_match_the_core():
  assert set(ABLATIONS) == set(SCHEDULES) | {'positional'}
  assert ablation_to_core_args('positional') == dict(schedule='all_temp', positional=True)
  for ablation in set(ABLATIONS) - {'positional'}:
    assert ablation_to_core_args(ablation) == dict(schedule=ablation, positional=False)
  with pytest.raises(ValueError, match='all_temp, one_temp'):
    ablation_to_core_args('two_temp')
  # The factory hands every field to the classifier.
  cfg = tiny_config('rstg', 'space_only', freeze=True)
  cfg.rstg.update(gather='sum', adjacency='full', layer_norm=True, scalewise=True,
                  scales=[1, 3])
  model = models.create_model(cfg)
  assert (model.ablation, model.gather, model.adjacency, model.layer_norm, model.scalewise,
          model.scales, model.dim, model.num_iters, model.freeze_backbone, model.width,
          model.num_classes) == ('space_only', 'sum', 'full', True, True, (1, 3), 8, 2, True,
                                 8, NUM_CLASSES)


@pytest.mark.parametrize('name,expected,tolerance', [
    ('i3d', 10e6, 0.25),       # App. D: "around 10M"
    ('nonlocal', 10e6, 0.25),
    ('rstg', 11.0e6, 0.05),    # backbone 4.7M + RSTG core 6.3M
    ('mean_lstm', 6.85e6, 0.05),
    ('conv_lstm', 50.6e6, 0.05),  # LSTM on flattened 6x6x512 maps
])
def test_parameter_counts_at_paper_width(name, expected, tolerance):
  model = models.create_model(paper_config(name))
  video = jax.ShapeDtypeStruct((1, 10, 64, 64, 1), jnp.float32)
  variables = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video)
  n = count(variables['params'])
  assert abs(n - expected) <= tolerance * expected, f'{name}: {n} parameters'
  assert count(variables['params']['backbone']) == 10 * 512 + 2 * (9 * 512 + 1) * 512


def test_nonlocal_i3d_adds_one_block_in_second_stage():
  video = jax.ShapeDtypeStruct((1, 4, 64, 64, 1), jnp.float32)
  plain = jax.eval_shape(lambda v: models.create_model(paper_config('i3d')).init(
      jax.random.PRNGKey(0), v), video)['params']
  nl = jax.eval_shape(lambda v: models.create_model(paper_config('nonlocal')).init(
      jax.random.PRNGKey(0), v), video)['params']
  extra = set(nl) - set(plain)
  assert extra == {'stage1_nonlocal'}
  # theta, phi, g (512 -> 256), out (256 -> 512), each with bias, and the output BN.
  assert count(nl['stage1_nonlocal']) == 3 * (512 * 256 + 256) + 256 * 512 + 512 + 2 * 512


def test_nonlocal_block_is_identity_at_init():
  block = NonLocalBlock(subsample=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 8))
  variables = block.init(jax.random.PRNGKey(1), x)
  for train in (False, True):
    y = block.apply(variables, x, train=train, mutable=['batch_stats'])[0]
    np.testing.assert_allclose(y, x, atol=1e-6)
  # Once the output BN scale is non-zero, the block does something (small: the output
  # projection starts at N(0, 0.01^2), as in the Non-local code).
  params = jax.tree_util.tree_map(lambda a: a, variables['params'])
  params['bn']['scale'] = jnp.ones_like(params['bn']['scale'])
  y = block.apply({**variables, 'params': params}, x)
  assert np.max(np.abs(y - x)) > 1e-5


def test_freeze_backbone_stops_gradients():
  video = videos()
  grads = {}
  # The flag does not change the parameters, so one init serves both models.
  variables = models.create_model(tiny_config('mean_lstm')).init(jax.random.PRNGKey(0), video)
  for freeze in (False, True):
    model = models.create_model(tiny_config('mean_lstm', freeze=freeze))

    def loss(params, model=model, variables=variables):
      logits, _ = model.apply({**variables, 'params': params}, video, train=True,
                              mutable=['batch_stats'])
      return jnp.sum(logits[:, 0] ** 2) + jnp.sum(logits[:, 1])

    grads[freeze] = jax.grad(loss)(variables['params'])
  norm = lambda t: sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree_util.tree_leaves(t))
  frozen, free = grads[True], grads[False]
  assert norm(frozen['backbone']) == 0.0
  assert norm(free['backbone']) > 0.0
  rest = {k: v for k, v in frozen.items() if k != 'backbone'}
  assert norm(rest) > 0.0
  # Freezing changes no forward value, so every other gradient is unchanged.
  for a, b in zip(jax.tree_util.tree_leaves(rest),
                  jax.tree_util.tree_leaves({k: v for k, v in free.items() if k != 'backbone'}),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_freeze_reaches_every_model():
  """All models share `backbone_features`; the factory must pass the flag to each."""
  for name in models.MODEL_NAMES:
    for freeze in (False, True):
      assert models.create_model(tiny_config(name, freeze=freeze)).freeze_backbone == freeze


@pytest.mark.parametrize('name', ['rstg', 'i3d'])
def test_train_layers_trains_only_the_backbones_last_layers(name):
  """backbone.train_layers=k with freeze: conv layers below the last k get exactly zero
  gradient, the last k the gradient full fine-tuning gives them, and every head
  parameter its unchanged gradient (the forward pass is the same); the SyncMNIST task's
  optimizer mask freezes exactly those lower layers."""
  from rstg_jax.syncmnist.task import TASK  # pylint: disable=g-import-not-at-top
  video = videos()
  variables = models.create_model(tiny_config(name)).init(jax.random.PRNGKey(0), video)
  norm = lambda t: sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree_util.tree_leaves(t))

  def grads(config):
    model = models.create_model(config)

    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, video, train=True,
                              mutable=['batch_stats'])
      return jnp.sum(logits[:, 0] ** 2) + jnp.sum(logits[:, 1])

    return jax.grad(loss)(variables['params'])

  free = grads(tiny_config(name))
  for k in (1, 2):
    config = tiny_config(name, freeze=True)
    config.backbone.train_layers = k
    assert models.create_model(config).train_backbone_layers == k
    g = grads(config)
    trained = [f'conv{i}' for i in range(3 - k, 3)]
    for layer in ('conv0', 'conv1', 'conv2'):
      if layer in trained:
        assert norm(g['backbone'][layer]) > 0.0
        np.testing.assert_allclose(g['backbone'][layer]['kernel'],
                                   free['backbone'][layer]['kernel'], rtol=1e-4, atol=1e-6)
      else:
        assert norm(g['backbone'][layer]) == 0.0, (k, layer)
    for a, b in zip(jax.tree_util.tree_leaves({n: v for n, v in g.items() if n != 'backbone'}),
                    jax.tree_util.tree_leaves({n: v for n, v in free.items()
                                               if n != 'backbone'}), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    mask = TASK.frozen_mask(config, variables['params'])
    assert {layer: all(jax.tree_util.tree_leaves(m)) for layer, m in
            mask['backbone'].items()} == {f'conv{i}': i < 3 - k for i in range(3)}
    assert not any(jax.tree_util.tree_leaves({n: v for n, v in mask.items()
                                              if n != 'backbone'}))


def test_train_layers_rejects_values_that_do_nothing_or_cannot_be():
  config = tiny_config('rstg', freeze=False)
  config.backbone.train_layers = 1  # unfrozen: every layer trains already
  with pytest.raises(ValueError, match='only applies to a frozen backbone'):
    models.create_model(config)
  for bad in (4, -1, True, 1.5):
    config = tiny_config('rstg', freeze=True)
    config.backbone.train_layers = bad
    with pytest.raises(ValueError, match='train_layers must be an integer from 0 to 3'):
      models.create_model(config)
  with pytest.raises(ValueError, match='frozen_layers must be in 0..3'):
    SmallCNN(4, frozen_layers=4).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))


def test_two_frame_backbone_sees_the_previous_frame():
  """frames=2: the first conv takes both frames' channels; frame t's features depend on
  frame t-1 (and frame 0 is paired with itself), so a still video's features are those
  of each frame alone while a change in frame 1 alters the features of frames 1 and 2
  only; the factory hands `backbone.frames` to every model."""
  cnn = SmallCNN(width=4, frames=2)
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.random((1, 4, 32, 32, 1)), jnp.float32)
  variables = cnn.init(jax.random.PRNGKey(0), video, method=SmallCNN.video)
  assert variables['params']['conv0']['kernel'].shape == (3, 3, 2, 4)
  fmap = np.asarray(cnn.apply(variables, video, method=SmallCNN.video))
  assert fmap.shape[:2] == (1, 4)
  np.testing.assert_allclose(  # frame 0 with itself
      fmap[:, 0], cnn.apply(variables, jnp.concatenate([video[:, 0]] * 2, -1)), rtol=1e-5)
  np.testing.assert_allclose(  # frame 2 with frame 1
      fmap[:, 2], cnn.apply(variables, jnp.concatenate([video[:, 1], video[:, 2]], -1)),
      rtol=1e-5)
  changed = np.asarray(cnn.apply(variables, video.at[:, 1].set(0.0), method=SmallCNN.video))
  differs = np.abs(changed - fmap).max(axis=(0, 2, 3, 4)) > 1e-6
  assert differs.tolist() == [False, True, True, False]
  with pytest.raises(ValueError, match='frames must be 1 or 2'):
    SmallCNN(width=4, frames=3).init(jax.random.PRNGKey(0), video, method=SmallCNN.video)
  for name in models.MODEL_NAMES:
    c = tiny_config(name)
    c.backbone.frames = 2
    model = models.create_model(c)
    variables = jax.eval_shape(lambda v, m=model: m.init(jax.random.PRNGKey(0), v),
                               jax.ShapeDtypeStruct((1, 2, 32, 32, 1), jnp.float32))
    assert variables['params']['backbone']['conv0']['kernel'].shape[2] == 2, name
  c = tiny_config()
  c.backbone.frames = 3
  with pytest.raises(ValueError, match='backbone.frames must be 1'):
    models.create_model(c)


def test_pretrained_backbone_params_fit():
  """Parameters of a bare SmallCNN have the shapes of params['backbone'] in every model."""
  video = jax.ShapeDtypeStruct((2, 3, 32, 32, 1), jnp.float32)
  cnn = jax.eval_shape(lambda v: SmallCNN(8).init(jax.random.PRNGKey(3), v[:, 0]), video)
  for name in models.MODEL_NAMES:
    model = models.create_model(tiny_config(name))
    variables = jax.eval_shape(lambda v, m=model: m.init(jax.random.PRNGKey(0), v), video)
    assert (jax.tree_util.tree_map(lambda a: a.shape, variables['params']['backbone']) ==
            jax.tree_util.tree_map(lambda a: a.shape, cnn['params'])), name


def test_unknown_names_raise_with_valid_list():
  with pytest.raises(ValueError) as err:
    models.create_model(tiny_config('resnet'))
  for name in models.MODEL_NAMES:
    assert name in str(err.value)
  with pytest.raises(ValueError) as err:
    models.create_model(tiny_config('rstg', ablation='two_temp'))
  for name in ABLATIONS:
    assert name in str(err.value)


def _init_shapes(config, video):
  model = models.create_model(config)
  return jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video)


def _head_inputs(name, fmap, config):
  """The backbone features as each model's head reads them."""
  if name == 'rstg':
    graph = build_graph(scales=tuple(config.rstg.scales), feature_size=fmap.shape[-3:-1],
                        adjacency=config.rstg.adjacency)
    return pool_nodes(graph, fmap)  # RSTG's nodes
  if name == 'mean_lstm':
    return fmap.mean(axis=(2, 3))  # one node per frame
  return fmap  # Conv+LSTM and I3D read the map's cells


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_input_norm_is_one_batchnorm_on_the_backbone_features(name):
  """input_norm='batchnorm' gives every model exactly one module more than 'none':
  `node_bn`, a scale and bias per backbone channel with its running statistics, whose
  output is the backbone's features as the head reads them (RSTG's pooled nodes,
  Mean+LSTM's per-frame mean, the map for Conv+LSTM and I3D) normalised per channel over
  all other axes. The default 'rstg', and a config from before the field, keep the
  models as they were: the node BatchNorm in RSTG only. Catches a model that skips the
  normalisation, adds a second one, or normalises something else (planted: MeanLSTM
  normalising the map before its pooling; ConvLSTM's after its first convolution).
  """
  video = jax.ShapeDtypeStruct((2, 3, 32, 32, 1), jnp.float32)
  on = _init_shapes(tiny_config(name, input_norm='batchnorm'), video)
  off = _init_shapes(tiny_config(name, input_norm='none'), video)
  shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)
  assert set(on['params']) - set(off['params']) == {'node_bn'}
  assert shapes({k: v for k, v in on['params'].items() if k != 'node_bn'}) == shapes(
      off['params'])
  assert shapes(on['params']['node_bn']) == {'scale': (8,), 'bias': (8,)}  # width 8
  assert shapes(on['batch_stats']['node_bn']) == {'mean': (8,), 'var': (8,)}
  assert 'node_bn' not in off.get('batch_stats', {})
  for config in (tiny_config(name), tiny_config(name, input_norm='rstg')):
    assert ('node_bn' in _init_shapes(config, video)['params']) == (name == 'rstg')

  config = tiny_config(name, input_norm='batchnorm')
  model = models.create_model(config)
  clip = videos()  # the shapes check_model uses: XLA's compiled ops are reused
  variables = model.init(jax.random.PRNGKey(0), clip, train=False)
  _, state = model.apply(variables, clip, train=True,
                         mutable=['batch_stats', 'intermediates'],
                         capture_intermediates=lambda module, _: module.name == 'node_bn')
  (normalised,) = state['intermediates']['node_bn']['__call__']
  fmap = SmallCNN(8).apply({'params': variables['params']['backbone']}, clip,
                           method=SmallCNN.video)
  x = np.asarray(_head_inputs(name, fmap, config), np.float64)
  axes = tuple(range(x.ndim - 1))  # init scale 1, bias 0: plain standardisation
  want = (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5)
  # float32 statistics (E[x^2] - E[x]^2 in flax) against float64: a few 1e-4.
  np.testing.assert_allclose(normalised, want, rtol=2e-3, atol=2e-3)


def test_input_norm_and_baseline_widths_are_checked():
  """A misspelt input_norm, a zero width or a wrong number of I3D stages stop at the
  factory with the field's name; the widths reach the modules."""
  for field, value, message in (('input_norm', 'layernorm', 'Unknown input_norm'),
                                ('baseline.conv_width', 0, 'baseline.conv_width'),
                                ('baseline.i3d_planes', (4, 8), 'must have 3 entries'),
                                ('baseline.i3d_planes', (4, 0, 8), r'i3d_planes\[1\]')):
    config = tiny_config('i3d', input_norm='none')
    config.baseline.update(conv_width=None, conv_lstm_dim=None, i3d_planes=())
    if field == 'input_norm':
      config.input_norm = value
    else:
      config.baseline[field.split('.')[1]] = value
    with pytest.raises(ValueError, match=message):
      models.create_model(config)
  config = tiny_config('conv_lstm')
  config.baseline.update(conv_width=3, conv_lstm_dim=5, i3d_planes=(2, 3, 4))
  model = models.create_model(config)
  assert (model.conv_width, model.lstm_dim, model.node_bn) == (3, 5, False)
  config.model = 'nonlocal'
  assert models.create_model(config).planes == (2, 3, 4)
  config.model = 'mean_lstm'
  assert models.create_model(config).lstm_dim == 8  # baseline.lstm_dim
