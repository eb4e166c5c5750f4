"""Checks of values that parse but mean nothing, and of the workdir.

The helpers here never read a config: the code that owns a field passes its dotted name
and value (`optim.config_errors` the learning rate, `setup.config_errors` the run length,
a task's `config_errors` its model sizes), so `rstg_jax.tasks.for_config` reports every
problem in one `Invalid config:` error before the workdir is created. Each message names
the field, the value and what is accepted. `rstg_errors` checks the core's `rstg.*` block,
which both tasks share, on the feature maps the task's model builds its graphs on.

`workdir_error(workdir)` is the one check that touches the disk: the entry point calls it
after the config checks passed; it creates the workdir and writes a probe file in it.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Optional

from rstg_jax import graph as graph_lib
from rstg_jax import stages


def _number(value) -> Optional[float]:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def positive_error(name: str, value: Any, what: str = 'a positive number', *,
                   integer: bool = False, allow_zero: bool = False) -> Optional[str]:
  """'NAME=VALUE must be WHAT.' unless `value` is a finite number > 0 (>= 0 with
  `allow_zero`; a whole number with `integer`); None when it is."""
  x = _number(value)
  bad = (x is None or not math.isfinite(x) or (x < 0 if allow_zero else x <= 0)
         or (integer and x != int(x)))
  return f'{name}={value!r} must be {what}.' if bad else None


def positive_errors(*checks) -> list[str]:
  """`positive_error(*check)` for each (name, value, what[, options]) tuple, kept when set."""
  out = []
  for check in checks:
    name, value, what, *options = check
    message = positive_error(name, value, what, **(options[0] if options else {}))
    if message:
      out.append(message)
  return out


def scales_error(name: str, scales) -> Optional[str]:
  """The RSTG grid sizes: a non-empty tuple of positive integers."""
  if not isinstance(scales, (tuple, list)) or not scales:
    return (f'{name}={scales!r} must name at least one grid size, e.g. (1, 2, 3) for 1x1, '
            '2x2 and 3x3 nodes.')
  if not all(type(s) is int and s > 0 for s in scales):  # pylint: disable=unidiomatic-typecheck
    return f'{name}={tuple(scales)!r} must hold positive integers (grid sizes).'
  if len(set(scales)) != len(scales):
    return f'{name}={tuple(scales)!r} must not repeat a grid size.'
  return None


def choice_error(name: str, value: Any, valid) -> Optional[str]:
  """'Unknown NAME VALUE. Valid: a, b.' unless `value` is one of `valid`; else None."""
  if isinstance(value, str) and value in valid:
    return None
  return f'Unknown {name} {value!r}. Valid: {", ".join(valid)}.'


def bool_error(name: str, value: Any) -> Optional[str]:
  """'NAME=VALUE must be True or False.' unless `value` is a bool; else None."""
  return None if isinstance(value, bool) else f'{name}={value!r} must be True or False.'


def rstg_errors(rstg, feature_maps: dict, *, time_only: bool = False) -> list[str]:
  """Problems of the `rstg.*` block, the RSTG core's fields (both tasks read them).

  Args:
    rstg: the `config.rstg` block (dim, num_iters, scales, gather, adjacency,
      layer_norm, scalewise).
    feature_maps: {'where': (H, W)} for each feature map a graph is built on (the
      model's backbone output at the data set's frame size): the scales must fit each.
    time_only: the ablation sends no messages (num_iters may then be 0).

  The graph is checked by `rstg_jax.graph.build_graph` itself, on the config's values,
  so this check and the model can never disagree.
  """
  problems = positive_errors(
      ('rstg.dim', rstg.dim, 'a positive integer', dict(integer=True)),
      ('rstg.num_iters', rstg.num_iters,
       'an integer >= 0' if time_only else 'a positive integer (space-time iterations)',
       dict(integer=True, allow_zero=time_only)))
  problems += filter(None, [
      scales_error('rstg.scales', rstg.scales),
      choice_error('rstg.gather', rstg.gather, stages.GATHERS),
      choice_error('rstg.adjacency', rstg.adjacency, graph_lib.ADJACENCIES),
      bool_error('rstg.layer_norm', rstg.layer_norm),
      bool_error('rstg.scalewise', rstg.scalewise)])
  if any(p.startswith(('rstg.scales', 'Unknown rstg.adjacency')) for p in problems):
    return problems
  for where, size in feature_maps.items():
    try:
      graph_lib.build_graph(tuple(rstg.scales), size, adjacency=rstg.adjacency)
    except ValueError as e:  # build_graph's documented argument check
      problems.append(f'rstg.scales={tuple(rstg.scales)!r} does not fit {where}: {e}.')
      break
  return problems


def workdir_error(workdir: str) -> Optional[str]:
  """None if `workdir` exists (created here if needed) and a file can be written in it;
  else a one-line message saying why not."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    reason = e.strerror or str(e)
    where = e.filename or workdir
    return (f'workdir {workdir!r} is not usable: {reason} ({where}); choose another '
            '--workdir or fix its permissions / free disk space.')
  return None
