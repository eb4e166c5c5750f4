"""Backbone pre-training as a list of stages, and the backbone's on-disk cache.

The paper (Sec. 3.1): the SyncMNIST backbone is "a small CNN with 3 layers, pre-trained to
classify a digit randomly placed in a frame of the video". Here pre-training is a list of
stages (`config.backbone.pretrain.stages`), run in order by one loop (`pretrain_backbone`),
each training `SmallCNN` plus its own heads with Adam, from the backbone the stage before
left (the heads start afresh and are thrown away):

  'digit'   the paper's: one frame holding one digit; its class from globally pooled
            features (`DigitClassifier`), so the features name the digit wherever it is;
  'motion'  two frames of one digit, one step of the videos' motion apart; its class and
            its step (`NUM_STEPS` classes per axis) from globally pooled features
            (`MotionClassifier`), so every feature under the digit says how it moved;
  'scene'   two consecutive frames of the task's own videos; every digit's class and step
            at the feature-map cell under its centre (`SceneClassifier`). Labels of the
            task's videos other than their class: the 'privileged' protocol
            (`rstg_jax.syncmnist.protocols`).

A two-frame stage after a one-frame one widens the backbone's first layer
(`widen_to_two_frames`: the same features until the earlier frame's weights move); a
one-frame result for a two-frame model is widened at the end. Only the `SmallCNN`
parameters come back: the dict a video model expects at `params['backbone']`.

`save_backbone` / `load_backbone` store them as a plain `.npz` keyed by '/'-joined
parameter paths (e.g. `conv0/kernel`), readable with numpy alone. The cache is keyed by
everything that determines the result (`Plan.cache_key`: the stages and their steps,
width, frames, batch size, learning rate, seed, the scene's videos, and a fingerprint of
the MNIST training digits), stored in the file as the JSON string `__key__`;
`load_cached_backbone` returns None and a one-line reason when the key differs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import socket
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util
from tqdm.auto import tqdm

from rstg_jax import cli
from rstg_jax import errors
from rstg_jax.syncmnist import pretrain_data
from rstg_jax.syncmnist import protocols
from rstg_jax.syncmnist.backbone import SmallCNN, feature_size
from rstg_jax.syncmnist.render import FRAME
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import state as state_lib
from rstg_jax.train import steps as steps_lib

NUM_DIGIT_CLASSES = 10
NUM_STEPS = pretrain_data.NUM_STEPS  # 20 per-axis offsets of one step of motion

#: Key entry of the cache file; bump CACHE_FORMAT when pre-training changes what it makes.
CACHE_KEY = '__key__'
CACHE_FORMAT = 2  # 2: the stages


class PretrainDivergedError(errors.DivergedError):
  """The pre-training loss became NaN/inf; the message is one line saying what to do."""


class DigitClassifier(nn.Module):
  """The 'digit' stage's network: backbone, global average pool, 10-way linear classifier.

  Global average pooling makes the classifier blind to where the digit is, so the backbone
  has to produce digit features at every position: what the video models need.
  """

  width: int = 512
  frames: int = 1  # SmallCNN.frames: the input then has `frames` channels

  @nn.compact
  def __call__(self, frames: jax.Array, train: bool = False) -> jax.Array:
    del train  # the trainer's model contract; no dropout or BatchNorm here
    fmap = SmallCNN(self.width, frames=self.frames, name='backbone')(frames)
    return nn.Dense(NUM_DIGIT_CLASSES, name='classifier')(fmap.mean(axis=(1, 2)))


class MotionClassifier(nn.Module):
  """A two-frame backbone and linear heads for the digit (10 classes) and its step
  between the frames (`NUM_STEPS` classes per axis): logits [B, 10 + 2 * NUM_STEPS]
  from globally pooled features, or with `per_cell` [B, h, w, 10 + 2 * NUM_STEPS] at
  every feature-map cell after a LayerNorm of its features (`SceneClassifier`)."""

  width: int = 512
  frames: int = 2
  per_cell: bool = False

  @nn.compact
  def __call__(self, frames: jax.Array, train: bool = False) -> jax.Array:
    del train
    features = SmallCNN(self.width, frames=self.frames, name='backbone')(frames)
    if self.per_cell:
      # One cell's features are far larger than their frame mean: without the norm the
      # first steps' gradients drove the backbone's ReLUs dead (loss at chance for good).
      features = nn.LayerNorm(name='cell_norm')(features)
    else:
      features = features.mean(axis=(1, 2))
    return jnp.concatenate([nn.Dense(NUM_DIGIT_CLASSES, name='classifier')(features),
                            nn.Dense(2 * NUM_STEPS, name='motion')(features)], axis=-1)


class SceneClassifier(MotionClassifier):
  """`MotionClassifier`'s heads at every cell; `at_cells` reads them under the digits."""

  per_cell: bool = True


def pooled(logits, batch):
  """The 'digit' and 'motion' stages' logits as they are, every example a target."""
  return logits, jnp.ones(batch['label'].shape, jnp.float32)


def at_cells(logits, batch):
  """The 'scene' stage's logits [B, h, w, C] read at each digit's cell ([B, K, C]), and
  which digits are targets (`batch['valid']`: not sharing a cell)."""
  b, h, w, c = logits.shape
  at = jnp.take_along_axis(logits.reshape(b, h * w, c), batch['cell'][..., None], axis=1)
  return at, batch['valid']


def _losses(at, batch):
  """Cross-entropies per target: the digit's, plus the step's two axes' when the logits
  have a step head (`MotionClassifier`)."""
  ce = optax.softmax_cross_entropy_with_integer_labels
  d, p = NUM_DIGIT_CLASSES, NUM_STEPS
  losses = [ce(at[..., :d], batch['label'])]
  if at.shape[-1] > d:
    losses += [ce(at[..., d:d + p], batch['step'][..., 0]),
               ce(at[..., d + p:], batch['step'][..., 1])]
  return losses


def train_step(state, batch, *, model, tx, read: Callable = pooled):
  """One Adam step on the summed cross-entropies, averaged over the targets."""
  video = steps_lib.scale_pixels(batch['video'])

  def loss_fn(params):
    at, weight = read(model.apply({'params': params}, video), batch)
    n = jnp.maximum(weight.sum(), 1.0)
    return (sum(_losses(at, batch)) * weight).sum() / n, n

  (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return dict(state, step=state['step'] + 1, params=params, opt_state=opt_state), {
      'loss': (loss * n, n)}


def eval_step(state, batch, *, model, read: Callable = pooled):
  """Masked sums: 'loss', digit top-1 ('top1') and, with a step head, the mean step
  error in canvas pixels ('step_error_px')."""
  logits = model.apply({'params': state['params']}, steps_lib.scale_pixels(batch['video']))
  at, weight = read(logits, batch)
  weight = weight * batch['mask'].reshape(batch['mask'].shape + (1,) * (weight.ndim - 1))
  d, p, n = NUM_DIGIT_CLASSES, NUM_STEPS, weight.sum()
  right = jnp.argmax(at[..., :d], -1) == batch['label']
  out = {'loss': ((sum(_losses(at, batch)) * weight).sum(), n),
         'top1': ((right * weight).sum(), n)}
  if at.shape[-1] > d:
    guess = jnp.stack([jnp.argmax(at[..., d:d + p], -1), jnp.argmax(at[..., d + p:], -1)], -1)
    err = jnp.abs(guess - batch['step']).astype(jnp.float32).mean(-1)
    out['step_error_px'] = ((err * weight).sum(), n)
  return out, None


@dataclasses.dataclass(frozen=True)
class Stage:
  """A pre-training stage: its description (`protocols.StageInfo`: name, frames, what it
  trains on), its network (`classifier(width)`), its samples (`samples(split, indices,
  seed, source)`, `rstg_jax.syncmnist.pretrain_data`) and how its logits are read
  (`read`, for `train_step` and `eval_step`)."""
  info: protocols.StageInfo
  classifier: Callable[[int], nn.Module]
  samples: Callable[..., dict]
  read: Callable = pooled


STAGES = {
    'digit': Stage(protocols.STAGES['digit'], DigitClassifier, pretrain_data.digit_batch),
    'motion': Stage(protocols.STAGES['motion'], MotionClassifier, pretrain_data.step_batch),
    'scene': Stage(protocols.STAGES['scene'], SceneClassifier,
                   functools.partial(pretrain_data.scene_batch, map_size=feature_size(FRAME)),
                   at_cells),
}
assert set(STAGES) == set(protocols.STAGES)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything that determines a pre-trained backbone.

  Attributes:
    stages: (name, steps) of each stage, in order (`STAGES`).
    width: backbone filters.
    frames: frames the model's backbone sees (1 or 2): a one-frame result is widened.
    batch_size: samples per Adam step.
    learning_rate: Adam's (constant).
    seed: seeds the initialisation, the sample order and the samples.
    source: the MNIST copy and the scene stage's videos (`pretrain_data.Source`).
  """
  stages: tuple[tuple[str, int], ...]
  width: int = 512
  frames: int = 1
  batch_size: int = 64
  learning_rate: float = 1e-3
  seed: int = 0
  source: pretrain_data.Source = pretrain_data.Source()

  def errors(self) -> list[str]:
    """What makes the plan impossible (the task's config checks say the same)."""
    out, frames = [], 1
    if self.frames not in (1, 2):
      out.append(f'frames must be 1 or 2, got {self.frames!r}')
    for name, steps in self.stages:
      if name not in STAGES:
        out.append(f'unknown stage {name!r}; valid: {", ".join(STAGES)}')
        continue
      info = STAGES[name].info
      if info.frames > self.frames:
        out.append(f"the '{name}' stage needs a backbone that sees two frames")
      if info.frames < frames:
        out.append(f"the one-frame '{name}' stage cannot follow a two-frame stage")
      frames = max(frames, info.frames)
      if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        out.append(f"the '{name}' stage needs steps >= 1, got {steps!r}")
    if len({n for n, _ in self.stages}) < len(self.stages):
      out.append('each stage runs at most once')
    return out

  def cache_key(self) -> dict[str, Any]:
    """The plan as a JSON-able dict; `source.mnist_path` enters as the fingerprint of the
    digits it resolves to (`pretrain_data.mnist_fingerprint`), and the scene's videos only
    with it."""
    names = [n for n, _ in self.stages]
    return {'format': CACHE_FORMAT, 'stages': names, 'steps': [s for _, s in self.stages],
            'width': int(self.width), 'frames': int(self.frames),
            'batch_size': int(self.batch_size), 'learning_rate': float(self.learning_rate),
            'seed': int(self.seed), 'mnist_train_sha256': pretrain_data.mnist_fingerprint(
                self.source.mnist_path),
            **({'scene_digits': int(self.source.num_digits),
                'scene_motion': str(self.source.motion)} if 'scene' in names else {})}


def pretrain_backbone(plan: Plan, *, log_every: int = 50, eval_frames: int = 2000,
                      eval_batch_size: int = 250, progress_bar: bool = True
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Runs the plan's stages in order, each from the backbone the one before left.

  Sample i of a split is fixed by (seed, split, i). Each step draws `batch_size` train
  indices at random (numpy generator seeded with `plan.seed`), so a run is reproducible;
  train samples never show the val digits (the last 10,000 MNIST training digits). Each
  stage is evaluated at its end on val samples 0..eval_frames-1 with generator seed 0
  whatever the plan's seed, so runs are compared on the same samples and no number
  printed touches test.

  Args:
    plan: what to train (`Plan`); ValueError if `plan.errors()` names a problem.
    log_every: steps between loss records (and progress-bar updates).
    eval_frames: val samples of each stage's final evaluation (0: none).
    eval_batch_size: samples per evaluation batch.
    progress_bar: show a tqdm bar per stage.

  Returns:
    (backbone_params, metrics): the `SmallCNN` parameters (nested dict of numpy arrays,
    for `params['backbone']`), and {'stages': {name: that stage's metrics}, 'seconds':
    wall time of all}. A stage's metrics: `train_loss` (list of (step, mean loss since
    the previous record)), `final_train_loss`, `seconds`, `steps_per_second` and, when
    evaluated, `val_accuracy` (digit top-1), `val_loss`, `eval_frames` and, for the
    stages with a step head, `val_step_error_px` (canvas pixels).
  """
  problems = plan.errors()
  if not plan.stages or problems:
    raise ValueError('cannot pre-train: ' + ('; '.join(problems) or 'no stage'))
  backbone, frames, per_stage = None, 1, {}
  for name, steps in plan.stages:
    stage, start = STAGES[name], time.time()
    if backbone is not None and stage.info.frames > frames:
      backbone = widen_to_two_frames(backbone)
    frames = stage.info.frames
    model, state, history = _train_stage(stage, steps, plan, backbone, log_every,
                                         progress_bar)
    metrics = {'train_loss': history, 'final_train_loss': history[-1][1]}
    if eval_frames > 0:
      metrics.update(_evaluate(stage, model, state, plan.source, eval_frames,
                               eval_batch_size))
    seconds = time.time() - start
    per_stage[name] = dict(metrics, seconds=seconds, steps_per_second=steps / seconds)
    backbone = jax.device_get(state['params']['backbone'])
  if frames < plan.frames:
    backbone = widen_to_two_frames(backbone)
  return backbone, {'stages': per_stage,
                    'seconds': sum(m['seconds'] for m in per_stage.values())}


def widen_to_two_frames(params: dict[str, Any]) -> dict[str, Any]:
  """One-frame `SmallCNN` parameters as two-frame ones (`SmallCNN.frames = 2`) that
  compute the same features: the first conv's kernel gets zero weights for the earlier
  frame's channels, in front of the current frame's (the order of
  `backbone.with_previous_frame`)."""
  kernel = np.asarray(params['conv0']['kernel'])  # [3, 3, C, width]
  widened = np.concatenate([np.zeros_like(kernel), kernel], axis=2)
  return dict(params, conv0=dict(params['conv0'], kernel=widened))


def _model_and_params(stage: Stage, plan: Plan, backbone):
  """The stage's network and its initial parameters (the heads fresh, the backbone
  `backbone` when given)."""
  model = stage.classifier(plan.width)
  shape = (FRAME, FRAME, stage.info.frames)
  params = state_lib.init_variables(model, jax.random.PRNGKey(plan.seed), shape)['params']
  if backbone is not None:
    params = dict(params, backbone=jax.tree.map(jnp.asarray, backbone))
  return model, params


def _train_stage(stage: Stage, steps: int, plan: Plan, backbone, log_every: int,
                 progress_bar: bool):
  """Trains one stage for `steps` steps: (its model, its final state, the loss records)."""
  model, params = _model_and_params(stage, plan, backbone)
  tx = optax.adam(plan.learning_rate)
  state = state_lib.create_train_state(params, {}, tx)
  # uint8 samples are scaled on the device; donating the state updates it in place.
  step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, read=stage.read),
                    donate_argnums=0)
  rng = np.random.default_rng(plan.seed)
  num_train = pretrain_data.num_samples('train')
  history, window = [], None
  bar = tqdm(range(steps), desc=f'pretrain backbone, {stage.info.name} (width {plan.width})',
             disable=not progress_bar, file=sys.stderr, mininterval=cli.progress_interval())
  for step in bar:
    indices = rng.integers(0, num_train, size=plan.batch_size)
    state, m = step_fn(state, stage.samples('train', indices, plan.seed, plan.source))
    window = metrics_lib.add(window, m)
    if (step + 1) % log_every == 0 or step + 1 == steps:
      mean_loss = metrics_lib.compute(jax.device_get(window))['loss']
      if not np.isfinite(mean_loss):
        bar.close()
        raise PretrainDivergedError(
            f'backbone pre-training diverged: loss {mean_loss} at step {step + 1} of '
            f"{steps} of the '{stage.info.name}' stage (learning rate "
            f'{plan.learning_rate}); nothing was cached. Lower config.backbone.pretrain.lr '
            'and rerun.')
      history.append((step + 1, mean_loss))
      window = None
      bar.set_postfix(loss=f'{mean_loss:.4f}', refresh=False)
  bar.close()
  return model, state, history


def _evaluate(stage: Stage, model, state, source: pretrain_data.Source, eval_frames: int,
              eval_batch_size: int) -> dict[str, Any]:
  """The stage's metrics on val samples 0..eval_frames-1 (generator seed 0, whatever
  the plan's seed): `val_accuracy`, `val_loss`, `eval_frames`, `val_step_error_px`."""
  eval_fn = jax.jit(functools.partial(eval_step, model=model, read=stage.read))
  eval_frames = min(eval_frames, pretrain_data.num_samples('val'))
  totals = None
  for lo in range(0, eval_frames, eval_batch_size):
    idx = np.arange(lo, min(lo + eval_batch_size, eval_frames))
    batch = dict(stage.samples('val', idx, 0, source), mask=np.ones(len(idx), np.float32))
    totals = metrics_lib.add(totals, eval_fn(state, batch)[0])
  result = metrics_lib.compute(jax.device_get(totals))
  return {'val_accuracy': result['top1'], 'val_loss': result['loss'],
          'eval_frames': eval_frames,
          **({'val_step_error_px': result['step_error_px']}
             if 'step_error_px' in result else {})}


def save_backbone(path: str | os.PathLike, params: dict[str, Any],
                  key: Optional[dict[str, Any]] = None) -> None:
  """Writes backbone parameters to `path` as an .npz keyed by '/'-joined param paths.

  Written to a temporary file of a name no other writer uses and renamed, so a crash
  never leaves a truncated cache that a later run would load, and runs that share the
  cache never write into one another's temporary file.

  Args:
    path: the .npz to write.
    params: the backbone parameters.
    key: `Plan.cache_key()`, stored as the JSON string `__key__` (None: no key; such a
      file is never reused by `load_cached_backbone`).
  """
  flat = {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params), sep='/').items()}
  if key is not None:
    flat[CACHE_KEY] = np.asarray(json.dumps(key, sort_keys=True))
  path = os.fspath(path)
  # np.savez appends .npz to names without it.
  tmp = f'{path}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp.npz'
  try:
    np.savez(tmp, **flat)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # the save failed
      os.remove(tmp)


def load_backbone(path: str | os.PathLike) -> dict[str, Any]:
  """Reads parameters written by `save_backbone` back into a nested dict of arrays."""
  with np.load(os.fspath(path), allow_pickle=False) as data:
    flat = {k: np.asarray(data[k]) for k in data.files if k != CACHE_KEY}
  return traverse_util.unflatten_dict(flat, sep='/')


def load_cached_backbone(path: str | os.PathLike, key: dict[str, Any]
                         ) -> tuple[Optional[dict[str, Any]], str]:
  """The cached backbone if `path` holds one made with `key`, else None and why.

  Returns:
    (params, reason): params is None when there is no file, the file is unreadable, it
    has no key (written before keys were stored), or its key differs; reason is one line
    naming each differing field (old -> new), suitable for a log.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return None, f'no cached backbone at {path}'
  try:  # the key and the parameters from one open file: another run may replace it
    with np.load(path, allow_pickle=False) as data:
      stored = json.loads(str(data[CACHE_KEY])) if CACHE_KEY in data.files else None
      flat = ({k: np.asarray(data[k]) for k in data.files if k != CACHE_KEY}
              if stored == key else None)
  except Exception as e:  # pylint: disable=broad-except  # any damage: recompute
    return None, f'the cached backbone {path} is unreadable ({type(e).__name__}: {e})'
  if stored is None:
    return None, (f'the cached backbone {path} does not say how it was made (written by '
                  'an older version)')
  changed = [f'{k} {stored.get(k)!r} -> {key.get(k)!r}'
             for k in sorted(set(stored) | set(key)) if stored.get(k) != key.get(k)]
  if changed:
    return None, f'the cached backbone {path} was made with other settings: ' + ', '.join(
        changed)
  return traverse_util.unflatten_dict(flat, sep='/'), ''
