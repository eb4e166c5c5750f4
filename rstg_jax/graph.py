"""The static RSTG graph of one frame: multi-scale grid nodes over a feature map.

A video's backbone features F [T, H, W, C] are pooled at several square grid scales
(e.g. 1x1, 2x2, 3x3); every grid cell is a node. Two nodes are connected when their
cells are neighbours at the same scale (they share a side) or when their regions at two
different scales overlap (paper, Sec. 2 "Graph Creation"). The topology does not change
over time or across videos, so it is built once, in numpy, and handed to jitted code as
compile-time constants.

`build_graph` returns an `RSTGGraph` that holds:
  - `topology`: a `jraph.GraphsTuple` with `senders`, `receivers`, `n_node`, `n_edge`
    (directed edges, both directions of every undirected edge, sorted by receiver);
  - each node's scale index and (row, col) cell;
  - `pool` [N, H*W]: area-average weights from the feature map to the nodes, with
    fractional overlap when H or W is not divisible by the grid size;
  - `unpool` [H*W, N]: the inverse resize used by RSTG-to-map (each scale's grid
    area-resized back to H x W, summed over scales);
  - `positions` [N, 36]: the 6x6 positional maps (ones over the node's cell, Gaussian
    filtered, flattened).

`RSTGGraph` is a JAX pytree with no array leaves: under `jax.jit` it is static, keyed by
(scales, feature_size, adjacency, position_sigma), so passing it to a jitted function
neither retraces for equal graphs nor turns the topology into traced values.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np

ADJACENCIES = ('sparse', 'full')
POSITION_GRID = 6  # The paper's low-resolution positional map is 6x6.


def _interval_overlap(n_out: int, n_in: int) -> np.ndarray:
  """Overlap lengths between a partition of [0, 1) into n_out and into n_in intervals.

  Returns O [n_out, n_in] with O[a, b] = |[a/n_out, (a+1)/n_out) ∩ [b/n_in, (b+1)/n_in)|.
  Area resizes in both directions are this matrix normalised by rows.
  """
  lo_out = np.arange(n_out)[:, None] / n_out
  hi_out = (np.arange(n_out)[:, None] + 1) / n_out
  lo_in = np.arange(n_in)[None, :] / n_in
  hi_in = (np.arange(n_in)[None, :] + 1) / n_in
  return np.clip(np.minimum(hi_out, hi_in) - np.maximum(lo_out, lo_in), 0.0, None)


def area_resize_matrix(n_out: int, n_in: int) -> np.ndarray:
  """1-D area resize [n_out, n_in]: each output cell averages the inputs it covers.

  Works for down- and up-sampling; rows sum to 1. Down-sampling 6 -> 4 gives the
  fractional-overlap weights the authors' area resize used.
  """
  overlap = _interval_overlap(n_out, n_in)
  return overlap / overlap.sum(axis=1, keepdims=True)


def _gaussian_filter_matrix(n: int, sigma: float) -> np.ndarray:
  """1-D Gaussian smoothing [n, n] with zero padding (mass leaving the map is lost)."""
  idx = np.arange(n)
  kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
  radius = int(np.ceil(3 * sigma))
  kernel[np.abs(idx[:, None] - idx[None, :]) > radius] = 0.0
  full = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return kernel / full.sum()


@dataclasses.dataclass(frozen=True, eq=False)
class RSTGGraph:
  """Static description of one frame's RSTG graph (see the module docstring).

  Attributes:
    scales: grid sizes, e.g. (1, 2, 3): scale s has s*s nodes.
    feature_size: (H, W) of the feature map the nodes are pooled from.
    adjacency: "sparse" (the paper's rule) or "full" (every ordered pair i != j).
    position_sigma: std (in 6x6-map cells) of the Gaussian of the positional maps.
    topology: jraph.GraphsTuple with numpy senders/receivers (edges sorted by
      receiver, then sender), n_node [1], n_edge [1]; nodes/edges/globals are None.
    node_scale: [N] int, index into `scales` of each node.
    node_cell: [N, 2] int, (row, col) of each node's cell in its grid.
    pool: [N, H*W] float32 area-average weights (rows sum to 1).
    unpool: [H*W, N] float32 inverse resize, summed over scales.
    positions: [N, 36] float32 positional maps.
  """

  scales: tuple[int, ...]
  feature_size: tuple[int, int]
  adjacency: str
  position_sigma: float
  topology: jraph.GraphsTuple
  node_scale: np.ndarray
  node_cell: np.ndarray
  pool: np.ndarray
  unpool: np.ndarray
  positions: np.ndarray

  @property
  def key(self):
    return (self.scales, self.feature_size, self.adjacency, self.position_sigma)

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, RSTGGraph) and self.key == other.key

  @property
  def num_nodes(self) -> int:
    return int(self.topology.n_node[0])

  @property
  def num_edges(self) -> int:
    """Number of directed edges (messages per space stage): 2E for the sparse graph."""
    return int(self.topology.n_edge[0])

  @property
  def senders(self) -> np.ndarray:
    return self.topology.senders

  @property
  def receivers(self) -> np.ndarray:
    return self.topology.receivers

  @property
  def scale_slices(self) -> tuple[slice, ...]:
    """Nodes are ordered scale by scale, row-major inside a scale."""
    out, start = [], 0
    for s in self.scales:
      out.append(slice(start, start + s * s))
      start += s * s
    return tuple(out)

  def adjacency_matrix(self) -> np.ndarray:
    """Dense [N, N] 0/1 matrix A[receiver, sender] (the dense space stage's mask)."""
    a = np.zeros((self.num_nodes, self.num_nodes), np.int32)
    a[self.receivers, self.senders] = 1
    return a

  def __repr__(self):
    return (f'RSTGGraph(scales={self.scales}, feature_size={self.feature_size}, '
            f'adjacency={self.adjacency!r}, nodes={self.num_nodes}, '
            f'directed_edges={self.num_edges})')


jax.tree_util.register_pytree_node(
    RSTGGraph, lambda g: ((), g), lambda g, _: g)


def _cell_boxes(scales):
  """Each node's region as [r0, r1) x [c0, c1) in unit coordinates."""
  boxes, node_scale, node_cell = [], [], []
  for k, s in enumerate(scales):
    for r in range(s):
      for c in range(s):
        boxes.append((r / s, (r + 1) / s, c / s, (c + 1) / s))
        node_scale.append(k)
        node_cell.append((r, c))
  return (np.array(boxes), np.array(node_scale, np.int32),
          np.array(node_cell, np.int32).reshape(-1, 2))


def _sparse_pairs(scales, node_scale, node_cell, boxes):
  """Directed (receiver, sender) pairs of the paper's adjacency rule."""
  n = len(node_scale)
  same = node_scale[:, None] == node_scale[None, :]
  dr = np.abs(node_cell[:, None, 0] - node_cell[None, :, 0])
  dc = np.abs(node_cell[:, None, 1] - node_cell[None, :, 1])
  # Same scale: 4-neighbourhood (cells sharing a side; corners do not count).
  side = same & (dr + dc == 1)
  # Different scales: regions overlapping with positive area. Exact in rationals:
  # compare a/s < b/t as a*t < b*s to avoid float ties at shared borders.
  sizes = np.array([scales[k] for k in node_scale])
  r0 = node_cell[:, 0]
  c0 = node_cell[:, 1]
  def overlap_1d(a, sa, b, sb):
    # [a/sa, (a+1)/sa) and [b/sb, (b+1)/sb) overlap iff a/sa < (b+1)/sb and b/sb < (a+1)/sa.
    return (a * sb < (b + 1) * sa) & (b * sa < (a + 1) * sb)
  ov = (overlap_1d(r0[:, None], sizes[:, None], r0[None, :], sizes[None, :])
        & overlap_1d(c0[:, None], sizes[:, None], c0[None, :], sizes[None, :]))
  cross = ~same & ov
  adj = (side | cross) & ~np.eye(n, dtype=bool)
  return adj


def _position_maps(boxes, sigma):
  """6x6 map per node: area fraction of each map cell covered by the node's region,
  then Gaussian filtered (separable), flattened."""
  g = POSITION_GRID
  edges = np.arange(g + 1) / g
  def cover(lo, hi):  # [N, g] fraction of each map cell inside [lo, hi)
    return np.clip(np.minimum(hi[:, None], edges[None, 1:])
                   - np.maximum(lo[:, None], edges[None, :-1]), 0, None) * g
  rows = cover(boxes[:, 0], boxes[:, 1])
  cols = cover(boxes[:, 2], boxes[:, 3])
  maps = rows[:, :, None] * cols[:, None, :]
  if sigma > 0:
    f = _gaussian_filter_matrix(g, sigma)
    maps = np.einsum('ab,nbc,dc->nad', f, maps, f)
  return maps.reshape(len(boxes), g * g).astype(np.float32)


def build_graph(scales: Sequence[int], feature_size, adjacency: str = 'sparse',
                position_sigma: float = 1.0) -> RSTGGraph:
  """Builds the static graph of one frame.

  Args:
    scales: grid sizes, e.g. (1, 2, 3) for SyncMNIST (14 nodes) or (1, 2, 3, 4) for
      the paper's res4 graph (30 nodes). Positive integers, no repeats.
    feature_size: H (square map) or (H, W) of the backbone feature map; both must be
      at least the finest grid size, so that every node covers at least one pixel.
    adjacency: "sparse" (paper: same-scale side neighbours and overlapping regions
      across scales) or "full" (every ordered pair i != j, Appendix C).
    position_sigma: std of the Gaussian applied to the 6x6 positional maps (0: none).

  Returns:
    An `RSTGGraph`.

  Raises:
    ValueError: with a message saying what to fix, on any invalid argument.
  """
  try:
    scales = tuple(int(s) for s in scales)
  except TypeError:
    raise ValueError(f'scales must be a sequence of grid sizes such as (1, 2, 3), '
                     f'got {scales!r}') from None
  if not scales:
    raise ValueError('scales is empty: give at least one grid size, e.g. (1, 2, 3)')
  if any(s < 1 for s in scales):
    raise ValueError(f'every scale must be a grid size >= 1, got {scales}')
  if len(set(scales)) != len(scales):
    raise ValueError(f'scales must not repeat a grid size, got {scales}')
  if isinstance(feature_size, (int, np.integer)):
    feature_size = (int(feature_size), int(feature_size))
  try:
    h, w = (int(v) for v in feature_size)
  except (TypeError, ValueError):
    raise ValueError(f'feature_size must be H or (H, W), got {feature_size!r}') from None
  if min(h, w) < max(scales):
    raise ValueError(
        f'feature map {h}x{w} is smaller than the finest grid {max(scales)}x{max(scales)}: '
        f'every node needs at least one feature pixel; use scales up to {min(h, w)} or '
        f'take the features from an earlier backbone stage')
  if adjacency not in ADJACENCIES:
    raise ValueError(f"unknown adjacency {adjacency!r}; valid: {', '.join(ADJACENCIES)}")
  if position_sigma < 0:
    raise ValueError(f'position_sigma must be >= 0, got {position_sigma}')

  boxes, node_scale, node_cell = _cell_boxes(scales)
  n = len(node_scale)
  if adjacency == 'sparse':
    adj = _sparse_pairs(scales, node_scale, node_cell, boxes)
  else:
    adj = ~np.eye(n, dtype=bool)
  receivers, senders = np.nonzero(adj)  # row-major: sorted by receiver, then sender.
  topology = jraph.GraphsTuple(
      nodes=None, edges=None, globals=None,
      senders=senders.astype(np.int32), receivers=receivers.astype(np.int32),
      n_node=np.array([n], np.int32), n_edge=np.array([len(senders)], np.int32))

  pool_rows, unpool_cols = [], []
  for s in scales:
    down_h, down_w = area_resize_matrix(s, h), area_resize_matrix(s, w)
    pool_rows.append(np.einsum('ai,bj->abij', down_h, down_w).reshape(s * s, h * w))
    up_h, up_w = area_resize_matrix(h, s), area_resize_matrix(w, s)
    unpool_cols.append(np.einsum('ia,jb->ijab', up_h, up_w).reshape(h * w, s * s))
  return RSTGGraph(
      scales=scales, feature_size=(h, w), adjacency=adjacency,
      position_sigma=float(position_sigma), topology=topology,
      node_scale=node_scale, node_cell=node_cell,
      pool=np.concatenate(pool_rows, 0).astype(np.float32),
      unpool=np.concatenate(unpool_cols, 1).astype(np.float32),
      positions=_position_maps(boxes, position_sigma))


def pool_nodes(graph: RSTGGraph, fmap: jax.Array) -> jax.Array:
  """Node inputs from a feature map: [..., H, W, C] -> [..., N, C] (area averages)."""
  h, w = graph.feature_size
  if fmap.shape[-3:-1] != (h, w):
    raise ValueError(f'feature map spatial size {fmap.shape[-3:-1]} does not match the '
                     f"graph's feature_size {(h, w)}; rebuild the graph with "
                     f'build_graph(scales, feature_size={tuple(fmap.shape[-3:-1])})')
  flat = fmap.reshape(fmap.shape[:-3] + (h * w, fmap.shape[-1]))
  return jnp.einsum('nk,...kc->...nc', jnp.asarray(graph.pool, fmap.dtype), flat)


def unpool_nodes(graph: RSTGGraph, nodes: jax.Array) -> jax.Array:
  """RSTG-to-map resize: [..., N, C] -> [..., H, W, C], each scale resized back to
  H x W and the scales summed."""
  h, w = graph.feature_size
  if nodes.shape[-2] != graph.num_nodes:
    raise ValueError(f'expected {graph.num_nodes} nodes on axis -2, got shape {nodes.shape}')
  out = jnp.einsum('kn,...nc->...kc', jnp.asarray(graph.unpool, nodes.dtype), nodes)
  return out.reshape(nodes.shape[:-2] + (h, w, nodes.shape[-1]))
