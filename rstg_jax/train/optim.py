"""Optimizer, learning rate and the plateau rule, from the `config.optim` block.

Learning rate of step s = `optim.learning_rate` x an optional warmup / cosine schedule x a
plateau scale that is divided by `optim.plateau.factor` (10, as in the paper) when the
test metric stops improving. The plateau rule runs on the host after each evaluation,
since the metric only exists there (`optax.contrib.reduce_on_plateau` would read a value
at every update); its state lives in the train state, so a resumed run continues it.
Parameters under a frozen mask (from the task) get no update at all: no gradient step,
no weight decay, no momentum.
"""

from typing import Any, Callable, Optional

import jax
import numpy as np
import optax

from rstg_jax.train import config_checks

OPTIMIZERS = ('sgd', 'adam')
LR_SCHEDULES = ('constant', 'cosine')
PLATEAU_METRICS = ('top1', 'loss')


def config_errors(optim) -> list[str]:
  """Readable problems of a `config.optim` block (empty when it is usable)."""
  errors = []
  if optim.optimizer not in OPTIMIZERS:
    errors.append(f'Unknown optim.optimizer {optim.optimizer!r}. Valid: '
                  f'{", ".join(OPTIMIZERS)}.')
  if optim.lr_schedule not in LR_SCHEDULES:
    errors.append(f'Unknown optim.lr_schedule {optim.lr_schedule!r}. Valid: '
                  f'{", ".join(LR_SCHEDULES)}.')
  if optim.plateau.metric not in PLATEAU_METRICS:
    errors.append(f'Unknown optim.plateau.metric {optim.plateau.metric!r}. Valid: '
                  f'{", ".join(PLATEAU_METRICS)}.')
  if not 0.0 < optim.plateau.factor < 1.0:
    errors.append(f'optim.plateau.factor must be in (0, 1), got {optim.plateau.factor}.')
  errors += config_checks.positive_errors(
      ('optim.learning_rate', optim.learning_rate, 'a positive finite number'),
      ('optim.weight_decay', optim.weight_decay, 'a finite number >= 0', dict(allow_zero=True)),
      ('optim.grad_clip_norm', optim.grad_clip_norm, 'a finite number >= 0',
       dict(allow_zero=True)),
      ('optim.warmup_steps', optim.warmup_steps, 'an integer >= 0',
       dict(integer=True, allow_zero=True)))
  m = optim.momentum
  if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
    errors.append(f'optim.momentum={m!r} must be in [0, 1).')
  return errors


def create_learning_rate_fn(optim, total_steps: int) -> Callable[[Any], Any]:
  """Base learning rate per step, before the plateau scale."""
  lr, warmup = optim.learning_rate, optim.warmup_steps
  if optim.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
  else:
    main = optax.constant_schedule(lr)
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup])


def create_optimizer(optim, lr_fn, frozen: Optional[Any] = None
                     ) -> optax.GradientTransformation:
  """SGD with Nesterov momentum (paper) or Adam; leaves where `frozen` is True get zero
  updates (`frozen`: a pytree of bools over the params, or None)."""
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.optimizer == 'sgd':
    if optim.weight_decay > 0:
      parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(optax.sgd(lr_fn, momentum=optim.momentum or None,
                           nesterov=optim.nesterov))
  elif optim.optimizer == 'adam':
    if optim.weight_decay > 0:
      parts.append(optax.adamw(lr_fn, weight_decay=optim.weight_decay))
    else:
      parts.append(optax.adam(lr_fn))
  else:
    raise ValueError(f'Unknown optimizer {optim.optimizer!r}')
  tx = optax.chain(*parts)
  if frozen is None:
    return tx
  labels = jax.tree.map(lambda f: 'frozen' if f else 'train', frozen)
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)


def combine_masks(*masks) -> Optional[Any]:
  """Elementwise OR of frozen masks over the same params (None entries are skipped)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  return jax.tree.map(lambda *fs: any(fs), *masks)


def update_plateau(plateau: dict, eval_metrics: dict, rule) -> tuple[dict, bool]:
  """Host-side plateau rule; returns the new plateau state and whether it reduced.

  Args:
    plateau: {'scale', 'best', 'num_bad'} (host or device scalars).
    eval_metrics: {'top1', 'loss', ...} of the evaluation just made.
    rule: the `config.optim.plateau` block (metric, factor, patience, min_delta,
      min_scale).
  """
  value = eval_metrics['top1'] if rule.metric == 'top1' else -eval_metrics['loss']
  scale, best, num_bad = (float(plateau['scale']), float(plateau['best']),
                          int(plateau['num_bad']))
  reduced = False
  if value > best + rule.min_delta:
    best, num_bad = value, 0
  else:
    num_bad += 1
    if num_bad >= rule.patience and scale > rule.min_scale:
      scale, num_bad, reduced = max(scale * rule.factor, rule.min_scale), 0, True
  return {'scale': np.float32(scale), 'best': np.float32(best),
          'num_bad': np.int32(num_bad)}, reduced
