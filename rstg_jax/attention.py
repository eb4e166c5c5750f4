"""The attention weights of a space stage, for looking inside the model.

`space_attention` recomputes, from a stage's parameters and its input, the weights
alpha_ij with which `rstg_jax.stages.space_stage` gathers its messages (paper Eq. 4), one
per directed edge in the graph's sender/receiver order (`attention_edges`). `RSTG` sows
them per iteration when asked (`rstg_jax.model`), and `python -m rstg_jax.explain` draws
them over the video.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from rstg_jax.graph import RSTGGraph


def attention_edges(graph: RSTGGraph, past: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(senders, receivers) in the order of `space_attention`'s last axis.

  The graph's directed edges (`graph.senders`, `graph.receivers`, 2E for the sparse
  graph); with `past`, N more: sender N + i is node i's own state at the previous time
  step, received by node i (the homogeneous schedule's time messages).
  """
  if not past:
    return graph.senders, graph.receivers
  n = graph.num_nodes
  own = np.arange(n, dtype=np.int32)
  return (np.concatenate([graph.senders, n + own]),
          np.concatenate([graph.receivers, own]))


def space_attention(params: dict, graph: RSTGGraph, nodes: jax.Array,
                    past: jax.Array | None = None) -> jax.Array:
  """The attention weights with which one space stage gathers its messages.

  alpha_ij = softmax over the edges j -> i into receiver i of <W_a1 v_j, W_a2 v_i> / sqrt(A)
  (paper Eq. 4), the weights `space_stage` applies to the messages it sums.

  Args:
    params: the stage's parameters (`init_space_params(..., gather='attention')`).
    graph: the static `RSTGGraph` of one frame.
    nodes: node features [..., N, D], the stage's input.
    past: as in `space_stage`: with it, every node also attends to its own past state.

  Returns:
    [..., 2E] weights, one per directed edge in `graph.senders` / `graph.receivers`
    order, or [..., 2E + N] with `past` (`attention_edges` gives the order); the
    weights into each receiver sum to 1.
  """
  if 'attn' not in params:
    raise ValueError("these space-stage parameters gather messages by sum (gather='sum'): "
                     'they have no attention weights')
  n = graph.num_nodes
  if nodes.ndim < 2 or nodes.shape[-2] != n:
    raise ValueError(f'nodes must be [..., {n}, D] for this graph ({graph}), '
                     f'got shape {nodes.shape}')
  if past is not None and past.shape != nodes.shape:
    raise ValueError(f'past must have the shape of nodes {nodes.shape}, got {past.shape}')
  attn = params['attn']
  keys = nodes @ attn['w_src']
  if past is not None:
    keys = jnp.concatenate([keys, past @ attn['w_src']], axis=-2)
  queries = nodes @ attn['w_dst']
  senders, receivers = attention_edges(graph, past is not None)
  scale = 1.0 / math.sqrt(attn['w_src'].shape[-1])
  logits = jnp.sum(keys[..., senders, :] * queries[..., receivers, :], axis=-1) * scale
  # The segment ops run over the leading axis: edges first, then back to the end.
  alpha = jraph.segment_softmax(jnp.moveaxis(logits, -1, 0), jnp.asarray(receivers), n)
  return jnp.moveaxis(alpha, 0, -1)
