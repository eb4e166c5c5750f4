"""Orbax checkpoints of a run: the manager, the JSON metadata, restore and step names.

A run's checkpoints are `WORKDIR/checkpoints/<step>/{state,meta}`: `state` is the train
state (`rstg_jax.train.state`), `meta` a JSON object with the config, the class names in
logit order, the step, the evaluation metrics of that step and the split they were
measured on (the task's selection split). The latest `keep` saves are kept plus the best
one by top-1 on that split (SyncMNIST: val; never the held-out test split).
"""

import json
import logging as logging_std
import os
from typing import Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

from rstg_jax.train.state import State


class _DropOrbaxNoise(logging_std.Filter):
  """Orbax warnings that say nothing to the user: periodic saves between evaluations
  have no metrics by design, and every read-only manager (the evaluate command) says
  that its directory is read only."""

  _NOISE = ('did not provide metrics', 'Given directory is read only')

  def filter(self, record):
    return not any(n in str(record.msg) for n in self._NOISE)


_ORBAX_NOISE = _DropOrbaxNoise()


def manager(workdir: str, keep: int = 1, read_only: bool = False
            ) -> ocp.CheckpointManager:
  """The checkpoint manager of `workdir`: the latest `keep` saves plus the best (by the
  top-1 of the selection split, the metrics `save` is given)."""
  logging.get_absl_logger().addFilter(_ORBAX_NOISE)  # idempotent
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m['top1'], n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=lambda m: m['top1'], best_mode='max', preservation_policy=policy,
      # Synchronous: the NaN guard's "last good checkpoint" is then on disk when we say so.
      enable_async_checkpointing=False, read_only=read_only, create=not read_only,
      save_interval_steps=0 if read_only else 1)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               item_names=('state', 'meta'), options=options)


def config_json(config) -> dict:
  """The config as JSON-able dict (what the metadata stores)."""
  return json.loads(config.to_json_best_effort())


def metadata(config: dict, class_names, step: int, eval_metrics: Optional[dict],
             eval_split: str = 'test') -> dict:
  return {
      'step': int(step),
      'config': config,
      # The class order is part of the model: logits index -> name.
      'class_names': list(class_names),
      'num_classes': len(class_names),
      'eval': eval_metrics,
      'eval_split': eval_split,
      'jax_version': jax.__version__,
      'num_devices': jax.device_count(),
  }


def save(mngr: ocp.CheckpointManager, step: int, state: State, meta: dict,
         eval_metrics: Optional[dict]) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)),
            metrics=eval_metrics)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[State, dict]:
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def resolve_step(mngr: ocp.CheckpointManager, which: str) -> int:
  """'latest', 'best' or a step number -> a saved step (ValueError if there is none)."""
  steps = mngr.all_steps()
  if not steps:
    raise ValueError(f'No checkpoint in {mngr.directory}.')
  if which == 'latest':
    return mngr.latest_step()
  if which == 'best':
    step = mngr.best_step()
    return mngr.latest_step() if step is None else step
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f'--checkpoint must be latest, best or a step; got {which!r}.') from None
  if step not in steps:
    raise ValueError(f'No checkpoint for step {step} in {mngr.directory}; saved steps: '
                     f'{sorted(steps)}.')
  return step


def read_config(workdir: str, which: str = 'latest') -> dict:
  """The config (a JSON dict) that checkpoint `which` of `workdir` was trained with."""
  with manager(workdir, read_only=True) as mngr:
    return restore_meta(mngr, resolve_step(mngr, which))['config']


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def changed_fields(saved: dict, now: dict) -> list[str]:
  """Dotted config fields whose value differs between a checkpoint's config and now."""
  saved_flat = _flat(saved)
  return sorted(k for k, v in _flat(now).items() if saved_flat.get(k, v) != v)
