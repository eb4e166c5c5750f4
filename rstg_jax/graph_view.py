"""What an RSTG graph did, from its records: numbers and pictures for people.

`RSTG` applied with `mutable=['intermediates']` sows every space stage's attention and
output nodes (`rstg_jax.model.RSTG`). `find_records` collects them from a model's
'intermediates' tree and `stack_records` lays them out as [B, T, K, ...] (video, time
step, iteration). The rest works on one video's numpy arrays: `attention` [T, E] over the
graph's directed edges (E = `graph.num_edges`; the homogeneous schedule's time messages
are left out) and node changes [T, N]. Used by the explain command (`rstg_jax.explain`)
and the task packages' explain figures; matplotlib is imported only to draw.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import textwrap
from typing import Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from rstg_jax.graph import RSTGGraph

# Outline colour of each scale's node boxes (scale 1x1 first).
SCALE_COLOURS = ('#4fc3f7', '#ffb74d', '#f06292', '#aed581', '#ba68c8', '#fff176')
EDGE_COLOUR = '#ffee58'


def find_records(tree, path: tuple = ()) -> dict[str, Mapping]:
  """Every RSTG's records in an 'intermediates' tree: {'a/b/rstg': {'nodes': (...), ...}}.

  A module's records are the dict that holds a 'nodes' tuple (and 'attention' unless the
  model gathers by sum); the key is its module path.
  """
  out = {}
  if isinstance(tree, Mapping):
    if isinstance(tree.get('nodes'), tuple):
      out['/'.join(path)] = tree
    for key, value in tree.items():
      if isinstance(value, Mapping):
        out.update(find_records(value, path + (str(key),)))
  return out


def stack_records(entries: Sequence, frames: Optional[int] = None):
  """Records of K iterations as one array [B, T, K, ...].

  Args:
    entries: an offline pass's K entries [B, T, ...]; or, with `frames`, the T * K
      entries [B, ...] that T calls of `RSTG.step` sowed (frame-major).
    frames: T for per-step records; None for offline ones.
  """
  if frames is None:
    return jnp.stack(entries, axis=2)
  stacked = jnp.stack(entries, axis=1)  # [B, T * K, ...]
  return stacked.reshape(stacked.shape[:1] + (frames, -1) + stacked.shape[2:])


def node_change(nodes):
  """How far each node's state moved since the previous time step: [B, T, N, D] ->
  [B, T, N] (the L2 norm of the difference; step 0 is measured from the zero state)."""
  previous = jnp.concatenate([jnp.zeros_like(nodes[:, :1]), nodes[:, :-1]], axis=1)
  return jnp.linalg.norm(nodes - previous, axis=-1)


def frame_steps(num_frames: int, num_steps: int) -> np.ndarray:
  """The graph's time step for each video frame, when the backbone pooled time."""
  return np.arange(num_frames) * num_steps // num_frames


def node_names(graph: RSTGGraph) -> list[str]:
  """'2x2(0,1)': the node's grid and its (row, col) cell."""
  return [f'{graph.scales[k]}x{graph.scales[k]}({r},{c})'
          for k, (r, c) in zip(graph.node_scale, graph.node_cell)]


def exchanged(attention: np.ndarray, graph: RSTGGraph) -> np.ndarray:
  """[N, N] symmetric: the attention node pairs exchanged (both directions), per frame."""
  e = graph.num_edges
  mass = np.zeros((graph.num_nodes, graph.num_nodes))
  np.add.at(mass, (graph.receivers, graph.senders), np.asarray(attention)[:, :e].mean(0))
  return mass + mass.T


def strongest_pairs(mass: np.ndarray, top: int = 3) -> list[tuple[int, int, float]]:
  """The `top` node pairs (i < j) of an `exchanged` matrix, strongest first."""
  i, j = np.triu_indices(mass.shape[0], k=1)
  order = np.argsort(-mass[i, j], kind='stable')[:top]
  return [(int(i[o]), int(j[o]), float(mass[i[o], j[o]])) for o in order]


def settle_frame(frame_logits: np.ndarray, label: int) -> Optional[int]:
  """The first frame (0-based) from which the top-1 prediction is `label` to the end;
  None when the final prediction is wrong."""
  wrong = np.flatnonzero(np.argmax(frame_logits, -1) != label)
  if wrong.size and wrong[-1] == len(frame_logits) - 1:
    return None
  return int(wrong[-1]) + 1 if wrong.size else 0


def covering_nodes(graph: RSTGGraph, points: np.ndarray) -> np.ndarray:
  """[..., N] bool: the node of each scale whose cell holds the point (row, col in
  [0, 1) of the frame's height and width); points [..., 2]."""
  size = np.asarray(graph.scales)[graph.node_scale][:, None]          # [N, 1]
  cell = np.clip(np.floor(np.asarray(points)[..., None, :] * size), 0, size - 1)
  return (cell == graph.node_cell).all(-1)


def _mean_between(weights: np.ndarray, graph: RSTGGraph, cover_a, cover_b) -> float:
  """Mean weight over the edges from a node that covers one object but not the other
  to one that covers the other but not the first; NaN when there is none."""
  only_a, only_b = cover_a & ~cover_b, cover_b & ~cover_a             # [T, N]
  s, r = graph.senders, graph.receivers
  mask = (only_a[:, s] & only_b[:, r]) | (only_b[:, s] & only_a[:, r])  # [T, E]
  return float(weights[mask].mean()) if mask.any() else float('nan')


def pair_attention(attention: np.ndarray, graph: RSTGGraph, points: np.ndarray,
                   pair: Sequence[int]) -> dict[str, float]:
  """Attention between the nodes of two objects (the answer's pair) against other pairs.

  Args:
    attention: [T, E'] per video frame (E' >= E; the first E are the graph's edges).
    graph: the graph.
    points: [T, M, 2] the M objects' centres (row, col in [0, 1)).
    pair: the two objects of the answer (indices into M).

  Returns:
    'pair': the mean weight on edges between the pair's nodes (`_mean_between`);
    'others': the same averaged over every other pair of objects; 'uniform_pair' and
    'uniform_others': both with uniform attention (1 / in-degree), the value that the
    objects' positions alone give.
  """
  weights = np.asarray(attention)[:, :graph.num_edges]
  uniform = np.broadcast_to(1.0 / np.bincount(graph.receivers)[graph.receivers],
                            weights.shape)
  cover = covering_nodes(graph, points)                               # [T, M, N]
  wanted = tuple(sorted(int(p) for p in pair))
  got = {'pair': [], 'others': [], 'uniform_pair': [], 'uniform_others': []}
  for a, b in itertools.combinations(range(cover.shape[1]), 2):
    kind = 'pair' if (a, b) == wanted else 'others'
    got[kind].append(_mean_between(weights, graph, cover[:, a], cover[:, b]))
    got['uniform_' + kind].append(_mean_between(uniform, graph, cover[:, a], cover[:, b]))
  return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
          for k, v in got.items()}


def top_edges(attention: np.ndarray, graph: RSTGGraph, k: int) -> np.ndarray:
  """Indices of the k heaviest incoming edges of every receiver (attention [E'])."""
  weights = np.asarray(attention)[:graph.num_edges]
  keep = []
  for node in range(graph.num_nodes):
    incoming = np.flatnonzero(graph.receivers == node)
    keep.extend(incoming[np.argsort(-weights[incoming], kind='stable')[:k]])
  return np.asarray(keep, np.int64)


def _anchors(graph: RSTGGraph, height: int, width: int) -> np.ndarray:
  """[N, 2] (x, y) pixel points the edges meet: cell centres, each scale shifted a
  little along the diagonal so that nested cells' centres do not coincide."""
  size = np.asarray(graph.scales)[graph.node_scale][:, None]
  centre = (graph.node_cell[:, ::-1] + 0.5) / size * np.array([width, height]) - 0.5
  shift = (graph.node_scale - (len(graph.scales) - 1) / 2) * 0.05 * min(height, width)
  return centre + shift[:, None]


def draw_graph(ax, graph: RSTGGraph, image: np.ndarray, attention: np.ndarray,
               change: np.ndarray, top_k: int = 1) -> None:
  """One frame with the graph on it: every node's cell outlined in its scale's colour
  and a square at the node shaded by `change` (0: dark, 1: bright), and the `top_k`
  heaviest incoming edges of each node as arrows whose width grows with the weight.

  Args:
    ax: a matplotlib axes.
    graph: the graph.
    image: [H, W] grey or [H, W, 3] uint8 frame.
    attention: [E'] this frame's weights (mean over iterations).
    change: [N] in [0, 1], how much each node's state changed.
    top_k: edges drawn per receiver.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import FancyArrowPatch, Rectangle  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  ax.imshow(image, cmap='gray' if image.ndim == 2 else None, vmin=0, vmax=255)
  anchors = _anchors(graph, h, w)
  shade = matplotlib.colormaps['inferno']
  for n in range(graph.num_nodes):
    k, (r, c) = graph.node_scale[n], graph.node_cell[n]
    s, colour = graph.scales[k], SCALE_COLOURS[k % len(SCALE_COLOURS)]
    inset = 0.6 * k
    ax.add_patch(Rectangle((c * w / s - 0.5 + inset, r * h / s - 0.5 + inset),
                           w / s - 2 * inset, h / s - 2 * inset, fill=False,
                           edgecolor=colour, linewidth=0.6, alpha=0.7))
    side = (0.1 - 0.02 * k) * min(h, w)
    x, y = anchors[n]
    ax.add_patch(Rectangle((x - side / 2, y - side / 2), side, side, zorder=3,
                           facecolor=shade(0.15 + 0.85 * float(change[n])),
                           edgecolor=colour, linewidth=1.0))
  for e in top_edges(attention, graph, top_k):
    weight = float(attention[e])
    ax.add_patch(FancyArrowPatch(
        anchors[graph.senders[e]], anchors[graph.receivers[e]], zorder=2,
        connectionstyle='arc3,rad=0.2', arrowstyle='-|>', mutation_scale=6,
        color=EDGE_COLOUR, alpha=0.85, linewidth=0.3 + 4 * weight))
  ax.set_xlim(-0.5, w - 0.5)
  ax.set_ylim(h - 0.5, -0.5)
  ax.set_xticks([])
  ax.set_yticks([])


def draw_top_classes(ax, probs: np.ndarray, class_names: Sequence[str], label: int,
                     title: str, top: int = 3) -> None:
  """Horizontal bars of the `top` most probable classes, the most probable on top and
  the true class in green; each bar is labelled inside the panel."""
  order = np.argsort(-np.asarray(probs), kind='stable')[:top][::-1]
  colours = ['#66bb6a' if int(c) == int(label) else '#cfcfcf' for c in order]
  ax.barh(range(len(order)), np.asarray(probs)[order], color=colours)
  for y, c in enumerate(order):
    ax.text(0.02, y, f'{textwrap.shorten(class_names[int(c)], 40)}  {probs[int(c)]:.2f}',
            va='center', fontsize=7)
  ax.set_yticks([])
  ax.set_xlim(0, 1)
  ax.tick_params(axis='x', labelsize=7)
  ax.set_title(title, fontsize=8)


LEGEND = ('squares: graph nodes (bigger: coarser scale; colour: how much the state '
          'changed since the previous frame, dark little, bright the most in this video); '
          'arrows: the top-{k} attention weights into each node (mean over iterations), '
          'width by weight')


def add_legend(fig, top_k: int, extra: str = '', fontsize: float = 7.5) -> float:
  """Writes `LEGEND` (and `extra`) wrapped to the figure's width at its bottom; returns
  the fraction of the figure's height it takes (the bottom margin the axes need)."""
  width, height = fig.get_size_inches()
  text = textwrap.fill(LEGEND.format(k=top_k) + extra, width=int(width * 120 / fontsize))
  fig.text(0.01, 0.01, text, fontsize=fontsize, va='bottom')
  return ((text.count('\n') + 1) * fontsize * 1.3 / 72 + 0.35) / height


def normalised(change: np.ndarray) -> np.ndarray:
  """Node changes [T, N] scaled to [0, 1] by their maximum over time steps 1.. (step 0,
  measured from the zero state, would dwarf the rest; it is clipped to 1)."""
  change = np.asarray(change, np.float64)
  top = (change[1:] if len(change) > 1 else change).max()
  return np.clip(change / top, 0, 1) if top > 0 else change


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary name beside `path` (same extension, so writers pick the same
  format) and moves it onto `path` only when the block succeeds."""
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp-{os.getpid()}{ext}'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
