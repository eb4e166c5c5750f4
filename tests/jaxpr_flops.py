"""FLOPs of a traced program, counted from its jaxpr (a test helper).

XLA's `cost_analysis()` counts a while loop's body once, so a scanned recurrence looks
constant in T; the jaxpr keeps each scan's `length`, so this count covers every frame.
"""

import numpy as np


def _subjaxprs(eqn):
  return [v for k, v in eqn.params.items() if k in ('jaxpr', 'call_jaxpr', 'fun_jaxpr')]


def count(jaxpr, matmuls_only: bool = False) -> float:
  """2*M*N*K per dot_general, plus (unless `matmuls_only`) one FLOP per output element of
  every other primitive; a scan's body counts `length` times; nested jaxprs are walked."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'while':
      raise AssertionError('a while loop has no static trip count to count')
    subs = _subjaxprs(eqn)
    if subs:
      times = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
      total += times * sum(count(j, matmuls_only) for j in subs)
    elif eqn.primitive.name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      k = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
      total += 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * float(k)
    elif not matmuls_only:
      total += sum(float(np.prod(v.aval.shape)) for v in eqn.outvars)
  return total
