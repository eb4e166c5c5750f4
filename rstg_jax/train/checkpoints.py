"""Orbax checkpoints of a run: the manager, the JSON metadata, restore and step names.

A run's checkpoints are `WORKDIR/checkpoints/<step>/{state,meta}`: `state` is the train
state (`rstg_jax.train.state`), `meta` a JSON object with the config, the class names in
logit order, the step, the evaluation metrics of that step and the split they were
measured on (the task's selection split). The latest `keep` saves are kept plus the best
one by top-1 on that split (SyncMNIST: val; never the held-out test split).

Resuming (`restore_for_resume`) first compares the saved config with the new one
(`resume_problems`): a change to a field that defines the model's parameters
(`MODEL_FIELDS`) or the training stream (`STREAM_FIELDS`) stops the run with one line
naming each field (old -> new); `config.resume_changes_ok` accepts data-stream changes
on purpose. Then the stored parameter shapes are compared with the model's, naming any
parameter path that differs. A checkpoint that cannot be read is skipped (with a line
saying why) for the newest one that restores; the skipped ones are moved to
WORKDIR/checkpoints_skipped/ so that new saves at their steps are possible. Temporary
folders of killed saves are removed at start (`remove_stale_tmp`).
"""

import fnmatch
import glob
import json
import os
import shutil
import time
from typing import Callable, Optional

import jax
import orbax.checkpoint as ocp

from rstg_jax import cli
from rstg_jax import errors
from rstg_jax.train import orbax_quiet as quiet
from rstg_jax.train.state import State


def manager(workdir: str, keep: int = 1, read_only: bool = False
            ) -> ocp.CheckpointManager:
  """The checkpoint manager of `workdir`: the latest `keep` saves plus the best (by the
  top-1 of the selection split, the metrics `save` is given)."""
  quiet.drop_orbax_noise()
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


def _checked_meta(meta, step: int) -> dict:
  """`meta` if it is the JSON object `metadata` writes (with a dict config), else raises."""
  if not isinstance(meta, dict) or not isinstance(meta.get('config', {}), dict):
    raise errors.CheckpointError(
        f'the metadata of step {step} is not a JSON object with a config (got '
        f'{type(meta).__name__})')
  return meta


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[State, dict]:
  with quiet.reading():
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], _checked_meta(restored['meta'], step)


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The metadata of `step`; CheckpointError if it is not a JSON object."""
  with quiet.reading():
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  return _checked_meta(meta, step)


def resolve_step(mngr: ocp.CheckpointManager, which: str) -> int:
  """'latest', 'best' or a step number -> a saved step (ValueError if there is none)."""
  steps = mngr.all_steps()
  if not steps:
    raise errors.CheckpointError(f'No checkpoint in {mngr.directory}.')
  if which == 'latest':
    return mngr.latest_step()
  if which == 'best':
    step = mngr.best_step()
    return mngr.latest_step() if step is None else step
  try:
    step = int(which)
  except ValueError:
    raise errors.CheckpointError(
        f'--checkpoint must be latest, best or a step; got {which!r}.') from None
  if step not in steps:
    raise errors.CheckpointError(
        f'No checkpoint for step {step} in {mngr.directory}; saved steps: '
                     f'{sorted(steps)}.')
  return step


def candidate_steps(mngr: ocp.CheckpointManager, which: str) -> list[int]:
  """The steps to try for 'latest', 'best' or a step number, in order: the step asked
  for first, then (for 'latest' and 'best') every other step, newest first, to fall back
  on when it cannot be read. CheckpointError if there is none or `which` is not valid."""
  step = resolve_step(mngr, which)
  if which not in ('latest', 'best'):
    return [step]
  return [step] + [s for s in sorted(mngr.all_steps(), reverse=True) if s != step]


def readable_steps(mngr: ocp.CheckpointManager) -> list[int]:
  """The steps whose metadata and array metadata can be read (nothing is restored)."""
  out = []
  for step in sorted(mngr.all_steps()):
    try:
      restore_meta(mngr, step)
      stored_tree(mngr, step)
    except Exception:  # pylint: disable=broad-except  # unreadable: not listed
      continue
    out.append(step)
  return out


def read_config(workdir: str, which: str = 'latest', say: Callable[[str], None] = print
                ) -> dict:
  """The config (a JSON dict) that checkpoint `which` of `workdir` was trained with; for
  'latest' and 'best', the newest readable one's when that one cannot be read (saying so)."""
  with manager(workdir, read_only=True) as mngr:
    steps, problems = candidate_steps(mngr, which), []
    for step in steps:
      try:
        config = restore_meta(mngr, step)['config']
      except Exception as e:  # pylint: disable=broad-except  # unreadable: try the next
        problems.append(f'step {step}: {_why(e)}')
        continue
      if problems:
        say(f'Checkpoint {which} (step {steps[0]}) cannot be read ({problems[0]}); using '
            f'the config of step {step}')
      return config
  raise errors.CheckpointError(
      f'No checkpoint in {mngr.directory} has readable metadata ({"; ".join(problems)}).')


def restore_for_eval(mngr: ocp.CheckpointManager, which: str, abstract_state,
                     config_json: Optional[dict], say: Callable[[str], None],
                     upgrade: Callable[[dict], dict] = dict) -> tuple[State, dict, int]:
  """(state, meta, step) of checkpoint `which` for the evaluate command.

  `config_json` (the config given on the command line; None: the checkpoint's own) must
  define the same model as the checkpoint's with today's fields (`upgrade`: the task's
  `upgrade_config`): CheckpointError naming each field that differs (old -> new). For 'latest' and 'best', a checkpoint that cannot be read or
  restored is skipped with a line saying why, for the newest one that restores; a step
  number that does not restore is a CheckpointError naming the readable steps.
  """
  steps, skipped = candidate_steps(mngr, which), []
  for step in steps:
    where = f'{mngr.directory} (step {step})'
    try:
      meta = restore_meta(mngr, step)
      stored = stored_tree(mngr, step)
    except Exception as e:  # pylint: disable=broad-except  # unreadable: try the next
      skipped.append((step, _why(e)))
      continue
    if config_json is not None:
      model = resume_problems(upgrade(meta.get('config', {})), config_json)[0]
      if model:
        raise errors.CheckpointError(
            f'The checkpoint {where} was trained with another model than --config gives: '
            f'{", ".join(model)}. Leave out --config to use the checkpoint\'s own, or give '
            'the values it was trained with.')
    mismatches = shape_mismatches(stored, abstract_state)
    if mismatches:
      raise errors.CheckpointError(
          f'The checkpoint {where} does not fit the model: {"; ".join(mismatches[:5])}.')
    try:
      state, meta = restore(mngr, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      skipped.append((step, _why(e)))
      continue
    if skipped:
      say(f'Checkpoint {which} (step {steps[0]}) cannot be read ({skipped[0][1]}); '
          f'evaluating step {step}, the newest that restores')
    return state, meta, step
  why = '; '.join(f'step {s}: {w}' for s, w in skipped)
  if which in ('latest', 'best'):
    raise errors.CheckpointError(f'No checkpoint in {mngr.directory} restores ({why}).')
  raise errors.CheckpointError(
      f'Checkpoint step {steps[0]} in {mngr.directory} cannot be restored ({why}); '
      f'readable steps: {[s for s in readable_steps(mngr) if s != steps[0]] or "none"}.')


def changed_fields(saved: dict, now: dict) -> list[str]:
  """Dotted config fields whose value differs between a checkpoint's config and now."""
  saved_flat = cli.flatten(saved)
  return sorted(k for k, v in cli.flatten(now).items() if saved_flat.get(k, v) != v)


# Fields that define the model and the shapes of its parameters (and optimizer state):
# a checkpoint cannot be resumed with other values.
MODEL_FIELDS = ('model', 'ablation', 'input_norm', 'data.num_classes', 'rstg.*',
                'baseline.*', 'backbone.*', 'optim.optimizer')
# Used at step 0 only (pre-training, init_from): free to change on resume.
_STEP0_FIELDS = ('backbone.pretrain.*', 'init_from.*')
# Fields that define the training stream: changed on resume, the run would no longer be
# the one that was started (`resume_changes_ok=True` accepts it on purpose). data.root
# and data.tfds_dir are locations (the data may move), data.prefetch a buffer size.
STREAM_FIELDS = ('batch_size', 'seed', 'data.*')
_NOT_STREAM = ('data.num_classes', 'data.root', 'data.tfds_dir', 'data.rebuild',
               'data.prefetch')


class ResumeError(errors.CheckpointError):
  """The workdir's checkpoints cannot be resumed with this config (one line saying why
  and how to start fresh)."""


def _matches(name: str, patterns) -> bool:
  return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def resume_problems(saved: dict, now: dict, changes_ok: bool = False
                    ) -> tuple[list[str], list[str], list[str]]:
  """(model changes, stream changes, other changes) between a checkpoint's config and
  now, each as 'field old -> new' (field only for the others). Stream changes are empty
  when `changes_ok`; fields absent from the saved config (added since) are not compared."""
  saved_flat = cli.flatten(saved)
  model, stream, other = [], [], []
  for k in changed_fields(saved, now):
    change = f'{k} {saved_flat[k]!r} -> {cli.flatten(now)[k]!r}'
    if _matches(k, _STEP0_FIELDS) or k == 'resume_changes_ok':
      other.append(k)
    elif _matches(k, MODEL_FIELDS):
      model.append(change)
    elif _matches(k, STREAM_FIELDS) and not _matches(k, _NOT_STREAM):
      (other if changes_ok else stream).append(k if changes_ok else change)
    else:
      other.append(k)
  return model, stream, other


def check_resume(saved: dict, now: dict, changes_ok: bool, where: str) -> list[str]:
  """Raises ResumeError (one line) if the config changed a model or (unless
  `changes_ok`) a data-stream field since the checkpoint `where`; else returns the
  other changed fields (for the log)."""
  model, stream, other = resume_problems(saved, now, changes_ok)
  if not (model or stream):
    return other
  parts = []
  if model:
    parts.append("fields that define the model's parameters: " + ', '.join(model))
  if stream:
    parts.append('fields that change the training data stream: ' + ', '.join(stream))
  hint = ('; --config.resume_changes_ok=True accepts the data-stream change on purpose'
          if stream and not model else '')
  raise ResumeError(
      f'Cannot resume {where} with this config: it changed {" and ".join(parts)}. Run '
      f'with the old values to resume, or start fresh with a new --workdir{hint}.')


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _shapes(tree) -> dict[str, tuple]:
  """'params/backbone/conv0/kernel' -> shape, over the leaves that have a shape."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {'/'.join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def shape_mismatches(stored_tree, abstract_state) -> list[str]:
  """'path: stored S, model M' for every leaf whose shape differs or that only one has
  (the model's parameters first, then the optimizer state that mirrors them)."""
  stored, wanted = _shapes(stored_tree), _shapes(abstract_state)
  out = []
  for path in sorted(set(stored) | set(wanted), key=lambda p: (not p.startswith('params/'), p)):
    a, b = stored.get(path), wanted.get(path)
    if a != b:
      out.append(f'{path}: stored {a if a is not None else "absent"}, model '
                 f'{b if b is not None else "absent"}')
  return out


def stored_tree(mngr: ocp.CheckpointManager, step: int):
  """The stored state's tree of array metadata (shapes), read without any array."""
  path = os.path.join(str(mngr.directory), str(step), 'state')
  with ocp.StandardCheckpointer() as ckptr, quiet.reading():
    md = ckptr.metadata(path)
  md = getattr(md, 'item_metadata', md)
  tree = getattr(md, 'tree', md)
  if not _shapes(tree):  # Orbax logs a warning and returns nothing for a broken state
    raise ValueError(f'no readable array metadata in {path}')
  return tree


def remove_stale_tmp(workdir: str, say: Callable[[str], None]) -> list[str]:
  """Removes the temporary folders of saves that were killed
  (`checkpoints/*.orbax-checkpoint-tmp*`); call on process 0 before the manager."""
  pattern = os.path.join(os.path.abspath(workdir), 'checkpoints', '*.orbax-checkpoint-tmp*')
  removed = sorted(glob.glob(pattern))
  for path in removed:
    shutil.rmtree(path, ignore_errors=True)
  if removed:
    say(f'Checkpoints: removed {len(removed)} temporary folder(s) of interrupted saves: '
        + ', '.join(os.path.basename(p) for p in removed))
  return removed


def _why(e: Exception) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:200]}' if text else type(e).__name__


def restore_for_resume(mngr: ocp.CheckpointManager, abstract_state, config_json: dict,
                       changes_ok: bool, say: Callable[[str], None], *,
                       is_main: bool = True, upgrade: Callable[[dict], dict] = dict
                       ) -> tuple[State, dict, list[str]]:
  """The newest checkpoint that restores: (state, meta, changed fields for the log).

  Before reading any state, each candidate's config, with today's fields
  (`upgrade(saved)`: the task's `upgrade_config`; its ValueError becomes a ResumeError),
  is checked against `config_json` (`check_resume`) and its stored shapes against
  `abstract_state`; both raise ResumeError. A checkpoint whose metadata or arrays cannot
  be read is skipped with a line saying why; skipped checkpoints newer than the restored
  one are moved to WORKDIR/checkpoints_skipped/ (process 0) so that the run can save
  those steps again.
  """
  directory = str(mngr.directory)
  skipped = []
  for step in sorted(mngr.all_steps(), reverse=True):
    where = f'{directory} (step {step})'
    try:
      meta = restore_meta(mngr, step)
      stored = stored_tree(mngr, step)
    except Exception as e:  # pylint: disable=broad-except  # unreadable: try an older one
      skipped.append((step, _why(e)))
      say(f'Checkpoint step {step} cannot be read ({_why(e)}); skipping it')
      continue
    try:
      saved = upgrade(meta.get('config', {}))
    except ValueError as e:
      raise ResumeError(f'Cannot resume {where}: {e}') from None
    changed = check_resume(saved, config_json, changes_ok, where)
    mismatches = shape_mismatches(stored, abstract_state)
    if mismatches:
      raise ResumeError(
          f'Cannot resume {where}: the checkpoint does not fit the model: '
          f'{"; ".join(mismatches[:5])}'
          + (f' (and {len(mismatches) - 5} more)' if len(mismatches) > 5 else '')
          + '. Start fresh with a new --workdir, or resume with the config it was saved with.')
    try:
      state, meta = restore(mngr, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      skipped.append((step, _why(e)))
      say(f'Checkpoint step {step} cannot be restored ({_why(e)}); skipping it')
      continue
    if skipped:
      _set_aside(mngr, [s for s, _ in skipped], is_main, say)
      say(f'Resuming from step {step}, the newest checkpoint that restores (skipped: '
          + ', '.join(f'step {s}' for s, _ in skipped) + ')')
    return state, meta, changed
  raise ResumeError(
      f'No checkpoint in {directory} restores (' + '; '.join(
          f'step {s}: {why}' for s, why in skipped) + '). Start fresh with a new --workdir.')


def _set_aside(mngr: ocp.CheckpointManager, steps, is_main: bool, say) -> None:
  """Moves unreadable step folders to WORKDIR/checkpoints_skipped/<step>-<time>."""
  if is_main:
    directory = str(mngr.directory)
    aside = os.path.join(os.path.dirname(directory), 'checkpoints_skipped')
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      src = os.path.join(directory, str(step))
      if os.path.isdir(src):
        dst = os.path.join(aside, f'{step}-{int(time.time())}')
        os.replace(src, dst)
        say(f'Checkpoints: moved the unreadable step {step} to {dst}')
  if jax.process_count() > 1:  # every process sees the move before it rereads the steps
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('rstg_jax.checkpoints.set_aside')
  mngr.reload()
