"""Which protocol a SyncMNIST run follows, computed from its config, and the stage table.

The paper's SyncMNIST claim (Sec. 3.1) is about a graph on "single-image based features,
without any temporal processing at the backbone level". A run follows one of three
protocols, in order (a later one wins):

  'paper'            a one-frame backbone (`backbone.frames = 1`), pre-trained on single
                     digits' class only (the 'digit' stage) or not pre-trained: all
                     temporal processing is in the graph (or a baseline's head), and
                     training reads the videos' class labels only;
  'motion_backbone'  the backbone sees frame pairs (`backbone.frames = 2`) or is
                     pre-trained on single digits' motion (the 'motion' stage);
  'privileged'       the backbone is pre-trained on labels of the task's own videos other
                     than their class (the 'scene' stage: every digit's class and step).

`protocol(config)` names it and `explain(config)` says why; both read only the backbone
fields (`backbone.frames`, `backbone.pretrain.stages`), so the baselines get the protocol
of their backbone the same way. `STAGES` describes the pre-training stages (the code that
runs them is `rstg_jax.syncmnist.pretrain`). `upgrade_config` maps a config saved before
the stages existed (flat `backbone.pretrain_*` fields) to today's fields, so old runs are
resumed, evaluated and reported. Plain Python: importing it loads no JAX.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from rstg_jax import errors

PROTOCOLS = ('paper', 'motion_backbone', 'privileged')


@dataclasses.dataclass(frozen=True)
class StageInfo:
  """A pre-training stage as the config and the protocol see it.

  Attributes:
    name: its name in `backbone.pretrain.stages`.
    frames: frames the backbone sees in the stage (a two-frame stage after a one-frame
      one widens the backbone's first layer).
    trains_on: what its samples are and what it classifies, for logs and reasons.
    protocol: the protocol of a run that has this stage (at least).
  """
  name: str
  frames: int
  trains_on: str
  protocol: str


STAGES = {s.name: s for s in (
    StageInfo('digit', 1, "single digits' class", 'paper'),
    StageInfo('motion', 2, "single digits' class and step between two frames",
              'motion_backbone'),
    StageInfo('scene', 2, "every digit's class and step in two frames of the task's videos",
              'privileged'),
)}


def stage_names(stages) -> tuple[str, ...]:
  """`backbone.pretrain.stages` as a tuple of names.

  Takes a tuple or list of names, and the command line's `digit,motion`, which
  ml_collections reads as the one-element tuple ('digit,motion',); empty names are
  dropped, so `--config.backbone.pretrain.stages=` (and `()`) mean no pre-training.
  """
  if isinstance(stages, str):
    stages = (stages,)
  names = []
  for entry in stages or ():
    names += [n.strip().strip('\'"') for n in str(entry).strip('()[] ').split(',')]
  return tuple(n for n in names if n)


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def explain(config) -> tuple[str, str]:
  """(protocol, why) of a SyncMNIST config (a ConfigDict or a dict, today's fields or
  a saved config's older ones, see `upgrade_config`).

  Raises:
    ValueError: a stage name that does not exist, or a removed trial option.
  """
  config = upgrade_config(config.to_dict() if hasattr(config, 'to_dict') else config)
  frames = int(_get(config, 'backbone.frames'))
  names = stage_names(_get(config, 'backbone.pretrain.stages'))
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ValueError(f'Unknown backbone.pretrain.stages {unknown}. Valid: '
                     f'{", ".join(STAGES)}.')
  stages = [STAGES[n] for n in names]
  privileged = [s for s in stages if s.protocol == 'privileged']
  if privileged:
    return 'privileged', '; '.join(
        f"the '{s.name}' stage pre-trains the backbone on {s.trains_on}: labels of the "
        "task's videos besides their class" for s in privileged)
  motion = [f"the '{s.name}' stage pre-trains the backbone on {s.trains_on}"
            for s in stages if s.protocol == 'motion_backbone']
  if frames == 2:
    motion.insert(0, 'the backbone sees frame pairs (backbone.frames = 2)')
  if motion:
    return 'motion_backbone', '; '.join(motion)
  trained = (f"pre-trained on {STAGES['digit'].trains_on} only (the 'digit' stage)"
             if names else 'not pre-trained')
  return 'paper', (f'one-frame backbone {trained}; all temporal processing in the model '
                   "above it; trained on the videos' class labels only")


def protocol(config) -> str:
  """'paper', 'motion_backbone' or 'privileged' (see the module docstring)."""
  return explain(config)[0]


# The backbone fields of configs saved before the pre-training stages existed.
_OLD_FIELDS = ('pretrain_steps', 'pretrain_batch_size', 'pretrain_lr', 'pretrain_target',
               'pretrain_motion_steps', 'pretrain_scene_steps', 'cache_path', 'coords')
# What today's code did when an older config lacked a field.
_OLD_DEFAULTS = {'pretrain_steps': 0, 'pretrain_batch_size': 64, 'pretrain_lr': 1e-3,
                 'pretrain_target': 'digit', 'pretrain_motion_steps': 1_000,
                 'pretrain_scene_steps': 0, 'cache_path': None}


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved SyncMNIST config (a JSON dict) with today's fields, as a new dict.

  Fields added since keep what older code did without them: `backbone.frames` 1,
  `data.no_pair_prob` 1/47. The flat pre-training fields of configs saved before the
  stages existed (`backbone.pretrain_steps`, `pretrain_target`, ...) become the
  `backbone.pretrain` block: `pretrain_steps` > 0 with target 'digit' is the stage list
  ('digit',), with 'digit_motion' ('digit', 'motion') and ('scene',) after it when
  `pretrain_scene_steps` > 0; `pretrain_steps` 0 is no stage. A config with today's
  fields comes back unchanged (a copy).

  Raises:
    rstg_jax.errors.CheckpointError (a ValueError; one line): the config used a trial
      option that no longer exists (`backbone.coords = True`,
      `pretrain_target = 'digit_position'`).
  """
  saved = copy.deepcopy(saved)
  saved.setdefault('data', {}).setdefault('no_pair_prob', 1.0 / 47.0)
  b = saved.setdefault('backbone', {})
  b.setdefault('frames', 1)
  if 'pretrain' in b and not any(k in b for k in _OLD_FIELDS):
    return saved
  old = {k: b.pop(k, _OLD_DEFAULTS.get(k)) for k in _OLD_FIELDS}
  removed = [f'{k}={old[k]!r}' for k, bad in (('coords', True),
                                               ('pretrain_target', 'digit_position'))
             if old[k] == bad and (k == 'coords' or old['pretrain_steps'] > 0)]
  if removed:
    raise errors.CheckpointError(
        f'this run used backbone.{" and backbone.".join(removed)}, a trial option that '
        'no longer exists (docs/syncmnist_cpu.md#old-config-fields); read it with a '
        'checkout from before the pre-training stages (git log -S pretrain_target), or '
        'start fresh.')
  stages = ()
  if old['pretrain_steps'] > 0:
    stages = ('digit',)
    if old['pretrain_target'] == 'digit_motion':
      stages += ('motion',) + (('scene',) if old['pretrain_scene_steps'] > 0 else ())
  b['pretrain'] = {
      'stages': stages,
      'steps': {'digit': old['pretrain_steps'] or 1_000,
                'motion': old['pretrain_motion_steps'] or 1_000,
                'scene': old['pretrain_scene_steps'] or 1_000},
      'batch_size': old['pretrain_batch_size'], 'lr': old['pretrain_lr'],
      'cache_path': old['cache_path']}
  return saved
