r"""Evaluates a checkpoint on the test set: top-1/top-5, per-class accuracy, confusion.

  python -m rstg_jax.evaluate --config=configs/syncmnist.py --workdir=runs/sync3 \
      [--checkpoint=latest|best|<step>]

Without --config, the config saved in the checkpoint's metadata is used. Writes into
workdir/eval_<step>/: summary.json (top1, top5, loss, count), per_class_accuracy.json and
.csv, confusion_matrix.csv (counts, rows = true class) and confusion.png.

The task says what is evaluated (its `evaluator(..., final=True)`). SyncMNIST: the test
split (`--checkpoint=best` is the checkpoint chosen on val), and the digit-oracle
diagnostic, printed and in summary.json under "oracle": the accuracy of an oracle that
knows which digits are present but not how they move, the model's accuracy on pair and
no-pair videos, and how often it names a pair of present digits that do not move
together. Above the oracle, the model uses motion.

Something-Something-v1 (`config.data.name == 'ssv1'`) is evaluated on the whole
`config.eval.split` with multi-view testing: `--eval_mode=dense` (the default,
`config.eval.views`) runs 2 temporal samplings x 11 crops of 256x256 per video
(the paper's protocol) and averages each video's 22 logit vectors; `--eval_mode=center`
one centre 224 crop. It also writes predictions.csv: video_id, predicted class (index
and name), the top-5 indices, and the label (index and name).

  python -m rstg_jax.evaluate --workdir=runs/ssv1_i3d --checkpoint=best

A progress bar with ETA runs on stderr (`config.progress_bar`). Bad input ends in one
`ERROR:` line, no traceback: a workdir that does not exist, a --config that defines
another model than the checkpoint (each field named, old -> new), missing or refused
data, a checkpoint that cannot be read. `latest` and `best` fall back past a checkpoint
that cannot be read (a line says which step is evaluated instead); a step number that
does not restore names the readable steps.
"""

import dataclasses
import os
from typing import Optional

from absl import app
from absl import flags
import jax
import ml_collections

from rstg_jax import cli
from rstg_jax import errors
from rstg_jax import runtime
from rstg_jax import tasks
from rstg_jax.train import checkpoints
from rstg_jax.train import evaluators
from rstg_jax.train import setup as setup_lib
from rstg_jax.train import workdir_lock


def _tuples(x):
  # JSON turns the config's tuples (e.g. rstg.scales) into lists; the model expects tuples.
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def config_from_checkpoint(workdir: str, checkpoint: str = 'latest', say=print
                          ) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with (from its JSON metadata), with the fields
  added since (its task's `upgrade_config`)."""
  saved = checkpoints.read_config(workdir, str(checkpoint), say)
  saved = tasks.get(saved.get('data', {}).get('name')).upgrade_config(saved)
  return ml_collections.ConfigDict(_tuples(saved))


def check_workdir(workdir: str) -> None:
  """CheckpointError (one line) unless `workdir` is a folder with a checkpoints/ folder."""
  if not os.path.isdir(workdir):
    raise errors.CheckpointError(f'workdir {workdir!r} does not exist (--workdir: the '
                                 'folder a training run wrote).')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise errors.CheckpointError(
        f'workdir {workdir!r} has no checkpoints/ folder: no training run saved there yet.')


def run(config: Optional[ml_collections.ConfigDict], workdir: str,
        checkpoint: str = 'latest', *, task=None, dataset=None,
        eval_mode: Optional[str] = None, progress: bool = True) -> dict:
  """Evaluates one checkpoint of `workdir`; returns the summary dict.

  Args:
    config: the run's config; None: read it from the checkpoint. A config given must
      define the same model as the checkpoint's (else a CheckpointError names each field
      that differs, old -> new).
    workdir: the training workdir (its checkpoints/ subdirectory is read).
    checkpoint: 'latest', 'best' (by top-1 on the task's selection split: val for
      SyncMNIST) or a step number. 'latest' and 'best' fall back past a checkpoint that
      cannot be read, saying so; a step that cannot be restored is an error naming the
      readable steps.
    task: the task (default: `rstg_jax.tasks.for_config(config)`).
    dataset: a stand-in data set for tests (default: the task's).
    eval_mode: multi-view data sets only (SSv1): 'dense' or 'center'; default
      `config.eval.views`.
    progress: a progress bar with ETA on stderr (when `config.progress_bar`).

  Raises:
    rstg_jax.errors.RSTGError: bad input (config, data or checkpoint), one line.
  """
  is_main = jax.process_index() == 0
  say = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  check_workdir(workdir)
  given = config is not None
  if not given:
    config = config_from_checkpoint(workdir, checkpoint, say)
  if eval_mode is not None:
    if 'views' not in config.eval:
      raise errors.ConfigError('--eval_mode applies to multi-view data sets (SSv1) only.')
    config.eval.views = eval_mode
  if task is None:
    task = tasks.for_config(config)  # a missing data set fails before any compile
  setup = setup_lib.make_setup(config, task, dataset)
  with (workdir_lock.reading(workdir, say),  # no run starts or prunes while we read
        checkpoints.manager(workdir, read_only=True) as mngr):
    state, meta, step = checkpoints.restore_for_eval(
        mngr, str(checkpoint), setup.abstract_state, setup.config_json if given else None,
        say, upgrade=task.upgrade_config)
  class_names = list(setup.dataset.class_names)
  if meta.get('class_names') not in (None, class_names):
    raise errors.CheckpointError('The checkpoint was trained with another class order than '
                                 'the data set gives now; its predictions would be '
                                 'mislabelled.')
  evaluator = task.evaluator(config, setup.dataset, final=True)
  if progress and config.progress_bar and is_main and 'progress' in getattr(
      evaluator, '__dataclass_fields__', {}):
    evaluator = dataclasses.replace(evaluator, progress=True)
  result = evaluator(setup, state)
  summary = {'step': int(step), **result.metrics, 'workdir': os.path.abspath(workdir)}
  out_dir = os.path.join(workdir, f'eval_{step}')
  if is_main:  # every process holds the gathered result; one writes it
    evaluators.write_reports(out_dir, result, class_names, summary)
    print(f'Checkpoint step {step}: top-1 {summary["top1"]:.4f}, top-5 '
          f'{summary["top5"]:.4f}, loss {summary["loss"]:.4f} on {summary["count"]} '
          f'{summary.get("split", "test")} videos; outputs in {out_dir}', flush=True)
    for line in result.lines:
      print(line, flush=True)
  return summary


def _define_flags():
  # Defined only when run as a program, so `rstg_jax.main` can import this module.
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'The training workdir.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best, or a step number.')
  flags.DEFINE_enum('eval_mode', None, ['dense', 'center'],
                    'SSv1 only: views per video (default: config.eval.views).')
  config_flags.DEFINE_config_file(
      'config', None, 'Config file (default: the one saved in the checkpoint).',
      lock_config=True)
  flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  runtime.reuse_freed_memory()  # XLA:CPU intermediates: reuse, not fresh pages
  flag_values = flags.FLAGS
  try:
    run(flag_values.config, flag_values.workdir, flag_values.checkpoint,
        eval_mode=flag_values.eval_mode)
  except (errors.RSTGError, OSError) as e:  # bad input: one line; anything else is a bug
    raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
