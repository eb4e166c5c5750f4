"""Training and evaluation loop (flax examples layout; generic over models and data sets).

`train_and_evaluate(config, workdir)` trains `rstg_jax.models.create_model(config)` on
`rstg_jax.input_pipeline.create_dataset(config)`:

- The train state is a plain dict (big_vision habit): step, params, batch_stats, opt_state
  and the plateau state of the learning rate. It is replicated; each batch is split over a
  1-D mesh axis `data` of all devices (of all processes), so the same code runs on one CPU,
  on 4 fake CPU devices, on a GPU or on several hosts.
- Resumable exactly: the batch of step s is a function of (seed, s) (input_pipeline), the
  dropout key of step s is `fold_in(key, s)`, and everything else that changes during
  training (optimizer moments and counters, the plateau scale) is in the checkpoint.
  A run killed and restarted with the same command ends with the same parameters.
  Something-Something-v1 (a tf.data stream) is the exception for the data only: a
  resumed run reads a fresh shuffle seeded by (seed, resume step) instead of the rest
  of the interrupted one (see `input_pipeline.SSv1`); everything else resumes exactly.
- Something-Something-v1 (`config.data.name == 'ssv1'`): the model comes from
  `rstg_jax.models.ssv1_models`, `init_from` may be a converted Kinetics checkpoint
  (.npz from `rstg_jax.convert`, merged strictly; the graph blocks and the head keep
  their init), frozen BatchNorm gets no update, and `evaluate_views` averages the
  logits of each video's views (the dense 22-view protocol of `rstg_jax.evaluate`).
- Model selection: the plateau, the best checkpoint and every number printed during
  training come from the data set's `eval_batches` (SyncMNIST: the `val` split). A data
  set with a held-out `test_batches` (SyncMNIST) is evaluated on it once, at the end, with
  the checkpoint chosen on val: a row with 'split': 'test' in metrics.jsonl.
- Learning rate: `config.learning_rate` times an optional warmup/cosine schedule times a
  plateau scale that is divided by 10 when the eval metric stops improving (paper). The
  plateau logic runs on the host after each evaluation, since the metric only exists
  there; `optax.contrib.reduce_on_plateau` would instead read a value at every update.
- A NaN or inf in the loss or the gradients stops the run before anything bad is saved.
"""

import dataclasses
import functools
import json
import logging as logging_std
import math
import os
import sys
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from rstg_jax import cli
from rstg_jax.train import input as input_pipeline
from rstg_jax.train import metrics as metrics_lib

State = dict[str, Any]

OPTIMIZERS = ('sgd', 'adam')
LR_SCHEDULES = ('constant', 'cosine')
PLATEAU_METRICS = ('top1', 'loss')


# ------------------------------------------------------------------------------------
# Config checks: run first, so a typo costs nothing.
# ------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict, check_model_names: bool = True):
  """Raises ValueError with a readable message for an unusable config.

  Args:
    config: the experiment config.
    check_model_names: check `config.model` / `config.ablation` against the names the
      model factory knows (skipped when a model object is handed to the trainer).
  """
  errors = []
  if config.data.name not in input_pipeline.DATASETS:
    errors.append(f'Unknown data.name {config.data.name!r}. Valid: '
                  f'{", ".join(input_pipeline.DATASETS)}.')
  elif check_model_names and config.data.name == 'ssv1':
    from rstg_jax.ssv1 import models as ssv1_models  # pylint: disable=g-import-not-at-top
    errors.extend(ssv1_models.config_errors(config))
  elif check_model_names:
    try:
      from rstg_jax.syncmnist import models  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(f'Cannot import rstg_jax.models to check the model name: {e}') from e
    if config.model not in models.MODEL_NAMES:
      errors.append(f'Unknown model {config.model!r}. Valid names: '
                    f'{", ".join(models.MODEL_NAMES)}.')
    if config.ablation not in models.ABLATIONS:
      errors.append(f'Unknown ablation {config.ablation!r}. Valid names: '
                    f'{", ".join(models.ABLATIONS)}.')
  if config.optimizer not in OPTIMIZERS:
    errors.append(f'Unknown optimizer {config.optimizer!r}. Valid: {", ".join(OPTIMIZERS)}.')
  if config.lr_schedule not in LR_SCHEDULES:
    errors.append(f'Unknown lr_schedule {config.lr_schedule!r}. Valid: '
                  f'{", ".join(LR_SCHEDULES)}.')
  errors.extend(_data_config_errors(config))
  if config.plateau.metric not in PLATEAU_METRICS:
    errors.append(f'Unknown plateau.metric {config.plateau.metric!r}. Valid: '
                  f'{", ".join(PLATEAU_METRICS)}.')
  if not 0.0 < config.plateau.factor < 1.0:
    errors.append(f'plateau.factor must be in (0, 1), got {config.plateau.factor}.')
  n = jax.device_count()
  for name in ('batch_size', 'eval_batch_size'):
    value = config[name]
    if value <= 0 or value % n:
      errors.append(f'{name}={value} must be a positive multiple of the number of '
                    f'devices ({n}).')
  for name in ('eval_size', 'eval_every', 'log_every', 'checkpoint_every',
               'keep_checkpoints'):
    if config[name] <= 0:
      errors.append(f'{name} must be positive, got {config[name]}.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    errors.append('Set num_train_steps > 0 or num_epochs > 0.')
  if errors:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(errors))


def _data_config_errors(config) -> list[str]:
  """SyncMNIST fields: data.motion and data.val_size."""
  if config.data.name != 'syncmnist':
    return []
  errors = []
  from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
  motion = config.data.get('motion', 'clean')
  if motion not in syncmnist.MOTIONS:
    errors.append(f'Unknown data.motion {motion!r}. Valid: {", ".join(syncmnist.MOTIONS)}.')
  val_size = config.data.get('val_size', 1)
  if not 0 < val_size <= syncmnist.SPLIT_SIZES['val']:
    errors.append(f'data.val_size must be in 1..{syncmnist.SPLIT_SIZES["val"]}, got {val_size}.')
  return errors


def eval_split_name(dataset) -> str:
  """What metrics.jsonl calls the rows of `dataset.eval_batches()` (SyncMNIST: 'val')."""
  return getattr(dataset, 'eval_split', 'test') if hasattr(dataset, 'test_batches') else 'test'


def num_train_steps(config) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * config.data.train_size / config.batch_size))


# ------------------------------------------------------------------------------------
# Model, optimizer, state.
# ------------------------------------------------------------------------------------


def create_model(config):
  """The model factory of the data set: Something-Something models or SyncMNIST ones."""
  # pylint: disable=g-import-not-at-top
  if config.data.name == 'ssv1':
    from rstg_jax.ssv1 import models as ssv1_models
    return ssv1_models.create_ssv1_model(config)
  from rstg_jax.syncmnist import models
  return models.create_model(config)


def create_learning_rate_fn(config, total_steps: int) -> Callable[[Any], Any]:
  """Base learning rate per step, before the plateau scale."""
  lr, warmup = config.learning_rate, config.warmup_steps
  if config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
  else:
    main = optax.constant_schedule(lr)
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup])


def create_optimizer(config, lr_fn, params) -> optax.GradientTransformation:
  """SGD with Nesterov momentum (paper) or Adam; a frozen backbone gets zero updates."""
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == 'sgd':
    if config.weight_decay > 0:
      parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.sgd(lr_fn, momentum=config.momentum or None,
                           nesterov=config.nesterov))
  elif config.optimizer == 'adam':
    if config.weight_decay > 0:
      parts.append(optax.adamw(lr_fn, weight_decay=config.weight_decay))
    else:
      parts.append(optax.adam(lr_fn))
  else:
    raise ValueError(f'Unknown optimizer {config.optimizer!r}')
  tx = optax.chain(*parts)
  frozen = None
  if config.backbone.freeze:
    if 'backbone' not in params:
      raise ValueError('config.backbone.freeze is set but the model has no `backbone` '
                       f'submodule (top-level params: {sorted(params)}).')
    frozen = {k: jax.tree.map(lambda _, k=k: k == 'backbone', v) for k, v in params.items()}
  if config.backbone.get('bn_frozen', False):
    # Frozen BatchNorm (ResNet3D) gets no gradient, but weight decay or momentum would
    # still move its scale and bias: they get no update at all.
    from rstg_jax.ssv1.resnet3d import frozen_bn_mask  # pylint: disable=g-import-not-at-top
    bn = frozen_bn_mask(flax.core.unfreeze(params))
    frozen = bn if frozen is None else jax.tree.map(lambda a, b: a or b, frozen, bn)
  if frozen is not None:
    labels = jax.tree.map(lambda f: 'frozen' if f else 'train', frozen)
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx


def init_variables(model, rng, input_shape) -> dict:
  """Model variables from a 1-video dummy input (train=False: no dropout rng needed)."""
  video = jnp.zeros((1, *input_shape), jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, video, train=False)
  return flax.core.unfreeze(variables)


def create_train_state(params, batch_stats, tx) -> State:
  return {
      'step': jnp.asarray(0, jnp.int32),
      'params': params,
      'batch_stats': batch_stats,
      'opt_state': tx.init(params),
      # Host-updated plateau state; `scale` multiplies every update inside the step.
      'plateau': {'scale': jnp.asarray(1.0, jnp.float32),
                  'best': jnp.asarray(-jnp.inf, jnp.float32),
                  'num_bad': jnp.asarray(0, jnp.int32)},
  }


def _variables(state: State, params=None) -> dict:
  variables = {'params': state['params'] if params is None else params}
  if state['batch_stats']:
    variables['batch_stats'] = state['batch_stats']
  return variables


def _preprocess(video):
  # uint8 travels host -> device (4x fewer bytes); the scaling runs on the device.
  return video.astype(jnp.float32) / 255.0


def dataset_preprocess(dataset) -> Callable[[Any], Any]:
  """The data set's on-device input normalisation (default: uint8 / 255, SyncMNIST)."""
  return getattr(dataset, 'preprocess', None) or _preprocess


def train_step(state: State, batch: dict, *, model, tx, base_key,
               preprocess=_preprocess) -> tuple[State, dict]:
  """One SGD step on a global batch; returns the new state and (sum, count) metrics."""
  step = state['step']
  dropout_key = jax.random.fold_in(base_key, step)
  video = preprocess(batch['video'])
  labels = batch['label']

  def loss_fn(params):
    logits, new_vars = model.apply(
        _variables(state, params), video, train=True, mutable=['batch_stats'],
        rngs={'dropout': dropout_key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, new_vars)

  (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  scale = state['plateau']['scale']
  updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
  params = optax.apply_updates(state['params'], updates)

  n = jnp.asarray(labels.shape[0], jnp.float32)
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  metrics = {
      'loss': (loss * n, n),
      'accuracy': (jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32), n),
      'nonfinite': (1.0 - finite.astype(jnp.float32), jnp.asarray(1.0)),
  }
  new_state = dict(state, step=step + 1, params=params, opt_state=opt_state,
                   batch_stats=new_vars.get('batch_stats', state['batch_stats']))
  return new_state, metrics


def eval_step(state: State, batch: dict, *, model,
              preprocess=_preprocess) -> tuple[dict, jax.Array]:
  """Masked (sum, count) loss, top-1 and top-5 on a test batch, and the predictions."""
  logits = model.apply(_variables(state), preprocess(batch['video']), train=False)
  labels, mask = batch['label'], batch['mask']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  k = min(5, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  pred = topk[:, 0]
  n = mask.sum()
  metrics = {
      'loss': ((loss * mask).sum(), n),
      'top1': (((pred == labels) * mask).sum(), n),
      'top5': ((jnp.any(topk == labels[:, None], -1) * mask).sum(), n),
  }
  return metrics, pred


def logits_step(state: State, video, *, model, preprocess=_preprocess) -> jax.Array:
  """Logits of a batch of clips (views of a multi-view evaluation)."""
  return model.apply(_variables(state), preprocess(video), train=False)


def update_plateau(plateau: dict, eval_metrics: dict, config) -> tuple[dict, bool]:
  """Host-side plateau logic; returns the new plateau state and whether it reduced."""
  cfg = config.plateau
  value = eval_metrics['top1'] if cfg.metric == 'top1' else -eval_metrics['loss']
  scale, best, num_bad = (float(plateau['scale']), float(plateau['best']),
                          int(plateau['num_bad']))
  reduced = False
  if value > best + cfg.min_delta:
    best, num_bad = value, 0
  else:
    num_bad += 1
    if num_bad >= cfg.patience and scale > cfg.min_scale:
      scale, num_bad, reduced = max(scale * cfg.factor, cfg.min_scale), 0, True
  return {'scale': np.float32(scale), 'best': np.float32(best),
          'num_bad': np.int32(num_bad)}, reduced


# ------------------------------------------------------------------------------------
# Devices, jitted functions, checkpoints: shared by training and the evaluate command.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  """Everything derived from (config, model, dataset) that training and eval share."""
  config: Any
  model: Any
  dataset: Any
  mesh: jax.sharding.Mesh
  replicated: NamedSharding
  batch_sharding: NamedSharding
  total_steps: int
  lr_fn: Callable[[Any], Any]
  tx: Optional[optax.GradientTransformation] = None
  abstract_state: Any = None
  train_step: Any = None
  eval_step: Any = None
  logits_step: Any = None

  def to_device(self, batch: dict) -> dict:
    # Each process hands over its part of the global batch (single-process: all of it).
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)


def make_setup(config, model=None, dataset=None) -> Setup:
  model = create_model(config) if model is None else model
  if dataset is None:
    dataset = input_pipeline.create_dataset(config, jax.process_index(),
                                            jax.process_count())
  # Auto axis types: with Explicit ones (make_mesh's default) jraph's gather/scatter
  # does not shard.
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  total = num_train_steps(config)
  return Setup(config=config, model=model, dataset=dataset, mesh=mesh,
               replicated=NamedSharding(mesh, P()),
               batch_sharding=NamedSharding(mesh, P('data')),
               total_steps=total, lr_fn=create_learning_rate_fn(config, total))


def finish_setup(setup: Setup, params_for_labels) -> Setup:
  """Optimizer, abstract state and jitted steps (needs the params' tree structure)."""
  config, model = setup.config, setup.model
  setup.tx = create_optimizer(config, setup.lr_fn, params_for_labels)

  def init_state(rng):
    variables = init_variables(model, rng, setup.dataset.input_shape)
    return create_train_state(variables['params'], variables.get('batch_stats', {}),
                              setup.tx)

  abstract = jax.eval_shape(init_state, jax.random.key(0))
  setup.abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=setup.replicated),
      abstract)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)  # != the init key
  preprocess = dataset_preprocess(setup.dataset)
  setup.train_step = jax.jit(
      functools.partial(train_step, model=model, tx=setup.tx, base_key=base_key,
                        preprocess=preprocess),
      in_shardings=(setup.replicated, setup.batch_sharding),
      out_shardings=(setup.replicated, setup.replicated),
      donate_argnums=0)
  setup.eval_step = jax.jit(
      functools.partial(eval_step, model=model, preprocess=preprocess),
      in_shardings=(setup.replicated, setup.batch_sharding),
      out_shardings=(setup.replicated, setup.replicated))
  setup.logits_step = jax.jit(
      functools.partial(logits_step, model=model, preprocess=preprocess),
      in_shardings=(setup.replicated, setup.batch_sharding),
      out_shardings=setup.replicated)
  return setup


def checkpoint_manager(workdir: str, config, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the latest `config.keep_checkpoints` saves plus the best by eval (val) top-1."""
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints),
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


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def checkpoint_meta(config, dataset, step: int, eval_metrics: Optional[dict]) -> dict:
  return {
      'step': int(step),
      'config': _config_json(config),
      # The class order is part of the model: logits index -> name.
      'class_names': list(dataset.class_names),
      'num_classes': int(dataset.num_classes),
      'eval': eval_metrics,
      'eval_split': eval_split_name(dataset),
      'jax_version': jax.__version__,
      'num_devices': jax.device_count(),
  }


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[State, dict]:
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']


def resolve_checkpoint_step(mngr: ocp.CheckpointManager, which: str) -> int:
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


def merge_params(init: dict, loaded: dict, what: str) -> dict:
  """Copies every leaf of `loaded` whose path and shape match into `init`; logs the rest.

  Like big_vision's `merge_params`, but lenient: unmatched leaves keep their fresh init
  (e.g. a classifier with another number of classes) and are listed in the log.
  """
  flat_init = flax.traverse_util.flatten_dict(init, sep='/')
  flat_loaded = flax.traverse_util.flatten_dict(loaded, sep='/')
  merged, copied, mismatched = dict(flat_init), [], []
  for k, v in flat_loaded.items():
    if k in flat_init:
      if tuple(np.shape(v)) == tuple(flat_init[k].shape):
        merged[k] = jnp.asarray(v, flat_init[k].dtype)
        copied.append(k)
      else:
        mismatched.append(f'{k} {np.shape(v)} vs {flat_init[k].shape}')
  extra = sorted(set(flat_loaded) - set(flat_init))
  missing = sorted(set(flat_init) - set(flat_loaded))
  if jax.process_index() == 0:
    print(f'{what}: copied {len(copied)} arrays; shape mismatch (kept init): '
          f'{mismatched or "none"}; not in the model: {extra or "none"}; not loaded (kept '
          f'init): {len(missing)}', flush=True)
  if not copied:
    raise ValueError(f'{what}: no parameter matched by name and shape.')
  return flax.traverse_util.unflatten_dict(merged, sep='/')


def _load_pretrained_backbone(config, workdir: str, params: dict, say) -> dict:
  """Pretrains the backbone on single digits once (cached in workdir/backbone.npz)."""
  from rstg_jax.syncmnist import pretrain  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'backbone.npz')
  if os.path.exists(path):
    say(f'Backbone: loading the pretrained backbone cached at {path}')
    backbone = pretrain.load_backbone(path)
  else:
    say(f'Backbone: pretraining for {config.backbone.pretrain_steps} steps on single '
        'digits (cached in workdir/backbone.npz for later runs)')
    backbone, pre = pretrain.pretrain_backbone(
        width=config.backbone.width, steps=config.backbone.pretrain_steps,
        batch_size=config.backbone.pretrain_batch_size, seed=config.seed,
        learning_rate=config.backbone.pretrain_lr, mnist_path=config.data.mnist_path,
        log_every=max(1, config.backbone.pretrain_steps // 10),
        progress_bar=config.progress_bar and jax.process_index() == 0)
    say(f'Backbone pretraining done in {pre.get("seconds", 0):.0f} s: final train loss '
        f'{pre.get("final_train_loss", float("nan")):.4f}, single-digit val accuracy '
        f'{pre.get("val_accuracy", float("nan")):.4f}')
    if jax.process_index() == 0:
      pretrain.save_backbone(path, backbone)  # atomic (temporary file + rename)
  if 'backbone' not in params:
    raise ValueError('config.backbone.pretrain_steps > 0 but the model has no `backbone` '
                     f'submodule (top-level params: {sorted(params)}).')
  merged = merge_params({'backbone': params['backbone']},
                        {'backbone': jax.device_get(backbone)}, 'pretrained backbone')
  return dict(params, backbone=merged['backbone'])


def _load_init_from(path: str, params: dict, say) -> dict:
  """Parameters of another run (its workdir or checkpoints dir), latest step."""
  ckpt_dir = os.path.join(path, 'checkpoints')
  ckpt_dir = ckpt_dir if os.path.isdir(ckpt_dir) else path
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0)
  with ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_handlers=handlers,
                             options=options) as m:
    step = m.latest_step()
    if step is None:
      raise ValueError(f'config.init_from={path!r}: no checkpoint found in {ckpt_dir}.')
    tree = m.item_metadata(step)['state']
    # A numpy target restores host arrays: the source run may have had another device
    # layout, and shapes may differ (e.g. the classifier), which merge_params handles.
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
    loaded = m.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  say(f'init_from: parameters of {ckpt_dir} step {step}')
  return merge_params(params, loaded['params'], f'init_from {path}')


# Model variables that a Kinetics checkpoint cannot hold: the inserted graph blocks (and
# the new head, `convert.DEFAULT_DONT_LOAD`).
GRAPH_DONT_LOAD = ('(params|batch_stats)/res[2-5]_graph/.*',)


def _load_converted(path: str, variables: dict, config, say) -> dict:
  """Variables filled from a converted Kinetics checkpoint (`rstg_jax.convert` .npz).

  Strict (`convert.merge_pretrained`): every checkpoint tensor is used or skipped (the
  Kinetics head by default) and every model variable is loaded or matched by a dont_load
  pattern (the graph blocks, the head, `config.init_dont_load`); shapes must agree.
  BatchNorm statistics come from the checkpoint too: with frozen BN they are the model.
  """
  from rstg_jax.ssv1 import convert  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ValueError(f'config.init_from={path!r}: no such file. Convert a Kinetics '
                     'checkpoint first: python -m rstg_jax.convert --src MODEL.pkl '
                     f'--dst {path} --arch i3d_r50|c2d_r50')
  dont_load = (convert.DEFAULT_DONT_LOAD + GRAPH_DONT_LOAD
               + tuple(config.get('init_dont_load', None) or ()))
  try:
    loaded = convert.load_converted(path)
  except OSError as e:
    raise ValueError(f'config.init_from={path!r}: cannot read the converted checkpoint '
                     f'({e}).') from None
  arch, want = loaded[2].get('arch'), config.backbone.get('arch', None)
  if arch and want and arch != want:
    raise ValueError(f'config.init_from={path!r} holds a {arch} network but '
                     f'config.backbone.arch={want!r}; convert the {want} checkpoint '
                     f'(--arch {want}_r50) or set --config.backbone.arch={arch}.')
  host = jax.tree.map(np.asarray, jax.device_get(variables))
  merged, report = convert.merge_pretrained(host, loaded, dont_load=dont_load)
  meta = loaded[2]
  say(f'init_from {path}: loaded {len(report["loaded"])} tensors '
      f'({meta.get("arch", "?")}, source {os.path.basename(str(meta.get("source", "?")))}); '
      f'skipped {len(report["skipped"])} checkpoint tensors '
      f'({"; ".join(report["skipped"]) or "none"}); kept at init '
      f'{len(report["kept_at_init"])} model variables '
      f'({", ".join(sorted({"/".join(k.split("/")[:2]) for k in report["kept_at_init"]})) or "none"})')
  return merged


def _param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------
# Evaluation loop.
# ------------------------------------------------------------------------------------


def evaluate(setup: Setup, state: State, collect: bool = False, batches=None):
  """(sum, count) totals over `batches` (default: the data set's `eval_batches()`, the
  split selected on); with `collect`, also labels and predictions."""
  totals, labels, preds = None, [], []
  for batch in (setup.dataset.eval_batches() if batches is None else batches):
    m, pred = setup.eval_step(state, setup.to_device(batch))
    totals = metrics_lib.add(totals, m)
    if collect:
      # `pred` is replicated (the whole global batch); labels and mask are this process's
      # rows, so other processes' rows are gathered (identity with one process).
      label, mask = batch['label'], batch['mask']
      if jax.process_count() > 1:
        label, mask = multihost_utils.process_allgather((label, mask), tiled=True)
      keep = np.asarray(mask) > 0
      labels.append(np.asarray(label)[keep])
      preds.append(np.asarray(pred)[keep])
  totals = jax.device_get(totals)
  if collect:
    return totals, np.concatenate(labels), np.concatenate(preds)
  return totals


def evaluate_views(setup: Setup, state: State, batches, num_videos: int) -> dict:
  """Multi-view evaluation: the logits of each video's views are averaged.

  Args:
    setup: from `make_setup` + `finish_setup`.
    state: the train state.
    batches: this process's part of fixed-size batches with 'video', 'label', 'mask' and
      'video_index' (a video's position in the split, the same on every process); rows
      with mask 0 are padding.
    num_videos: videos in the split (video_index < num_videos).

  Returns:
    {'logits': [num_videos, C] mean logits, 'labels': [num_videos], 'views': [num_videos]
    number of views seen per video}.
  """
  sums, views, labels = None, np.zeros(num_videos, np.int64), np.full(num_videos, -1)
  for batch in batches:
    logits = setup.logits_step(state, setup.to_device({'video': batch['video']})['video'])
    host = {k: np.asarray(batch[k]) for k in ('video_index', 'label', 'mask')}
    if jax.process_count() > 1:
      # The logits are the whole global batch; gather the other processes' row info.
      host = multihost_utils.process_allgather(host, tiled=True)
    logits = np.asarray(jax.device_get(logits), np.float64)
    if sums is None:
      sums = np.zeros((num_videos, logits.shape[-1]), np.float64)
    keep = host['mask'] > 0
    idx = host['video_index'][keep]
    np.add.at(sums, idx, logits[keep])
    np.add.at(views, idx, 1)
    labels[idx] = host['label'][keep]
  if sums is None or not views.all():
    raise ValueError(f'Multi-view evaluation saw {int((views > 0).sum())} of {num_videos} '
                     'videos.')
  return {'logits': sums / views[:, None], 'labels': labels, 'views': views}


def video_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """top-1, top-5 and the mean cross-entropy of per-video (averaged) logits."""
  k = min(5, logits.shape[-1])
  topk = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return {'top1': float(np.mean(topk[:, 0] == labels)),
          'top5': float(np.mean(np.any(topk == labels[:, None], -1))),
          'loss': float(-np.mean(log_probs[np.arange(len(labels)), labels])),
          'count': int(len(labels))}


# ------------------------------------------------------------------------------------
# Training loop.
# ------------------------------------------------------------------------------------


class _DropMissingMetricsWarning(logging_std.Filter):
  """Periodic saves between evaluations have no metrics by design; orbax warns each time."""

  def filter(self, record):
    return 'did not provide metrics' not in str(record.msg)


_DROP_MISSING_METRICS_WARNING = _DropMissingMetricsWarning()


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN/inf; the last good checkpoint is kept."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, model=None,
                       dataset=None) -> State:
  """Trains (resuming from workdir's latest checkpoint if any); returns the final state.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: checkpoints/, metrics.jsonl, curves.png and backbone.npz go here.
    model: a flax module (default: `rstg_jax.models.create_model(config)`).
    dataset: an `input_pipeline.Dataset` (default: `create_dataset(config)`).
  """
  validate_config(config, check_model_names=model is None)
  is_main = jax.process_index() == 0
  say = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  os.makedirs(workdir, exist_ok=True)

  setup = make_setup(config, model, dataset)
  dataset = setup.dataset
  if dataset.num_classes != config.num_classes:
    raise ValueError(f'config.num_classes={config.num_classes} but the data set has '
                     f'{dataset.num_classes} classes.')
  say(f'Data: {dataset.description}')
  say(f'Devices: {jax.device_count()} x {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {jax.process_count()} process(es); global batch '
      f'{config.batch_size}, {config.batch_size // jax.device_count()} per device')

  init_key = jax.random.key(config.seed)
  variables = jax.jit(lambda k: init_variables(setup.model, k, dataset.input_shape),
                      out_shardings=setup.replicated)(init_key)
  finish_setup(setup, variables['params'])
  logging.get_absl_logger().addFilter(_DROP_MISSING_METRICS_WARNING)  # once
  mngr = checkpoint_manager(workdir, config)
  latest = mngr.latest_step()

  if latest is not None:
    state, meta = restore(mngr, latest, setup.abstract_state)
    if meta.get('class_names') != list(dataset.class_names):
      raise ValueError('The checkpoint was trained with another class order: '
                       f'{meta.get("class_names")} vs {list(dataset.class_names)}.')
    changed = sorted(k for k, v in _flat(_config_json(config)).items()
                     if _flat(meta.get('config', {})).get(k, v) != v)
    say(f'Resuming from {mngr.directory} step {latest}'
        + (f' (config fields changed since: {changed})' if changed else ''))
  else:
    if config.init_from and config.init_from.endswith('.npz'):
      variables = _load_converted(config.init_from, variables, config, say)
    params = variables['params']
    if config.backbone.pretrain_steps > 0:
      params = _load_pretrained_backbone(config, workdir, params, say)
    if config.init_from and not config.init_from.endswith('.npz'):
      params = _load_init_from(config.init_from, params, say)
    state = jax.jit(
        lambda p, bs: create_train_state(p, bs, setup.tx),
        out_shardings=setup.replicated)(params, variables.get('batch_stats', {}))
  del variables

  n_params = _param_count(state['params'])
  n_frozen = _param_count(state['params'].get('backbone', {})) if config.backbone.freeze else 0
  if config.backbone.get('bn_frozen', False):
    from rstg_jax.ssv1 import resnet3d  # pylint: disable=g-import-not-at-top
    mask = resnet3d.frozen_bn_mask(state['params'])
    n_frozen += sum(int(np.prod(x.shape)) for x, m in zip(
        jax.tree.leaves(state['params']), jax.tree.leaves(mask)) if m)
  if config.data.name == 'ssv1':
    from rstg_jax.ssv1 import models as ssv1_models  # pylint: disable=g-import-not-at-top
    say(f'Model: {ssv1_models.describe(config, state["params"])}; '
        f'{n_params - n_frozen:,} trained (frozen BN scale/bias excluded)')
  else:
    say(f'Model: {type(setup.model).__name__} ({config.model}, ablation {config.ablation}): '
        f'{n_params:,} parameters, {n_params - n_frozen:,} trained')

  start, total = int(jax.device_get(state['step'])), setup.total_steps
  say(f'Training steps {start} -> {total} ({config.optimizer}, lr {config.learning_rate}, '
      f'{config.lr_schedule} schedule); workdir {os.path.abspath(workdir)}')
  writer = metrics_lib.JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), start, is_main)

  split = eval_split_name(dataset)
  window, pending, last_eval = None, [], None
  t_window, n_window = time.time(), 0
  pbar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
                   disable=not (is_main and config.progress_bar), file=sys.stderr,
                   mininterval=cli.progress_interval())

  def check_finite(step_now):
    """Raises at the first non-finite step since the last check (before any save)."""
    for s, bad in jax.device_get(pending):
      if bad[0] > 0:
        last = mngr.latest_step()
        raise NonFiniteLossError(
            f'Loss or gradients became NaN/inf at step {s}; training stopped. Nothing '
            f'after it was saved: the last good checkpoint is step {last} in '
            f'{mngr.directory}. Try a lower learning_rate (now {config.learning_rate}) '
            f'or set grad_clip_norm, then rerun the same command to resume from it.')
    pending.clear()

  try:
    with input_pipeline.Prefetcher(dataset, start, total, setup.to_device,
                                   config.data.prefetch) as batches:
      for s, batch in batches:
        state, m = setup.train_step(state, batch)
        step = s + 1
        pending.append((step, m['nonfinite']))
        window = metrics_lib.add(window, {k: m[k] for k in ('loss', 'accuracy')})
        n_window += 1
        pbar.update(1)
        is_last = step == total
        is_log = step % config.log_every == 0 or is_last
        is_eval = step % config.eval_every == 0 or is_last
        is_ckpt = step % config.checkpoint_every == 0 or is_eval
        if not (is_log or is_eval or is_ckpt):
          continue
        check_finite(step)
        plateau = jax.device_get(state['plateau'])
        if is_log:
          row = metrics_lib.compute(jax.device_get(window))
          dt = time.time() - t_window
          row = {'step': step, 'split': 'train', **row,
                 'lr': float(setup.lr_fn(s)) * float(plateau['scale']),
                 'videos_per_sec': n_window * config.batch_size / max(dt, 1e-9)}
          writer.write(row)
          pbar.set_postfix(loss=f'{row["loss"]:.3f}', acc=f'{row["accuracy"]:.3f}',
                           **({f'{split}_top1': f'{last_eval["top1"]:.3f}'} if last_eval else {}),
                           refresh=False)  # drawn at the bar's own interval
          window, t_window, n_window = None, time.time(), 0
        eval_metrics = None
        if is_eval:
          t0 = time.time()
          eval_metrics = metrics_lib.compute(evaluate(setup, state))
          last_eval = eval_metrics
          writer.write({'step': step, 'split': split, **eval_metrics,
                        'eval_seconds': time.time() - t0})
          msg = (f'step {step}: {split} top-1 {eval_metrics["top1"]:.4f}, top-5 '
                 f'{eval_metrics["top5"]:.4f}, loss {eval_metrics["loss"]:.4f}')
          if config.plateau.enabled:
            new_plateau, reduced = update_plateau(plateau, eval_metrics, config)
            state['plateau'] = jax.device_put(new_plateau, setup.replicated)
            if reduced:
              msg += f'; plateau: learning-rate scale -> {float(new_plateau["scale"]):g}'
          if is_main:
            tqdm.tqdm.write(msg, file=sys.stdout)
          t_window = time.time()  # evaluation time is not training throughput.
        if is_ckpt:
          mngr.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              meta=ocp.args.JsonSave(checkpoint_meta(config, dataset, step, eval_metrics))),
                    metrics=eval_metrics)
    test_metrics = _final_test(setup, mngr, state, writer, total, workdir, say)
  finally:
    pbar.close()
    mngr.wait_until_finished()
    mngr.close()

  if is_main:
    metrics_lib.plot_curves(metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl')),
                            os.path.join(workdir, 'curves.png'))
    say(f'Done: step {int(jax.device_get(state["step"]))}; curves in '
        f'{os.path.join(workdir, "curves.png")}'
        + (f'; last {split} top-1 {last_eval["top1"]:.4f}' if last_eval else '')
        + (f'; test top-1 {test_metrics["top1"]:.4f} (step {test_metrics["step"]}, chosen '
           f'on {split})' if test_metrics else ''))
  return state


def _final_test(setup: Setup, mngr, state: State, writer, total: int, workdir: str,
                say) -> Optional[dict]:
  """Evaluates the checkpoint chosen on the eval split once on the held-out test set.

  Only for data sets with `test_batches` (SyncMNIST). Writes a 'split': 'test' row for
  the best checkpoint by eval top-1 (the latest if none has metrics); a rerun of a
  finished run that already has that row does not evaluate again.
  """
  dataset = setup.dataset
  if not hasattr(dataset, 'test_batches') or int(jax.device_get(state['step'])) != total:
    return None
  best = mngr.best_step()
  best = mngr.latest_step() if best is None else best
  if best is None:
    return None
  for row in metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl')):
    if row.get('split') == 'test' and row.get('step') == best and row.get('final_step') == total:
      return row
  if best != int(jax.device_get(state['step'])):
    state = restore(mngr, best, setup.abstract_state)[0]
  t0 = time.time()
  metrics = metrics_lib.compute(evaluate(setup, state, batches=dataset.test_batches()))
  row = {'step': int(best), 'split': 'test', **metrics,
         'count': int(getattr(dataset, 'test_size', 0)), 'chosen_on': eval_split_name(dataset),
         'final_step': int(total), 'eval_seconds': time.time() - t0}
  writer.write(row)
  say(f'test (checkpoint of step {best}, chosen on {eval_split_name(dataset)} top-1): top-1 '
      f'{metrics["top1"]:.4f}, top-5 {metrics["top5"]:.4f}, loss {metrics["loss"]:.4f} on '
      f'{row["count"]} videos')
  return row


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
