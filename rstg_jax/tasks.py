"""The task registry: `config.data.name` -> the task object the trainer is handed.

The built-in tasks are imported only when asked for, so SyncMNIST never imports the
Something-Something code (nor TensorFlow). A new data set registers its task here, or
from its own code (a test, a notebook) with `register('name', task)`; see the README's
"Add a data set / add a model".
"""

import importlib

from rstg_jax import errors

# name -> module with a `TASK` attribute (imported on first use).
_BUILTIN = {
    'syncmnist': 'rstg_jax.syncmnist.task',
    'ssv1': 'rstg_jax.ssv1.task',
}
_REGISTERED = {}


def register(name: str, task) -> None:
  """Makes `task` (a `rstg_jax.train.task.Task`) the task of `config.data.name == name`."""
  _REGISTERED[name] = task


def names() -> tuple[str, ...]:
  return tuple(sorted({*_BUILTIN, *_REGISTERED}))


def get(name: str):
  """The task registered under `name`; ConfigError listing the known names otherwise."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name in _BUILTIN:
    return importlib.import_module(_BUILTIN[name]).TASK
  raise errors.ConfigError(f'Unknown data.name {name!r}. Valid: {", ".join(names())}.')


def for_config(config, check_data: bool = True):
  """The task of `config.data.name`, after checking the whole config (and, with
  `check_data`, that the data is where the config says); raises ConfigError with every
  problem before anything heavy runs."""
  # pylint: disable=g-import-not-at-top
  from rstg_jax.train import setup
  task = get(config.data.name)
  setup.validate(config, task)
  if check_data:
    task.check_data(config)
  return task
