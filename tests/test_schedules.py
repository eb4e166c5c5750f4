"""Schedules built by hand from an LSTM and a space stage, with the model's own parameters.

`RSTG` fuses and reorders its work (time-major layout, one input projection over all
frames, unrolled or scanned recurrences); these references do none of that. They run
the paper's recipe literally, frame by frame, in float64 numpy with no code shared with
the model: the textbook LSTM equations and the space stage of tests/space_reference.py
(with the homogeneous schedule's time message as one more sender per node), composed
as each schedule says (Sec. 3.1.1). T = 16 and 32 exercise the `flax.linen.scan` branch
(T > `model._MAX_UNROLL`), which the Something-Something models run; T = 5 the unrolled
one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpr_flops
from space_reference import space_stage as reference_space_stage

from rstg_jax import model as model_lib
from rstg_jax.graph import build_graph
from rstg_jax.model import RSTG

GRAPH = build_graph(scales=(1, 2), feature_size=4)  # 5 nodes
DIM = 8


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def lstm_reference(p, xs):
  """Textbook LSTM over frames. p: {'ih': {kernel, bias}, 'hh': {kernel}}; xs [B, T, N, D]."""
  ih_w, ih_b = (np.asarray(p['ih'][k], np.float64) for k in ('kernel', 'bias'))
  hh_w = np.asarray(p['hh']['kernel'], np.float64)
  xs = np.asarray(xs, np.float64)
  hidden = hh_w.shape[0]
  c = np.zeros(xs.shape[:1] + xs.shape[2:-1] + (hidden,))
  h = np.zeros_like(c)
  out = []
  for t in range(xs.shape[1]):
    gates = xs[:, t] @ ih_w + ih_b + h @ hh_w
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    out.append(h)
  return np.stack(out, axis=1)


def space_reference(space_params, v):
  """One space stage, applied to every frame separately."""
  frames = [reference_space_stage(space_params, GRAPH, v[:, t]) for t in range(v.shape[1])]
  return np.stack(frames, axis=1)


def rstg_reference(params, x, schedule, num_iters):
  """Node states [B, T, N, D] of `schedule`, computed literally from the paper."""
  x = np.asarray(x, np.float64)
  if 'embed' in params:
    x = x @ np.asarray(params['embed']['kernel']) + np.asarray(params['embed']['bias'])
  space = params.get('space', {}).get('space')
  v = x
  if schedule == 'all_temp':  # Alg. 1
    for _ in range(num_iters):
      v = space_reference(space, lstm_reference(params['lstm'], v))
    return lstm_reference(params['final_lstm'], v)
  if schedule == 'time_only':
    for _ in range(num_iters):
      v = lstm_reference(params['lstm'], v)
    return lstm_reference(params['final_lstm'], v)
  if schedule in ('one_temp', 'space_only'):
    for _ in range(num_iters):
      v = space_reference(space, v)
    return v if schedule == 'space_only' else lstm_reference(params['final_lstm'], v)
  assert schedule == 'homogeneous'
  for _ in range(num_iters):
    prev = np.zeros_like(v[:, 0])  # iteration k at t - 1; zeros before the first frame
    frames = []
    for t in range(v.shape[1]):
      prev = reference_space_stage(space, GRAPH, v[:, t], past=prev)
      frames.append(prev)
    v = np.stack(frames, axis=1)
  return v


@pytest.mark.parametrize('num_frames', [5, 16, 32])
@pytest.mark.parametrize('schedule', model_lib.SCHEDULES)
def test_schedule_equals_the_hand_built_reference(schedule, num_frames):
  """Every schedule against the numpy reference. The homogeneous schedule's time
  message is computed here by the reference's own space stage, not by the model's:
  a model that dropped the past from the softmax, or sent node i its current state in
  place of its past one, fails (checked by planting both)."""
  in_dim = DIM if num_frames != 16 else 6  # one case goes through the input projection
  x = jax.random.normal(jax.random.key(num_frames), (2, num_frames, GRAPH.num_nodes, in_dim))
  m = RSTG(GRAPH, dim=DIM, num_iters=2, schedule=schedule,
           positional=schedule != 'time_only')
  variables = m.init(jax.random.key(1), x)
  got = np.asarray(jax.jit(m.apply)(variables, x), np.float64)
  want = rstg_reference(jax.device_get(variables['params']), x, schedule, num_iters=2)
  assert got.shape == want.shape == (2, num_frames, GRAPH.num_nodes, DIM)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('num_frames', [16, 32])
@pytest.mark.parametrize('schedule', ['all_temp', 'one_temp', 'homogeneous', 'time_only'])
def test_online_equals_offline_on_the_scan_path(schedule, num_frames):
  assert num_frames > model_lib._MAX_UNROLL  # pylint: disable=protected-access
  x = jax.random.normal(jax.random.key(2), (2, num_frames, GRAPH.num_nodes, DIM))
  m = RSTG(GRAPH, dim=DIM, num_iters=2, schedule=schedule)
  variables = m.init(jax.random.key(3), x)
  offline = jax.jit(m.apply)(variables, x)
  step = jax.jit(lambda s, f: m.apply(variables, s, f, method=RSTG.step))
  state = m.initial_state(batch_size=2)
  for t in range(num_frames):
    state, out = step(state, x[:, t])
    np.testing.assert_allclose(out, offline[:, t], rtol=1e-4, atol=1e-5,
                               err_msg=f'frame {t}')


@pytest.mark.parametrize('schedule', ['all_temp', 'homogeneous'])
def test_cost_is_linear_in_the_number_of_frames(schedule):
  """The traced program's FLOPs at T = 8, 16, 32 lie on a line (paper: linear in T).

  Counted from the jaxpr (scan bodies times their length) rather than XLA's
  `cost_analysis()`, which counts a while loop's body once (so the scan path looks
  constant in T) and, for unrolled recurrences, grows faster than the work itself.
  T = 16 and 32 run the scan path, T = 8 the unrolled one.
  """
  m = RSTG(GRAPH, dim=DIM, num_iters=2, schedule=schedule, positional=True)
  variables = m.init(jax.random.key(0), jnp.zeros((1, 8, GRAPH.num_nodes, DIM)))
  flops = {t: jaxpr_flops.count(jax.make_jaxpr(m.apply)(
      variables, jnp.ones((2, t, GRAPH.num_nodes, DIM)))) for t in (8, 16, 32)}
  per_frame_a = (flops[16] - flops[8]) / 8
  per_frame_b = (flops[32] - flops[16]) / 16
  assert per_frame_a > 0
  # A term quadratic in T (e.g. attention over all frames) would double the second slope.
  assert per_frame_b == pytest.approx(per_frame_a, rel=0.01), flops
  # And the count is the work of T frames, not of one: 32 frames cost > 3.5x 8 frames.
  assert flops[32] > 3.5 * flops[8], flops
