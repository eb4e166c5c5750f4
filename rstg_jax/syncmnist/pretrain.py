"""Backbone pre-training on single digits, and the backbone's on-disk cache.

The paper (Sec. 3.1): the SyncMNIST backbone is "a small CNN with 3 layers, pre-trained to
classify a digit randomly placed in a frame of the video". `pretrain_backbone` trains
`SmallCNN` + global average pooling + a 10-way linear classifier with Adam on 64x64 frames
holding one MNIST digit at a random place (`rstg_jax.syncmnist.generator.generate_single_digit`),
and returns only the `SmallCNN` parameters: the dict a video model expects at
`params['backbone']`. The classifier is thrown away.

With `pretrain_target='digit_motion'` the backbone sees two frames and is trained in
stages: the digit on one frame, then the digit and its step between two frames, then
optionally (`scene_steps`) every digit and its step at the cell under it in two frames of
the task's own videos.

`save_backbone` / `load_backbone` store those parameters as a plain `.npz` whose keys are
the '/'-joined parameter paths (e.g. `conv0/kernel`), so the trainer can cache the
pre-trained backbone in its workdir and anyone can inspect it with numpy alone.

The cache is keyed by everything that determines the result (`backbone_cache_key`: width,
steps, learning rate, batch size, seed and a fingerprint of the MNIST training digits),
stored in the file as the JSON string `__key__`; `load_cached_backbone` returns None and
a one-line reason when the key differs (or is absent), so the trainer pretrains again
instead of reusing a backbone made with other settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util
from tqdm.auto import tqdm

from rstg_jax import cli
from rstg_jax import errors
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import state as state_lib
from rstg_jax.train import steps as steps_lib
from rstg_jax.syncmnist.backbone import SmallCNN, feature_size
from rstg_jax.syncmnist.motion import OFFSET_HIGH, OFFSET_LOW

NUM_DIGIT_CLASSES = 10
#: Pre-training targets: 'digit' (the paper: the digit's class from globally pooled
#: features), 'digit_position' (also the digit's top-left corner in the frame, one
#: class per pixel row and per pixel column, read from the whole unpooled feature map)
#: and 'digit_motion' (a backbone that sees two frames, `SmallCNN.frames = 2`: also the
#: digit's step between them, one class per canvas-pixel offset per axis, read from the
#: globally pooled features, so every feature under the digit must say how it moved).
TARGETS = ('digit', 'digit_position', 'digit_motion')
#: The optional third stage of 'digit_motion' (`scene_steps` > 0) is 'scene_motion':
#: two frames of the task's own videos (several digits, often overlapping), the digit
#: and its step classified at the feature-map cell under each digit's centre
#: (`SceneMotionClassifier`), so that every cell's features name its own digit and step
#: in clutter, not only the globally pooled features of a frame with one digit.
NUM_POSITIONS = 47  # top-left corners in the 64x64 frame lie in 0..46 per axis
NUM_STEPS = OFFSET_HIGH - OFFSET_LOW  # 20 per-axis offsets of one step of motion

#: Key entry of the cache file; bump CACHE_FORMAT when pre-training changes what it makes.
CACHE_KEY = '__key__'
CACHE_FORMAT = 1


class PretrainDivergedError(errors.DivergedError):
  """The pre-training loss became NaN/inf; the message is one line saying what to do."""


class DigitClassifier(nn.Module):
  """The pre-training network: backbone, global average pool, linear 10-way classifier.

  Global average pooling (rather than flattening) makes the classifier blind to where the
  digit is, so the backbone has to produce digit features at every position: what the
  video models need, since digits move.

  Attributes:
    width: backbone filters.
  """

  width: int = 512
  coords: bool = False
  frames: int = 1  # SmallCNN.frames: the input then has `frames` channels

  @nn.compact
  def __call__(self, frames: jax.Array, train: bool = False) -> jax.Array:
    del train  # the trainer's model contract; no dropout or BatchNorm here
    fmap = SmallCNN(self.width, coords=self.coords, frames=self.frames, name='backbone')(frames)
    return nn.Dense(NUM_DIGIT_CLASSES, name='classifier')(fmap.mean(axis=(1, 2)))


class DigitPositionClassifier(nn.Module):
  """`DigitClassifier` plus where the digit is: two linear heads on the flattened feature
  map classify the top-left corner's row and column (`NUM_POSITIONS` classes each).

  The position heads see every feature-map cell, so the backbone's features must say
  where in its cell a digit lies: the sub-cell position that area-pooled graph nodes
  otherwise lose, and from which motion is read. Returns logits [B, 10 + 2 * 47]
  (digit, row, column); `_position_train_step` splits them.

  With a coordinate backbone (`coords`), the position heads read the globally pooled
  features instead, so the features themselves must encode the digit's absolute
  position (which the coordinate channels make possible): what an area-pooled node of
  any size then carries.
  """

  width: int = 512
  coords: bool = False
  frames: int = 1

  @nn.compact
  def __call__(self, frames: jax.Array, train: bool = False) -> jax.Array:
    del train
    fmap = SmallCNN(self.width, coords=self.coords, frames=self.frames, name='backbone')(frames)
    pooled = fmap.mean(axis=(1, 2))
    digit = nn.Dense(NUM_DIGIT_CLASSES, name='classifier')(pooled)
    where_in = pooled if self.coords else fmap.reshape(fmap.shape[0], -1)
    where = nn.Dense(2 * NUM_POSITIONS, name='position')(where_in)
    return jax.numpy.concatenate([digit, where], axis=-1)


class DigitMotionClassifier(nn.Module):
  """A two-frame backbone (`SmallCNN.frames = 2`), global average pool, and linear heads
  for the digit (10 classes) and its step between the frames (`NUM_STEPS` classes per
  axis, the row and column offsets). Returns logits [B, 10 + 2 * NUM_STEPS].

  Like the digit head, the motion heads see only globally pooled features, so the
  backbone must say how the digit moved wherever the digit is: what an area-pooled graph
  node then carries from frame to frame, so that the graph compares steps rather than
  inferring them from positions its pooling blurs. With `per_cell` the heads read every
  feature-map cell instead (`SceneMotionClassifier`).
  """

  width: int = 512
  coords: bool = False
  frames: int = 2
  per_cell: bool = False

  @nn.compact
  def __call__(self, frames: jax.Array, train: bool = False) -> jax.Array:
    del train
    features = SmallCNN(self.width, coords=self.coords, frames=self.frames,
                        name='backbone')(frames)
    if self.per_cell:
      # One cell's features are far larger than their frame mean: without the norm the
      # first steps' gradients drove the backbone's ReLUs dead (loss at chance for good).
      features = nn.LayerNorm(name='cell_norm')(features)
    else:
      features = features.mean(axis=(1, 2))
    return jax.numpy.concatenate([nn.Dense(NUM_DIGIT_CLASSES, name='classifier')(features),
                                  nn.Dense(2 * NUM_STEPS, name='motion')(features)], axis=-1)


class SceneMotionClassifier(DigitMotionClassifier):
  """`DigitMotionClassifier`'s heads at every feature-map cell, after a LayerNorm of the
  cell's features: logits [B, h, w, 10 + 2 * NUM_STEPS]; `_scene_losses` reads them at
  the cells under the digits' centres (`scene_cells`)."""

  per_cell: bool = True


#: Where cell i of the 3-layer VALID backbone's 6x6 map looks: input rows (columns)
#: 8i .. 8i + 21 (3x3 convs and 2x2 pools: stride 8, receptive field 22), centre 8i + 10.5.
SCENE_CELL_STRIDE = 8.0
SCENE_CELL_CENTRE = 10.5


def scene_cells(center: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(cell, valid) for digits centred at `center` [B, K, 2] (frame pixels) on a
  `size` x `size` feature map: the flat index of the cell whose receptive field is
  centred nearest, int32 [B, K], and float32 [B, K] that is 0 where two digits of a
  frame fall into one cell (neither is a target there)."""
  rc = np.clip(np.rint((center - SCENE_CELL_CENTRE) / SCENE_CELL_STRIDE), 0, size - 1)
  cell = (rc[..., 0] * size + rc[..., 1]).astype(np.int32)
  same = (cell[:, :, None] == cell[:, None, :]).sum(-1)  # each digit counts itself once
  return cell, (same == 1).astype(np.float32)


def _scene_losses(logits, batch):
  """Per-digit (digit CE, row-step CE, column-step CE) [B, K] of `SceneMotionClassifier`
  logits at the digits' cells, and the logits read there [B, K, 10 + 2 * NUM_STEPS]."""
  b, h, w, c = logits.shape
  at = jax.numpy.take_along_axis(logits.reshape(b, h * w, c), batch['cell'][..., None], axis=1)
  ce = optax.softmax_cross_entropy_with_integer_labels
  d, p = NUM_DIGIT_CLASSES, NUM_STEPS
  return (ce(at[..., :d], batch['label']), ce(at[..., d:d + p], batch['position'][..., 0]),
          ce(at[..., d + p:], batch['position'][..., 1])), at


def _scene_train_step(state, batch, *, model, tx):
  """One Adam step on the three cross-entropies averaged over the digits that are
  targets (`batch['valid']`)."""
  video = steps_lib.scale_pixels(batch['video'])
  valid = batch['valid']
  n = jax.numpy.maximum(valid.sum(), 1.0)

  def loss_fn(params):
    losses, _ = _scene_losses(model.apply({'params': params}, video), batch)
    return (sum(losses) * valid).sum() / n

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return dict(state, step=state['step'] + 1, params=params, opt_state=opt_state), {
      'loss': (loss * n, n)}


def _scene_eval_step(state, batch, *, model):
  """Digit top-1 over the target digits (as 'top1') and their mean step error in canvas
  pixels ('motion_error_px'), masked sums."""
  logits = model.apply({'params': state['params']}, steps_lib.scale_pixels(batch['video']))
  losses, at = _scene_losses(logits, batch)
  d, p = NUM_DIGIT_CLASSES, NUM_STEPS
  valid = batch['valid'] * batch['mask'][:, None]
  where = jax.numpy.stack([jax.numpy.argmax(at[..., d:d + p], -1),
                           jax.numpy.argmax(at[..., d + p:], -1)], -1)
  err = jax.numpy.abs(where - batch['position']).astype(jax.numpy.float32).mean(-1)
  n = valid.sum()
  right = jax.numpy.argmax(at[..., :d], -1) == batch['label']
  return {'loss': ((sum(losses) * valid).sum(), n), 'top1': ((right * valid).sum(), n),
          'motion_error_px': ((err * valid).sum(), n)}, None


def _position_losses(logits, labels, position, bins=NUM_POSITIONS):
  """(digit CE, row CE, column CE) per example of `DigitPositionClassifier` logits
  (`bins` = NUM_POSITIONS) or `DigitMotionClassifier` logits (`bins` = NUM_STEPS, with
  `position` the step's class indices)."""
  ce = optax.softmax_cross_entropy_with_integer_labels
  d = NUM_DIGIT_CLASSES
  return (ce(logits[:, :d], labels), ce(logits[:, d:d + bins], position[:, 0]),
          ce(logits[:, d + bins:], position[:, 1]))


def _position_train_step(state, batch, *, model, tx, bins=NUM_POSITIONS):
  """One Adam step on the sum of the three cross-entropies; metrics as the trainer's."""
  video = steps_lib.scale_pixels(batch['video'])

  def loss_fn(params):
    logits = model.apply({'params': params}, video)
    return sum(x.mean() for x in _position_losses(logits, batch['label'], batch['position'],
                                                  bins))

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  n = jax.numpy.asarray(batch['label'].shape[0], jax.numpy.float32)
  return dict(state, step=state['step'] + 1, params=params, opt_state=opt_state), {
      'loss': (loss * n, n)}


def _position_eval_step(state, batch, *, model, bins=NUM_POSITIONS, error='position_error_px'):
  """Digit top-1 (as 'top1') and the mean position (or step) error in pixels (frame
  pixels for positions, canvas pixels for steps) as `error`, masked sums."""
  logits = model.apply({'params': state['params']}, steps_lib.scale_pixels(batch['video']))
  d, p, mask = NUM_DIGIT_CLASSES, bins, batch['mask']
  losses = _position_losses(logits, batch['label'], batch['position'], bins)
  where = jax.numpy.stack([jax.numpy.argmax(logits[:, d:d + p], -1),
                           jax.numpy.argmax(logits[:, d + p:], -1)], -1)
  err = jax.numpy.abs(where - batch['position']).astype(jax.numpy.float32).mean(-1)
  n = mask.sum()
  return {'loss': ((sum(losses) * mask).sum(), n),
          'top1': (((jax.numpy.argmax(logits[:, :d], -1) == batch['label']) * mask).sum(), n),
          error: ((err * mask).sum(), n)}, None


def _frames(split: str, indices: np.ndarray, seed: int, mnist_path: Optional[str],
            target: str = 'digit', frames: int = 1, scene_digits: int = 3,
            scene_motion: str = 'clean') -> dict[str, np.ndarray]:
  """A batch of single-digit frames: 'video' uint8 [B, 64, 64, frames], 'label' int32
  [B], and for the position targets 'position' int32 [B, 2]: the top-left corner in the
  frame ('digit_position') or the step's class indices, offset - OFFSET_LOW
  ('digit_motion', two frames of a moving digit). With `frames` = 2 and a still target,
  the frame is paired with itself, as the first frame of a video."""
  # Imported here so that importing this module (and the models) does not need the data
  # package's generator.
  from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
  if target == 'scene_motion':  # video frames: 'label' [B, K], 'cell', 'valid' [B, K]
    out = syncmnist.generate_scene_step(split, indices, scene_digits, seed, mnist_path,
                                        scene_motion)
    cell, valid = scene_cells(out['center'], feature_size(syncmnist.FRAME))
    return {'video': np.asarray(out['image'], np.uint8),
            'label': np.asarray(out['digits'], np.int32), 'cell': cell, 'valid': valid,
            'position': np.asarray(out['offset'], np.int32) - OFFSET_LOW}
  if target == 'digit_motion':
    out = syncmnist.generate_digit_step(split, indices, seed=seed, mnist_path=mnist_path)
    return {'video': np.asarray(out['image'], np.uint8),
            'label': np.asarray(out['label'], np.int32),
            'position': np.asarray(out['offset'], np.int32) - OFFSET_LOW}
  out = syncmnist.generate_single_digit(split, indices, seed=seed, mnist_path=mnist_path)
  image = np.asarray(out['image'], np.uint8)
  batch = {'video': np.concatenate([image] * frames, axis=-1) if frames > 1 else image,
           'label': np.asarray(out['label'], np.int32)}
  if target == 'digit_position':
    batch['position'] = np.clip(np.asarray(out['position'], np.int32), 0, NUM_POSITIONS - 1)
  return batch


def _num_frames(split: str) -> int:
  """How many distinct single-digit frames the generator defines for a split."""
  from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
  return int(syncmnist.SPLIT_SIZES[split])


def pretrain_backbone(width: int = 512,
                      steps: int = 300,
                      batch_size: int = 64,
                      seed: int = 0,
                      learning_rate: float = 1e-3,
                      mnist_path: Optional[str] = None,
                      log_every: int = 50,
                      eval_frames: int = 2000,
                      eval_batch_size: int = 250,
                      progress_bar: bool = True,
                      target: str = 'digit',
                      coords: bool = False,
                      frames: int = 1,
                      motion_steps: int = 0,
                      scene_steps: int = 0,
                      scene_digits: int = 3,
                      scene_motion: str = 'clean') -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains the frame backbone to classify one randomly placed MNIST digit.

  Frame i of a split is fixed by (generator seed, split, i): a random MNIST digit of the
  split at a random place. Each step draws `batch_size` train frame indices at random
  (numpy generator seeded with `seed`), so a run is reproducible; train frames never
  show the val digits (the last 10,000 MNIST training digits). Evaluation uses val
  frames 0..eval_frames-1 with generator seed 0 whatever `seed` is, so all runs are
  compared on the same frames and no number printed during training touches test.

  Args:
    width: backbone filters (config.backbone.width).
    steps: Adam steps.
    batch_size: frames per step.
    seed: seeds the initialisation, the digit order and the placements.
    learning_rate: Adam learning rate (constant).
    mnist_path: local MNIST copy, passed on to the data module (None: its default).
    log_every: steps between loss records (and progress-bar updates).
    eval_frames: val frames for the final accuracy (0: no evaluation).
    eval_batch_size: frames per evaluation batch.
    progress_bar: show a tqdm bar.
    target: one of `TARGETS`: 'digit' (the paper), 'digit_position' (also the
      digit's position, `DigitPositionClassifier`; the metrics then add
      `val_position_error_px`) or 'digit_motion' (needs `frames` = 2), in two stages:
      `steps` of the paper's 'digit' pre-training of a one-frame backbone, then
      `motion_steps` of `DigitMotionClassifier` (the digit and its step between two
      frames) starting from it, its first layer widened to two frames
      (`widen_to_two_frames`: the same features as before until the earlier frame's
      weights move). Starting from scratch instead learned the steps as well but kept
      the digits worse (84% against 95%), and the pair task started slower. The
      metrics are the motion stage's plus `val_motion_error_px` (canvas pixels) and
      `digit_stage` (the first stage's metrics); `seconds` covers both.
    coords: a coordinate backbone (`SmallCNN.coords`).
    frames: frames the backbone sees at once (`SmallCNN.frames`, 1 or 2).
    motion_steps: Adam steps of the motion stage ('digit_motion' only; >= 1 there).
    scene_steps: 'digit_motion' only: Adam steps of a third stage, 'scene_motion'
      (`SceneMotionClassifier` on consecutive frames of the task's videos: each digit
      and its step classified at the cell under its centre), starting from the motion
      stage's backbone (0: no third stage). Its metrics go to `scene_stage` (digit
      accuracy and step error over the val videos' digits); the top-level metrics stay
      the motion stage's, on single digits.
    scene_digits: digits per video in the scene stage (config.data.num_digits).
    scene_motion: the videos' motion rule in the scene stage (config.data.motion).

  Returns:
    (backbone_params, metrics): the `SmallCNN` parameters (a nested dict of numpy
    arrays, to be put at `params['backbone']`), and a dict with `train_loss` (list of
    (step, mean loss since the previous record)), `final_train_loss`, `val_accuracy`,
    `val_loss`, `eval_frames`, `seconds` (wall time, evaluation included) and
    `steps_per_second`.
  """
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  if target not in TARGETS:
    raise ValueError(f'unknown pre-training target {target!r}; valid: {", ".join(TARGETS)}')
  if frames not in (1, 2):
    raise ValueError(f'frames must be 1 or 2, got {frames!r}')
  if scene_steps and (target != 'digit_motion' or not isinstance(scene_steps, int)
                      or scene_steps < 0):
    raise ValueError('scene_steps (config.backbone.pretrain_scene_steps) must be an '
                     "integer >= 0, and > 0 only with the 'digit_motion' target; got "
                     f'{scene_steps!r} with {target!r}')
  if target == 'digit_motion' and frames != 2:
    raise ValueError("the 'digit_motion' target needs a backbone that sees two frames "
                     '(frames=2, config.backbone.frames = 2)')
  common = dict(width=width, batch_size=batch_size, seed=seed, learning_rate=learning_rate,
                mnist_path=mnist_path, log_every=log_every, eval_frames=eval_frames,
                eval_batch_size=eval_batch_size, progress_bar=progress_bar, coords=coords)
  if target == 'digit_motion':
    if not isinstance(motion_steps, int) or motion_steps < 1:
      raise ValueError(f"the 'digit_motion' target needs motion_steps >= 1 (config."
                       f'backbone.pretrain_motion_steps), got {motion_steps!r}')
    digits, first = _pretrain(steps=steps, target='digit', frames=1, **common)
    params, metrics = _pretrain(steps=motion_steps, target='digit_motion', frames=2,
                                init_backbone=widen_to_two_frames(digits), **common)
    metrics.update(digit_stage=first, seconds=first['seconds'] + metrics['seconds'])
    if scene_steps:
      params, scene = _pretrain(steps=scene_steps, target='scene_motion', frames=2,
                                init_backbone=params, scene_digits=scene_digits,
                                scene_motion=scene_motion, **common)
      metrics.update(scene_stage=scene, seconds=metrics['seconds'] + scene['seconds'])
    return params, metrics
  return _pretrain(steps=steps, target=target, frames=frames, **common)


def widen_to_two_frames(params: dict[str, Any]) -> dict[str, Any]:
  """One-frame `SmallCNN` parameters as two-frame ones (`SmallCNN.frames = 2`) that
  compute the same features: the first conv's kernel gets zero weights for the earlier
  frame's channels, in front of the current frame's (the order of
  `backbone.with_previous_frame`)."""
  kernel = np.asarray(params['conv0']['kernel'])  # [3, 3, C, width]
  widened = np.concatenate([np.zeros_like(kernel), kernel], axis=2)
  return dict(params, conv0=dict(params['conv0'], kernel=widened))


def _pretrain(*, width, steps, batch_size, seed, learning_rate, mnist_path, log_every,
              eval_frames, eval_batch_size, progress_bar, target, coords, frames,
              init_backbone=None, scene_digits=3, scene_motion='clean'):
  """One pre-training stage (`pretrain_backbone`'s arguments), optionally starting from
  `init_backbone` (backbone parameters of the right shapes; the heads start afresh)."""
  start = time.time()
  model = {'digit': DigitClassifier, 'digit_position': DigitPositionClassifier,
           'digit_motion': DigitMotionClassifier,
           'scene_motion': SceneMotionClassifier}[target](width, coords, frames)
  from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
  frame_shape = (syncmnist.FRAME, syncmnist.FRAME, frames)
  params = state_lib.init_variables(model, jax.random.PRNGKey(seed), frame_shape)['params']
  if init_backbone is not None:
    params = dict(params, backbone=jax.tree.map(jax.numpy.asarray, init_backbone))
  tx = optax.adam(learning_rate)
  state = state_lib.create_train_state(params, {}, tx)
  # The trainer's steps (uint8 frames scaled on the device); donating the state lets
  # XLA update it in place.
  if target == 'digit':
    train_fn = functools.partial(steps_lib.train_step, model=model, tx=tx,
                                 base_key=jax.random.PRNGKey(seed))
    eval_fn = functools.partial(steps_lib.eval_step, model=model)
  elif target == 'scene_motion':
    train_fn = functools.partial(_scene_train_step, model=model, tx=tx)
    eval_fn = functools.partial(_scene_eval_step, model=model)
  else:
    motion = target == 'digit_motion'
    bins = NUM_STEPS if motion else NUM_POSITIONS
    train_fn = functools.partial(_position_train_step, model=model, tx=tx, bins=bins)
    eval_fn = functools.partial(_position_eval_step, model=model, bins=bins,
                                error='motion_error_px' if motion else 'position_error_px')
  train_step = jax.jit(train_fn, donate_argnums=0)
  eval_step = jax.jit(eval_fn)

  num_train = _num_frames('train')
  rng = np.random.default_rng(seed)
  history, window = [], None
  bar = tqdm(range(steps), desc=f'pretrain backbone (width {width}, {target})',
             disable=not progress_bar, file=sys.stderr, mininterval=cli.progress_interval())
  for step in bar:
    indices = rng.integers(0, num_train, size=batch_size)
    batch = _frames('train', indices, seed, mnist_path, target, frames, scene_digits,
                    scene_motion)
    state, m = train_step(state, batch)
    window = metrics_lib.add(window, {'loss': m['loss']})
    if (step + 1) % log_every == 0 or step + 1 == steps:
      mean_loss = metrics_lib.compute(jax.device_get(window))['loss']
      if not np.isfinite(mean_loss):
        bar.close()
        raise PretrainDivergedError(
            f'backbone pre-training diverged: loss {mean_loss} at step {step + 1} of '
            f'{steps} (learning rate {learning_rate}); nothing was cached. Lower '
            'config.backbone.pretrain_lr and rerun.')
      history.append((step + 1, mean_loss))
      window = None
      bar.set_postfix(loss=f'{mean_loss:.4f}', refresh=False)
  bar.close()

  metrics: dict[str, Any] = {'train_loss': history, 'final_train_loss': history[-1][1]}
  if eval_frames > 0:
    eval_frames = min(eval_frames, _num_frames('val'))
    totals = None
    for lo in range(0, eval_frames, eval_batch_size):
      idx = np.arange(lo, min(lo + eval_batch_size, eval_frames))
      # Generator seed 0 for the val frames, independent of the training seed.
      batch = dict(_frames('val', idx, 0, mnist_path, target, frames, scene_digits,
                           scene_motion),
                   mask=np.ones(len(idx), np.float32))
      totals = metrics_lib.add(totals, eval_step(state, batch)[0])
    result = metrics_lib.compute(jax.device_get(totals))
    metrics.update(val_accuracy=result['top1'], val_loss=result['loss'],
                   eval_frames=eval_frames)
    for name in ('position_error_px', 'motion_error_px'):
      if name in result:
        metrics['val_' + name] = result[name]
  seconds = time.time() - start
  metrics.update(seconds=seconds, steps_per_second=steps / seconds)
  return jax.device_get(state['params']['backbone']), metrics


def save_backbone(path: str | os.PathLike, params: dict[str, Any],
                  key: Optional[dict[str, Any]] = None) -> None:
  """Writes backbone parameters to `path` as an .npz keyed by '/'-joined param paths.

  Written to a temporary file first and renamed, so a crash never leaves a truncated
  cache that a later run would load.

  Args:
    path: the .npz to write.
    params: the backbone parameters.
    key: `backbone_cache_key(...)`, stored as the JSON string `__key__` (None: no key; such
      a file is never reused by `load_cached_backbone`).
  """
  flat = {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params), sep='/').items()}
  if key is not None:
    flat[CACHE_KEY] = np.asarray(json.dumps(key, sort_keys=True))
  path = os.fspath(path)
  tmp = path + '.tmp.npz'  # np.savez appends .npz to names without it
  np.savez(tmp, **flat)
  os.replace(tmp, path)


def load_backbone(path: str | os.PathLike) -> dict[str, Any]:
  """Reads parameters written by `save_backbone` back into a nested dict of arrays."""
  with np.load(os.fspath(path), allow_pickle=False) as data:
    flat = {k: np.asarray(data[k]) for k in data.files if k != CACHE_KEY}
  return traverse_util.unflatten_dict(flat, sep='/')


def mnist_fingerprint(mnist_path: Optional[str] = None) -> str:
  """sha256 (16 hex digits) of the MNIST training digits and labels that pre-training
  reads: the same for the same digits wherever they come from, different otherwise."""
  from rstg_jax.syncmnist import mnist  # pylint: disable=g-import-not-at-top
  images, labels = mnist.load_mnist('train', mnist_path)
  h = hashlib.sha256()
  for a in (images, labels):
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(np.ascontiguousarray(a).data)
  return h.hexdigest()[:16]


def backbone_cache_key(width: int, steps: int, batch_size: int, seed: int,
                       learning_rate: float, mnist_path: Optional[str] = None,
                       target: str = 'digit', coords: bool = False,
                       frames: int = 1, motion_steps: int = 0, scene_steps: int = 0,
                       scene_digits: int = 3, scene_motion: str = 'clean'
                       ) -> dict[str, Any]:
  """Everything that determines `pretrain_backbone`'s result, as a JSON-able dict.

  The arguments are those of `pretrain_backbone`; `mnist_path` enters as the fingerprint
  of the digits it resolves to (`mnist_fingerprint`), not as a path.
  """
  return {'format': CACHE_FORMAT, 'width': int(width), 'steps': int(steps),
          'batch_size': int(batch_size), 'seed': int(seed),
          'learning_rate': float(learning_rate),
          'mnist_train_sha256': mnist_fingerprint(mnist_path),
          # Absent from keys written before targets existed, which were all 'digit'.
          **({'target': target} if target != 'digit' else {}),
          **({'coords': True} if coords else {}),
          **({'frames': int(frames)} if frames != 1 else {}),
          **({'motion_steps': int(motion_steps)} if target == 'digit_motion' else {}),
          # Absent when there is no scene stage, so earlier caches stay valid.
          **({'scene_steps': int(scene_steps), 'scene_digits': int(scene_digits),
              'scene_motion': str(scene_motion)} if scene_steps else {})}


def load_cached_backbone(path: str | os.PathLike, key: dict[str, Any]
                         ) -> tuple[Optional[dict[str, Any]], str]:
  """The cached backbone if `path` holds one made with `key`, else None and why.

  Returns:
    (params, reason): params is None when there is no file, the file is unreadable, it
    has no key (written before keys were stored), or its key differs; reason is one line
    naming each differing field (old -> new), suitable for a log.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return None, f'no cached backbone at {path}'
  try:
    with np.load(path, allow_pickle=False) as data:
      stored = json.loads(str(data[CACHE_KEY])) if CACHE_KEY in data.files else None
  except Exception as e:  # pylint: disable=broad-except  # any damage: recompute
    return None, f'the cached backbone {path} is unreadable ({type(e).__name__}: {e})'
  if stored is None:
    return None, (f'the cached backbone {path} does not say how it was made (written by '
                  'an older version)')
  changed = [f'{k} {stored.get(k)!r} -> {key.get(k)!r}'
             for k in sorted(set(stored) | set(key)) if stored.get(k) != key.get(k)]
  if changed:
    return None, f'the cached backbone {path} was made with other settings: ' + ', '.join(
        changed)
  return load_backbone(path), ''
