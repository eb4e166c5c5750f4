"""Where a jitted function's time goes: its matmuls, timed alone at its own shapes.

`matmul_account(fn, *args)` walks the jaxpr of `fn` (nested calls, checkpoints and scan
bodies times their length), times every distinct `dot_general` it finds on its own at
the same shapes, and adds them up. With the function's own time `t` this splits

  GFLOP/s of fn / GFLOP/s of a large matmul
    = (GFLOP/s of fn's matmuls at their shapes / large-matmul GFLOP/s)   [efficiency]
    * (time of fn's matmuls / t)                                          [matmul share]
    * (FLOPs counted for fn / FLOPs of its matmuls)                       [count ratio]

so a graph module below the matmul rate shows whether its matmuls are too small or
oddly shaped to run at that rate, or the time goes elsewhere (elementwise work, gathers,
scatters, softmax, loop overhead).
"""

from __future__ import annotations

import collections
import statistics
import time

import jax
import jax.extend.core as jex
import numpy as np


def _dots(jaxpr, mult, out):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      lhs, rhs = (v.aval for v in eqn.invars[:2])
      key = (lhs.shape, rhs.shape, np.dtype(lhs.dtype).name,
             eqn.params['dimension_numbers'])
      out[key] += mult
    inner = mult * (eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1)
    for sub in jex.jaxprs_in_params(eqn.params):
      _dots(sub, inner, out)


def dot_shapes(fn, *args) -> dict:
  """{(lhs shape, rhs shape, dtype, dimension numbers): times run} of fn's matmuls."""
  out = collections.Counter()
  _dots(jax.make_jaxpr(fn)(*args).jaxpr, 1, out)
  return dict(out)


def _dot_flops(key) -> float:
  lhs, rhs, _, ((lc, rc), (lb, _)) = key
  contract = np.prod([lhs[d] for d in lc])
  batch = np.prod([lhs[d] for d in lb])
  free_l = np.prod(lhs) / (contract * batch)
  free_r = np.prod(rhs) / (contract * batch)
  return 2.0 * batch * free_l * free_r * contract


def _time_dot(key, repeats) -> float:
  lhs, rhs, dtype, dims = key
  a = jax.random.normal(jax.random.key(0), lhs, dtype)
  b = jax.random.normal(jax.random.key(1), rhs, dtype)
  f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims))
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_account(fn, *args, repeats: int = 3) -> dict:
  """Matmul FLOPs of `fn(*args)` and the seconds its matmuls take when run alone.

  Returns {'matmul_gflop', 'matmul_s_alone', 'distinct_matmuls', 'largest': the five
  matmuls that take longest, with shapes, count and GFLOP/s}.
  """
  rows = []
  for key, count in dot_shapes(fn, *args).items():
    seconds = _time_dot(key, repeats)
    rows.append((count * seconds, count, key, _dot_flops(key) / seconds / 1e9))
  rows.sort(key=lambda r: -r[0])
  return {
      'matmul_gflop': sum(c * _dot_flops(k) for _, c, k, _ in rows) / 1e9,
      'matmul_s_alone': sum(r[0] for r in rows),
      'distinct_matmuls': len(rows),
      'largest': [{'lhs': list(k[0]), 'rhs': list(k[1]), 'times': c,
                   'seconds': round(s, 4), 'gflops': round(g, 1)}
                  for s, c, k, g in rows[:5]],
  }
