r"""Trains an RSTG model (or a baseline) and evaluates it during training.

  python -m rstg_jax.main --config=configs/syncmnist.py --workdir=runs/sync3
  python -m rstg_jax.main --config=configs/syncmnist.py --config.ablation=space_only \
      --workdir=runs/sync3_space_only

Something-Something-v1 (see the docstrings of configs/ssv1_*.py for the recipes):

  python -m rstg_jax.main --config=configs/ssv1_i3d.py --workdir=runs/ssv1_i3d \
      --config.data.root=PATH --config.init_from.path=kinetics_i3d_r50.npz

Every config field can be overridden with --config.<field>=<value>. Running the same
command again resumes from the workdir's latest checkpoint. `--mode=evaluate` evaluates a
checkpoint instead (same as `python -m rstg_jax.evaluate`).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from rstg_jax import cli
from rstg_jax import runtime

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and figures.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train, or evaluate a checkpoint.')
flags.DEFINE_string('checkpoint', 'latest',
                    '--mode=evaluate: which checkpoint: latest, best or a step number.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  runtime.reuse_freed_memory()  # XLA:CPU intermediates: reuse, not fresh pages
  # Imported after flag parsing: `--help` and flag errors stay instant.
  # pylint: disable=g-import-not-at-top
  from rstg_jax import tasks
  from rstg_jax.train import loop

  config = FLAGS.config
  try:
    # Before any heavy work: a misspelt model or ablation name costs a second, not a run,
    # and so does a data set that is not where the config says (SSv1).
    task = tasks.for_config(config)
  except ValueError as e:
    raise SystemExit(f'ERROR: {e}') from None

  if FLAGS.mode == 'evaluate':
    from rstg_jax import evaluate
    try:
      evaluate.run(config, FLAGS.workdir, FLAGS.checkpoint, task=task)
    except ValueError as e:
      raise SystemExit(f'ERROR: {e}') from None
    return
  try:
    loop.train_and_evaluate(config, FLAGS.workdir, task)
  except loop.NonFiniteLossError as e:
    raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
