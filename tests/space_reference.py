"""The space stage written from the paper's equations in float64 numpy (a test helper).

Independent of `rstg_jax.stages` (no shared code, no JAX): every (receiver i, sender j)
pair is computed literally, the f_send input is the concatenation [p_j | v_j | v_i | p_i]
and f_space's is [v_i | g_i], and a mask keeps the graph's edges. The homogeneous
schedule's time message is one more sender per receiver: node i's own state at the
previous time step, `past[i]`, with node i's position, through the same f_send and the
same attention softmax as the spatial messages.
"""

import numpy as np

relu = lambda x: np.maximum(x, 0)


def _np(tree):
  if isinstance(tree, dict):
    return {k: _np(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def _layer_norm(x, q):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * q['scale'] + q['bias']


def space_stage(params, graph, nodes, mask=None, past=None):
  """One space stage on nodes [B, N, D]: mask[i, j] says j sends to i (default: the
  graph's edges); `past` [B, N, D] adds node i's time message from past[:, i]."""
  p = _np(params)
  v = np.asarray(nodes, np.float64)                        # [B, N, D]
  b, n, d = v.shape
  if mask is None:
    mask = graph.adjacency_matrix().astype(bool)
  pos = np.asarray(graph.positions, np.float64)
  # Senders of receiver i: the N nodes, then (with a past) its own past state.
  senders = np.broadcast_to(v[:, None, :, :], (b, n, n, d))          # [B, i, j, D]
  sender_pos = np.broadcast_to(pos[None, None], (b, n, n, pos.shape[1]))
  if past is not None:
    past = np.asarray(past, np.float64)
    senders = np.concatenate([senders, past[:, :, None, :]], axis=2)  # j = N: past_i
    own_pos = np.broadcast_to(pos[None, :, None, :], (b, n, 1, pos.shape[1]))
    sender_pos = np.concatenate([sender_pos, own_pos], axis=2)
    mask = np.concatenate([mask, np.ones((n, 1), bool)], axis=1)
  k = senders.shape[2]
  receivers = np.broadcast_to(v[:, :, None, :], (b, n, k, d))
  receiver_pos = np.broadcast_to(pos[None, :, None, :], (b, n, k, pos.shape[1]))
  send = p['send']
  positional = 'w_pos_src' in send
  if positional:
    w1 = np.concatenate([send['w_pos_src'], send['w_src'], send['w_dst'], send['w_pos_dst']])
    inputs = np.concatenate([sender_pos, senders, receivers, receiver_pos], -1)
  else:
    w1 = np.concatenate([send['w_src'], send['w_dst']])
    inputs = np.concatenate([senders, receivers], -1)
  msg = relu(relu(inputs @ w1 + send['b1']) @ send['w2'] + send['b2'])   # [B, i, k, D]
  if 'attn' in p:
    a = p['attn']
    scores = np.einsum('bika,bia->bik', senders @ a['w_src'], v @ a['w_dst'])
    scores = np.where(mask[None], scores / np.sqrt(a['w_src'].shape[1]), -np.inf)
    alpha = np.exp(scores - scores.max(-1, keepdims=True))
    alpha = alpha / alpha.sum(-1, keepdims=True)
    g = relu(np.einsum('bik,bikd->bid', alpha, msg) + a['bias'])
  else:
    g = np.einsum('ik,bikd->bid', mask.astype(np.float64), msg)
  if 'ln_msg' in p:
    g = _layer_norm(g, p['ln_msg'])
  u = p['update']
  out = np.zeros_like(v)
  for i in range(n):
    q = {key: w[graph.node_scale[i]] for key, w in u.items()} if u['w_node'].ndim == 3 else u
    w = np.concatenate([q['w_node'], q['w_msg']], 0)
    x = np.concatenate([v[:, i], g[:, i]], -1)
    out[:, i] = relu(relu(x @ w + q['b1']) @ q['w2'] + q['b2'])
  if 'ln_update' in p:
    out = _layer_norm(out, p['ln_update'])
  return out
