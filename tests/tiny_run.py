"""Shared by the tests that start `rstg_jax.main` as a command: a run of a few seconds.

`TINY` is a list of command-line overrides of configs/syncmnist_base.py (SyncMNIST) that make a
model small enough to compile and train for 20 steps in seconds on one CPU core; the
Mean+LSTM baseline compiles fastest, the RSTG ablations are a few times slower.
"""

import os

import jax
import numpy as np

TINY = ['--config.backbone.width=8', '--config.baseline.lstm_dim=16', '--config.rstg.dim=16',
        '--config.rstg.num_iters=1', '--config.batch_size=8', '--config.eval.batch_size=8',
        '--config.eval.size=8', '--config.data.val_size=8', '--config.num_train_steps=4',
        '--config.log_every=2',
        '--config.eval.every=2', '--config.checkpoint_every=2', '--config.progress_bar=False',
        '--config.backbone.pretrain.stages=()', '--config.optim.optimizer=adam',
        '--config.optim.learning_rate=0.01']


def checkpoint_params(workdir: str, step: int) -> list[np.ndarray]:
  """The parameter leaves saved at `step` in workdir/checkpoints, as host arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0)
  with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                             item_handlers={'state': ocp.StandardCheckpointHandler()},
                             options=options) as m:
    tree = m.item_metadata(step)['state']
    # Host targets: the saving run's devices (2 processes) need not exist here.
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
    state = m.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  return [np.asarray(x) for x in jax.tree.leaves(state['params'])]


def tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from the event files in logdir (TFRecord framing:
  length u64, its crc u32, the Event proto, its crc u32), read without TensorBoard."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(logdir)):
    if not name.startswith('events.out.tfevents'):
      continue
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out
