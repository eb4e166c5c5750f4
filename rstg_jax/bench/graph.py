"""Speed of the RSTG graph module, in clips/s and GFLOP/s beside a large matmul.

Prints one JSON object. Everything is measured side by side in one run, so ratios are
meaningful on a noisy machine even when absolute numbers are not:

  - matmul: GFLOP/s of a jitted float32 matmul (the machine's practical ceiling);
  - space_stage (part "space"): one space stage's forward+backward with each
    implementation (`stages.IMPLS`: "segment", jraph gathers and scatter-adds over 2E
    messages; "dense", all N x N pairs broadcast and masked), timed in turn A B A B ...
    at the full and sparse SyncMNIST graphs as the quick config runs them and at the
    paper's Something-Something shape (`SPACE_CASES`); with the dense speed-up, the
    speed-up of the implementation "auto" picks, and GFLOP/s as a fraction of the
    matmul (counting the sparse algorithm's FLOPs, and each implementation's own);
  - ssv1 / syncmnist (part "module"): forward and forward+backward clips/s of `RSTG`
    (all_temp, attention, K=3, D=512, the space stages' implementation as "auto" picks
    it) at Something-Something shapes (batch 8, T=16, scales 1..4 = 30 nodes) and
    SyncMNIST shapes (batch 8, T=10, scales 1..3 = 14 nodes), with sparse and full
    adjacency; at the paper's shape (ssv1, sparse) also where the fwd+bwd time goes:
    its matmuls timed alone at their own shapes (`dots.matmul_account`), so the
    fraction of the matmul rate splits into matmul efficiency and matmul share of time;
  - time_scaling (part "scaling"): forward+backward seconds at T = 8, 16, 32, 64 (SSv1
    shapes, sparse), and the ratio T=64 / T=16 (linear in T would be 4.0);
  - space_stage_auto_rule (part "auto", not run by default): the space stage as in part
    "space" at the shapes that set `stages.choose_impl`'s rule (`AUTO_RULE_CASES`);
  - GFLOP/s achieved, counting only the FLOPs the sparse algorithm must do
    (`model_flops`: space stages on 2E edges plus LSTMs; backward counted as 2x
    forward), and its fraction of the GFLOP/s of a 2048^3 matmul timed right before
    each case (`matmul_gflops_beside`), so both see the same machine load.

  python -m rstg_jax.bench graph [--repeats 3] [--parts space,module,scaling,auto]
      [--quick (batch 2, D = 64: a smoke run)]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp

from rstg_jax import cli
from rstg_jax import stages
from rstg_jax.bench import dots
from rstg_jax.graph import build_graph
from rstg_jax.model import RSTG
from rstg_jax.stages import init_space_params, space_stage_flops

# The space stage alone, fwd+bwd, both implementations (issue 27): the full and sparse
# SyncMNIST graphs as the quick config runs them (batch 32 x 10 frames, D = 64, attention
# and LayerNorm), and the paper's Something-Something shape (30 nodes, sparse, D = 512,
# batch 8 x 16 frames, attention).
SPACE_CASES = {
    'syncmnist_full': dict(scales=(1, 2, 3), feature_size=6, adjacency='full', frames=320,
                           dim=64, layer_norm=True),
    'syncmnist_sparse': dict(scales=(1, 2, 3), feature_size=6, adjacency='sparse',
                             frames=320, dim=64, layer_norm=True),
    'paper': dict(scales=(1, 2, 3, 4), feature_size=14, adjacency='sparse', frames=128,
                  dim=512, layer_norm=False),
}
# Part "auto": the shapes around the boundary of `stages.choose_impl`'s rule (the pairs
# per message N^2 / 2E it allows at each width), measured the same way.
AUTO_RULE_CASES = {
    'syncmnist_full_d512': dict(scales=(1, 2, 3), feature_size=6, adjacency='full',
                                frames=80, dim=512, layer_norm=False),
    'syncmnist_sparse_d512': dict(scales=(1, 2, 3), feature_size=6, adjacency='sparse',
                                  frames=80, dim=512, layer_norm=False),
    'paper_full': dict(scales=(1, 2, 3, 4), feature_size=14, adjacency='full', frames=128,
                       dim=512, layer_norm=False),
    'paper_d64': dict(scales=(1, 2, 3, 4), feature_size=14, adjacency='sparse', frames=128,
                      dim=64, layer_norm=True),
}


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


def model_flops(graph, dim, num_iters, frames, schedule='all_temp', impl='segment'):
  """Forward FLOPs of all_temp on `frames` frames: the sparse algorithm's ("segment", 2E
  messages per space stage) or the dense implementation's (N x N pairs)."""
  params = init_space_params(jax.random.key(0), dim, num_scales=len(graph.scales))
  space = space_stage_flops(graph, params, frames, impl)
  n = graph.num_nodes
  # LSTM: input projection (one matmul over all frames) + recurrent matmul, 4 gates.
  lstm = frames * n * (2 * dim * 4 * dim + 2 * dim * 4 * dim)
  assert schedule == 'all_temp'
  return num_iters * space + (num_iters + 1) * lstm


def _interleaved(fns, args, repeats):
  """Median wall seconds of each of `fns` on `args`, timed in turn A B A B ..."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def space_stage_case(scales, feature_size, adjacency, frames, dim, layer_norm, repeats,
                     quick=False):
  """The space stage's fwd+bwd with each implementation, interleaved, and the ratios."""
  graph = build_graph(scales, feature_size, adjacency=adjacency)
  if quick:
    frames, dim = min(frames, 32), min(dim, 32)
  params = init_space_params(jax.random.key(0), dim, layer_norm=layer_norm,
                             num_scales=len(scales))
  x = jax.random.normal(jax.random.key(1), (frames, graph.num_nodes, dim))

  def fwd_bwd(impl):
    loss = lambda p, x: jnp.mean(stages.space_stage(p, graph, x, impl=impl) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  mm = matmul_gflops(repeats=3)
  secs = _interleaved({impl: fwd_bwd(impl) for impl in stages.IMPLS}, (params, x), repeats)
  auto = stages.choose_impl(graph, 'auto', dim)
  flops = {impl: 3 * space_stage_flops(graph, params, frames, impl) for impl in stages.IMPLS}
  sparse_gflops = {impl: flops['segment'] / secs[impl] / 1e9 for impl in stages.IMPLS}
  return {
      'nodes': graph.num_nodes, 'messages': graph.num_edges, 'frames': frames, 'dim': dim,
      'layer_norm': layer_norm, 'gather': 'attention', 'auto': auto,
      'fwd_bwd_s': secs,
      'dense_speedup': secs['segment'] / secs['dense'],
      'auto_speedup': secs['segment'] / secs[auto],
      'dense_flops_over_segment': flops['dense'] / flops['segment'],
      'matmul_gflops_beside': mm,
      'gflops_sparse_count': sparse_gflops,
      'fraction_of_matmul_sparse_count': {k: v / mm for k, v in sparse_gflops.items()},
      'fraction_of_matmul_own_count': {
          impl: flops[impl] / secs[impl] / 1e9 / mm for impl in stages.IMPLS},
  }


def _account(fn, args, seconds, flops, mm, repeats):
  """Splits fn's fraction of the matmul rate into matmul efficiency and share of time."""
  acc = dots.matmul_account(fn, *args, repeats=repeats)
  eff = acc['matmul_gflop'] / acc['matmul_s_alone'] / mm
  return {
      **acc,
      'matmul_efficiency_at_these_shapes': eff,
      'matmul_share_of_time': acc['matmul_s_alone'] / seconds,
      'counted_over_matmul_flops': flops / (acc['matmul_gflop'] * 1e9),
      'other_s': seconds - acc['matmul_s_alone'],
  }


def bench_case(scales, feature_size, batch, frames, dim, num_iters, adjacency, repeats,
               backward=True, impl='auto', account=False):
  """RSTG (all_temp) forward and fwd+bwd at these shapes; `account` adds where the
  fwd+bwd time goes (`dots.matmul_account`)."""
  graph = build_graph(scales, feature_size, adjacency=adjacency)
  model = RSTG(graph, dim=dim, num_iters=num_iters, schedule='all_temp', impl=impl)
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

  out = {'nodes': graph.num_nodes, 'directed_edges': graph.num_edges,
         'space_impl': stages.choose_impl(graph, impl, dim)}
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
    if account:
      out['fwd_bwd_account'] = _account(forward_backward, (params, x), out['fwd_bwd_s'],
                                        3 * flops, out['matmul_gflops_beside'], repeats)
  out['model_gflop_fwd'] = flops / 1e9
  return out


PARTS = ('space', 'module', 'scaling', 'auto')


def _module_parts(result, parts, batch, dim, k, r):
  """The RSTG module's cases (as the model runs them, impl "auto") and time scaling."""
  ssv1 = dict(scales=(1, 2, 3, 4), feature_size=14, batch=batch, frames=16, dim=dim,
              num_iters=k)
  sync = dict(scales=(1, 2, 3), feature_size=6, batch=batch, frames=10, dim=dim,
              num_iters=k)
  if 'module' in parts:
    for name, case in (('ssv1', ssv1), ('syncmnist', sync)):
      result[name] = {adj: bench_case(**case, adjacency=adj, repeats=r,
                                      account=(name, adj) == ('ssv1', 'sparse'))
                      for adj in ('sparse', 'full')}
    s = result['ssv1']['sparse']
    result['ssv1_fwd_bwd_fraction_of_matmul'] = s['fwd_bwd_fraction_of_matmul']
    result['sparse_over_full_speedup_ssv1_fwd_bwd'] = (
        result['ssv1']['full']['fwd_bwd_s'] / s['fwd_bwd_s'])
    result['targets']['fraction_of_matmul>=0.60'] = (
        result['ssv1_fwd_bwd_fraction_of_matmul'] >= 0.60)
    result['targets']['paper_module_fraction_of_matmul>=0.85'] = (
        result['ssv1_fwd_bwd_fraction_of_matmul'] >= 0.85)
  if 'scaling' in parts:
    scaling = {}
    for t in (8, 16, 32, 64):
      res = bench_case(**dict(ssv1, frames=t), adjacency='sparse', repeats=r)
      scaling[str(t)] = res['fwd_bwd_s']
    result['time_scaling_fwd_bwd_s'] = scaling
    result['t64_over_t16'] = scaling['64'] / scaling['16']
    result['targets']['t64_over_t16<=4.4'] = result['t64_over_t16'] <= 4.4


def main(argv=None):
  def define(fv):
    flags.DEFINE_integer('repeats', 3, 'timed runs per case (median)', flag_values=fv)
    flags.DEFINE_bool('quick', False,
                      'batch 2 and D = 64 for a fast smoke run (numbers not comparable)',
                      flag_values=fv)
    flags.DEFINE_list('parts', list(PARTS[:3]),
                      f'which parts to run, of {", ".join(PARTS)} ("auto" is not run '
                      f'by default)', flag_values=fv)

  prog = 'python -m rstg_jax.bench graph'
  args, _ = cli.parse_command(define, argv or [], prog)
  if not set(args.parts) <= set(PARTS) or not args.parts:
    cli.usage_error(prog, f'--parts takes a comma list of {", ".join(PARTS)}, '
                    f'got {",".join(args.parts)}')
  r = args.repeats
  batch = 2 if args.quick else 8
  dim, k = (64 if args.quick else 512), 3
  result = {
      'benchmark': 'graph',
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'machine': platform.machine(),
      'loadavg_1min_start': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
      'batch': batch, 'dim': dim, 'num_iters': k, 'schedule': 'all_temp',
      'parts': args.parts, 'targets': {},
  }
  result['matmul_gflops'] = matmul_gflops(repeats=max(r, 5))
  if 'space' in args.parts:
    # Interleaved rounds: at least 5 even when the module cases run 3 (ratios need them).
    space = {name: space_stage_case(**case, repeats=max(r, 5), quick=args.quick)
             for name, case in SPACE_CASES.items()}
    result['space_stage'] = space
    result['targets'].update({
        'space_full_syncmnist_speedup>=1.5': space['syncmnist_full']['auto_speedup'] >= 1.5,
        'space_sparse_syncmnist_auto_not_slower':
            space['syncmnist_sparse']['auto_speedup'] >= 1.0,
        'space_paper_auto_not_slower': space['paper']['auto_speedup'] >= 1.0,
    })
  if 'auto' in args.parts:
    result['space_stage_auto_rule'] = {
        name: space_stage_case(**case, repeats=max(r, 5), quick=args.quick)
        for name, case in AUTO_RULE_CASES.items()}
  _module_parts(result, args.parts, batch, dim, k, r)
  result['loadavg_1min_end'] = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
