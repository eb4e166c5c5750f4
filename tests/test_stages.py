"""The space stage against the numpy reference written from the paper's equations
(tests/space_reference.py), and its two implementations ("segment" and "dense") against
each other, values and gradients."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpr_flops
from space_reference import space_stage as reference_space_stage

from rstg_jax import stages
from rstg_jax.graph import build_graph
from rstg_jax.stages import init_space_params, space_stage, space_stage_flops

VARIANTS = [
    dict(),
    dict(gather='sum'),
    dict(positional=True),
    dict(layer_norm=True),
    dict(scalewise=True),
    dict(positional=True, layer_norm=True, scalewise=True, hidden=24, attn_dim=5),
]


@pytest.mark.parametrize('impl', stages.IMPLS)
@pytest.mark.parametrize('variant', VARIANTS, ids=lambda v: '-'.join(v) or 'default')
@pytest.mark.parametrize('adjacency', ['sparse', 'full'])
def test_sparse_equals_dense(variant, adjacency, impl):
  g = build_graph((1, 2, 3), 6, adjacency=adjacency)
  params = init_space_params(jax.random.key(0), 16, num_scales=3, **variant)
  # Non-zero biases so that every parameter matters in the comparison.
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                        params)
  nodes = jax.random.normal(jax.random.key(1), (3, 14, 16))
  mask = np.ones((14, 14), bool) & ~np.eye(14, dtype=bool)
  if adjacency == 'sparse':
    mask = g.adjacency_matrix().astype(bool)
  got = jax.jit(lambda p, x: space_stage(p, g, x, impl=impl))(params, nodes)
  want = reference_space_stage(params, g, nodes, mask)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('impl', stages.IMPLS)
@pytest.mark.parametrize('variant', [dict(), dict(gather='sum', positional=True)],
                         ids=lambda v: '-'.join(v) or 'default')
def test_past_messages_equal_the_reference(variant, impl):
  """The homogeneous schedule's time message (node i hears its own past state through
  f_send and the attention softmax) against the numpy reference."""
  g = build_graph((1, 2, 3), 6)
  params = init_space_params(jax.random.key(0), 16, num_scales=3, layer_norm=True, **variant)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                        params)
  nodes, past = (jax.random.normal(jax.random.key(s), (3, 14, 16)) for s in (1, 2))
  got = jax.jit(lambda p, x, q: space_stage(p, g, x, q, impl))(params, nodes, past)
  np.testing.assert_allclose(got, reference_space_stage(params, g, nodes, past=past),
                             rtol=2e-4, atol=2e-4)


def test_sparse_and_full_differ():
  params = init_space_params(jax.random.key(0), 8)
  nodes = jax.random.normal(jax.random.key(1), (2, 14, 8))
  sparse = space_stage(params, build_graph((1, 2, 3), 6), nodes)
  full = space_stage(params, build_graph((1, 2, 3), 6, 'full'), nodes)
  assert np.abs(np.asarray(sparse - full)).max() > 1e-3


def test_any_leading_axes():
  g = build_graph((1, 2), 4)
  params = init_space_params(jax.random.key(0), 8)
  nodes = jax.random.normal(jax.random.key(1), (2, 3, 4, 5, 8))
  out = space_stage(params, g, nodes)
  assert out.shape == nodes.shape
  np.testing.assert_allclose(out[1, 2, 3], space_stage(params, g, nodes[1, 2, 3]), atol=1e-6)


def test_chunked_frames_equal_one_pass():
  # 5 frames in chunks of 2: the last chunk is padded; with and without past messages.
  g = build_graph((1, 2, 3), 6)
  params = init_space_params(jax.random.key(0), 8, num_scales=3, layer_norm=True)
  nodes = jax.random.normal(jax.random.key(1), (5, 14, 8))
  past = jax.random.normal(jax.random.key(2), (5, 14, 8))
  for p in (None, past):
    whole = space_stage(params, g, nodes, p, frames_per_chunk=None)
    chunked = jax.jit(lambda x, q: space_stage(params, g, x, q, frames_per_chunk=2))(nodes, p)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  # "auto" splits 5 frames into equal chunks under the budget: 3 + 2 frames here.
  from rstg_jax import stages  # pylint: disable=g-import-not-at-top
  assert stages._auto_chunk(g, 5, 8, with_past=False) == 5
  budget = stages.EDGE_FLOATS_PER_CHUNK
  try:
    stages.EDGE_FLOATS_PER_CHUNK = g.num_edges * 8 * 4  # 4 frames fit
    assert stages._auto_chunk(g, 5, 8, with_past=False) == 3
    auto = space_stage(params, g, nodes, past)
  finally:
    stages.EDGE_FLOATS_PER_CHUNK = budget
  np.testing.assert_allclose(auto, space_stage(params, g, nodes, past, frames_per_chunk=None),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='frames_per_chunk'):
    space_stage(params, g, nodes, frames_per_chunk=0)
  # Gradients flow through the chunked path the same way.
  loss = lambda q, c: jnp.sum(space_stage(q, g, nodes, frames_per_chunk=c) ** 2)
  np.testing.assert_allclose(jax.grad(loss)(params, 2)['send']['w2'],
                             jax.grad(loss)(params, None)['send']['w2'], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('adjacency', ['sparse', 'full'])
def test_locality_only_receivers_of_j_change(adjacency):
  g = build_graph((1, 2, 3), 6, adjacency=adjacency)
  params = init_space_params(jax.random.key(0), 8, num_scales=3, positional=True)
  nodes = jax.random.normal(jax.random.key(1), (14, 8))
  base = np.asarray(space_stage(params, g, nodes))
  for j in (0, 2, 9):
    moved = np.asarray(space_stage(params, g, nodes.at[j].add(1.0)))
    changed = set(np.nonzero(np.abs(moved - base).max(-1) > 0)[0].tolist())
    expected = {j} | set(g.receivers[g.senders == j].tolist())
    assert changed == expected, (j, changed, expected)


def _shapes(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield eqn.primitive.name, tuple(getattr(v.aval, 'shape', ()))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):  # pjit/custom_jvp bodies
      yield from _shapes(sub)


def test_sparse_path_has_2e_messages_and_no_n_by_n_tensor():
  g = build_graph((1, 2, 3), 6)            # N = 14, 2E = 90
  b, d = 3, 8
  params = init_space_params(jax.random.key(0), d, num_scales=3)
  jaxpr = jax.make_jaxpr(lambda p, x: space_stage(p, g, x, impl='segment'))(
      params, jnp.zeros((b, 14, d))).jaxpr
  shapes = list(_shapes(jaxpr))
  assert not [s for _, s in shapes if list(s).count(14) >= 2], 'an N x N tensor was formed'
  # The per-edge second f_send layer runs on exactly 2E rows.
  dots = [s for p, s in shapes if p == 'dot_general']
  assert (g.num_edges, b, d) in dots
  assert max(int(np.prod(s)) for _, s in shapes) <= g.num_edges * b * d


def test_jit_does_not_recompile_for_a_new_batch():
  traces = []

  def f(params, graph, nodes):
    traces.append(1)
    return space_stage(params, graph, nodes)

  jf = jax.jit(f)
  g = build_graph((1, 2, 3), 6)
  params = init_space_params(jax.random.key(0), 8)
  for seed in range(3):
    jf(params, g, jax.random.normal(jax.random.key(seed), (4, 2, 14, 8))).block_until_ready()
  assert len(traces) == 1


def test_past_messages_join_the_softmax():
  g = build_graph((1, 2), 4)
  params = init_space_params(jax.random.key(0), 8)
  nodes = jax.random.normal(jax.random.key(1), (5, 8))
  past = jax.random.normal(jax.random.key(2), (5, 8))
  with_past = space_stage(params, g, nodes, past=past)
  assert np.abs(np.asarray(with_past - space_stage(params, g, nodes))).max() > 1e-4
  # Node i hears only its own past: changing node 0's past changes only node 0.
  moved = space_stage(params, g, nodes, past=past.at[0].add(1.0))
  diff = np.abs(np.asarray(moved - with_past)).max(-1)
  assert diff[0] > 0 and (diff[1:] == 0).all()


@pytest.mark.parametrize('impl', stages.IMPLS)
@pytest.mark.parametrize('adjacency', ['sparse', 'full'])
@pytest.mark.parametrize('gather', ['attention', 'sum'])
def test_flop_count_matches_the_traced_program(adjacency, gather, impl):
  """`space_stage_flops` (the benchmark's GFLOP/s numerator) lies between the matmul
  FLOPs of the traced space stage and all of its FLOPs (elementwise ops included), for
  each implementation (the dense one's count includes its masked pairs)."""
  g = build_graph((1, 2, 3), 6, adjacency=adjacency)
  params = init_space_params(jax.random.key(0), 64, gather=gather)
  nodes = jnp.ones((10, g.num_nodes, 64))
  traced = jax.make_jaxpr(lambda p, x: space_stage(p, g, x, impl=impl))(params, nodes)
  claimed = space_stage_flops(g, params, frames=10, impl=impl)
  assert jaxpr_flops.count(traced, matmuls_only=True) <= claimed <= jaxpr_flops.count(traced)
  if impl == 'dense' and adjacency == 'sparse':  # the masked pairs are counted
    assert claimed > 1.5 * space_stage_flops(g, params, frames=10)


def test_bad_shapes_raise():
  g = build_graph((1, 2), 4)
  params = init_space_params(jax.random.key(0), 8)
  with pytest.raises(ValueError, match='nodes must be'):
    space_stage(params, g, jnp.zeros((3, 7, 8)))
  with pytest.raises(ValueError, match='D=8'):
    space_stage(params, g, jnp.zeros((3, 5, 4)))
  with pytest.raises(ValueError, match='gather'):
    init_space_params(jax.random.key(0), 8, gather='max')


# Between them every variant: both gathers, positional maps, LayerNorm, per-scale update,
# other widths; the sparse graph with all four, the full one with two.
EQUALITY_CASES = [
    ('sparse', dict()),
    ('sparse', dict(gather='sum')),
    ('sparse', dict(positional=True, layer_norm=True, scalewise=True, hidden=24, attn_dim=5)),
    ('sparse', dict(gather='sum', positional=True, layer_norm=True, scalewise=True)),
    ('full', dict()),
    ('full', dict(gather='sum', positional=True, layer_norm=True, scalewise=True)),
]


def _assert_trees_close(got, want, rtol=1e-5):
  """Every leaf of `got` equals `want` within rtol of the leaf's largest magnitude."""
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                          strict=True):
    b = np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('adjacency,variant', EQUALITY_CASES,
                         ids=lambda c: c if isinstance(c, str) else '-'.join(c) or 'default')
def test_dense_impl_equals_segment_values_and_gradients(adjacency, variant):
  """impl="dense" is the same function as impl="segment": outputs and gradients (with
  respect to every parameter, the nodes and the past) agree to 1e-5 of each array's
  scale, with and without the homogeneous schedule's past messages, whole and chunked."""
  g = build_graph((1, 2, 3), 6, adjacency=adjacency)
  params = init_space_params(jax.random.key(0), 16, num_scales=3, **variant)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                        params)
  nodes = jax.random.normal(jax.random.key(1), (2, 5, 14, 16))
  past = jax.random.normal(jax.random.key(2), (2, 5, 14, 16))
  weights = jax.random.normal(jax.random.key(3), (16,))  # a loss that weighs every output

  def run(impl, with_past, chunk):
    def loss(p, x, q):
      y = space_stage(p, g, x, q if with_past else None, impl, frames_per_chunk=chunk)
      return jnp.sum(jnp.sin(y) * weights), y
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, out), grads = grad(params, nodes, past)
    return out, grads

  for with_past, chunk in ((False, None), (True, 3)):
    _assert_trees_close(run('dense', with_past, chunk), run('segment', with_past, chunk))


def test_dense_impl_on_a_node_that_hears_nobody():
  """A one-node graph has no edges: both paths gather nothing (0, then the attention
  bias and ReLU) and agree, with no NaN in the gradients; with a past, the node hears
  only its past."""
  g = build_graph((1,), 2)
  params = init_space_params(jax.random.key(0), 8, layer_norm=True)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                        params)
  nodes = jax.random.normal(jax.random.key(1), (3, 1, 8))
  for past in (None, jax.random.normal(jax.random.key(2), (3, 1, 8))):
    outs = {}
    for impl in stages.IMPLS:
      f = lambda p, x, q, impl=impl: jnp.sum(space_stage(p, g, x, q, impl) ** 2)
      outs[impl] = (jax.jit(lambda p, x, q, impl=impl: space_stage(p, g, x, q, impl))(
                        params, nodes, past),
                    jax.jit(jax.grad(f))(params, nodes, past))
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(outs['dense']))
    _assert_trees_close(outs['dense'], outs['segment'])


def _primitives(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _primitives(sub)


@pytest.mark.parametrize('impl', stages.IMPLS)
def test_dense_impl_has_no_gather_or_scatter_forward_or_backward(impl):
  """The dense path's forward and backward trace no gather and no scatter (the segment
  path, the control, traces both), with past messages and chunked frames."""
  g = build_graph((1, 2, 3), 6)
  params = init_space_params(jax.random.key(0), 8, num_scales=3, positional=True)
  nodes = jnp.zeros((4, 14, 8))
  loss = lambda p, x: jnp.sum(space_stage(p, g, x, x, impl, frames_per_chunk=2) ** 2)
  prims = set(_primitives(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, nodes).jaxpr))
  moved = {p for p in prims if 'gather' in p or 'scatter' in p}
  if impl == 'dense':
    assert not moved, moved
  else:
    assert {'gather', 'scatter-add'} <= moved, prims


def test_auto_picks_dense_for_small_graphs_and_segment_for_the_papers_sparse_one():
  sync_sparse, sync_full = (build_graph((1, 2, 3), 6, a) for a in ('sparse', 'full'))
  paper_sparse, paper_full = (build_graph((1, 2, 3, 4), 14, a) for a in ('sparse', 'full'))
  assert stages.choose_impl(sync_full, dim=64) == 'dense'
  assert stages.choose_impl(sync_sparse, dim=64) == 'dense'
  assert stages.choose_impl(paper_full, dim=512) == 'dense'
  assert stages.choose_impl(paper_sparse, dim=512) == 'segment'
  assert stages.choose_impl(paper_sparse, 'dense', dim=512) == 'dense'
  with pytest.raises(ValueError, match='impl'):
    stages.choose_impl(sync_sparse, 'gather')
  with pytest.raises(ValueError, match='impl'):
    space_stage(init_space_params(jax.random.key(0), 8), sync_sparse, jnp.zeros((14, 8)),
                impl='gather')
