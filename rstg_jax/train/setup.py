"""The trainer's setup: reads the config once and builds everything a run shares.

`make_setup(config, task)` checks the config, asks the task for the model, the data set
and the frozen mask, and returns a frozen `Setup`: the device mesh and shardings, the
optimizer, the abstract train state, the jitted steps and the `Options` the loop reads.
Training (`rstg_jax.train.loop`) and the evaluate command use the same setup. Together
with the tasks' factories, this is the only trainer code that reads the config.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from rstg_jax import errors
from rstg_jax.train import checkpoints
from rstg_jax.train import config_checks
from rstg_jax.train import optim
from rstg_jax.train import state as state_lib
from rstg_jax.train import steps


def config_errors(config) -> list[str]:
  """Problems with the trainer's own fields (the task checks its fields)."""
  problems = optim.config_errors(config.optim)
  n = jax.device_count()
  for name, value in (('batch_size', config.batch_size),
                      ('eval.batch_size', config.eval.batch_size)):
    if value <= 0 or value % n:
      problems.append(f'{name}={value} must be a positive multiple of the number of '
                      f'devices ({n}).')
  problems += config_checks.positive_errors(
      ('seed', config.seed, 'an integer >= 0', dict(integer=True, allow_zero=True)))
  for name, value in (('eval.size', config.eval.size), ('eval.every', config.eval.every),
                      ('log_every', config.log_every),
                      ('checkpoint_every', config.checkpoint_every),
                      ('keep_checkpoints', config.keep_checkpoints)):
    if value <= 0:
      problems.append(f'{name} must be positive, got {value}.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    problems.append('Set num_train_steps > 0 or num_epochs > 0.')
  if config.num_train_steps <= 0:  # epoch-based: data.train_size turns epochs into steps
    if not math.isfinite(config.num_epochs):
      problems.append(f'num_epochs={config.num_epochs!r} must be a finite number.')
    elif config.num_epochs > 0:  # 0 videos would be a 0-step run that reports "Done"
      problems += config_checks.positive_errors(
          ('data.train_size', config.data.train_size,
           'a positive integer (the training videos)',
           dict(integer=True)))
  return problems


def validate(config, task) -> None:
  """Raises `ConfigError` naming every problem of the trainer's and the task's fields:
  on one line when there is one, else one line each."""
  problems = list(dict.fromkeys(task.config_errors(config) + config_errors(config)))
  if len(problems) == 1:
    raise errors.ConfigError(f'Invalid config: {problems[0]}')
  if problems:
    raise errors.ConfigError('Invalid config:\n  ' + '\n  '.join(problems))


def num_train_steps(config) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * config.data.train_size / config.batch_size))


@dataclasses.dataclass(frozen=True)
class Options:
  """The config fields the loop uses, read once."""
  total_steps: int
  batch_size: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  progress_bar: bool
  prefetch: int
  plateau: Optional[Any]  # the config.optim.plateau rule, None when disabled
  optimizer: str  # for the log: "adam, lr 0.002, cosine schedule"
  resume_changes_ok: bool = False  # resume although the data stream changed
  # For the log, when the run's length comes from num_epochs (num_train_steps <= 0):
  # "10 epochs of 600,000 videos at batch 32"; empty otherwise.
  epochs: str = ''


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything derived from (config, task) that training and evaluation share."""
  config: Any
  config_json: dict
  task: Any
  model: Any
  dataset: Any
  options: Options
  mesh: jax.sharding.Mesh
  replicated: NamedSharding
  batch_sharding: NamedSharding
  lr_fn: Callable[[Any], Any]
  frozen: Optional[Any]
  tx: optax.GradientTransformation
  abstract_state: Any
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  logits_step: Callable[..., Any]

  def to_device(self, batch: dict) -> dict:
    # Each process hands over its part of the global batch (single-process: all of it).
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)


def make_setup(config, task, dataset=None) -> Setup:
  """Checks the config and builds the setup in one step (nothing is filled in later).

  `config.data.num_classes == 0` is set to the data set's number of classes here, before
  the model is built and the config is saved with the checkpoints.

  Args:
    config: the experiment config.
    task: the task object (`rstg_jax.train.task.Task`).
    dataset: a data set to use instead of `task.create_dataset(config)`.
  """
  validate(config, task)
  if dataset is None:
    dataset = task.create_dataset(config, jax.process_index(), jax.process_count())
  if config.data.num_classes == 0:  # 0: the data set's classes (e.g. its labels file)
    config.data.num_classes = int(dataset.num_classes)
  model = task.create_model(config)
  if dataset.num_classes != config.data.num_classes:
    raise errors.ConfigError(
        f'config.data.num_classes={config.data.num_classes} but the data set has '
        f'{dataset.num_classes} classes; set --config.data.num_classes='
        f'{dataset.num_classes}.')
  # Auto axis types: with Explicit ones (make_mesh's default) jraph's gather/scatter
  # does not shard.
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  total = num_train_steps(config)
  lr_fn = optim.create_learning_rate_fn(config.optim, total)

  def init_variables(rng):
    return state_lib.init_variables(model, rng, dataset.input_shape)

  params_shape = jax.eval_shape(init_variables, jax.random.key(0))['params']
  frozen = task.frozen_mask(config, params_shape)
  tx = optim.create_optimizer(config.optim, lr_fn, frozen)

  def init_state(rng):
    variables = init_variables(rng)
    return state_lib.create_train_state(variables['params'],
                                        variables.get('batch_stats', {}), tx)

  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(init_state, jax.random.key(0)))
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)  # != the init key
  preprocess = getattr(dataset, 'preprocess', None) or steps.scale_pixels
  o = config.optim
  options = Options(
      total_steps=total, batch_size=config.batch_size, log_every=config.log_every,
      eval_every=config.eval.every, checkpoint_every=config.checkpoint_every,
      keep_checkpoints=config.keep_checkpoints, progress_bar=config.progress_bar,
      prefetch=config.data.prefetch, plateau=o.plateau if o.plateau.enabled else None,
      optimizer=f'{o.optimizer}, lr {o.learning_rate}, {o.lr_schedule} schedule',
      resume_changes_ok=config.resume_changes_ok,
      epochs='' if config.num_train_steps > 0 else (
          f'{config.num_epochs:g} epochs of {config.data.train_size:,} videos at batch '
          f'{config.batch_size}'))
  return Setup(
      config=config, config_json=checkpoints.config_json(config), task=task, model=model,
      dataset=dataset, options=options, mesh=mesh, replicated=replicated,
      batch_sharding=batch_sharding, lr_fn=lr_fn, frozen=frozen, tx=tx,
      abstract_state=abstract,
      train_step=jax.jit(
          functools.partial(steps.train_step, model=model, tx=tx, base_key=base_key,
                            preprocess=preprocess),
          in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
          donate_argnums=0),
      eval_step=jax.jit(
          functools.partial(steps.eval_step, model=model, preprocess=preprocess),
          in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated)),
      logits_step=jax.jit(
          functools.partial(steps.logits_step, model=model, preprocess=preprocess),
          in_shardings=(replicated, batch_sharding), out_shardings=replicated))


def initial_state(setup: Setup, workdir: str, say) -> state_lib.State:
  """The step-0 state: fresh init (`config.seed`) with the task's pre-trained weights."""
  variables = jax.jit(
      lambda k: state_lib.init_variables(setup.model, k, setup.dataset.input_shape),
      out_shardings=setup.replicated)(jax.random.key(setup.config.seed))
  variables = setup.task.load_pretrained(setup.config, workdir, variables, say)
  if jax.process_count() > 1:
    # Every process must start from the same weights, and a task's pretraining (the
    # SyncMNIST backbone) runs in each process: on a GPU it need not be bitwise
    # reproducible. Process 0's weights win.
    variables = multihost_utils.broadcast_one_to_all(jax.device_get(variables))
  return jax.jit(lambda p, bs: state_lib.create_train_state(p, bs, setup.tx),
                 out_shardings=setup.replicated)(variables['params'],
                                                 variables.get('batch_stats', {}))


def describe(setup: Setup, params) -> str:
  """The model's log line, with the number of trained parameters."""
  trained = state_lib.param_count(params) - (
      state_lib.param_count(params, setup.frozen) if setup.frozen is not None else 0)
  return f'{setup.task.describe_model(setup.config, params)}; {trained:,} trained'
