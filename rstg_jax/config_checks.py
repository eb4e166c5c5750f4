"""Config values that parse but mean nothing, found before any work is done.

`value_errors(config)` is a pure function of the config (no file system, no devices): the
trainer's `validate_config` adds its messages to its own, so `python -m rstg_jax.main`
stops with them before the workdir is created. Each message names the field, the value
and what is accepted.

Fields are looked up by every name they have had (`learning_rate` or
`optim.learning_rate`, ...), and a field a config does not have is not checked, so the
checks hold for every config family (SyncMNIST, Something-Something) and survive a
reorganisation of the config into namespaces.

`workdir_error(workdir)` is the one check that touches the disk: it creates the workdir
(after the config checks passed) and writes a probe file in it.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Optional

_MISSING = object()


def _lookup(config, *paths: str) -> tuple[Optional[str], Any]:
  """(dotted name, value) of the first of `paths` that the config has, else (None, _MISSING)."""
  for path in paths:
    node = config
    try:
      for part in path.split('.'):
        node = node[part]
    except (KeyError, AttributeError, TypeError, IndexError):
      continue
    return path, node
  return None, _MISSING


def _number(value) -> Optional[float]:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def value_errors(config) -> list[str]:
  """One message per meaningless value: NaN or non-positive learning rates, widths and
  sizes that must be positive, an empty `rstg.scales`, an epoch-based run over an empty
  training set, ... An empty list when all is well."""
  errors = []

  def positive(name_paths, what='a positive number', integer=False, allow_zero=False):
    name, value = _lookup(config, *name_paths)
    if name is None:
      return
    x = _number(value)
    bad = (x is None or not math.isfinite(x) or (x < 0 if allow_zero else x <= 0)
           or (integer and x != int(x)))
    if bad:
      errors.append(f'{name}={value!r} must be {what}.')

  positive(('optim.learning_rate', 'learning_rate'), 'a positive finite number')
  positive(('rstg.dim',), 'a positive integer', integer=True)
  positive(('lstm_dim',), 'a positive integer', integer=True)
  positive(('backbone.width',), 'a positive integer', integer=True)
  positive(('rstg.num_iters',), 'an integer >= 0', integer=True, allow_zero=True)
  for name in ('optim.weight_decay', 'weight_decay', 'optim.grad_clip_norm', 'grad_clip_norm',
               'optim.warmup_steps', 'warmup_steps'):
    positive((name,), 'a finite number >= 0', allow_zero=True)
  name, momentum = _lookup(config, 'optim.momentum', 'momentum')
  if name is not None:
    m = _number(momentum)
    if m is None or not 0.0 <= m < 1.0:
      errors.append(f'{name}={momentum!r} must be in [0, 1).')

  name, scales = _lookup(config, 'rstg.scales')
  if name is not None:
    if not isinstance(scales, (tuple, list)) or not scales:
      errors.append(f'rstg.scales={scales!r} must name at least one grid size, e.g. '
                    '(1, 2, 3) for 1x1, 2x2 and 3x3 nodes.')
    elif not all(type(s) is int and s > 0 for s in scales):  # pylint: disable=unidiomatic-typecheck
      errors.append(f'rstg.scales={tuple(scales)!r} must hold positive integers (grid '
                    'sizes).')

  _, pretrain_steps = _lookup(config, 'backbone.pretrain_steps')
  if pretrain_steps is not _MISSING:
    positive(('backbone.pretrain_steps',), 'an integer >= 0', integer=True,
             allow_zero=True)
    if _number(pretrain_steps) and _number(pretrain_steps) > 0:
      positive(('backbone.pretrain_lr',), 'a positive finite number')
      positive(('backbone.pretrain_batch_size',), 'a positive integer', integer=True)

  # An epoch-based run turns data.train_size into steps: 0 videos would be a 0-step run
  # that reports "Done". SyncMNIST also draws its training stream from it.
  _, steps = _lookup(config, 'num_train_steps')
  name, epochs = _lookup(config, 'num_epochs')
  by_epochs = name is not None and _number(steps) is not None and _number(steps) <= 0
  if by_epochs:
    e = _number(epochs)
    if e is None or not math.isfinite(e):
      errors.append(f'num_epochs={epochs!r} must be a finite number.')
      by_epochs = False
    else:
      by_epochs = e > 0
  _, data_name = _lookup(config, 'data.name')
  if by_epochs or data_name == 'syncmnist':
    positive(('data.train_size',), 'a positive integer (the training videos'
             + (', which turn num_epochs into steps)' if by_epochs else ')'), integer=True)
  return errors


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
