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

Every video is a pure function of (seed, split, index, num_digits, motion): its random
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
from numpy.lib.stride_tricks import sliding_window_view

from rstg_jax.graph import area_resize_matrix
from rstg_jax.syncmnist.mnist import load_mnist

logger = logging.getLogger(__name__)

NUM_FRAMES = 10
CANVAS = 100  # the canvas the digits move on, in pixels
FRAME = 64  # the video frame size after downscaling
DIGIT = 28  # MNIST digit size
MAX_POS = CANVAS - DIGIT  # top-left corners lie in [0, MAX_POS] (72)
OFFSET_LOW, OFFSET_HIGH = -10, 10  # per-step offsets lie in [OFFSET_LOW, OFFSET_HIGH)
SCALE = FRAME / CANVAS  # 0.64: canvas -> frame coordinates
DIGIT_IN_FRAME = DIGIT * SCALE  # 17.92: a digit's size in the 64x64 frame

NO_PAIR_PROB = 1.0 / 47.0
# The synchronous pair keeps its relative offset for the whole video, so a pair that
# starts on top of itself would hide one of its digits in every frame (label noise:
# about 4% of pair videos with uniform starts). Its starts are redrawn until they are
# at least this far apart (Chebyshev distance in canvas pixels, ~5 px in the frame).
# Independent digits may overlap: their overlaps are transient.
MIN_PAIR_SEPARATION = 8  # "authors" motion only
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
#: Human-readable class names: "0-1", ..., "8-9", "none".
CLASS_NAMES: list[str] = [f'{i}-{j}' for i, j in PAIRS] + ['none']

# Lookup table (10 x 10) from an ordered or unordered digit pair to its label.
_PAIR_TABLE = np.full((10, 10), -1, dtype=np.int32)
for _label, (_i, _j) in enumerate(PAIRS):
  _PAIR_TABLE[_i, _j] = _PAIR_TABLE[_j, _i] = _label

# Stream tag appended to the RNG key of single-digit images, so they never share
# random numbers with the videos ([s, k, i] equals [s, k, i, 0] for SeedSequence).
_SINGLE_DIGIT_STREAM = 1
_PASS_STREAM = 2  # [seed, split, pass, k, 2]: the digit permutations of one pass
_MAX_REDRAWS = 1000


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
# Helpers shared by the video and single-digit generators.
# --------------------------------------------------------------------------------------


# 100 -> 64 is 25 -> 16 four times over (100 / 64 = 25 / 16), and pixel boundaries
# line up every 25 input pixels, so the 64x100 area matrix is block diagonal with four
# equal 16x25 blocks. Using one block is exact and does 4x less arithmetic.
_BLOCK_IN, _BLOCK_OUT = 25, 16
# Box (area) filter weights, as OpenCV's INTER_AREA for downscaling.
_AREA_BLOCK = area_resize_matrix(_BLOCK_OUT, _BLOCK_IN).astype(np.float32)  # [16, 25]
_AREA_BLOCK_T = np.ascontiguousarray(_AREA_BLOCK.T)  # [25, 16]
_NUM_BLOCKS = CANVAS // _BLOCK_IN  # 4
_GEMM_CHUNK = 1024  # rows per matmul call, see _area_downscale
assert _NUM_BLOCKS * _BLOCK_IN == CANVAS and _NUM_BLOCKS * _BLOCK_OUT == FRAME


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


def _area_downscale(canvas: np.ndarray) -> np.ndarray:
  """Box (area) resize of uint8 [N, 100, 100] canvases to float32 [N, 64, 64]."""
  n = canvas.shape[0]
  # Columns: every row splits into 4 blocks of 25 pixels -> 16 pixels each. Done in
  # chunks small enough that OpenBLAS stays single-threaded: on a busy machine (or
  # next to XLA's threads) its multithreaded path was 10x slower than one thread.
  rows = canvas.reshape(-1, _BLOCK_IN)
  x = np.empty((rows.shape[0], _BLOCK_OUT), dtype=np.float32)
  for i in range(0, rows.shape[0], _GEMM_CHUNK):
    np.matmul(rows[i : i + _GEMM_CHUNK].astype(np.float32), _AREA_BLOCK_T, out=x[i : i + _GEMM_CHUNK])
  # Rows: the same block matrix applied to groups of 25 rows.
  x = x.reshape(n, _NUM_BLOCKS, _BLOCK_IN, FRAME)
  return np.matmul(_AREA_BLOCK, x).reshape(n, FRAME, FRAME)


def _render(images: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """Paste digits on black canvases and box-downscale them to 64x64.

  Args:
    images: uint8 [B, K, 28, 28] digit images.
    positions: int [B, T, K, 2] top-left (row, col) on the 100x100 canvas.

  Returns:
    uint8 [B, T, 64, 64] frames.
  """
  b, t, k, _ = positions.shape
  n = b * t
  canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
  # windows[f, r, c] is a writable 28x28 view of frame f at top-left (r, c): fancy
  # indexing it copies whole digit blocks, much faster than per-pixel indices.
  windows = sliding_window_view(canvas, (DIGIT, DIGIT), axis=(1, 2), writeable=True)
  frame = np.arange(n)
  for d in range(k):
    rows = positions[:, :, d, 0].reshape(n)
    cols = positions[:, :, d, 1].reshape(n)
    digit = np.broadcast_to(images[:, d, None], (b, t, DIGIT, DIGIT)).reshape(n, DIGIT, DIGIT)
    if d == 0:
      windows[frame, rows, cols] = digit
    else:
      # Max blend: digits are white on black, so overlapping strokes stay visible
      # whatever the pasting order.
      windows[frame, rows, cols] = np.maximum(windows[frame, rows, cols], digit)
  frames = _area_downscale(canvas)
  # Convex weights keep values in [0, 255]; round to the nearest byte.
  return np.rint(frames, out=frames).astype(np.uint8).reshape(b, t, FRAME, FRAME)


# --------------------------------------------------------------------------------------
# Videos.
# --------------------------------------------------------------------------------------


def _draw_layout(num_digits: int, motion: str = 'clean') -> dict[str, slice]:
  """Where each quantity sits in a video's block of uniform random numbers."""
  k, steps = num_digits, NUM_FRAMES - 1
  sizes = [('no_pair', 1), ('start', 2 * k), ('offsets', steps * k * 2)]
  if motion == 'authors':
    sizes.append(('pair', steps * 2))
  layout, pos = {}, 0
  for name, n in sizes:
    layout[name] = slice(pos, pos + n)
    pos += n
  layout['total'] = slice(0, pos)
  return layout


def _offsets_from_uniform(u: np.ndarray) -> np.ndarray:
  """Integer offsets in [OFFSET_LOW, OFFSET_HIGH) from uniforms in [0, 1)."""
  return (np.floor(u * (OFFSET_HIGH - OFFSET_LOW)) + OFFSET_LOW).astype(np.int64)


def _trajectories(
    start: np.ndarray, offsets: np.ndarray, pair_u: np.ndarray, has_pair: np.ndarray
) -> np.ndarray:
  """Canvas positions of every digit in every frame, authors' motion (clipped).

  Args:
    start: int [B, K, 2] initial top-left corners in [0, MAX_POS].
    offsets: int [B, T-1, K, 2] proposed offsets of independent digits.
    pair_u: float [B, T-1, 2] uniforms for the synchronous pair's offsets.
    has_pair: bool [B]; if set, digits 0 and 1 move together.

  Returns:
    int64 [B, T, K, 2] positions.
  """
  b, k = start.shape[:2]
  pos = np.empty((b, NUM_FRAMES, k, 2), dtype=np.int64)
  pos[:, 0] = start
  for t in range(1, NUM_FRAMES):
    prev = pos[:, t - 1]
    nxt = np.clip(prev + offsets[:, t - 1], 0, MAX_POS)
    # The pair's common offset comes from the sub-range of [-10, 10) that keeps
    # both digits inside, so it is never clipped and their motion stays equal.
    p0, p1 = prev[:, 0], prev[:, 1]
    lo = np.maximum(OFFSET_LOW, -np.minimum(p0, p1))
    hi = np.minimum(OFFSET_HIGH - 1, MAX_POS - np.maximum(p0, p1))  # inclusive
    d = lo + np.floor(pair_u[:, t - 1] * (hi - lo + 1)).astype(np.int64)
    nxt[:, 0] = np.where(has_pair[:, None], p0 + d, nxt[:, 0])
    nxt[:, 1] = np.where(has_pair[:, None], p1 + d, nxt[:, 1])
    pos[:, t] = nxt
  return pos


def _coincident_pairs(pos: np.ndarray, has_pair: np.ndarray) -> np.ndarray:
  """bool [B, K, K] (upper triangle): digits a < b with equal displacements in all steps,
  excluding the labelled pair (0, 1) of videos that have one."""
  disp = np.diff(pos, axis=1)  # [B, T-1, K, 2]
  same = (disp[:, :, :, None, :] == disp[:, :, None, :, :]).all(axis=(1, 4))  # [B,K,K]
  same &= np.triu(np.ones(same.shape[1:], dtype=bool), k=1)
  same[:, 0, 1] &= ~has_pair
  return same


def _start_rectangle(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Displacements and the starts that keep a digit inside, for offset sequences.

  Args:
    offsets: int [..., T-1, 2] per-step offsets.

  Returns:
    (disp [..., T, 2] displacement from the start in every frame, lo [..., 2],
    hi [..., 2]): the start s keeps the digit inside in all frames iff
    lo <= s <= hi per axis (empty when hi < lo).
  """
  zero = np.zeros(offsets.shape[:-2] + (1, 2), np.int64)
  disp = np.concatenate([zero, np.cumsum(offsets, axis=-2)], axis=-2)
  return disp, -disp.min(axis=-2), MAX_POS - disp.max(axis=-2)


def _clean_digit(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A fresh (offsets [T-1, 2], lo [2], hi [2]) with a non-empty start rectangle."""
  for _ in range(_MAX_REDRAWS):
    offsets = _offsets_from_uniform(rng.random((NUM_FRAMES - 1) * 2)).reshape(-1, 2)
    _, lo, hi = _start_rectangle(offsets)
    if (hi >= lo).all():
      return offsets, lo, hi
  raise RuntimeError('no offset sequence fits the canvas')  # pragma: no cover


def _clean_tracks(u: np.ndarray, lay: dict, rngs: list, has_pair: np.ndarray, k: int) -> np.ndarray:
  """Canvas positions int64 [B, T, K, 2] of the "clean" motion (module docstring)."""
  b, steps = u.shape[0], NUM_FRAMES - 1
  offsets = _offsets_from_uniform(u[:, lay['offsets']]).reshape(b, k, steps, 2)
  start_u = u[:, lay['start']].reshape(b, k, 2)
  _, lo, hi = _start_rectangle(offsets)
  # Rare (about 1e-4 per digit): a sequence that no start keeps inside is redrawn from
  # the video's own stream, after its block of uniforms.
  for v, d in np.argwhere((hi < lo).any(axis=-1)):
    offsets[v, d], lo[v, d], hi[v, d] = _clean_digit(rngs[v])
  # The pair shares digit 0's sequence; digit 1 keeps its own start uniform.
  for arr in (offsets, lo, hi):
    arr[has_pair, 1] = arr[has_pair, 0]
  start = lo + np.floor(start_u * (hi - lo + 1)).astype(np.int64)

  def positions(vs):
    disp = _start_rectangle(offsets[vs])[0]  # [b, K, T, 2]
    return (start[vs][:, :, None] + disp).transpose(0, 2, 1, 3)

  pos = positions(slice(None))
  # Rare: an independent digit moving exactly like another one in all 9 steps would
  # make a second synchronous pair. Redraw its sequence and start until none remain.
  for v in np.flatnonzero(_coincident_pairs(pos, has_pair).any(axis=(1, 2))):
    for _ in range(_MAX_REDRAWS):
      same = _coincident_pairs(pos[v : v + 1], has_pair[v : v + 1])[0]
      if not same.any():
        break
      d = int(np.argwhere(same)[0][1])  # the later digit of the first pair
      offsets[v, d], lo[v, d], hi[v, d] = _clean_digit(rngs[v])
      start[v, d] = lo[v, d] + np.floor(rngs[v].random(2) * (hi[v, d] - lo[v, d] + 1)).astype(np.int64)
      pos[v : v + 1] = positions(slice(v, v + 1))
    else:  # pragma: no cover - probability is astronomically small
      raise RuntimeError('could not make digit trajectories distinct')
  return pos


def _authors_tracks(u: np.ndarray, lay: dict, rngs: list, has_pair: np.ndarray, k: int) -> np.ndarray:
  """Canvas positions int64 [B, T, K, 2] of the authors' (clipped) motion."""
  b, steps = u.shape[0], NUM_FRAMES - 1
  start = np.floor(u[:, lay['start']] * (MAX_POS + 1)).astype(np.int64).reshape(b, k, 2)
  offsets = _offsets_from_uniform(u[:, lay['offsets']]).reshape(b, steps, k, 2)
  pair_u = u[:, lay['pair']].reshape(b, steps, 2)

  # Redraws below continue each video's own RNG stream after its block of uniforms,
  # always in the same order, so they stay deterministic per index.
  too_close = has_pair & (np.abs(start[:, 0] - start[:, 1]).max(axis=1) < MIN_PAIR_SEPARATION)
  for v in np.flatnonzero(too_close):
    while np.abs(start[v, 0] - start[v, 1]).max() < MIN_PAIR_SEPARATION:
      start[v, 1] = np.floor(rngs[v].random(2) * (MAX_POS + 1)).astype(np.int64)

  pos = _trajectories(start, offsets, pair_u, has_pair)
  for v in np.flatnonzero(_coincident_pairs(pos, has_pair).any(axis=(1, 2))):
    for _ in range(_MAX_REDRAWS):
      same = _coincident_pairs(pos[v : v + 1], has_pair[v : v + 1])[0]
      if not same.any():
        break
      digit = int(np.argwhere(same)[0][1])  # the later digit of the first pair
      offsets[v, :, digit] = _offsets_from_uniform(rngs[v].random(steps * 2)).reshape(steps, 2)
      pos[v : v + 1] = _trajectories(
          start[v : v + 1], offsets[v : v + 1], pair_u[v : v + 1], has_pair[v : v + 1]
      )
    else:  # pragma: no cover - probability is astronomically small
      raise RuntimeError('could not make digit trajectories distinct')
  return pos


def generate_tracks(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    num_digits: int = 3,
    seed: int = 0,
    mnist_path: str | None = None,
    motion: str = 'clean',
) -> dict[str, np.ndarray]:
  """Everything :func:`generate` returns except the pixels (no rendering: fast).

  Same arguments as :func:`generate`. Returns ``label``, ``digits``, ``positions``,
  ``canvas_positions`` and ``mnist_index``, equal to :func:`generate`'s.
  """
  split_id = _check_split(split)
  idx = _check_indices(split, indices)
  seed = _check_seed(seed)
  motion = _check_motion(motion)
  k = int(num_digits)
  if not 2 <= k <= 10:
    raise ValueError(f'num_digits must lie in 2..10 (distinct classes), got {num_digits}')
  _, labels, offset = split_digits(split, mnist_path)

  lay = _draw_layout(k, motion)
  b = idx.size
  # One small generator per video; drawing its whole block of uniforms at once keeps
  # the per-video Python cost to two calls, the rest is vectorised over the batch.
  rngs = [np.random.default_rng([seed, split_id, int(i)]) for i in idx]
  u = np.stack([r.random(lay['total'].stop) for r in rngs]) if b else np.zeros((0, lay['total'].stop))
  has_pair = u[:, lay['no_pair']][:, 0] >= NO_PAIR_PROB

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
) -> dict[str, np.ndarray]:
  """Generate SyncMNIST videos by index.

  Args:
    split: "train" (indices 0..599999), "val" (0..9999) or "test" (0..9999); see
      the module docstring for the digits each uses.
    indices: one index or a 1-D sequence of B indices; each video depends only on
      (seed, split, index, num_digits, motion), never on the batch it is generated in.
    num_digits: digits per video (3 or 5 in the paper; 2..10, classes are distinct).
    seed: non-negative dataset seed.
    mnist_path: optional local MNIST copy, see :func:`rstg_jax.syncmnist.mnist.load_mnist`.
    motion: "clean" (default) or "authors" (has single-digit shortcuts), see the
      module docstring.

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
    ValueError: bad split, indices, seed, num_digits or motion.
    rstg_jax.syncmnist.mnist.MNISTNotFoundError: no MNIST copy available.
  """
  out = generate_tracks(split, indices, num_digits, seed, mnist_path, motion)
  images, _, offset = split_digits(split, mnist_path)
  video = _render(images[out['mnist_index'] - offset], out['canvas_positions'])[..., None]
  return {'video': video, **out}


def digit_oracle_report(labels, preds, digits) -> dict[str, float]:
  """Does a model use motion? Its accuracy beside that of the "digit oracle".

  The digit oracle knows which digit classes a video holds but not how they move. The
  digit slots are exchangeable, so each of the m = K(K-1)/2 pairs of present classes is
  a priori equally likely to be the synchronous one, and "no pair" (prior 1/47) is less
  likely than any of them: the best it can do is name one of the m pairs, which is
  right with probability 1/m on a pair video and never on a no-pair video. This is the
  optimal oracle (knowing the class prior does not help), computed exactly per video.

  Args:
    labels: int [n] true labels; preds: int [n] predicted labels; digits: int [n, K]
      the classes present in each video.

  Returns:
    dict: ``top1``; ``oracle_top1`` (expected accuracy of the digit oracle);
    ``pair_top1`` / ``no_pair_top1`` (the model's accuracy on pair / no-pair videos)
    and ``pair_videos`` / ``no_pair_videos`` (their counts); ``present_async_pair``
    (fraction of videos where the model names a pair of digits that are present but
    not synchronous), ``absent_digit_pair`` (names a pair with a digit not in the
    video) and ``predicts_no_pair`` (fraction of "none" predictions).
  """
  labels, preds = np.asarray(labels), np.asarray(preds)
  digits = np.asarray(digits)
  n, k = digits.shape
  if not len(labels) == len(preds) == n:
    raise ValueError(f'labels {labels.shape}, preds {preds.shape}, digits {digits.shape} disagree')
  present = np.zeros((n, 10), bool)
  present[np.arange(n)[:, None], digits] = True
  pairs = np.array(PAIRS + [(0, 0)])  # "none" maps to a dummy pair, masked below
  named = pairs[preds]  # [n, 2]
  names_pair = preds != NO_PAIR_LABEL
  both_present = present[np.arange(n), named[:, 0]] & present[np.arange(n), named[:, 1]]
  correct = preds == labels
  has_pair = labels != NO_PAIR_LABEL
  m = k * (k - 1) / 2
  mean = lambda x: float(np.mean(x)) if np.size(x) else float('nan')
  return {
      'top1': mean(correct),
      'oracle_top1': mean(np.where(has_pair, 1.0 / m, 0.0)),
      'pair_top1': mean(correct[has_pair]),
      'no_pair_top1': mean(correct[~has_pair]),
      'pair_videos': int(has_pair.sum()),
      'no_pair_videos': int((~has_pair).sum()),
      'present_async_pair': mean(names_pair & both_present & ~correct),
      'absent_digit_pair': mean(names_pair & ~both_present),
      'predicts_no_pair': mean(~names_pair),
  }


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


# --------------------------------------------------------------------------------------
# Single digits, for pre-training the backbone CNN.
# --------------------------------------------------------------------------------------


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
  frames = _render(images[mnist_index][:, None], pos[:, None, None, :])  # T = K = 1
  return {
      'image': frames[:, 0, :, :, None],
      'label': labels[mnist_index].astype(np.int32),
      'position': np.rint(pos * SCALE).astype(np.int32),
      'mnist_index': mnist_index + offset,
  }
