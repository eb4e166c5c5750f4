"""The RSTG space processing stage as a pure function of arrays.

One space stage (paper Sec. 2.1) on node features v [..., N, D]:

  send    m_ij = MLP_s([p_j | v_j | v_i | p_i])          for every edge j -> i
  gather  g_i  = sum_j alpha_ij m_ij,  alpha = softmax_j(<W_a1 v_j, W_a2 v_i> / sqrt(A))
          (attention, followed by a learned bias and ReLU, as in the authors' code)
          or g_i = sum_j m_ij ("sum")
  update  v'_i = MLP_u([v_i | g_i])   (optionally one parameter set per scale)

with MLP(x) = relu(W2 relu(W1 x + b1) + b2) (Eq. 2) and p the 6x6 positional maps
when positional messages are on. Optional LayerNorms after the gathered messages and
after the update.

Two implementations of the send and gather, equal in values and gradients (`impl`):

  segment  exactly one message per directed edge (2E for the paper's graph) with jraph's
           segment ops; nothing of size N x N is ever formed. The first layer of f_send
           is linear in [v_j | v_i], so it is applied once per node and gathered per
           edge; the attention projections are per node too. Only the second f_send
           layer is per edge, a single large matmul.
  dense    every (receiver, sender) pair of N x N by broadcasting the same per-node
           projections, the non-edges masked out of the softmax or sum: no gather and
           no scatter-add, forward or backward, at the cost of N^2 instead of 2E second
           layers. On XLA:CPU the gathers fused into elementwise loops and their
           scatter-add gradients cost more than the extra pairs for SyncMNIST's 14
           nodes (docs/benchmarks.md); "auto" (`choose_impl`) picks it for small
           graphs that are not much sparser than full.

The variant is read off the parameter pytree (positional maps if `send` has `w_pos_src`,
attention if `attn` is present, LayerNorm if `ln_msg` is present, per-scale update if
the update weights have a leading scale axis), so `jax.jit(space_stage)` needs no static
arguments. Make parameters with `init_space_params` or the Flax `SpaceStage` module.

Example:
  graph = build_graph((1, 2, 3), feature_size=6)
  params = init_space_params(jax.random.key(0), dim=64, num_scales=len(graph.scales))
  out = jax.jit(space_stage)(params, graph, nodes)   # nodes [B, T, 14, 64]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from rstg_jax.graph import POSITION_GRID, RSTGGraph

GATHERS = ('attention', 'sum')
_LN_EPS = 1e-6
# "auto" chunking keeps each [2E, frames, D] edge tensor at or under this many floats
# (72 MB): 128 frames of the 30-node, 274-message graph at D = 512, the chunk with which
# the graph benchmark's time became linear in T; at D = 64 a SyncMNIST batch (320
# frames, 90 messages) runs in one piece.
EDGE_FLOATS_PER_CHUNK = 274 * 128 * 512
# The dense path's [frames, N, N, D] pair tensors are chunked far smaller, to stay in
# cache: at most this many (frame, receiver, sender) rows per chunk, 32 frames of the
# 14-node graph, which ran fastest at D = 64 (24-64 frames within 5%); 4-8 frames of the
# 30-node graph ran fastest at D = 512 (docs/benchmarks.md).
DENSE_PAIRS_PER_CHUNK = 32 * 14 * 14
# "auto" runs the dense path on graphs of at most this many nodes ...
DENSE_MAX_NODES = 32
IMPLS = ('segment', 'dense')


def dense_max_pairs_per_message(dim: int) -> float:
  """... whose N x N pairs are at most this many per message (N^2 / 2E), at width D."""
  return 2.5 if dim <= 128 else 1.25


def _dense_init(key, fan_in, shape, dtype):
  # LeCun normal, as Flax's Dense default: keeps activations O(1) through the MLPs.
  return (jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)).astype(dtype)


def init_space_params(key, dim: int, *, hidden: int | None = None,
                      attn_dim: int | None = None, gather: str = 'attention',
                      positional: bool = False, layer_norm: bool = False,
                      scalewise: bool = False, num_scales: int = 1,
                      dtype=jnp.float32) -> dict:
  """Parameters of one space stage (shared by its K iterations and all frames).

  Args:
    key: PRNG key.
    dim: node feature size D (input and output).
    hidden: width of the hidden layer of f_send and f_space (default D).
    attn_dim: size of the attention projections (default D).
    gather: "attention" or "sum".
    positional: add the 6x6 positional maps of both nodes to the input of f_send.
    layer_norm: LayerNorm after the gathered messages and after the update.
    scalewise: one set of update parameters per scale (leading axis num_scales).
    num_scales: number of scales of the graph (used when scalewise).
    dtype: parameter dtype.

  Returns:
    A nested dict of arrays (see the module docstring for the roles).
  """
  if gather not in GATHERS:
    raise ValueError(f"unknown gather {gather!r}; valid: {', '.join(GATHERS)}")
  m = hidden or dim
  a = attn_dim or dim
  p_dim = POSITION_GRID * POSITION_GRID
  keys = iter(jax.random.split(key, 12))
  send_fan_in = 2 * dim + (2 * p_dim if positional else 0)
  send = {
      'w_src': _dense_init(next(keys), send_fan_in, (dim, m), dtype),
      'w_dst': _dense_init(next(keys), send_fan_in, (dim, m), dtype),
      'b1': jnp.zeros((m,), dtype),
      'w2': _dense_init(next(keys), m, (m, dim), dtype),
      'b2': jnp.zeros((dim,), dtype),
  }
  if positional:
    send['w_pos_src'] = _dense_init(next(keys), send_fan_in, (p_dim, m), dtype)
    send['w_pos_dst'] = _dense_init(next(keys), send_fan_in, (p_dim, m), dtype)
  lead = (num_scales,) if scalewise else ()
  update = {
      'w_node': _dense_init(next(keys), 2 * dim, lead + (dim, m), dtype),
      'w_msg': _dense_init(next(keys), 2 * dim, lead + (dim, m), dtype),
      'b1': jnp.zeros(lead + (m,), dtype),
      'w2': _dense_init(next(keys), m, lead + (m, dim), dtype),
      'b2': jnp.zeros(lead + (dim,), dtype),
  }
  params = {'send': send, 'update': update}
  if gather == 'attention':
    params['attn'] = {
        'w_src': _dense_init(next(keys), dim, (dim, a), dtype),
        'w_dst': _dense_init(next(keys), dim, (dim, a), dtype),
        'bias': jnp.zeros((dim,), dtype),
    }
  if layer_norm:
    for name in ('ln_msg', 'ln_update'):
      params[name] = {'scale': jnp.ones((dim,), dtype), 'bias': jnp.zeros((dim,), dtype)}
  return params


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + _LN_EPS) * p['scale'] + p['bias']


def _update(p, graph, x, g, node_axis=0):
  """f_space on x, g with nodes on `node_axis` ([N, B, D] or [B, N, D])."""
  def mlp(q, xs, gs):
    h = jax.nn.relu(xs @ q['w_node'] + gs @ q['w_msg'] + q['b1'])
    return jax.nn.relu(h @ q['w2'] + q['b2'])
  if p['w_node'].ndim == 2:
    return mlp(p, x, g)
  if p['w_node'].shape[0] != len(graph.scales):
    raise ValueError(f"scalewise update parameters are for {p['w_node'].shape[0]} scales "
                     f'but the graph has {len(graph.scales)}')
  # Nodes are contiguous per scale: one matmul per scale, no per-node weight gather.
  at = lambda a, sl: a[(slice(None),) * node_axis + (sl,)]
  return jnp.concatenate(
      [mlp(jax.tree.map(lambda w: w[k], p), at(x, sl), at(g, sl))
       for k, sl in enumerate(graph.scale_slices)], axis=node_axis)


def _message_pass(params, x, senders, receivers, positions, num_receivers, sorted_ids):
  """Send + gather on node-major features x [M, B, D] (M >= num_receivers).

  Returns the gathered messages [num_receivers, B, D].
  """
  send = params['send']
  # First f_send layer, split by linearity into a per-sender and a per-receiver part.
  src = x @ send['w_src']
  dst = x[:num_receivers] @ send['w_dst'] + send['b1']
  if 'w_pos_src' in send:
    pos = jnp.asarray(positions, x.dtype)
    src = src + (pos @ send['w_pos_src'])[:, None, :]
    dst = dst + (pos[:num_receivers] @ send['w_pos_dst'])[:, None, :]
  hidden = jax.nn.relu(src[senders] + dst[receivers])               # [E, B, M]
  messages = jax.nn.relu(hidden @ send['w2'] + send['b2'])          # [E, B, D]
  if 'attn' in params:
    attn = params['attn']
    k = x @ attn['w_src']
    q = x[:num_receivers] @ attn['w_dst']
    scale = 1.0 / math.sqrt(attn['w_src'].shape[-1])
    logits = jnp.sum(k[senders] * q[receivers], axis=-1) * scale    # [E, B]
    alpha = jraph.segment_softmax(logits, receivers, num_receivers,
                                  indices_are_sorted=sorted_ids)
    gathered = jraph.segment_sum(messages * alpha[..., None], receivers, num_receivers,
                                 indices_are_sorted=sorted_ids)
    gathered = jax.nn.relu(gathered + attn['bias'])
  else:
    gathered = jraph.segment_sum(messages, receivers, num_receivers,
                                 indices_are_sorted=sorted_ids)
  return gathered


def _dense_message_pass(params, x, past, mask, positions):
  """Send + gather over all N x N (receiver i, sender j) pairs of frame-major x [B, N, D].

  `mask` [N, N] (numpy bool) marks the graph's edges; the other pairs (the diagonal
  included) are computed and dropped by the softmax or the masked sum, so nothing is
  gathered or scattered, forward or backward. `past` [B, N, D] (or None) adds the
  homogeneous schedule's message from past[:, i] to node i. Returns [B, N, D].
  """
  send = params['send']
  src = x @ send['w_src']
  dst = x @ send['w_dst'] + send['b1']
  pos_src = 0.0
  if 'w_pos_src' in send:
    pos = jnp.asarray(positions, x.dtype)
    pos_src = pos @ send['w_pos_src']
    src = src + pos_src
    dst = dst + pos @ send['w_pos_dst']
  f_send = lambda h: jax.nn.relu(jax.nn.relu(h) @ send['w2'] + send['b2'])
  messages = f_send(dst[:, :, None] + src[:, None, :])                # [B, i, j, D]
  edges = jnp.asarray(mask)
  if past is not None:
    past_messages = f_send(dst + past @ send['w_src'] + pos_src)      # [B, N, D]
  if 'attn' not in params:
    gathered = jnp.sum(jnp.where(edges[..., None], messages, 0.0), axis=2)
    return gathered if past is None else gathered + past_messages
  attn = params['attn']
  q = x @ attn['w_dst']
  scale = 1.0 / math.sqrt(attn['w_src'].shape[-1])
  logits = jnp.einsum('bja,bia->bij', x @ attn['w_src'], q) * scale
  logits = jnp.where(edges, logits, -jnp.inf)
  # Softmax over each receiver's senders (and its past), shifted by their maximum; the
  # shift is a constant of the softmax, so it carries no gradient.
  top = jnp.max(logits, axis=-1)
  if past is not None:
    past_logits = jnp.sum((past @ attn['w_src']) * q, axis=-1) * scale  # [B, N]
    top = jnp.maximum(top, past_logits)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  weights = jnp.exp(logits - top[..., None])                          # 0 off the edges
  total = jnp.sum(weights, axis=-1)
  gathered = jnp.sum(weights[..., None] * messages, axis=2)
  if past is not None:
    past_weights = jnp.exp(past_logits - top)
    total = total + past_weights
    gathered = gathered + past_weights[..., None] * past_messages
  # A node that hears nobody (no edges, no past) gathers 0, as in the segment path.
  gathered = gathered / jnp.where(total > 0, total, 1.0)[..., None]
  return jax.nn.relu(gathered + attn['bias'])


def choose_impl(graph: RSTGGraph, impl: str = 'auto', dim: int = 64,
                backend: str | None = None) -> str:
  """The message passing `space_stage` runs: "segment" or "dense" (see IMPLS).

  "auto" picks "dense" for graphs of at most `DENSE_MAX_NODES` nodes whose N x N pairs
  are at most `dense_max_pairs_per_message(dim)` per message of the graph, and
  "segment" otherwise; `backend` (default: JAX's) is accepted for a per-backend rule
  but every backend follows the CPU measurements (docs/benchmarks.md) for now.
  """
  if impl not in IMPLS + ('auto',):
    raise ValueError(f"unknown space-stage impl {impl!r}; valid: auto, {', '.join(IMPLS)}")
  if impl != 'auto':
    return impl
  del backend  # Only CPU has been measured; no other backend has its own rule yet.
  n, e = graph.num_nodes, max(graph.num_edges, 1)
  small = n <= DENSE_MAX_NODES and n * n <= dense_max_pairs_per_message(dim) * e
  return 'dense' if small else 'segment'


def space_stage(params: dict, graph: RSTGGraph, nodes: jax.Array,
                past: jax.Array | None = None, impl: str = 'auto', *,
                frames_per_chunk: int | str | None = 'auto') -> jax.Array:
  """One space processing stage (send, gather, update) on every frame.

  Args:
    params: from `init_space_params` (or the `SpaceStage` module's variables).
    graph: the static `RSTGGraph` of one frame.
    nodes: node features [..., N, D]; any leading axes (batch, time, ...).
    past: optional [..., N, D], used by the homogeneous schedule: node i also receives
      a message from `past[..., i, :]` (its own state at the previous time step),
      computed by the same f_send and attention as the spatial messages.
    impl: "segment" (one message per directed edge, gathered and scattered with jraph's
      segment ops), "dense" (every N x N pair by broadcasting, the non-edges masked: no
      gather, no scatter) or "auto" (`choose_impl`). The same function either way.
    frames_per_chunk: frames (products of the leading axes) processed at once; more are
      processed chunk by chunk with `lax.map`, so the per-edge (or per-pair) tensors
      stay cache-sized and time stays linear in the number of frames. "auto": as many
      frames as keep such a tensor under `EDGE_FLOATS_PER_CHUNK` floats (under
      `DENSE_PAIRS_PER_CHUNK` pairs for "dense"), in chunks of equal size; None: all
      at once. The dense path recomputes a chunk's forward pass in its backward pass.

  Returns:
    Updated node features [..., N, D].
  """
  n, d = graph.num_nodes, nodes.shape[-1]
  if nodes.ndim < 2 or nodes.shape[-2] != n:
    raise ValueError(f'nodes must be [..., {n}, D] for this graph ({graph}), '
                     f'got shape {nodes.shape}')
  if params['send']['w_src'].shape[0] != d:
    raise ValueError(f"parameters are for D={params['send']['w_src'].shape[0]} but nodes "
                     f'have D={d}')
  if past is not None and past.shape != nodes.shape:
    raise ValueError(f'past must have the shape of nodes {nodes.shape}, got {past.shape}')
  impl = choose_impl(graph, impl, d)
  lead = nodes.shape[:-2]
  flat = nodes.reshape((-1, n, d))
  flat_past = None if past is None else past.reshape((-1, n, d))
  frames = flat.shape[0]
  if frames_per_chunk == 'auto':
    frames_per_chunk = _auto_chunk(graph, frames, d, with_past=past is not None, impl=impl)
  elif frames_per_chunk is not None and (isinstance(frames_per_chunk, str)
                                         or frames_per_chunk < 1):
    raise ValueError(f"frames_per_chunk must be 'auto', None or a positive int, got "
                     f'{frames_per_chunk!r}')
  stage = lambda x, p: _stage_frames(params, graph, x, p, impl)
  if impl == 'dense' and frames_per_chunk and frames > frames_per_chunk:
    # Each chunk's forward is recomputed in the backward pass rather than its pair
    # tensors stacked for all chunks, so that they stay in cache: 1.4x faster on CPU.
    stage = jax.checkpoint(stage)
  if not frames_per_chunk or frames <= frames_per_chunk:
    out = stage(flat, flat_past)
  else:
    chunks = -(-frames // frames_per_chunk)
    def split(a):  # [frames, N, D] -> [chunks, frames_per_chunk, N, D], zero-padded
      a = jnp.pad(a, ((0, chunks * frames_per_chunk - frames), (0, 0), (0, 0)))
      return a.reshape((chunks, frames_per_chunk, n, d))
    if flat_past is None:
      out = jax.lax.map(lambda x: stage(x, None), split(flat))
    else:
      out = jax.lax.map(lambda xp: stage(*xp), (split(flat), split(flat_past)))
    out = out.reshape((-1, n, d))[:frames]
  return out.reshape(lead + (n, d))


def _auto_chunk(graph: RSTGGraph, frames: int, d: int, with_past: bool,
                impl: str = 'segment') -> int:
  """Frames per chunk for "auto": under the tensor budget, chunks of equal size."""
  n = graph.num_nodes
  if impl == 'dense':
    most = max(1, DENSE_PAIRS_PER_CHUNK // (n * n + (n if with_past else 0)))
  else:
    rows = graph.senders.shape[0] + (n if with_past else 0)
    most = max(1, EDGE_FLOATS_PER_CHUNK // max(1, rows * d))
  chunks = -(-frames // most)
  return -(-frames // chunks)  # the fewest chunks; less than one padded frame per chunk


def _stage_frames(params, graph, flat, flat_past, impl):
  """space_stage on [frames, N, D] (and past of the same shape, or None)."""
  n = graph.num_nodes
  if impl == 'dense':
    gathered = _dense_message_pass(params, flat, flat_past, graph.adjacency_matrix() > 0,
                                   graph.positions)
    if 'ln_msg' in params:
      gathered = _layer_norm(gathered, params['ln_msg'])
    out = _update(params['update'], graph, flat, gathered, node_axis=1)
    return _layer_norm(out, params['ln_update']) if 'ln_update' in params else out
  # Node-major layout [N, B, D]: an edge gather/scatter moves one contiguous B*D slab.
  x = flat.swapaxes(0, 1)
  if flat_past is None:
    gathered = _message_pass(params, x, graph.senders, graph.receivers, graph.positions,
                             n, sorted_ids=True)
  else:
    xp = jnp.concatenate([x, flat_past.swapaxes(0, 1)], axis=0)
    senders, receivers = _with_time_edges(graph)
    gathered = _message_pass(params, xp, senders, receivers,
                             np.concatenate([graph.positions, graph.positions]), n,
                             sorted_ids=True)
  if 'ln_msg' in params:
    gathered = _layer_norm(gathered, params['ln_msg'])
  out = _update(params['update'], graph, x, gathered)
  if 'ln_update' in params:
    out = _layer_norm(out, params['ln_update'])
  return out.swapaxes(0, 1)


def _with_time_edges(graph: RSTGGraph):
  """Spatial edges plus one edge (N + i) -> i per node, sorted by receiver."""
  n = graph.num_nodes
  senders = np.concatenate([graph.senders, n + np.arange(n, dtype=np.int32)])
  receivers = np.concatenate([graph.receivers, np.arange(n, dtype=np.int32)])
  order = np.lexsort((senders, receivers))
  return senders[order], receivers[order]


def space_stage_flops(graph: RSTGGraph, params: dict, frames: int = 1,
                      impl: str = 'segment') -> int:
  """FLOPs of one forward space stage on `frames` frames.

  Counts multiply-adds as 2 FLOPs; elementwise activations are omitted. "segment" (the
  default) counts only the work the algorithm needs: per-node projections, one second-
  layer f_send matmul per directed edge, attention scores and the weighted sum per
  edge, and the update MLP. "dense" counts what the dense path does: the same with all
  N x N pairs in place of the edges, the masked ones (and the diagonal) included, so
  that GFLOP/s of the two paths compare at equal work per pair.
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown space-stage impl {impl!r}; valid: {', '.join(IMPLS)}")
  n = graph.num_nodes
  e = n * n if impl == 'dense' else graph.num_edges
  d, m = params['send']['w_src'].shape
  f = 2 * n * d * m * 2              # first f_send layer, per node (src and dst parts)
  f += e * m                         # per-edge sum of the two parts
  f += 2 * e * m * d                 # second f_send layer, per edge
  if 'attn' in params:
    a = params['attn']['w_src'].shape[-1]
    f += 2 * n * d * a * 2 + 2 * e * a + 2 * e * d
  else:
    f += e * d
  f += 2 * n * (2 * d) * m + 2 * n * m * d   # update MLP
  return int(f * frames)
