"""The backbone's pre-training samples: single digits, single digits' steps, video scenes.

One generator per kind of sample, each a pure function of (seed, split, index) on its own
RNG stream (distinct from the videos'), drawn from the split's digits as the videos are
(`generator.split_digits`: train samples never show the val digits):

- `generate_single_digit`: one digit at a random place in a 64x64 frame (the paper's
  pre-training: "classify a digit randomly placed in a frame");
- `generate_digit_step`: one digit in two consecutive frames, moved by one step of the
  videos' motion;
- `generate_scene_step`: two consecutive frames of a task video, with every digit's
  class, place and step (labels of the task's own videos: the privileged 'scene' stage).

The `*_batch` functions turn them into the batches the stages of
`rstg_jax.syncmnist.pretrain` train on (uint8 'video' [B, 64, 64, frames], int32 labels).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Optional

import numpy as np

from rstg_jax.syncmnist.generator import (
    SCALE, SPLIT_SIZES, _check_indices, _check_seed, _check_split, generate_tracks,
    split_digits)
from rstg_jax.syncmnist.motion import (
    DIGIT, MAX_POS, NUM_FRAMES, OFFSET_HIGH, OFFSET_LOW, _offsets_from_uniform)
from rstg_jax.syncmnist.render import render_frames

# Stream tags appended to a sample's RNG key ([seed, split, i, tag]); 2 is the videos'
# pass permutations (`generator._PASS_STREAM`).
_SINGLE_DIGIT_STREAM = 1
_DIGIT_STEP_STREAM = 3  # single digits that make one step of motion (two frames)
_SCENE_STEP_STREAM = 4  # which step of a video `generate_scene_step` takes

NUM_STEPS = OFFSET_HIGH - OFFSET_LOW  # 20 classes per axis of one step of motion
#: Where cell i of the 3-layer VALID backbone's 6x6 map looks: input rows (columns)
#: 8i .. 8i + 21 (3x3 convs and 2x2 pools: stride 8, receptive field 22), centre 8i + 10.5.
SCENE_CELL_STRIDE = 8.0
SCENE_CELL_CENTRE = 10.5


@dataclasses.dataclass(frozen=True)
class Source:
  """Where the samples come from: the MNIST copy (None: the data module's default) and,
  for scenes, the task's videos (digits per video and motion rule, as `generate`)."""
  mnist_path: Optional[str] = None
  num_digits: int = 3
  motion: str = 'clean'


def num_samples(split: str) -> int:
  """How many distinct samples a split defines (its number of videos)."""
  return int(SPLIT_SIZES[split])


def digit_batch(split: str, indices, seed: int, source: Source) -> dict[str, np.ndarray]:
  """'video' uint8 [B, 64, 64, 1] holding one digit, 'label' int32 [B] its class."""
  out = generate_single_digit(split, indices, seed=seed, mnist_path=source.mnist_path)
  return {'video': np.asarray(out['image'], np.uint8),
          'label': np.asarray(out['label'], np.int32)}


def step_batch(split: str, indices, seed: int, source: Source) -> dict[str, np.ndarray]:
  """'video' uint8 [B, 64, 64, 2] (a digit and the same digit one step later), 'label'
  int32 [B] its class and 'step' int32 [B, 2] the step's class per axis (offset -
  OFFSET_LOW, in 0..NUM_STEPS - 1)."""
  out = generate_digit_step(split, indices, seed=seed, mnist_path=source.mnist_path)
  return {'video': np.asarray(out['image'], np.uint8),
          'label': np.asarray(out['label'], np.int32),
          'step': np.asarray(out['offset'], np.int32) - OFFSET_LOW}


def scene_batch(split: str, indices, seed: int, source: Source,
                map_size: int = 6) -> dict[str, np.ndarray]:
  """Two frames of the task's videos: 'video' uint8 [B, 64, 64, 2], per digit 'label'
  int32 [B, K], 'step' int32 [B, K, 2] (as `step_batch`), and where to read it on a
  `map_size` x `map_size` feature map, 'cell' int32 [B, K] and 'valid' float32 [B, K]
  (`scene_cells`)."""
  out = generate_scene_step(split, indices, source.num_digits, seed, source.mnist_path,
                            source.motion)
  cell, valid = scene_cells(out['center'], map_size)
  return {'video': np.asarray(out['image'], np.uint8),
          'label': np.asarray(out['digits'], np.int32), 'cell': cell, 'valid': valid,
          'step': np.asarray(out['offset'], np.int32) - OFFSET_LOW}


def scene_cells(center: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(cell, valid) for digits centred at `center` [B, K, 2] (frame pixels) on a
  `size` x `size` feature map: the flat index of the cell whose receptive field is
  centred nearest, int32 [B, K], and float32 [B, K] that is 0 where two digits of a
  frame fall into one cell (neither is a target there)."""
  rc = np.clip(np.rint((center - SCENE_CELL_CENTRE) / SCENE_CELL_STRIDE), 0, size - 1)
  cell = (rc[..., 0] * size + rc[..., 1]).astype(np.int32)
  same = (cell[:, :, None] == cell[:, None, :]).sum(-1)  # each digit counts itself once
  return cell, (same == 1).astype(np.float32)



def generate_single_digit(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    seed: int = 0,
    mnist_path: str | None = None,
) -> dict[str, np.ndarray]:
  """One MNIST digit at a random position on the canvas, downscaled to 64x64.

  The paper pre-trains the backbone CNN to classify such images. Image ``i`` of a
  split depends only on (seed, split, i); it uses an RNG stream distinct from the
  videos'. Indices follow the video split sizes (train: 0..599999, val and test:
  0..9999); the MNIST image is drawn uniformly from the split's digits
  (:func:`split_digits`: train images never include the val digits).

  Args:
    split: "train", "val" or "test".
    indices: one index or a 1-D sequence of B indices.
    seed: non-negative seed.
    mnist_path: optional local MNIST copy.

  Returns:
    dict with ``image`` uint8 [B, 64, 64, 1], ``label`` int32 [B] (the digit class),
    ``position`` int32 [B, 2] (top-left in the 64x64 frame) and ``mnist_index``
    int64 [B] (in the MNIST split, as in :func:`generate`).
  """
  split_id = _check_split(split)
  idx = _check_indices(split, indices)
  seed = _check_seed(seed)
  images, labels, offset = split_digits(split, mnist_path)
  b = idx.size
  u = np.array(
      [np.random.default_rng([seed, split_id, int(i), _SINGLE_DIGIT_STREAM]).random(3) for i in idx]
  ).reshape(b, 3)
  mnist_index = np.floor(u[:, 0] * len(labels)).astype(np.int64)
  pos = np.floor(u[:, 1:] * (MAX_POS + 1)).astype(np.int64)
  frames = render_frames(images[mnist_index][:, None], pos[:, None, None, :])  # T = K = 1
  return {
      'image': frames[:, 0, :, :, None],
      'label': labels[mnist_index].astype(np.int32),
      'position': np.rint(pos * SCALE).astype(np.int32),
      'mnist_index': mnist_index + offset,
  }


def generate_digit_step(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    seed: int = 0,
    mnist_path: str | None = None,
) -> dict[str, np.ndarray]:
  """One MNIST digit in two consecutive frames, moved by one step of the videos' motion.

  For pre-training a backbone that sees a frame with the one before it
  (`backbone.frames = 2`, the 'motion' stage): the step is drawn like a video's
  per-frame offset (each axis uniform in [OFFSET_LOW, OFFSET_HIGH) canvas pixels, zero
  included), then the start uniformly among those that keep the digit inside in both
  frames. Sample ``i`` depends only on (seed, split, i), on its own RNG stream.

  Args:
    split: "train", "val" or "test".
    indices: one index or a 1-D sequence of B indices (as `generate_single_digit`).
    seed: non-negative seed.
    mnist_path: optional local MNIST copy.

  Returns:
    dict with ``image`` uint8 [B, 64, 64, 2] (channel 0 the earlier frame, 1 the later),
    ``label`` int32 [B] (the digit class), ``offset`` int32 [B, 2] (the step in canvas
    pixels, row and column, in [OFFSET_LOW, OFFSET_HIGH)) and ``mnist_index`` int64 [B].
  """
  split_id = _check_split(split)
  idx = _check_indices(split, indices)
  seed = _check_seed(seed)
  images, labels, offset = split_digits(split, mnist_path)
  b = idx.size
  u = np.array([np.random.default_rng([seed, split_id, int(i), _DIGIT_STEP_STREAM]).random(5)
                for i in idx]).reshape(b, 5)
  mnist_index = np.floor(u[:, 0] * len(labels)).astype(np.int64)
  step = _offsets_from_uniform(u[:, 1:3])  # [B, 2]
  lo, hi = np.maximum(0, -step), MAX_POS - np.maximum(0, step)  # starts that stay inside
  start = lo + np.floor(u[:, 3:5] * (hi - lo + 1)).astype(np.int64)
  positions = np.stack([start, start + step], axis=1)[:, :, None, :]  # [B, T=2, K=1, 2]
  frames = render_frames(images[mnist_index][:, None], positions)  # [B, 2, 64, 64]
  return {
      'image': np.ascontiguousarray(frames.transpose(0, 2, 3, 1)),
      'label': labels[mnist_index].astype(np.int32),
      'offset': step.astype(np.int32),
      'mnist_index': mnist_index + offset,
  }


def generate_scene_step(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    num_digits: int = 3,
    seed: int = 0,
    mnist_path: str | None = None,
    motion: str = 'clean',
) -> dict[str, np.ndarray]:
  """Two consecutive frames of a SyncMNIST video, with every digit's place and step.

  For pre-training a two-frame backbone on the videos' own clutter (several digits,
  often overlapping) rather than on one digit alone: sample ``i`` is frames t - 1 and
  t of video ``i`` of :func:`generate` (same seed, split, num_digits and motion), with
  t in 1..9 drawn from (seed, split, i) on its own RNG stream.

  Args:
    split, indices, num_digits, seed, mnist_path, motion: as in :func:`generate`.

  Returns:
    dict with ``image`` uint8 [B, 64, 64, 2] (channel 0 frame t - 1, 1 frame t),
    ``digits`` int32 [B, num_digits] (the classes), ``center`` float32
    [B, num_digits, 2] (each digit's centre in frame t, 64x64 pixels, row and column),
    ``offset`` int32 [B, num_digits, 2] (its step from t - 1 to t in canvas pixels, in
    [OFFSET_LOW, OFFSET_HIGH)) and ``frame`` int32 [B] (t).
  """
  split_id = _check_split(split)
  idx = _check_indices(split, indices)
  seed = _check_seed(seed)
  out = generate_tracks(split, idx, num_digits, seed, mnist_path, motion)
  b = idx.size
  t = np.array([1 + np.random.default_rng([seed, split_id, int(i), _SCENE_STEP_STREAM])
                .integers(0, NUM_FRAMES - 1) for i in idx], np.int64).reshape(b)
  rows = np.arange(b)
  canvas = out['canvas_positions'][rows[:, None], np.stack([t - 1, t], axis=1)]  # [B, 2, K, 2]
  images, _, offset = split_digits(split, mnist_path)
  frames = render_frames(images[out['mnist_index'] - offset], canvas)  # [B, 2, 64, 64]
  return {
      'image': np.ascontiguousarray(frames.transpose(0, 2, 3, 1)),
      'digits': out['digits'],
      'center': ((canvas[:, 1] + DIGIT / 2) * SCALE).astype(np.float32),
      'offset': (canvas[:, 1] - canvas[:, 0]).astype(np.int32),
      'frame': t.astype(np.int32),
  }


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
