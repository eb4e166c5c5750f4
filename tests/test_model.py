"""Time stage, schedules, readouts and the online mode."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstg_jax.graph import build_graph
from rstg_jax.model import LSTM, RSTG, SCHEDULES, RSTGToMap, rstg_to_vec

GRAPH = build_graph((1, 2, 3), 6)
CASES = [(s, False) for s in SCHEDULES] + [('all_temp', True), ('homogeneous', True)]


def _inputs(c=12, t=4):
  return jax.random.normal(jax.random.key(0), (2, t, GRAPH.num_nodes, c))


def _init(model, x):
  return model.init(jax.random.key(1), x)


@pytest.mark.parametrize('schedule,positional', CASES)
def test_online_equals_offline(schedule, positional):
  # LayerNorm and per-scale updates on for one schedule only: compiling is the cost.
  extras = schedule == 'all_temp' and not positional
  model = RSTG(GRAPH, dim=8, num_iters=2, schedule=schedule, positional=positional,
               scalewise=extras, layer_norm=extras)
  x = _inputs()
  variables = _init(model, x)
  offline = model.apply(variables, x)
  step = jax.jit(lambda s, xt: model.apply(variables, s, xt, method=RSTG.step))
  state, outs = model.initial_state(x.shape[0]), []
  for t in range(x.shape[1]):
    state, out = step(state, x[:, t])
    outs.append(out)
  np.testing.assert_allclose(jnp.stack(outs, 1), offline, rtol=1e-4, atol=2e-5)


def test_schedules_differ_and_have_finite_gradients():
  x = _inputs()
  outs = {}
  for schedule, positional in CASES:
    model = RSTG(GRAPH, dim=8, num_iters=2, schedule=schedule, positional=positional)
    variables = _init(model, x)
    loss = lambda p: jnp.sum(rstg_to_vec(model.apply({'params': p}, x)) ** 2)
    value, grads = jax.value_and_grad(loss)(variables['params'])
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in leaves), schedule
    # Every parameter the schedule created receives gradient.
    assert all(np.abs(g).max() > 0 for g in leaves), (schedule, positional)
    outs[(schedule, positional)] = np.asarray(model.apply(variables, x))
  for a, b in itertools.combinations(outs, 2):
    assert np.abs(outs[a] - outs[b]).max() > 1e-4, (a, b)


def test_parameter_sets_per_schedule():
  x = _inputs(c=8)
  names = lambda s: set(_init(RSTG(GRAPH, dim=8, num_iters=2, schedule=s), x)['params'])
  assert names('all_temp') == {'space', 'lstm', 'final_lstm'}
  assert names('one_temp') == {'space', 'final_lstm'}
  assert names('time_only') == {'lstm', 'final_lstm'}
  assert names('space_only') == names('homogeneous') == {'space'}
  # Inputs of another size are projected to D first.
  assert 'embed' in _init(RSTG(GRAPH, dim=8, schedule='all_temp'), _inputs(c=12))['params']


def test_messages_flow_only_where_the_schedule_sends_them():
  x = _inputs(c=8)
  for schedule, crosses in [('time_only', False), ('all_temp', True), ('one_temp', True)]:
    model = RSTG(GRAPH, dim=8, num_iters=2, schedule=schedule)
    variables = _init(model, x)
    base = model.apply(variables, x)
    moved = model.apply(variables, x.at[:, :, 7].add(1.0))
    diff = np.abs(np.asarray(moved - base)).max(axis=(0, 1, 3))
    others = np.delete(diff, 7)
    assert diff[7] > 0
    assert (others.max() > 0) == crosses, schedule


def test_recurrence_is_causal():
  # Changing frame 3 leaves frames 0..2 untouched, in every schedule.
  x = _inputs()
  for schedule in SCHEDULES:
    model = RSTG(GRAPH, dim=8, num_iters=2, schedule=schedule)
    variables = _init(model, x)
    base = model.apply(variables, x)
    moved = model.apply(variables, x.at[:, 3].add(1.0))
    np.testing.assert_array_equal(moved[:, :3], base[:, :3])
    assert np.abs(np.asarray(moved[:, 3:] - base[:, 3:])).max() > 0, schedule


def test_space_only_weighs_every_frame_equally():
  # The paper's space-only: space stages per frame, "an average pool across time" (the
  # readout's mean). Frame t's states depend on frame t only, so permuting the frames
  # permutes the states and leaves the video vector unchanged.
  x = _inputs(c=8, t=5)
  model = RSTG(GRAPH, dim=8, num_iters=2, schedule='space_only')
  variables = _init(model, x)
  per_frame = model.apply(variables, x, method=lambda m, v: m.space(m.space(v)))
  out = model.apply(variables, x)
  np.testing.assert_allclose(out, per_frame, rtol=1e-5, atol=1e-6)
  perm = np.array([3, 0, 4, 2, 1])
  shuffled = model.apply(variables, x[:, perm])
  np.testing.assert_allclose(shuffled, out[:, perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rstg_to_vec(shuffled), rstg_to_vec(out), rtol=1e-5, atol=1e-5)
  assert model.initial_state(2) == {}


def test_lstm_matches_the_textbook_equations():
  lstm = LSTM(4)
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))
  variables = lstm.init(jax.random.key(1), x)
  _, hs = lstm.apply(variables, x)
  p = jax.tree.map(np.asarray, variables['params'])
  sig = lambda z: 1 / (1 + np.exp(-z))
  c = h = np.zeros((2, 5, 4))
  for t in range(3):
    z = np.asarray(x[:, t]) @ p['ih']['kernel'] + p['ih']['bias'] + h @ p['hh']['kernel']
    i, f, g, o = np.split(z, 4, -1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    np.testing.assert_allclose(hs[:, t], h, rtol=1e-5, atol=1e-6)


def test_rstg_to_vec():
  states = jax.random.normal(jax.random.key(0), (2, 4, 14, 3))
  np.testing.assert_allclose(rstg_to_vec(states),
                             np.asarray(states).mean(1).sum(1), rtol=1e-6)


def test_rstg_to_map_starts_as_identity_and_learns_its_scale():
  g = build_graph((1, 2, 3), (7, 5))
  block = RSTGToMap(g, dim=8, rstg=dict(num_iters=1))
  x = jax.random.normal(jax.random.key(0), (2, 3, 7, 5, 12))
  variables = block.init(jax.random.key(1), x)
  np.testing.assert_array_equal(block.apply(variables, x), x)
  assert variables['params']['proj_in']['kernel'].shape == (12, 8)
  loss = lambda p: jnp.sum(block.apply({'params': p}, x) * x[..., ::-1])
  grads = jax.grad(loss)(variables['params'])
  assert np.abs(grads['residual_scale']) > 0
  p = dict(variables['params'], residual_scale=jnp.ones(()))
  assert np.abs(np.asarray(block.apply({'params': p}, x) - x)).max() > 1e-3


def test_bad_configuration_errors():
  x = _inputs()
  with pytest.raises(ValueError, match='all_temp, one_temp, homogeneous, space_only, time_only'):
    _init(RSTG(GRAPH, schedule='two_temp'), x)
  with pytest.raises(ValueError, match='positional'):
    _init(RSTG(GRAPH, schedule='time_only', positional=True), x)
  with pytest.raises(ValueError, match='N=14'):
    _init(RSTG(GRAPH, dim=8), jnp.zeros((2, 5, 13, 8)))
