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

from rstg_jax.layers import NonLocalBlock
from rstg_jax.model import ABLATIONS, SCHEDULES, ablation_to_core_args
from rstg_jax.syncmnist import models
from rstg_jax.syncmnist import baselines
from rstg_jax.syncmnist.backbone import SmallCNN, apply_per_frame, feature_size, max_pool_2x2
from flax import linen as nn

NUM_CLASSES = 5


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def tiny_config(model='rstg', ablation='all_temp', freeze=False, width=8):
  c = config_dict.ConfigDict()
  c.model = model
  c.ablation = ablation
  c.data = config_dict.ConfigDict(dict(num_classes=NUM_CLASSES))
  c.baseline = config_dict.ConfigDict(dict(lstm_dim=8))
  c.backbone = config_dict.ConfigDict(dict(width=width, freeze=freeze, frames=1))
  c.rstg = config_dict.ConfigDict(dict(dim=8, num_iters=2, scales=(1, 2), gather='attention',
                                       adjacency='sparse', layer_norm=False, scalewise=False))
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
                  jax.tree_util.tree_leaves({k: v for k, v in free.items() if k != 'backbone'})):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_freeze_reaches_every_model():
  """All models share `backbone_features`; the factory must pass the flag to each."""
  for name in models.MODEL_NAMES:
    for freeze in (False, True):
      assert models.create_model(tiny_config(name, freeze=freeze)).freeze_backbone == freeze


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
