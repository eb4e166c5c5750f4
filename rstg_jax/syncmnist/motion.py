"""SyncMNIST's digit motion: per-step offsets, start positions, trajectories.

Two rules (`generator.MOTIONS`): 'clean' (default), in which every digit's track -- the
pair's included -- has the same distribution, and 'authors', the authors' clip-at-the-
border generator with the single-digit shortcuts described in `generator`'s docstring.
Positions are top-left corners on the CANVAS x CANVAS canvas; `generator` renders them.
"""

from __future__ import annotations

import numpy as np

NUM_FRAMES = 10
CANVAS = 100  # the canvas the digits move on, in pixels
DIGIT = 28  # MNIST digit size
MAX_POS = CANVAS - DIGIT  # top-left corners lie in [0, MAX_POS] (72)
OFFSET_LOW, OFFSET_HIGH = -10, 10  # per-step offsets lie in [OFFSET_LOW, OFFSET_HIGH)
# The synchronous pair keeps its relative offset for the whole video, so a pair that
# starts on top of itself would hide one of its digits in every frame (label noise:
# about 4% of pair videos with uniform starts). Its starts are redrawn until they are
# at least this far apart (Chebyshev distance in canvas pixels, ~5 px in the frame).
# Independent digits may overlap: their overlaps are transient.
MIN_PAIR_SEPARATION = 8  # "authors" motion only
_MAX_REDRAWS = 1000


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
