"""Topology, pooling and positional maps of the static RSTG graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstg_jax.graph import area_resize_matrix, build_graph, pool_nodes, unpool_nodes


def undirected(g):
  return {tuple(sorted(p)) for p in zip(g.senders.tolist(), g.receivers.tolist(), strict=True)}


def test_syncmnist_graph_edge_count_by_hand():
  # Scales 1,2,3 = 1 + 4 + 9 = 14 nodes. Undirected edges, counted by hand:
  #   2x2 side neighbours: 4;  3x3 side neighbours: 2*3*2 = 12;
  #   1x1 overlaps every other node: 13;
  #   2x2 vs 3x3: along one axis 2-cell [0, 1/2) meets 3-cells 0 and 1, [1/2, 1) meets
  #   1 and 2, so every 2x2 cell overlaps 2*2 = 4 cells of the 3x3 grid: 16.
  g = build_graph((1, 2, 3), 6)
  assert g.num_nodes == 14
  assert len(undirected(g)) == 4 + 12 + 13 + 16
  assert g.num_edges == 2 * 45


def test_aligned_borders_are_not_overlaps():
  # 2x2 and 4x4 share grid lines: a 2x2 cell covers exactly 2x2 cells of the 4x4 grid
  # and only touches the others, so cross-scale edges are 4 * 4 = 16.
  # Same scale: 2x2 -> 4, 4x4 -> 2*4*3 = 24. Total 44 undirected.
  g = build_graph((2, 4), 8)
  assert len(undirected(g)) == 4 + 24 + 16
  # Node 0 is the top-left 2x2 cell; 4x4 nodes start at index 4, row-major.
  nbrs = sorted(g.senders[g.receivers == 0].tolist())
  four = lambda r, c: 4 + 4 * r + c
  assert nbrs == sorted([1, 2, four(0, 0), four(0, 1), four(1, 0), four(1, 1)])


def test_specific_neighbourhoods():
  g = build_graph((1, 2, 3), 6)
  a = g.adjacency_matrix()
  # 2x2 cell (0,0) is node 1; 3x3 cells are nodes 5..13 row-major.
  three = lambda r, c: 5 + 3 * r + c
  assert a[1, three(1, 1)] and a[1, three(0, 1)] and not a[1, three(0, 2)]
  # Corners touching in one point are not neighbours at the same scale.
  assert not a[three(0, 0), three(1, 1)]
  assert a[three(0, 0), three(0, 1)]
  # The 1x1 node talks to every node.
  assert a[0, 1:].all() and a[1:, 0].all()


@pytest.mark.parametrize('scales', [(1,), (3,), (1, 2, 3), (1, 2, 3, 4), (2, 5)])
@pytest.mark.parametrize('adjacency', ['sparse', 'full'])
def test_topology_invariants(scales, adjacency):
  g = build_graph(scales, 10, adjacency=adjacency)
  a = g.adjacency_matrix()
  n = sum(s * s for s in scales)
  assert g.num_nodes == n and a.shape == (n, n)
  assert (a == a.T).all(), 'edges must come in both directions'
  assert a.trace() == 0, 'no self-loops'
  assert g.num_edges == a.sum(), 'no duplicate edges'
  assert (np.diff(g.receivers) >= 0).all(), 'edges sorted by receiver'
  assert int(g.topology.n_edge[0]) == len(g.senders) == len(g.receivers)
  if adjacency == 'full':
    assert g.num_edges == n * (n - 1)
  assert g.node_scale.shape == (n,) and g.node_cell.shape == (n, 2)


def test_pooling_weights_divisible_and_fractional():
  g = build_graph((1, 2), (4, 4))
  fmap = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
  nodes = np.asarray(pool_nodes(g, jnp.asarray(fmap)))[:, 0]
  assert np.isclose(nodes[0], fmap.mean())
  assert np.isclose(nodes[1], fmap[:2, :2].mean())
  assert np.isclose(nodes[4], fmap[2:, 2:].mean())
  # 7 pixels into 2 cells: cell 0 = pixels 0,1,2 and half of pixel 3.
  m = area_resize_matrix(2, 7)
  np.testing.assert_allclose(m[0], np.array([1, 1, 1, 0.5, 0, 0, 0]) / 3.5)
  np.testing.assert_allclose(m.sum(1), 1.0)


def test_unpool_is_sum_of_per_scale_resizes():
  g = build_graph((1, 2, 3), 6)
  nodes = jnp.ones((2, 14, 3))
  # A constant value on every node comes back as (number of scales) * value.
  np.testing.assert_allclose(unpool_nodes(g, nodes), 3.0, rtol=1e-6)
  # For a divisible size, pooling a single scale's upsampled grid gives the grid back.
  grid = jax.random.normal(jax.random.key(0), (9, 2))
  only3 = jnp.zeros((14, 2)).at[5:].set(grid)
  back = pool_nodes(g, unpool_nodes(g, only3))
  np.testing.assert_allclose(back[5:], grid, atol=1e-5)


def test_positional_maps():
  g = build_graph((1, 2, 3), 6)
  assert g.positions.shape == (14, 36)
  maps = g.positions.reshape(14, 6, 6)
  np.testing.assert_allclose(maps[0], maps[0].T, atol=1e-6)  # whole frame: symmetric
  # 3x3 cell (0,0) covers map cells [0:2, 0:2]: mass sits top-left.
  corner = maps[5]
  assert corner[:2, :2].mean() > corner[3:, 3:].mean()
  np.testing.assert_allclose(np.unravel_index(corner.argmax(), (6, 6)), (0, 0))
  # Without filtering the map is exactly the cell's indicator.
  raw = build_graph((1, 2, 3), 6, position_sigma=0).positions.reshape(14, 6, 6)
  np.testing.assert_array_equal(raw[5][:2, :2], 1.0)
  assert raw[5].sum() == 4


@pytest.mark.parametrize('kwargs,match', [
    (dict(scales=(1, 2, 8), feature_size=6), 'smaller than the finest grid'),
    (dict(scales=(), feature_size=6), 'empty'),
    (dict(scales=(1, 1), feature_size=6), 'repeat'),
    (dict(scales=(0, 2), feature_size=6), '>= 1'),
    (dict(scales=(1, 2), feature_size=6, adjacency='dense'), 'sparse, full'),
    (dict(scales=(1, 2), feature_size='big'), 'feature_size'),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    build_graph(**kwargs)


def test_pool_size_mismatch_names_the_fix():
  g = build_graph((1, 2), 6)
  with pytest.raises(ValueError, match='feature_size'):
    pool_nodes(g, jnp.zeros((1, 7, 7, 3)))


def test_graph_is_static_under_jit():
  traces = []

  @jax.jit
  def f(graph, fmap):
    traces.append(1)
    return pool_nodes(graph, fmap)

  x = jnp.ones((2, 6, 6, 3))
  f(build_graph((1, 2), 6), x)
  f(build_graph((1, 2), 6), x + 1)  # an equal graph built again: no retrace
  assert len(traces) == 1
  f(build_graph((1, 3), 6), x)      # a different graph is a different program
  assert len(traces) == 2
