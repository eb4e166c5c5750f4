"""The README's "Add a data set / add a model" recipe, followed step by step.

A toy task is defined and registered here, in the test, exactly as the README says; the
unchanged trainer then trains it for 5 steps, the evaluate command scores it, and the
same command resumes it to 8 steps.
"""

import json
import os

import flax.linen as nn
import numpy as np

from configs import common
from rstg_jax import evaluate
from rstg_jax import tasks
from rstg_jax.train import input as input_lib
from rstg_jax.train import loop
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import task as task_lib


# Step 1: a data set. batch(step) is a pure function of the step; eval_batches() is a
# fixed test set in fixed-size batches with a mask.
class ToyData:
  """Two-frame 4x4 videos whose brightness is the label."""
  class_names = ('dark', 'mid', 'bright')
  num_classes = 3
  input_shape = (2, 4, 4, 1)
  description = 'toy brightness videos'

  def __init__(self, batch_size, eval_size, eval_batch_size):
    self.batch_size, self.eval_size, self.eval_batch_size = (
        batch_size, eval_size, eval_batch_size)

  def _make(self, seeds):
    labels = np.asarray([s % 3 for s in seeds], np.int32)
    noise = np.random.default_rng(int(seeds[0])).integers(0, 60, (len(seeds), 2, 4, 4, 1))
    return {'video': (noise + 90 * labels[:, None, None, None, None]).astype(np.uint8),
            'label': labels}

  def batch(self, step):
    return self._make(step * self.batch_size + np.arange(self.batch_size))

  def eval_batches(self):
    return input_lib.padded_eval_batches(lambda idx: self._make(10_000 + idx),
                                         self.eval_size, self.eval_batch_size)


# Step 2: a model: apply(variables, video, train=...) -> logits.
class ToyModel(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, video, train: bool):
    return nn.Dense(self.num_classes)(video.mean(axis=(1, 2, 3)))


# Step 3: the task: the factories that read the config.
class ToyTask(task_lib.Task):
  name = 'toy'

  def create_model(self, config):
    return ToyModel(num_classes=config.data.num_classes)

  def create_dataset(self, config, process_index=0, process_count=1):
    return ToyData(config.batch_size, config.eval.size, config.eval.batch_size)


# Step 4: a config (the trainer's fields from configs/common.py + the task's).
def toy_config():
  config = common.get_config()
  config.data.name = 'toy'
  config.data.num_classes = 3
  config.batch_size = 8
  config.num_train_steps = 5
  config.optim.optimizer = 'adam'
  config.optim.learning_rate = 0.1
  config.eval.size = 10
  config.eval.batch_size = 4
  config.eval.every = 5
  config.log_every = 1
  config.checkpoint_every = 5
  config.progress_bar = False
  return config


def test_a_toy_task_trains_evaluates_and_resumes(tmp_path):
  tasks.register('toy', ToyTask())  # Step 5: register it under config.data.name.
  config = toy_config()
  workdir = str(tmp_path)
  task = tasks.for_config(config)
  state = loop.train_and_evaluate(config, workdir, task)
  assert int(state['step']) == 5
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3, 4, 5]

  summary = evaluate.run(None, workdir, 'latest')  # the config from the checkpoint
  assert summary['step'] == 5 and summary['count'] == 10
  with open(os.path.join(workdir, 'eval_5', 'per_class_accuracy.json')) as f:
    assert [r['class_name'] for r in json.load(f)] == list(ToyData.class_names)

  config.num_train_steps = 8  # the same command with more steps resumes at step 5
  state = loop.train_and_evaluate(config, workdir, task)
  assert int(state['step']) == 8
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in rows if r['split'] == 'train'] == list(range(1, 9))
