"""RSTG time stage, schedules, readouts and the online mode, as Flax modules.

`RSTG` maps node features [B, T, N, C] to node states [B, T, N, D]. A schedule decides
how space stages (`rstg_jax.stages.space_stage`) and time stages (an LSTM per node,
weights shared across nodes) alternate; the names are the paper's ablations
(Sec. 3.1.1):

  all_temp     Alg. 1: for k < K: time stage, then space stage; then a final time
               stage. One LSTM's weights serve the K internal time stages, each
               keeping its own memory; the final time stage has its own LSTM.
  one_temp     per frame K successive space stages, then a single time stage.
  homogeneous  no LSTM: time messages come from the same f_send/attention/f_space as
               space messages (node i at time t, iteration k, also receives a message
               from its own state at t-1, iteration k), K iterations.
  space_only   K space stages per frame and no recurrence: frame t's states depend on
               frame t only. The paper's "average pool across time" is the readout's
               mean over frames (`rstg_to_vec`), which weighs every frame equally, so
               the video vector does not depend on the order of the frames.
  time_only    only time stages (K shared-weight ones and the final one); no messages
               between nodes.

Positional messages (`positional=True`) add the 6x6 position maps to f_send; the
paper's best SyncMNIST model is all_temp with positional maps.

The offline pass runs layer by layer (all T frames of iteration k before iteration
k+1), so every space stage is batched over all frames and the LSTM's input projection
is one matmul over all frames outside `flax.linen.scan`. The online mode (`step`)
consumes one frame at a time; both give the same numbers because step k at time t
needs only iteration k-1 at time t and iteration k at time t-1.

Readouts: `rstg_to_vec` (mean over time, sum over nodes) and `RSTGToMap` (nodes resized
back to the feature map and added as x + s * LayerNorm(graph(x)), s initialised to 0).

What the graph did: applied with `mutable=['intermediates']`, `RSTG` records every space
stage, offline and in `step` (see `RSTG`); otherwise it records nothing and computes
nothing more.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rstg_jax import stages
from rstg_jax.graph import RSTGGraph, pool_nodes, unpool_nodes

SCHEDULES = ('all_temp', 'one_temp', 'homogeneous', 'space_only', 'time_only')
# Recurrences over at most this many frames are fully unrolled (SyncMNIST's T = 10).
_MAX_UNROLL = 12


def check_schedule(schedule: str) -> None:
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown RSTG schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


# The ablations of the paper's tables (both tasks' `config.ablation`): the schedules,
# plus "positional" = all_temp with positional maps.
ABLATIONS = ('all_temp', 'one_temp', 'homogeneous', 'space_only', 'time_only', 'positional')


def ablation_to_core_args(ablation: str) -> dict:
  """The (schedule, positional) pair of `RSTG` that an ablation name stands for.

  "positional" is all_temp with positional maps in f_send (the paper's best 5SyncMNIST
  model); every other ablation is the core schedule of the same name.
  """
  if ablation == 'positional':
    return dict(schedule='all_temp', positional=True)
  if ablation in ABLATIONS and ablation in SCHEDULES:
    return dict(schedule=ablation, positional=False)
  raise ValueError(f"unknown RSTG ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")


class SpaceStage(nn.Module):
  """Flax wrapper that creates the space stage's parameters and calls `space_stage`.

  Attributes:
    graph: the static RSTGGraph.
    dim: node feature size D.
    hidden: hidden width of f_send / f_space (default D).
    gather: "attention" or "sum".
    positional: positional maps in f_send.
    layer_norm: LayerNorm after messages and after the update.
    scalewise: one set of update parameters per scale.
  """
  graph: RSTGGraph
  dim: int
  hidden: int | None = None
  gather: str = 'attention'
  positional: bool = False
  layer_norm: bool = False
  scalewise: bool = False

  def setup(self):
    self.params_tree = self.param(
        'space', lambda key: stages.init_space_params(
            key, self.dim, hidden=self.hidden, gather=self.gather,
            positional=self.positional, layer_norm=self.layer_norm,
            scalewise=self.scalewise, num_scales=len(self.graph.scales)))

  def __call__(self, nodes, past=None):
    return stages.space_stage(self.params_tree, self.graph, nodes, past=past)

  def attention(self, nodes, past=None):
    """The weights this stage gathers with on `nodes` (`stages.space_attention`)."""
    return stages.space_attention(self.params_tree, self.graph, nodes, past=past)


class LSTM(nn.Module):
  """LSTM applied to every node independently, weights shared across nodes.

  `__call__` runs a whole sequence [B, T, N, Din]: the input projection is one matmul
  over all frames, and only the recurrent matmul runs inside `flax.linen.scan`.
  `step` runs one frame [B, N, Din] with the same parameters.

  Attributes:
    hidden: state size H.
  """
  hidden: int

  def setup(self):
    self.ih = nn.Dense(4 * self.hidden, name='ih')
    self.hh = nn.Dense(4 * self.hidden, use_bias=False, name='hh')

  def initial_carry(self, batch_shape, dtype=jnp.float32):
    z = jnp.zeros(tuple(batch_shape) + (self.hidden,), dtype)
    return (z, z)

  def _cell(self, carry, gx):
    c, h = carry
    i, f, g, o = jnp.split(gx + self.hh(h), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  def __call__(self, xs, carry=None, time_axis: int = 1):
    """xs [B, T, N, Din] -> (final carry, hs [B, T, N, H]).

    time_axis=0 takes and returns time-major arrays [T, B, N, ...] instead, which
    saves two transposes per call (the scan steps over the leading axis).
    """
    gx = self.ih(xs)
    if carry is None:
      batch_shape = xs.shape[:time_axis] + xs.shape[time_axis + 1:-1]
      carry = self.initial_carry(batch_shape, xs.dtype)
    # Short sequences are unrolled: no while loop, and XLA fuses across frames. Longer
    # ones keep the loop: unrolled by 16, T = 32 and 64 ran 1.3-1.5x slower.
    unroll = xs.shape[time_axis] if xs.shape[time_axis] <= _MAX_UNROLL else 1
    scan = nn.scan(lambda mdl, c, g: mdl._cell(c, g), variable_broadcast='params',
                   split_rngs={'params': False}, in_axes=time_axis, out_axes=time_axis,
                   unroll=unroll)
    return scan(self, carry, gx)

  def step(self, carry, x):
    """x [B, N, Din] -> (carry, h [B, N, H])."""
    return self._cell(carry, self.ih(x))


class RSTG(nn.Module):
  """Recurrent Space-time Graph over per-frame node features.

  Attributes:
    graph: the static RSTGGraph (see `rstg_jax.graph.build_graph`).
    dim: node state size D (also the LSTM hidden size).
    num_iters: K, the number of space (and internal time) stages.
    schedule: one of SCHEDULES.
    positional: positional maps in f_send.
    gather: "attention" or "sum".
    layer_norm: LayerNorm in the space stage.
    scalewise: per-scale update parameters.
    hidden: hidden width of the space-stage MLPs (default D).

  Records: applied with `mutable=['intermediates']`, every space stage sows two entries
  under this module's path in the 'intermediates' collection, one per iteration k in
  order: 'attention', its weights (`stages.space_attention` of its input; absent with
  gather="sum") and 'nodes', its output. Offline they are [B, T, 2E] and [B, T, N, D];
  each `step` adds [B, 2E] and [B, N, D] (2E + N weights with the homogeneous
  schedule's time messages, `stages.attention_edges`). The time_only schedule has no
  space stage and records nothing.
  """
  graph: RSTGGraph
  dim: int = 512
  num_iters: int = 3
  schedule: str = 'all_temp'
  positional: bool = False
  gather: str = 'attention'
  layer_norm: bool = False
  scalewise: bool = False
  hidden: int | None = None

  def setup(self):
    check_schedule(self.schedule)
    if self.num_iters < 1 and self.schedule != 'time_only':
      raise ValueError(f'num_iters must be >= 1, got {self.num_iters}')
    if self.positional and self.schedule == 'time_only':
      raise ValueError('positional=True needs a schedule with space stages; time_only '
                       'sends no messages, so positional maps would be ignored')
    self.embed = nn.Dense(self.dim, name='embed')
    self.space = SpaceStage(self.graph, self.dim, hidden=self.hidden, gather=self.gather,
                            positional=self.positional, layer_norm=self.layer_norm,
                            scalewise=self.scalewise, name='space')
    self.lstm = LSTM(self.dim, name='lstm')          # the K internal time stages
    self.final_lstm = LSTM(self.dim, name='final_lstm')

  def _embed(self, x):
    # Shared-weight stages need the same input size at every iteration, so inputs of
    # another size are projected to D first (e.g. 1024 backbone channels).
    return x if x.shape[-1] == self.dim else self.embed(x)

  def _check(self, x, rank):
    if x.ndim != rank or x.shape[-2] != self.graph.num_nodes:
      want = '[B, T, N, C]' if rank == 4 else '[B, N, C]'
      raise ValueError(f'RSTG expects node features {want} with N={self.graph.num_nodes} '
                       f'for {self.graph}, got shape {x.shape}; pool a feature map with '
                       f'rstg_jax.graph.pool_nodes first')

  def __call__(self, x):
    """Offline pass: x [B, T, N, C] -> node states [B, T, N, D]."""
    self._check(x, 4)
    # Time-major inside ([T, B, N, D]): the recurrences scan the leading axis without a
    # transpose per stage; space stages do not care about the order of leading axes.
    v = self._embed(x).swapaxes(0, 1)
    return self._offline_time_major(v).swapaxes(0, 1)

  def _offline_time_major(self, v):
    k_iters, sched = self.num_iters, self.schedule
    if sched == 'all_temp':
      for _ in range(k_iters):
        _, h = self.lstm(v, time_axis=0)
        v = self.space(h)
        self._record(h, v, time_major=True)
      return self.final_lstm(v, time_axis=0)[1]
    if sched == 'time_only':
      for _ in range(k_iters):
        v = self.lstm(v, time_axis=0)[1]
      return self.final_lstm(v, time_axis=0)[1]
    if sched == 'one_temp':
      for _ in range(k_iters):
        v = self._recorded_space(v)
      return self.final_lstm(v, time_axis=0)[1]
    if sched == 'space_only':
      # No time stage at all; a running mean here would, averaged again by the
      # readout, weigh frame t by (H_T - H_{t-1}) / T and leak the frame order.
      for _ in range(k_iters):
        v = self._recorded_space(v)
      return v
    # homogeneous: the time message needs iteration k at t-1, so each iteration is a
    # scan over frames of a space stage that also listens to the past.
    scan = nn.scan(lambda mdl, prev, cur: (lambda s: (s, s))(mdl.space(cur, past=prev)),
                   variable_broadcast='params', split_rngs={'params': False},
                   in_axes=0, out_axes=0)
    for _ in range(k_iters):
      _, out = scan(self, jnp.zeros_like(v[0]), v)
      if self.is_mutable_collection('intermediates'):
        self._record(v, out, past=jnp.concatenate([jnp.zeros_like(out[:1]), out[:-1]]),
                     time_major=True)
      v = out
    return v

  def _recorded_space(self, v):
    """A space stage on time-major v [T, B, N, D], recorded when asked."""
    out = self.space(v)
    self._record(v, out, time_major=True)
    return out

  def _record(self, inputs, out, past=None, *, time_major):
    """Sows a space stage's attention and output nodes (see the class docstring).

    Does nothing, and adds nothing to the traced program, unless 'intermediates' is
    mutable. Time-major records [T, B, ...] are stored batch-major [B, T, ...].
    """
    if not self.is_mutable_collection('intermediates'):
      return
    major = (lambda a: a.swapaxes(0, 1)) if time_major else (lambda a: a)
    if self.gather == 'attention':
      self.sow('intermediates', 'attention', major(self.space.attention(inputs, past)))
    self.sow('intermediates', 'nodes', major(out))

  def initial_state(self, batch_size: int, dtype=jnp.float32) -> dict[str, Any]:
    """State of the online mode before the first frame (all zeros; empty for space_only,
    which keeps no memory: the time average is the readout's)."""
    check_schedule(self.schedule)
    n, d, k = self.graph.num_nodes, self.dim, self.num_iters
    zeros = jnp.zeros((batch_size, n, d), dtype)
    state: dict[str, Any] = {}
    if self.schedule in ('all_temp', 'time_only'):
      state['lstm'] = [(zeros, zeros) for _ in range(k)]
    if self.schedule in ('all_temp', 'time_only', 'one_temp'):
      state['final_lstm'] = (zeros, zeros)
    if self.schedule == 'homogeneous':
      state['past'] = [zeros for _ in range(k)]
    return state

  def step(self, state, x):
    """Online mode: one frame x [B, N, C] -> (new state, node states [B, N, D])."""
    self._check(x, 3)
    v = self._embed(x)
    sched, new = self.schedule, dict(state)
    if sched in ('all_temp', 'time_only'):
      carries = []
      for k in range(self.num_iters):
        carry, v = self.lstm.step(state['lstm'][k], v)
        carries.append(carry)
        if sched == 'all_temp':
          out = self.space(v)
          self._record(v, out, time_major=False)
          v = out
      new['lstm'] = carries
    elif sched in ('one_temp', 'space_only'):
      for _ in range(self.num_iters):
        out = self.space(v)
        self._record(v, out, time_major=False)
        v = out
    else:  # homogeneous
      pasts = []
      for k in range(self.num_iters):
        out = self.space(v, past=state['past'][k])
        self._record(v, out, state['past'][k], time_major=False)
        v = out
        pasts.append(v)
      new['past'] = pasts
    if sched in ('space_only', 'homogeneous'):
      return new, v
    new['final_lstm'], out = self.final_lstm.step(state['final_lstm'], v)
    return new, out


def rstg_to_vec(states: jax.Array) -> jax.Array:
  """RSTG-to-vec readout: [..., T, N, D] -> [..., D], mean over time, sum over nodes."""
  return states.mean(axis=-3).sum(axis=-2)


class RSTGToMap(nn.Module):
  """RSTG as a residual block on a feature volume (RSTG-to-map, paper Appendix B).

  x [B, T, H, W, C] -> x + s * LayerNorm(proj_out(unpool(RSTG(proj_in(pool(x)))))),
  with s a learned scalar initialised to 0, so the block starts as the identity and
  can be dropped into a pretrained backbone without changing its output.

  Attributes:
    graph: RSTGGraph built for the feature map's (H, W).
    dim: graph node size D (C is projected to D and back when they differ, e.g.
      1024 -> 512 -> 1024 for I3D res4).
    rstg: extra keyword arguments for `RSTG` (num_iters, schedule, positional, ...).
  """
  graph: RSTGGraph
  dim: int = 512
  rstg: dict | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No train-time-only behaviour; kept for a uniform block signature.
    c = x.shape[-1]
    nodes = pool_nodes(self.graph, x)
    if c != self.dim:
      nodes = nn.Dense(self.dim, name='proj_in')(nodes)
    states = RSTG(self.graph, dim=self.dim, name='rstg', **(self.rstg or {}))(nodes)
    # Project per node, then resize: the resize is linear, so this equals projecting
    # every pixel but costs N instead of H*W rows. The bias is added after the resize.
    proj = nn.Dense(c, use_bias=False, name='proj_out')(states)
    bias = self.param('proj_out_bias', nn.initializers.zeros, (c,), x.dtype)
    y = unpool_nodes(self.graph, proj) + bias
    y = nn.LayerNorm(name='norm')(y)
    scale = self.param('residual_scale', nn.initializers.zeros, (), x.dtype)
    return x + scale * y
