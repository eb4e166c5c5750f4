"""The task contract: everything the trainer asks of a data set and its models.

A task is one data set with the models trained on it (`rstg_jax.syncmnist.task`,
`rstg_jax.ssv1.task`, or a toy one defined in a test). The trainer calls these methods
and nothing else of the task; they are the only task code that reads the config.
Subclass `Task` and override what differs; register the instance under its
`config.data.name` with `rstg_jax.tasks.register`.

The model contract: `model.apply(variables, video, train=bool, [mutable, rngs])` ->
logits [B, num_classes], with `video` as the data set's `preprocess` returns it.

The data set contract (`create_dataset`): `batch(step)` -> this process's part of the
global batch of `step` ({'video': uint8 [b, T, H, W, C], 'label': int32 [b]}), a pure
function of (seed, step) so that a resumed run equals an uninterrupted one;
`eval_batches()` -> fixed-size batches of the split that training evaluates and selects
on (`Task.selection_split`), with a 'mask' (0 on padding rows); `class_names`,
`num_classes`, `input_shape` (T, H, W, C), `description` (one log line); optionally
`preprocess` (on-device normalisation; default uint8 / 255). A task with a held-out
`Task.test_split` also gives `test_batches()`, batches of that split in the same form.

Splits: every evaluation during training (the plateau rule, the 'best' checkpoint, every
printed number) reads `selection_split`, and metrics.jsonl names its rows after it. A
task with a `test_split` (SyncMNIST: select on 'val', report 'test') gets that split
evaluated once, at the end of training, with the checkpoint chosen on `selection_split`
(`evaluator(..., final=True)`; a row with 'split': test_split, 'chosen_on' and
'final_step'); the evaluate command runs the same evaluator. Without one (SSv1: its
labelled validation split is the only one), the selection split is also what is reported.
"""

from typing import Any, Optional

from rstg_jax import errors
from rstg_jax.train import evaluators
from rstg_jax.train import init_from
from rstg_jax.train.state import param_count


class Task:
  """Defaults that suit a task without pre-trained weights or frozen parts."""

  name = 'task'
  # The split evaluated during training (see "Splits" above) and the held-out split
  # evaluated once at the end of training and by the evaluate command (None: none).
  selection_split = 'test'
  test_split: Optional[str] = None

  def config_errors(self, config) -> list[str]:
    """Readable problems with the task's own config fields (model names...)."""
    del config
    return []

  def upgrade_config(self, saved: dict) -> dict:
    """A config saved by an older version (a JSON dict) with today's fields, for
    resuming and evaluating its run; ValueError (one line, saying what to do) when it
    cannot be mapped. Default: unchanged."""
    return saved

  def protocol(self, config) -> Optional[tuple[str, str]]:
    """(name, why) of the evaluation protocol the config follows, printed at the start
    of a run and stored in its config.json (`rstg_jax.syncmnist.protocols`); None: the
    task defines none."""
    del config
    return None

  def check_data(self, config) -> None:
    """Raises `rstg_jax.errors.DataError` (or a subclass), with what to do, when the data
    is not where the config says or is refused; a `ConfigError` when a config value
    disagrees with the data (the entry points print either as one line).
    Cheap (file-system checks only): runs before anything is compiled."""
    del config

  def create_model(self, config):
    """The flax module to train (see the model contract above)."""
    raise NotImplementedError

  def create_dataset(self, config, process_index: int = 0, process_count: int = 1):
    """The data set (see the data set contract above)."""
    raise NotImplementedError

  def frozen_mask(self, config, params) -> Optional[Any]:
    """A pytree of bools over `params` (True: never updated), or None."""
    del config, params
    return None

  def load_pretrained(self, config, workdir: str, variables: dict, say) -> dict:
    """Fresh-run variables with pre-trained weights merged in (called once, at step 0).

    Default: `config.init_from.path`, another run's latest checkpoint, merged strictly
    (`init_from.dont_load` regexes keep their init).
    """
    del workdir
    if config.init_from.path:
      return init_from.init_from_run(config.init_from.path, variables,
                                     tuple(config.init_from.dont_load), say)
    return variables

  def describe_model(self, config, params) -> str:
    """One log line about the model."""
    return f'{type(self.create_model(config)).__name__}: {param_count(params):,} parameters'

  def explainer(self, config, dataset):
    """What `python -m rstg_jax.explain` asks of the task: videos by index and their
    figures (the contract is in `rstg_jax.explain`). Default: none."""
    del config, dataset
    raise errors.ConfigError(f'the {self.name} task has no explain figures (Task.explainer)')

  def evaluator(self, config, dataset, final: bool = False):
    """The evaluation to run: during training, on `selection_split` (`final=False`), or
    in the evaluate command and, for a task with a `test_split`, once at the end of
    training (`final=True`). Default: one view per video, `dataset.eval_batches()`, or
    `dataset.test_batches()` when final and the task has a `test_split`."""
    del config
    if final and self.test_split is not None:
      return evaluators.SingleView(batches=dataset.test_batches, split=self.test_split)
    return evaluators.SingleView(split=self.selection_split)
