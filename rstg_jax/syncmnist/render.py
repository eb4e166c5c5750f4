"""Rendering SyncMNIST frames: digits pasted on a black canvas, box-downscaled to 64x64.

Shared by the video generator (`rstg_jax.syncmnist.generator`) and the backbone's
pre-training samples (`rstg_jax.syncmnist.pretrain_data`): digits are pasted (max blend)
at integer top-left positions on the CANVAS x CANVAS canvas (`rstg_jax.syncmnist.motion`),
and the canvas is box (area) downscaled to FRAME x FRAME, as OpenCV's INTER_AREA.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rstg_jax.graph import area_resize_matrix
from rstg_jax.syncmnist.motion import CANVAS, DIGIT

FRAME = 64  # the video frame size after downscaling
SCALE = FRAME / CANVAS  # 0.64: canvas -> frame coordinates

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


def _area_downscale(canvas: np.ndarray) -> np.ndarray:
  """Box (area) resize of uint8 [N, 100, 100] canvases to float32 [N, 64, 64]."""
  n = canvas.shape[0]
  # Columns: every row splits into 4 blocks of 25 pixels -> 16 pixels each. Done in
  # chunks small enough that OpenBLAS stays single-threaded: on a busy machine (or
  # next to XLA's threads) its multithreaded path was 10x slower than one thread.
  rows = canvas.reshape(-1, _BLOCK_IN)
  x = np.empty((rows.shape[0], _BLOCK_OUT), dtype=np.float32)
  for i in range(0, rows.shape[0], _GEMM_CHUNK):
    chunk = slice(i, i + _GEMM_CHUNK)
    np.matmul(rows[chunk].astype(np.float32), _AREA_BLOCK_T, out=x[chunk])
  # Rows: the same block matrix applied to groups of 25 rows.
  x = x.reshape(n, _NUM_BLOCKS, _BLOCK_IN, FRAME)
  return np.matmul(_AREA_BLOCK, x).reshape(n, FRAME, FRAME)


def render_frames(images: np.ndarray, positions: np.ndarray) -> np.ndarray:
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
