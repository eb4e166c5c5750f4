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

Many processes (one per GPU, or several CPU processes), on one host or many:

  launch/local.sh 2 --config=configs/syncmnist_quick.py --workdir=runs/quick2
  python -m rstg_jax.main --coordinator_address=HOST:PORT --num_processes=N \
      --process_id=I --config=... --workdir=...        # process I of N, by hand
  sbatch launch/slurm.sbatch                            # SLURM: one task per GPU

Inside a SLURM step of several tasks (or an Open MPI job) the flags may be left out:
`jax.distributed.initialize()` then reads them from the environment. Only process 0
writes metrics, figures and logs; see rstg_jax/distributed.py.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from rstg_jax import cli
from rstg_jax import distributed
from rstg_jax import runtime

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and figures.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train, or evaluate a checkpoint.')
flags.DEFINE_string('checkpoint', 'latest',
                    '--mode=evaluate: which checkpoint: latest, best or a step number.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, which serves the coordinator there (many '
                    'processes; see launch/local.sh and launch/slurm.sbatch).')
flags.DEFINE_integer('num_processes', None, 'Number of processes in the run.')
flags.DEFINE_integer('process_id', None,
                     'This process, 0 .. num_processes - 1 (SLURM / Open MPI: from the '
                     'environment when left out).')
flags.DEFINE_integer('distributed_timeout', distributed.DEFAULT_TIMEOUT,
                     'Seconds for every process to join before the run stops with an error.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  # Before anything touches a JAX backend: the devices of every process form one mesh.
  if distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                            FLAGS.process_id, FLAGS.distributed_timeout):
    distributed.check_same_config({
        'config': json.loads(FLAGS.config.to_json_best_effort()),
        'workdir': os.path.abspath(FLAGS.workdir), 'mode': FLAGS.mode,
        'checkpoint': FLAGS.checkpoint})
  runtime.reuse_freed_memory()  # XLA:CPU intermediates: reuse, not fresh pages
  # Imported after flag parsing: `--help` and flag errors stay instant.
  # pylint: disable=g-import-not-at-top
  from rstg_jax import errors
  from rstg_jax import tasks
  from rstg_jax.train import config_checks
  from rstg_jax.train import loop
  from rstg_jax.train import setup as setup_lib
  from rstg_jax.train import workdir_lock

  config = FLAGS.config
  # Errors a user can act on end in one line, not a traceback (`rstg_jax.errors`): a
  # meaningless config value, data that is missing or refused (MNIST, a hostile pickle,
  # SSv1 label files or shards), a workdir whose checkpoints do not fit this config, a
  # NaN loss; and an OSError: a full disk or an unwritable file. Anything else is a bug.
  try:
    # Before any heavy work: a misspelt name or a meaningless value costs a second, and
    # so does a data set that is not where the config says.
    task = tasks.for_config(config)
    if FLAGS.mode == 'evaluate':
      from rstg_jax import evaluate
      evaluate.run(config, FLAGS.workdir, FLAGS.checkpoint, task=task)
      return
    # The model and the data set are built before the workdir exists: what they reject
    # leaves nothing behind.
    setup = setup_lib.make_setup(config, task)
    problem = config_checks.workdir_error(FLAGS.workdir)
    if problem:
      raise SystemExit(f'ERROR: {problem}')
    workdir_lock.hold_for_run(FLAGS.workdir)  # one run per workdir, before anything is written
    loop.train_and_evaluate(config, FLAGS.workdir, task, setup=setup)
  except (errors.RSTGError, OSError) as e:
    raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
