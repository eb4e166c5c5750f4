"""SyncMNIST: videos of moving MNIST digits where one pair moves synchronously.

The dataset of the RSTG paper (Nicolicioiu et al., NeurIPS 2019, section 3.1):

* 46 classes: the 45 unordered pairs (i, j), i < j, of distinct digit classes, in
  lexicographic order (class 0 = "0-1", ..., class 44 = "8-9"), plus class 45
  ("none") where no pair moves synchronously. "none" is drawn with probability 1/47
  per video; otherwise digits 0 and 1 of the video are the synchronous pair.
* Each video has ``num_digits`` (3 or 5 in the paper) real MNIST digits of distinct
  classes, pasted (max blend) on a black 100x100 canvas, for 10 frames; the video is
  then box-downscaled to 64x64 (digits become about 18x18).
* Digits are drawn without replacement within each pass over the split's digits: video
  i belongs to pass ``i // n`` (n = digits in the split), and in every pass digit slot j
  of the videos walks through its own random permutation of the split's digits, so each
  image is slot j of exactly one video per pass (classes in a video are made distinct by
  reshuffling slot j among the rows that clash). Class frequencies follow MNIST's.
* Splits: ``train`` (indices 0..599999, 12 passes over the first 50,000 MNIST training
  digits), ``val`` (0..9999, one pass over the last 10,000 MNIST training digits, which
  ``train`` and the backbone pre-training never see), ``test`` (0..9999, one pass over
  the 10,000 MNIST test digits). Model selection uses ``val``; ``test`` is reported.

Motion (``motion=``), per step every digit moves by an integer offset in [-10, 10) per
axis (canvas pixels), and every digit stays inside the canvas:

* ``"clean"`` (default): a digit's motion is a sequence of 9 offsets drawn uniformly
  (redrawn if no start keeps the digit inside in all frames); its start is uniform over
  the rectangle of starts that keep it inside. The synchronous pair shares one sequence
  and draws its two starts independently from that sequence's rectangle, so each pair
  digit's track (start, steps, zero steps, time at the border, net displacement) has
  exactly the distribution of any other digit's: a single track says nothing about
  whether it belongs to the pair. No digit is ever clipped, and no rule keeps any two
  digits apart (in 8% of pair videos the pair's digits overlap by more than 20 of
  28 px on both axes, as two independent digits do in 6% of frames). What remains: the
  pair shares a rectangle, so its digits are a little closer on average than two
  independent ones (the closest two digits of a frame are the pair in 44% of 3-digit
  pair videos, 33% by chance), a weak static cue.
* ``"authors"``: the authors' generator, which has shortcuts: uniform starts; offsets
  clipped at the border, so independent digits stick to it while the pair's common
  offset is drawn from the range that keeps both inside (pair digits spend far less time
  on the border); and only the pair is kept ``MIN_PAIR_SEPARATION`` apart. Kept to
  compare with; ``tests/test_syncmnist.py`` shows its single-digit statistics differ.

In both, independent digits are redrawn if their displacements equal another digit's in
all 9 steps, so only the labelled pair is synchronous.

Every video is a pure function of (seed, split, index, num_digits, motion, no_pair_prob;
the last is 1/47 unless a diagnostic asks otherwise): its random
numbers come from its own ``np.random.default_rng([seed, split_id, index])`` and the
pass permutations from ``[seed, split_id, pass, num_digits, 2]``, so any index can be
generated alone, in any batch or order, and the fixed val and test sets are never
stored. :func:`generate_tracks` gives labels and trajectories without rendering.

Run ``python -m rstg_jax.syncmnist.figures show --out samples.png`` for a picture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import combinations

import numpy as np

from rstg_jax.syncmnist.mnist import load_mnist
# The motion rules and the canvas geometry they share (re-exported: part of this API).
from rstg_jax.syncmnist.motion import (  # pylint: disable=unused-import
    _MAX_REDRAWS, CANVAS, DIGIT, MAX_POS, MIN_PAIR_SEPARATION, NUM_FRAMES, OFFSET_HIGH,
    OFFSET_LOW, _authors_tracks, _clean_tracks, _coincident_pairs, _draw_layout,
    _offsets_from_uniform, _start_rectangle, _trajectories)
# The frames' size and rendering (re-exported: part of this API).
from rstg_jax.syncmnist.render import FRAME, SCALE, render_frames  # pylint: disable=unused-import

logger = logging.getLogger(__name__)

DIGIT_IN_FRAME = DIGIT * SCALE  # 17.92: a digit's size in the 64x64 frame

NO_PAIR_PROB = 1.0 / 47.0
SPLIT_IDS = {'train': 0, 'test': 1, 'val': 2}
#: Number of videos per split: 12 passes over the 50k train digits; 10k val; 10k test.
SPLIT_SIZES = {'train': 600_000, 'val': 10_000, 'test': 10_000}
#: The last VAL_DIGITS of the 60k MNIST training digits make the val split's digits (in
#: mnist.pkl.gz they are its "valid" set); train videos and pre-training use the rest.
VAL_DIGITS = 10_000
#: Motion rules, see the module docstring; "clean" is the default.
MOTIONS = ('clean', 'authors')

PAIRS: list[tuple[int, int]] = list(combinations(range(10), 2))
NUM_PAIR_CLASSES = len(PAIRS)  # 45
NO_PAIR_LABEL = NUM_PAIR_CLASSES  # 45
NUM_CLASSES = NUM_PAIR_CLASSES + 1  # 46
# Digits per video: at most 5 (the paper's largest), because every pass makes each
# digit of a split the j-th digit of exactly one video, with distinct classes per video;
# MNIST's uneven classes (digit 1 is 11% of each split) leave the redraws of
# `_pass_table` without a solution from 6 digits on (measured on every split).
MAX_DIGITS = 5
#: Human-readable class names: "0-1", ..., "8-9", "none".
CLASS_NAMES: list[str] = [f'{i}-{j}' for i, j in PAIRS] + ['none']

# Lookup table (10 x 10) from an ordered or unordered digit pair to its label.
_PAIR_TABLE = np.full((10, 10), -1, dtype=np.int32)
for _label, (_i, _j) in enumerate(PAIRS):
  _PAIR_TABLE[_i, _j] = _PAIR_TABLE[_j, _i] = _label

# Stream tag appended to RNG keys other than a video's own ([s, k, i] equals [s, k, i, 0]
# for SeedSequence); the pre-training samples use 1, 3 and 4 (`pretrain_data`).
_PASS_STREAM = 2  # [seed, split, pass, k, 2]: the digit permutations of one pass


def pair_to_label(i: int, j: int) -> int:
  """Label of the synchronous pair of digit classes (i, j), in either order.

  Args:
    i, j: distinct digit classes in 0..9.

  Returns:
    The class in 0..44 (lexicographic order of (min, max)).

  Raises:
    ValueError: i == j or out of range.
  """
  i, j = int(i), int(j)
  if not (0 <= i <= 9 and 0 <= j <= 9) or i == j:
    raise ValueError(f'need two distinct digit classes in 0..9, got ({i}, {j})')
  return int(_PAIR_TABLE[i, j])


def label_to_pair(label: int) -> tuple[int, int] | None:
  """Inverse of :func:`pair_to_label`.

  Args:
    label: a class in 0..45.

  Returns:
    (i, j) with i < j, or None for the "none" class (45).
  """
  label = int(label)
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f'label must lie in 0..{NUM_CLASSES - 1}, got {label}')
  return None if label == NO_PAIR_LABEL else PAIRS[label]


# --------------------------------------------------------------------------------------
# Helpers shared by the videos and the pre-training samples (`pretrain_data`).
# --------------------------------------------------------------------------------------


def _check_split(split: str) -> int:
  if split not in SPLIT_IDS:
    raise ValueError(f'split must be one of {tuple(SPLIT_IDS)}, got {split!r}')
  return SPLIT_IDS[split]


def _check_indices(split: str, indices) -> np.ndarray:
  idx = np.atleast_1d(np.asarray(indices))
  if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
    raise ValueError('indices must be an integer or a 1-D sequence of integers')
  idx = idx.astype(np.int64)
  size = SPLIT_SIZES[split]
  if idx.size and (idx.min() < 0 or idx.max() >= size):
    raise ValueError(
        f'{split} indices must lie in [0, {size}), got range [{idx.min()}, {idx.max()}]'
    )
  return idx


def check_no_pair_prob(p) -> float:
  """`p` as a float; ValueError, naming the field, unless it is a probability."""
  try:
    p = float(p)
  except (TypeError, ValueError):
    p = float('nan')
  if not 0.0 <= p <= 1.0:
    raise ValueError(f'no_pair_prob must be a probability in [0, 1] (the paper: 1/47), got {p}')
  return p


def _check_motion(motion: str) -> str:
  if motion not in MOTIONS:
    raise ValueError(f'motion must be one of {MOTIONS}, got {motion!r}')
  return motion


# The digits of each split, as (images, labels, offset of index 0 in its MNIST split),
# keyed by split and checked by the identity of the cached MNIST arrays.
_POOL_CACHE: dict[tuple, tuple] = {}


def split_digits(split: str, mnist_path: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
  """The MNIST digits a split draws from.

  Args:
    split: "train" (MNIST train digits 0..49999), "val" (MNIST train digits
      50000..59999) or "test" (the 10k MNIST test digits).
    mnist_path: optional local MNIST copy.

  Returns:
    (images uint8 [n, 28, 28], labels [n], offset): read-only views; digit d of the
    split is image ``offset + d`` of its MNIST split (train for train and val).
  """
  _check_split(split)
  source = 'test' if split == 'test' else 'train'
  images, labels = load_mnist(source, mnist_path)
  key = (split, id(labels))
  hit = _POOL_CACHE.get(key)
  if hit is not None and hit[0] is labels:
    return hit[1]
  if split == 'test':
    out = (images, labels, 0)
  else:
    if len(labels) <= VAL_DIGITS:
      raise ValueError(f'MNIST train has {len(labels)} digits; val needs {VAL_DIGITS} of them')
    cut = len(labels) - VAL_DIGITS
    out = (images[:cut], labels[:cut], 0) if split == 'train' else (images[cut:], labels[cut:], cut)
  if len(_POOL_CACHE) > 8:
    _POOL_CACHE.clear()
  _POOL_CACHE[key] = (labels, out)
  return out


_PASS_CACHE: dict[tuple, tuple] = {}


def _pass_table(labels: np.ndarray, seed: int, split_id: int, pass_: int, k: int) -> np.ndarray:
  """int64 [n, k]: the split digit in slot j of the video at row r of pass ``pass_``.

  Column j is a random permutation of the n digits, so within a pass every digit is
  slot j of exactly one video. Rows whose classes clash are fixed by reshuffling
  column j among them and as many random rows, which keeps each column a permutation.
  """
  key = (id(labels), seed, split_id, pass_, k)
  hit = _PASS_CACHE.get(key)
  if hit is not None and hit[0] is labels:
    return hit[1]
  n = len(labels)
  if len(np.unique(labels)) < k:
    raise ValueError(f'{k} digits of distinct classes need {k} classes in the split')
  rng = np.random.default_rng([seed, split_id, pass_, k, _PASS_STREAM])
  table = np.stack([rng.permutation(n) for _ in range(k)], axis=1)
  classes = np.asarray(labels)[table]
  for j in range(1, k):
    for _ in range(_MAX_REDRAWS):
      bad = np.flatnonzero((classes[:, j : j + 1] == classes[:, :j]).any(axis=1))
      if not bad.size:
        break
      rows = np.union1d(bad, rng.choice(n, size=min(n, bad.size), replace=False))
      table[rows, j] = table[rng.permutation(rows), j]
      classes[rows, j] = labels[table[rows, j]]
    else:  # pragma: no cover - needs a split with almost no digits of some classes
      raise RuntimeError(f'could not make the digit classes of pass {pass_} distinct')
  table.setflags(write=False)
  if len(_PASS_CACHE) > 40:
    _PASS_CACHE.clear()
  _PASS_CACHE[key] = (labels, table)
  return table


def _check_seed(seed: int) -> int:
  seed = int(seed)
  if seed < 0:
    raise ValueError(f'seed must be non-negative, got {seed}')
  return seed


# --------------------------------------------------------------------------------------
# Videos.
# --------------------------------------------------------------------------------------


def generate_tracks(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    num_digits: int = 3,
    seed: int = 0,
    mnist_path: str | None = None,
    motion: str = 'clean',
    no_pair_prob: float = NO_PAIR_PROB,
) -> dict[str, np.ndarray]:
  """Everything :func:`generate` returns except the pixels (no rendering: fast).

  Same arguments as :func:`generate`. Returns ``label``, ``digits``, ``positions``,
  ``canvas_positions`` and ``mnist_index``, equal to :func:`generate`'s.
  """
  split_id = _check_split(split)
  idx = _check_indices(split, indices)
  seed = _check_seed(seed)
  motion = _check_motion(motion)
  no_pair_prob = check_no_pair_prob(no_pair_prob)
  k = int(num_digits)
  if not 2 <= k <= MAX_DIGITS:
    raise ValueError(f'num_digits must lie in 2..{MAX_DIGITS} (distinct classes), got '
                     f'{num_digits}')
  _, labels, offset = split_digits(split, mnist_path)

  lay = _draw_layout(k, motion)
  b = idx.size
  # One small generator per video; drawing its whole block of uniforms at once keeps
  # the per-video Python cost to two calls, the rest is vectorised over the batch.
  rngs = [np.random.default_rng([seed, split_id, int(i)]) for i in idx]
  n_u = lay['total'].stop
  u = np.stack([r.random(n_u) for r in rngs]) if b else np.zeros((0, n_u))
  has_pair = u[:, lay['no_pair']][:, 0] >= no_pair_prob

  n = len(labels)
  digit = np.empty((b, k), np.int64)
  passes, rows = np.divmod(idx, n)
  for p in np.unique(passes):
    sel = passes == p
    digit[sel] = _pass_table(labels, seed, split_id, int(p), k)[rows[sel]]
  classes = np.asarray(labels)[digit]

  tracks = _clean_tracks if motion == 'clean' else _authors_tracks
  pos = tracks(u, lay, rngs, has_pair, k)
  label = np.where(
      has_pair,
      _PAIR_TABLE[classes[:, 0], classes[:, 1]],
      NO_PAIR_LABEL,
  ).astype(np.int32)
  return {
      'label': label,
      'digits': classes.astype(np.int32),
      'positions': np.rint(pos * SCALE).astype(np.int32),
      'canvas_positions': pos.astype(np.int32),
      'mnist_index': digit + offset,
  }


def generate(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    num_digits: int = 3,
    seed: int = 0,
    mnist_path: str | None = None,
    motion: str = 'clean',
    no_pair_prob: float = NO_PAIR_PROB,
) -> dict[str, np.ndarray]:
  """Generate SyncMNIST videos by index.

  Args:
    split: "train" (indices 0..599999), "val" (0..9999) or "test" (0..9999); see
      the module docstring for the digits each uses.
    indices: one index or a 1-D sequence of B indices; each video depends only on
      (seed, split, index, num_digits, motion), never on the batch it is generated in.
    num_digits: digits per video (3 or 5 in the paper; 2..MAX_DIGITS, of distinct classes).
    seed: non-negative dataset seed.
    mnist_path: optional local MNIST copy, see :func:`rstg_jax.syncmnist.mnist.load_mnist`.
    motion: "clean" (default) or "authors" (has single-digit shortcuts), see the
      module docstring.
    no_pair_prob: probability that a video has no synchronous pair (the paper's
      1/47). With 2 digits and 0.5, the task is "do these two digits move together?",
      a test of motion alone (the digits say nothing about the answer).

  Returns:
    dict of numpy arrays:
      ``video`` uint8 [B, 10, 64, 64, 1];
      ``label`` int32 [B] in 0..45 (45 = no synchronous pair);
      ``digits`` int32 [B, num_digits], the MNIST class of each digit (distinct);
      ``positions`` int32 [B, 10, num_digits, 2], top-left (row, col) of each digit
        in the 64x64 frame (canvas position * 0.64, rounded; the digit covers about
        18x18 pixels from there);
      ``canvas_positions`` int32 [B, 10, num_digits, 2], the exact positions on the
        100x100 canvas, where the synchronous pair's displacements are equal;
      ``mnist_index`` int64 [B, num_digits], index of each digit's image in its
        MNIST split (the training split for train and val videos).

  Raises:
    ValueError: bad split, indices, seed, num_digits, motion or no_pair_prob.
    rstg_jax.syncmnist.mnist.MNISTNotFoundError: no MNIST copy available.
  """
  out = generate_tracks(split, indices, num_digits, seed, mnist_path, motion, no_pair_prob)
  images, _, offset = split_digits(split, mnist_path)
  video = render_frames(images[out['mnist_index'] - offset], out['canvas_positions'])[..., None]
  return {'video': video, **out}


def iterate_batches(
    split: str,
    batch_size: int,
    num_digits: int = 3,
    seed: int = 0,
    start: int = 0,
    stop: int | None = None,
    drop_last: bool = False,
    mnist_path: str | None = None,
    motion: str = 'clean',
) -> Iterator[dict[str, np.ndarray]]:
  """Yield :func:`generate` batches for consecutive indices ``start .. stop - 1``.

  Videos are independent draws, so consecutive indices are as good as shuffled
  ones; resuming at ``start`` reproduces the stream exactly.

  Args:
    split, num_digits, seed, mnist_path, motion: as in :func:`generate`.
    batch_size: videos per batch (> 0).
    start: first index.
    stop: one past the last index (default: the split size).
    drop_last: skip a final batch smaller than ``batch_size``.

  Yields:
    dicts as returned by :func:`generate`.
  """
  _check_split(split)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  stop = SPLIT_SIZES[split] if stop is None else stop
  for lo in range(start, stop, batch_size):
    hi = min(lo + batch_size, stop)
    if drop_last and hi - lo < batch_size:
      return
    yield generate(split, np.arange(lo, hi), num_digits, seed, mnist_path, motion)
