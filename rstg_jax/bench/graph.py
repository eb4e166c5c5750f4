"""Speed of the RSTG graph module, in clips/s and GFLOP/s beside a large matmul.

Prints one JSON object. Everything is measured side by side in one run, so ratios are
meaningful on a noisy machine even when absolute numbers are not:

  - matmul: GFLOP/s of a jitted float32 matmul (the machine's practical ceiling);
  - ssv1 / syncmnist: forward and forward+backward clips/s of `RSTG` (all_temp,
    attention, K=3, D=512) at Something-Something shapes (batch 8, T=16, scales 1..4
    = 30 nodes) and SyncMNIST shapes (batch 8, T=10, scales 1..3 = 14 nodes), with
    sparse and full adjacency;
  - time_scaling: forward+backward seconds at T = 8, 16, 32, 64 (SSv1 shapes, sparse),
    and the ratio T=64 / T=16 (linear in T would be 4.0);
  - GFLOP/s achieved, counting only the FLOPs the sparse algorithm must do
    (`model_flops`: space stages on 2E edges plus LSTMs; backward counted as 2x
    forward), and its fraction of the GFLOP/s of a 2048^3 matmul timed right before
    each case (`matmul_gflops_beside`), so both see the same machine load.

  python -m rstg_jax.bench graph [--repeats 3] [--quick (batch 2, D = 64: a smoke run)]
"""

from __future__ import annotations

import json
import platform
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp

from rstg_jax import cli
from rstg_jax.graph import build_graph
from rstg_jax.model import RSTG
from rstg_jax.stages import init_space_params, space_stage_flops


def _time(fn, *args, repeats):
  """Median wall seconds of fn(*args) after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_gflops(n=2048, repeats=5):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  return 2 * n**3 / _time(f, a, b, repeats=repeats) / 1e9


def model_flops(graph, dim, num_iters, frames, schedule='all_temp'):
  """Forward FLOPs the sparse all_temp algorithm must do on `frames` frames."""
  params = init_space_params(jax.random.key(0), dim, num_scales=len(graph.scales))
  space = space_stage_flops(graph, params, frames)
  n = graph.num_nodes
  # LSTM: input projection (one matmul over all frames) + recurrent matmul, 4 gates.
  lstm = frames * n * (2 * dim * 4 * dim + 2 * dim * 4 * dim)
  assert schedule == 'all_temp'
  return num_iters * space + (num_iters + 1) * lstm


def bench_case(scales, feature_size, batch, frames, dim, num_iters, adjacency, repeats,
               backward=True):
  graph = build_graph(scales, feature_size, adjacency=adjacency)
  model = RSTG(graph, dim=dim, num_iters=num_iters, schedule='all_temp')
  x = jax.random.normal(jax.random.key(0), (batch, frames, graph.num_nodes, dim))
  params = jax.jit(model.init)(jax.random.key(1), x)['params']

  @jax.jit
  def forward(p, x):
    return model.apply({'params': p}, x)

  @jax.jit
  def forward_backward(p, x):
    # Gradient w.r.t. parameters and inputs, as when a backbone sits below the graph.
    loss = lambda p, x: jnp.mean(model.apply({'params': p}, x) ** 2)
    return jax.grad(loss, argnums=(0, 1))(p, x)

  out = {'nodes': graph.num_nodes, 'directed_edges': graph.num_edges}
  # A matmul timed right before the case: on a shared machine the load drifts, and the
  # fraction of the matmul rate is only meaningful when both see the same load.
  out['matmul_gflops_beside'] = matmul_gflops(repeats=3)
  sparse_graph = build_graph(scales, feature_size, adjacency='sparse')
  flops = model_flops(sparse_graph, dim, num_iters, batch * frames)
  out['fwd_s'] = _time(forward, params, x, repeats=repeats)
  out['fwd_clips_per_s'] = batch / out['fwd_s']
  out['fwd_gflops_sparse_count'] = flops / out['fwd_s'] / 1e9
  out['fwd_fraction_of_matmul'] = out['fwd_gflops_sparse_count'] / out['matmul_gflops_beside']
  if backward:
    out['fwd_bwd_s'] = _time(forward_backward, params, x, repeats=repeats)
    out['fwd_bwd_clips_per_s'] = batch / out['fwd_bwd_s']
    out['fwd_bwd_gflops_sparse_count'] = 3 * flops / out['fwd_bwd_s'] / 1e9
    out['fwd_bwd_fraction_of_matmul'] = (out['fwd_bwd_gflops_sparse_count']
                                         / out['matmul_gflops_beside'])
  out['model_gflop_fwd'] = flops / 1e9
  return out


def main(argv=None):
  def define(fv):
    flags.DEFINE_integer('repeats', 3, 'timed runs per case (median)', flag_values=fv)
    flags.DEFINE_bool('quick', False,
                      'batch 2 and D = 64 for a fast smoke run (numbers not comparable)',
                      flag_values=fv)

  args, _ = cli.parse_command(define, argv or [], 'python -m rstg_jax.bench graph')
  r = args.repeats
  batch = 2 if args.quick else 8
  dim, k = (64 if args.quick else 512), 3
  result = {
      'benchmark': 'graph',
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'machine': platform.machine(),
      'batch': batch, 'dim': dim, 'num_iters': k, 'schedule': 'all_temp',
  }
  mm = matmul_gflops(repeats=max(r, 5))
  result['matmul_gflops'] = mm
  ssv1 = dict(scales=(1, 2, 3, 4), feature_size=14, batch=batch, frames=16, dim=dim,
              num_iters=k)
  sync = dict(scales=(1, 2, 3), feature_size=6, batch=batch, frames=10, dim=dim,
              num_iters=k)
  for name, case in (('ssv1', ssv1), ('syncmnist', sync)):
    result[name] = {adj: bench_case(**case, adjacency=adj, repeats=r)
                    for adj in ('sparse', 'full')}
  scaling = {}
  for t in (8, 16, 32, 64):
    res = bench_case(**dict(ssv1, frames=t), adjacency='sparse', repeats=r)
    scaling[str(t)] = res['fwd_bwd_s']
  result['time_scaling_fwd_bwd_s'] = scaling
  result['t64_over_t16'] = scaling['64'] / scaling['16']
  s = result['ssv1']['sparse']
  result['ssv1_fwd_bwd_fraction_of_matmul'] = s['fwd_bwd_fraction_of_matmul']
  result['sparse_over_full_speedup_ssv1_fwd_bwd'] = (
      result['ssv1']['full']['fwd_bwd_s'] / s['fwd_bwd_s'])
  result['targets'] = {
      'fraction_of_matmul>=0.60': result['ssv1_fwd_bwd_fraction_of_matmul'] >= 0.60,
      't64_over_t16<=4.4': result['t64_over_t16'] <= 4.4,
  }
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
