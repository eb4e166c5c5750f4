"""SyncMNIST: videos of moving MNIST digits where one pair moves synchronously.

The dataset of the RSTG paper (Nicolicioiu et al., NeurIPS 2019, section 3.1),
generated as the authors describe it:

* 46 classes: the 45 unordered pairs (i, j), i < j, of distinct digit classes, in
  lexicographic order (class 0 = "0-1", ..., class 44 = "8-9"), plus class 45
  ("none") where no pair moves synchronously. "none" is drawn with probability 1/47
  per video; otherwise digits 0 and 1 of the video are the synchronous pair.
* Each video has ``num_digits`` (3 or 5 in the paper) real MNIST digits of distinct
  classes, pasted (max blend) on a black 100x100 canvas, for 10 frames; the video is
  then box-downscaled to 64x64 (digits become about 18x18).
* Start positions are uniform over the canvas, except that the synchronous pair starts
  at least ``MIN_PAIR_SEPARATION`` canvas pixels apart (it never changes its relative
  offset, so closer starts would hide one of its digits for the whole video).
* Each step every digit moves by an integer offset in [-10, 10) per axis (canvas
  pixels), clipped to stay inside. The synchronous pair gets the same offset, drawn
  from the part of that range that keeps both inside, so their displacements are
  exactly equal. Independent digits are redrawn if their displacements happen to
  equal another digit's in all 9 steps, so only the labelled pair is synchronous.
* Train videos (indices 0..599999 = 10 passes over 60k digits) use only MNIST train
  images; the test set (indices 0..9999) only MNIST test images.

Every video is a pure function of (seed, split, index, num_digits): its random numbers
come from its own ``np.random.default_rng([seed, split_id, index])``, so any index can
be generated alone, in any batch or order, and the fixed test set is never stored.
Rendering is vectorised over the batch with numpy.

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
MIN_PAIR_SEPARATION = 8
SPLIT_IDS = {"train": 0, "test": 1}
#: Number of videos per split: 10 passes over the 60k MNIST train digits; 10k test.
SPLIT_SIZES = {"train": 600_000, "test": 10_000}

PAIRS: list[tuple[int, int]] = list(combinations(range(10), 2))
NUM_PAIR_CLASSES = len(PAIRS)  # 45
NO_PAIR_LABEL = NUM_PAIR_CLASSES  # 45
NUM_CLASSES = NUM_PAIR_CLASSES + 1  # 46
#: Human-readable class names: "0-1", ..., "8-9", "none".
CLASS_NAMES: list[str] = [f"{i}-{j}" for i, j in PAIRS] + ["none"]

# Lookup table (10 x 10) from an ordered or unordered digit pair to its label.
_PAIR_TABLE = np.full((10, 10), -1, dtype=np.int32)
for _label, (_i, _j) in enumerate(PAIRS):
    _PAIR_TABLE[_i, _j] = _PAIR_TABLE[_j, _i] = _label

# Stream tag appended to the RNG key of single-digit images, so they never share
# random numbers with the videos ([s, k, i] equals [s, k, i, 0] for SeedSequence).
_SINGLE_DIGIT_STREAM = 1
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
        raise ValueError(f"need two distinct digit classes in 0..9, got ({i}, {j})")
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
        raise ValueError(f"label must lie in 0..{NUM_CLASSES - 1}, got {label}")
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
        raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
    return SPLIT_IDS[split]


def _check_indices(split: str, indices) -> np.ndarray:
    idx = np.atleast_1d(np.asarray(indices))
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError("indices must be an integer or a 1-D sequence of integers")
    idx = idx.astype(np.int64)
    size = SPLIT_SIZES[split]
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(
            f"{split} indices must lie in [0, {size}), got range [{idx.min()}, {idx.max()}]"
        )
    return idx


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return seed


# Per-split class grouping, keyed by the identity of the (cached, read-only) label
# array, so it always matches the images load_mnist currently returns.
_CLASS_INDEX_CACHE: dict[int, tuple[np.ndarray, tuple]] = {}


def _class_index(labels: np.ndarray):
    """MNIST indices grouped by class: (order, class starts, class counts)."""
    hit = _CLASS_INDEX_CACHE.get(id(labels))
    if hit is not None and hit[0] is labels:
        return hit[1]
    order = np.argsort(labels, kind="stable").astype(np.int64)
    counts = np.bincount(labels, minlength=10).astype(np.int64)
    if (counts == 0).any():
        raise ValueError(f"MNIST split lacks classes {np.flatnonzero(counts == 0)}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if len(_CLASS_INDEX_CACHE) > 8:
        _CLASS_INDEX_CACHE.clear()
    _CLASS_INDEX_CACHE[id(labels)] = (labels, (order, starts, counts))
    return order, starts, counts


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


def _draw_layout(num_digits: int) -> dict[str, slice]:
    """Where each quantity sits in a video's block of uniform random numbers."""
    k, steps = num_digits, NUM_FRAMES - 1
    sizes = [
        ("no_pair", 1),
        ("perm", 10),  # argsort of 10 uniforms = a uniform random permutation
        ("image", k),
        ("start", 2 * k),
        ("offsets", steps * k * 2),
        ("pair", steps * 2),
    ]
    layout, pos = {}, 0
    for name, n in sizes:
        layout[name] = slice(pos, pos + n)
        pos += n
    layout["total"] = slice(0, pos)
    return layout


def _offsets_from_uniform(u: np.ndarray) -> np.ndarray:
    """Integer offsets in [OFFSET_LOW, OFFSET_HIGH) from uniforms in [0, 1)."""
    return (np.floor(u * (OFFSET_HIGH - OFFSET_LOW)) + OFFSET_LOW).astype(np.int64)


def _trajectories(
    start: np.ndarray, offsets: np.ndarray, pair_u: np.ndarray, has_pair: np.ndarray
) -> np.ndarray:
    """Canvas positions of every digit in every frame.

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


def generate(
    split: str,
    indices: int | Sequence[int] | np.ndarray,
    num_digits: int = 3,
    seed: int = 0,
    mnist_path: str | None = None,
) -> dict[str, np.ndarray]:
    """Generate SyncMNIST videos by index.

    Args:
      split: "train" (indices 0..599999, MNIST train digits) or "test" (indices
        0..9999, MNIST test digits).
      indices: one index or a 1-D sequence of B indices; each video depends only on
        (seed, split, index, num_digits), never on the batch it is generated in.
      num_digits: digits per video (3 or 5 in the paper; 2..10, classes are distinct).
      seed: non-negative dataset seed.
      mnist_path: optional local MNIST copy, see :func:`rstg_jax.syncmnist.mnist.load_mnist`.

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
        ``mnist_index`` int64 [B, num_digits], index of each digit's image in the
          MNIST split.

    Raises:
      ValueError: bad split, indices, seed or num_digits.
      rstg_jax.syncmnist.mnist.MNISTNotFoundError: no MNIST copy available.
    """
    split_id = _check_split(split)
    idx = _check_indices(split, indices)
    seed = _check_seed(seed)
    k = int(num_digits)
    if not 2 <= k <= 10:
        raise ValueError(f"num_digits must lie in 2..10 (distinct classes), got {num_digits}")
    images, labels = load_mnist(split, mnist_path)
    order, starts, counts = _class_index(labels)

    lay = _draw_layout(k)
    b, steps = idx.size, NUM_FRAMES - 1
    # One small generator per video; drawing its whole block of uniforms at once keeps
    # the per-video Python cost to two calls, the rest is vectorised over the batch.
    rngs = [np.random.default_rng([seed, split_id, int(i)]) for i in idx]
    u = np.stack([r.random(lay["total"].stop) for r in rngs]) if b else np.zeros((0, lay["total"].stop))

    has_pair = u[:, lay["no_pair"]][:, 0] >= NO_PAIR_PROB
    classes = np.argsort(u[:, lay["perm"]], axis=1)[:, :k]  # distinct, uniform
    within = np.floor(u[:, lay["image"]] * counts[classes]).astype(np.int64)
    mnist_index = order[starts[classes] + within]  # [B, K]
    start = np.floor(u[:, lay["start"]] * (MAX_POS + 1)).astype(np.int64).reshape(b, k, 2)
    offsets = _offsets_from_uniform(u[:, lay["offsets"]]).reshape(b, steps, k, 2)
    pair_u = u[:, lay["pair"]].reshape(b, steps, 2)

    # Redraws below continue each video's own RNG stream after its block of uniforms,
    # always in the same order, so they stay deterministic per index.
    too_close = has_pair & (np.abs(start[:, 0] - start[:, 1]).max(axis=1) < MIN_PAIR_SEPARATION)
    for v in np.flatnonzero(too_close):
        while np.abs(start[v, 0] - start[v, 1]).max() < MIN_PAIR_SEPARATION:
            start[v, 1] = np.floor(rngs[v].random(2) * (MAX_POS + 1)).astype(np.int64)

    pos = _trajectories(start, offsets, pair_u, has_pair)
    # Rare: an independent digit moving exactly like another one in all 9 steps would
    # make a second synchronous pair. Redraw its offsets until none remain.
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
            raise RuntimeError(f"could not make digit trajectories distinct for index {idx[v]}")

    label = np.where(
        has_pair,
        _PAIR_TABLE[classes[:, 0], classes[:, 1]],
        NO_PAIR_LABEL,
    ).astype(np.int32)
    video = _render(images[mnist_index], pos)[..., None]
    return {
        "video": video,
        "label": label,
        "digits": classes.astype(np.int32),
        "positions": np.rint(pos * SCALE).astype(np.int32),
        "canvas_positions": pos.astype(np.int32),
        "mnist_index": mnist_index,
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
) -> Iterator[dict[str, np.ndarray]]:
    """Yield :func:`generate` batches for consecutive indices ``start .. stop - 1``.

    Videos are independent draws, so consecutive indices are as good as shuffled
    ones; resuming at ``start`` reproduces the stream exactly.

    Args:
      split, num_digits, seed, mnist_path: as in :func:`generate`.
      batch_size: videos per batch (> 0).
      start: first index.
      stop: one past the last index (default: the split size).
      drop_last: skip a final batch smaller than ``batch_size``.

    Yields:
      dicts as returned by :func:`generate`.
    """
    _check_split(split)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    stop = SPLIT_SIZES[split] if stop is None else stop
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        if drop_last and hi - lo < batch_size:
            return
        yield generate(split, np.arange(lo, hi), num_digits, seed, mnist_path)


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
    videos'. Indices follow the video split sizes (train: 0..599999, test: 0..9999);
    the MNIST image is drawn uniformly from the split.

    Args:
      split: "train" or "test".
      indices: one index or a 1-D sequence of B indices.
      seed: non-negative seed.
      mnist_path: optional local MNIST copy.

    Returns:
      dict with ``image`` uint8 [B, 64, 64, 1], ``label`` int32 [B] (the digit class),
      ``position`` int32 [B, 2] (top-left in the 64x64 frame) and ``mnist_index``
      int64 [B].
    """
    split_id = _check_split(split)
    idx = _check_indices(split, indices)
    seed = _check_seed(seed)
    images, labels = load_mnist(split, mnist_path)
    b = idx.size
    u = np.array(
        [np.random.default_rng([seed, split_id, int(i), _SINGLE_DIGIT_STREAM]).random(3) for i in idx]
    ).reshape(b, 3)
    mnist_index = np.floor(u[:, 0] * len(labels)).astype(np.int64)
    pos = np.floor(u[:, 1:] * (MAX_POS + 1)).astype(np.int64)
    frames = _render(images[mnist_index][:, None], pos[:, None, None, :])  # T = K = 1
    return {
        "image": frames[:, 0, :, :, None],
        "label": labels[mnist_index].astype(np.int32),
        "position": np.rint(pos * SCALE).astype(np.int32),
        "mnist_index": mnist_index,
    }
