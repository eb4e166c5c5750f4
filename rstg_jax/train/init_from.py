"""Starting a run from weights trained elsewhere: one strict merge, and run loading.

`merge_params` is the one parameter merge of the code base (big_vision's rule): every
loaded tensor is used or skipped by a pattern, every model variable is filled or kept at
its init by a `dont_load` pattern, and shapes must agree; anything else stops with a
report that names each tensor. The converted Kinetics checkpoints
(`rstg_jax.ssv1.convert`), the pre-trained SyncMNIST backbone and `init_from.path` (the
latest checkpoint of another run) all go through it.
"""

import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from rstg_jax import errors
from rstg_jax.train import orbax_quiet


class MergeError(errors.CheckpointError):
  """Loaded weights do not fit the model; the message lists every problem."""


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x} (any Mapping, FrozenDicts included)."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping):
      out.update(flatten(v, key + '/'))
    else:
      out[key] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def matches(patterns: Iterable[str], *names: Optional[str]) -> Optional[str]:
  """The first regex of `patterns` that fully matches one of `names`, or None."""
  for p in patterns:
    for n in names:
      if n is not None and re.fullmatch(p, n):
        return p
  return None


def merge_params(init: Mapping[str, Any], loaded: Mapping[str, Any],
                 dont_load: Sequence[str] = (), skip: Sequence[str] = (),
                 sources: Optional[Mapping[str, str]] = None) -> tuple[dict, dict]:
  """Fills `init` with `loaded`, strictly.

  Args:
    init: the model's variables (arrays or ShapeDtypeStructs), e.g. {'params': ...,
      'batch_stats': ...}, or any subtree of them.
    loaded: a tree of arrays with the same kind of paths.
    dont_load: regexes (full match) over paths such as 'params/res4_graph/.*' whose
      variables keep their init values; loaded tensors at such paths are left out.
    skip: regexes (full match) over loaded tensors (their path or their name in
      `sources`) that are left out on purpose.
    sources: optional path -> original tensor name (e.g. the Caffe2 blob), for messages.

  Returns:
    (variables, report): a nested dict with every loaded tensor in place (cast to the
    model's dtype), and {'loaded', 'skipped', 'kept_at_init'}: sorted lists of paths.

  Raises:
    MergeError: listing every loaded tensor neither used nor skipped, every model
      variable neither filled nor covered by `dont_load`, and every shape mismatch.
  """
  sources = sources or {}
  ckpt, model = flatten(loaded), flatten(init)
  filled, report = {}, {'loaded': [], 'skipped': [], 'kept_at_init': []}
  unused, mismatched, missing, mismatched_keys = [], [], [], set()
  for key, value in sorted(ckpt.items()):
    name = sources.get(key)
    label = f'{key} ({name})' if name else key
    if p := matches(skip, key, name):
      report['skipped'].append(f'{label}: skip {p}')
    elif key not in model:
      unused.append(label)
    elif p := matches(dont_load, key):
      report['skipped'].append(f'{label}: dont_load {p}')
    elif tuple(np.shape(value)) != tuple(model[key].shape):
      mismatched.append(f'{label}: checkpoint {tuple(np.shape(value))} vs model '
                        f'{tuple(model[key].shape)}')
      mismatched_keys.add(key)
    else:
      filled[key] = np.asarray(value).astype(model[key].dtype)
      report['loaded'].append(key)
  for key in sorted(model):
    if key in filled or key in mismatched_keys:  # a mismatch is reported once
      continue
    if matches(dont_load, key):
      report['kept_at_init'].append(key)
    else:
      missing.append(key)

  problems = []
  if unused:
    problems.append(f'{len(unused)} checkpoint tensor(s) not used by the model (add a '
                    'skip pattern if intended): ' + ', '.join(unused))
  if missing:
    problems.append(f'{len(missing)} model variable(s) missing from the checkpoint '
                    '(add a dont_load pattern if intended): ' + ', '.join(missing))
  if mismatched:
    problems.append(f'{len(mismatched)} shape mismatch(es): ' + '; '.join(mismatched))
  if problems:
    raise MergeError('cannot merge pretrained weights:\n  ' + '\n  '.join(problems))
  return unflatten({**model, **filled}), report


def summary(what: str, report: dict) -> str:
  """One log line for a merge report."""
  kept = sorted({'/'.join(k.split('/')[:2]) for k in report['kept_at_init']})
  return (f'{what}: loaded {len(report["loaded"])} tensors; skipped '
          f'{len(report["skipped"])} ({"; ".join(report["skipped"]) or "none"}); kept at '
          f'init {len(report["kept_at_init"])} ({", ".join(kept) or "none"})')


def load_run(path: str) -> tuple[dict, int]:
  """Host variables {'params', 'batch_stats'} of the latest checkpoint of another run.

  Args:
    path: the run's workdir or its checkpoints/ directory.

  Returns:
    (variables, step).
  """
  ckpt_dir = os.path.join(path, 'checkpoints')
  ckpt_dir = ckpt_dir if os.path.isdir(ckpt_dir) else path
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0)
  with ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_handlers=handlers,
                             options=options) as m:
    step = m.latest_step()
    if step is None:
      raise errors.CheckpointError(
          f'init_from.path={path!r}: no checkpoint found in {ckpt_dir}.')
    with orbax_quiet.reading():
      tree = m.item_metadata(step)['state']
      # A numpy target restores host arrays: the source run may have had another device
      # layout, and shapes may differ (e.g. the classifier), which the merge reports.
      target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
      state = m.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))['state']
  variables = {'params': state['params']}
  if state.get('batch_stats'):
    variables['batch_stats'] = state['batch_stats']
  return variables, step


def init_from_run(path: str, variables: dict, dont_load: Sequence[str], say) -> dict:
  """`variables` filled from the latest checkpoint of the run at `path` (strict merge;
  `dont_load` regexes over 'params/...' / 'batch_stats/...' keep their init)."""
  loaded, step = load_run(path)
  host = jax.tree.map(np.asarray, jax.device_get(variables))
  merged, report = merge_params(host, loaded, dont_load=dont_load)
  say(summary(f'init_from {path} step {step}', report))
  return merged
