"""What the graph did: the space stage's attention weights and RSTG's records of them.

`space_attention` against a numpy recomputation from the stage's parameters and against
the stage itself (a numpy stage fed these weights gives `space_stage`'s output); the
records `RSTG` sows under `mutable=['intermediates']` against the stages they record,
offline against online, and the normal apply's program unchanged by the recording code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstg_jax import model as model_lib
from rstg_jax.graph import build_graph
from rstg_jax.model import LSTM, RSTG
from rstg_jax.attention import attention_edges, space_attention
from rstg_jax.stages import init_space_params, space_stage
from rstg_jax.syncmnist.rstg_classifier import RSTGClassifier

relu = lambda x: np.maximum(x, 0)
GRAPH = build_graph((1, 2, 3), 6)
RECORDED = ('all_temp', 'one_temp', 'homogeneous', 'space_only')


def _params(key=0, dim=8, **kw):
  params = init_space_params(jax.random.key(key), dim, num_scales=3, **kw)
  # Non-zero biases, so that every parameter matters.
  return jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                      params)


def numpy_attention(params, graph, nodes, past=None):
  """Eq. 4 with a dense N x N (x 2N with past) softmax masked to the edges, float64."""
  a = jax.tree.map(lambda w: np.asarray(w, np.float64), params['attn'])
  v = np.asarray(nodes, np.float64)                       # [B, N, D]
  senders_all = v if past is None else np.concatenate([v, np.asarray(past, np.float64)], 1)
  scores = np.einsum('bik,bjk->bij', v @ a['w_dst'], senders_all @ a['w_src'])
  scores /= np.sqrt(a['w_src'].shape[1])
  n = graph.num_nodes
  mask = np.zeros((n, senders_all.shape[1]), bool)        # mask[i, j]: j sends to i
  mask[graph.receivers, graph.senders] = True
  if past is not None:
    mask[np.arange(n), n + np.arange(n)] = True
  scores = np.where(mask, scores, -np.inf)
  alpha = np.exp(scores - scores.max(-1, keepdims=True))
  alpha /= alpha.sum(-1, keepdims=True)
  senders, receivers = attention_edges(graph, past is not None)
  return alpha[:, receivers, senders]                     # [B, edges]


def numpy_stage_with(params, graph, nodes, alpha, past=None):
  """Paper Eq. 1-5 (no positional maps, LayerNorm or per-scale update) with the given
  per-edge weights in place of the stage's own softmax, float64."""
  p = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
  v = np.asarray(nodes, np.float64)
  src = v if past is None else np.concatenate([v, np.asarray(past, np.float64)], 1)
  senders, receivers = attention_edges(graph, past is not None)
  s = p['send']
  w1 = np.concatenate([s['w_src'], s['w_dst']], 0)
  x = np.concatenate([src[:, senders], v[:, receivers]], -1)    # [B, E, 2D]: [v_j | v_i]
  msg = relu(relu(x @ w1 + s['b1']) @ s['w2'] + s['b2'])
  g = np.zeros_like(v)
  np.add.at(g, (slice(None), receivers), np.asarray(alpha)[..., None] * msg)
  g = relu(g + p['attn']['bias'])
  u = p['update']
  h = relu(v @ u['w_node'] + g @ u['w_msg'] + u['b1'])
  return relu(h @ u['w2'] + u['b2'])


@pytest.mark.parametrize('adjacency', ['sparse', 'full'])
@pytest.mark.parametrize('with_past', [False, True])
def test_weights_sum_to_one_per_receiver_and_equal_a_numpy_recomputation(adjacency,
                                                                         with_past):
  g = build_graph((1, 2, 3), 6, adjacency=adjacency)
  params = _params(attn_dim=5)
  nodes = jax.random.normal(jax.random.key(1), (3, 14, 8))
  past = jax.random.normal(jax.random.key(2), (3, 14, 8)) if with_past else None
  got = np.asarray(jax.jit(space_attention)(params, g, nodes, past))
  assert got.shape == (3, g.num_edges + (14 if with_past else 0))
  _, receivers = attention_edges(g, with_past)
  per_receiver = np.zeros((3, 14))
  np.add.at(per_receiver, (slice(None), receivers), got)
  np.testing.assert_allclose(per_receiver, 1.0, rtol=1e-5)
  np.testing.assert_allclose(got, numpy_attention(params, g, nodes, past), rtol=1e-4,
                             atol=1e-6)
  assert got.std() > 0.01  # not uniform: the comparison tests the scores too


@pytest.mark.parametrize('with_past', [False, True])
def test_they_are_the_weights_the_stage_gathers_with(with_past):
  """Planted bugs caught: a weight on the wrong edge (order), a wrong scale, or the
  time message left out of the softmax change the stage's output here."""
  params = _params()
  nodes = jax.random.normal(jax.random.key(1), (2, 14, 8))
  past = jax.random.normal(jax.random.key(2), (2, 14, 8)) if with_past else None
  alpha = space_attention(params, GRAPH, nodes, past)
  want = np.asarray(space_stage(params, GRAPH, nodes, past))
  np.testing.assert_allclose(numpy_stage_with(params, GRAPH, nodes, alpha, past), want,
                             rtol=2e-4, atol=2e-5)
  # The check has teeth: other weights (uniform per receiver) give another output.
  _, receivers = attention_edges(GRAPH, with_past)
  uniform = 1.0 / np.bincount(receivers)[receivers]
  assert np.abs(numpy_stage_with(params, GRAPH, nodes, uniform, past) - want).max() > 1e-3


def test_sum_gather_has_no_attention_weights():
  with pytest.raises(ValueError, match='gather=.sum.'):
    space_attention(_params(gather='sum'), GRAPH, jnp.zeros((14, 8)))


def _model(schedule, dim=8):
  m = RSTG(GRAPH, dim=dim, num_iters=2, schedule=schedule)
  x = jax.random.normal(jax.random.key(0), (2, 4, 14, dim))
  return m, m.init(jax.random.key(1), x), x


def _records(m, variables, x):
  out, tree = m.apply(variables, x, mutable=['intermediates'])
  return out, tree.get('intermediates', {})


@pytest.mark.parametrize('schedule', RECORDED)
def test_sown_records_equal_what_the_stages_return(schedule):
  m, variables, x = _model(schedule)
  out, rec = _records(m, variables, x)
  p = variables['params']
  assert len(rec['attention']) == len(rec['nodes']) == 2
  lstm = lambda name, a: LSTM(8).apply({'params': p[name]}, a)[1]
  stage_in = x
  for k in range(2):
    if schedule == 'all_temp':
      stage_in = lstm('lstm', stage_in)  # the K internal time stages share weights
    past = None
    if schedule == 'homogeneous':  # frame t also hears its own output at t-1
      past = jnp.pad(rec['nodes'][k][:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
    want_nodes = space_stage(p['space']['space'], GRAPH, stage_in, past)
    want_attn = space_attention(p['space']['space'], GRAPH, stage_in, past)
    np.testing.assert_allclose(rec['nodes'][k], want_nodes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec['attention'][k], want_attn, rtol=1e-5, atol=1e-7)
    stage_in = rec['nodes'][k]
  final = lstm('final_lstm', stage_in) if schedule in ('all_temp', 'one_temp') else stage_in
  np.testing.assert_allclose(out, final, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('schedule', RECORDED)
def test_online_records_equal_offline_records(schedule):
  m, variables, x = _model(schedule)
  _, offline = _records(m, variables, x)
  step = jax.jit(lambda s, xt: m.apply(variables, s, xt, method=RSTG.step,
                                       mutable=['intermediates']))
  state, online = m.initial_state(2), []
  for t in range(x.shape[1]):
    (state, _), rec = step(state, x[:, t])
    online.append(rec['intermediates'])
  for name in ('attention', 'nodes'):
    for k in range(2):  # step t sows iteration k's record as its k-th entry
      got = np.stack([r[name][k] for r in online], 1)
      np.testing.assert_allclose(got, offline[name][k], rtol=1e-4, atol=2e-6)


def test_time_only_and_sum_gather_record_no_attention():
  m, variables, x = _model('time_only')
  assert not _records(m, variables, x)[1]
  m = RSTG(GRAPH, dim=8, num_iters=2, gather='sum')
  _, rec = _records(m, m.init(jax.random.key(1), x), x)
  assert set(rec) == {'nodes'}


@pytest.mark.parametrize('schedule', ['all_temp', 'homogeneous'])
def test_a_normal_apply_traces_the_same_program_as_without_recording(schedule,
                                                                    monkeypatch):
  """Planted bug caught: computing the weights before asking whether 'intermediates'
  is mutable (dead code that stays in the jaxpr and costs time)."""
  m, variables, x = _model(schedule)
  state = m.initial_state(2)
  def programs():
    return (str(jax.make_jaxpr(lambda v, a: m.apply(v, a))(variables, x)),
            str(jax.make_jaxpr(lambda v, s, a: m.apply(v, s, a, method=RSTG.step))(
                variables, state, x[:, 0])))
  normal = programs()
  assert _records(m, variables, x)[1]['attention']  # and asked, it records
  monkeypatch.setattr(model_lib.RSTG, '_record', lambda *args, **kw: None)
  assert programs() == normal


@pytest.mark.parametrize('frames, frame_diff', [(2, False), (1, True)])
def test_online_classifier_logits_are_those_of_the_frames_seen_so_far(frames, frame_diff):
  m = RSTGClassifier(num_classes=5, width=8, dim=16, num_iters=1, frames=frames,
                     frame_diff=frame_diff)
  video = jax.random.uniform(jax.random.key(0), (2, 10, 64, 64, 1))
  variables = m.init(jax.random.key(1), video)
  online, rec = m.apply(variables, video, online=True, mutable=['intermediates'])
  assert online.shape == (2, 10, 5)
  for t in (0, 4, 9):
    np.testing.assert_allclose(online[:, t], m.apply(variables, video[:, :t + 1]),
                               rtol=1e-4, atol=1e-5)
  # One record per frame (K = 1), from RSTG.step.
  assert len(rec['intermediates']['rstg']['attention']) == 10
