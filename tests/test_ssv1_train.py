"""End-to-end test of Something-Something-v1 training and dense evaluation, on a fake tree.

The tiny SSv1-format tree of `tests/ssv1_fixtures.py` is converted with the TFDS builder;
a reduced-depth I3D + RSTG (res3 and res4) starts from a fake converted "Kinetics"
checkpoint, trains two steps through the real trainer and input pipeline, and the
evaluate command scores the validation videos with the 22-view dense protocol.
Skipped where tensorflow_datasets is not installed.
"""

import collections
import csv
import json
import os

import jax
import numpy as np
import pytest

from configs import ssv1_i3d
from rstg_jax.ssv1 import convert
from rstg_jax import evaluate as evaluate_lib
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import checkpoints
from rstg_jax.train import loop as train
from rstg_jax.train import setup as setup_lib
from rstg_jax.ssv1 import task as ssv1_task
from rstg_jax.ssv1 import models as ssv1_models
import ssv1_fixtures as fx
from conftest import require

T, CROP, SHORT = 4, 24, 32  # frames 32x48: dense crops are 32x32, 11 along the width


def _config(fake, tfds_dir, init_from):
  config = ssv1_i3d.get_config()
  config.data.root = fake.root
  config.data.tfds_dir = str(tfds_dir)
  config.data.num_frames, config.data.crop_size, config.data.short_side = T, CROP, SHORT
  config.data.num_classes = len(fake.class_names)
  config.backbone.blocks = (1, 1, 1, 1)
  config.backbone.base_width = 8
  config.rstg.dim = 16
  config.rstg.scales = (1, 2)
  config.rstg.num_iters = 1
  config.init_from.path = str(init_from)
  config.batch_size = 2
  config.eval.batch_size = 4
  config.eval.size = 2
  config.num_train_steps = 2
  config.optim.learning_rate = 0.05  # a visible change in two steps
  config.log_every = config.eval.every = config.checkpoint_every = 2
  config.progress_bar = False
  return config


def _fake_kinetics_checkpoint(path, config):
  """A converted-checkpoint .npz of the plain reduced backbone with a 400-way head."""
  backbone = ssv1_models.create_ssv1_model(config).clone(num_classes=400, insert=None)
  shapes = ssv1_models.init_shapes(backbone, (T, CROP, CROP, 3))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(
          np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)

  values = jax.tree_util.tree_map_with_path(fill, shapes)
  flat = {k: np.asarray(v) for k, v in convert._flatten(values).items()}  # pylint: disable=protected-access
  convert.save_converted(str(path), flat, {'arch': 'i3d', 'source': 'fake.pkl'})
  return flat


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  require('tensorflow_datasets', 'the Something-Something pipeline')
  from rstg_jax.ssv1 import tfds_builder as tfds_mod  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp('ssv1_train')
  fake = fx.make_fake_ssv1(d / 'raw', num_classes=3,
                           videos_per_split={'train': 4, 'validation': 2})
  tfds_mod.prepare(fake.root, d / 'tfds', num_workers=2)
  config = _config(fake, d / 'tfds', d / 'kinetics.npz')
  kinetics = _fake_kinetics_checkpoint(d / 'kinetics.npz', config)
  workdir = str(d / 'workdir')
  state = train.train_and_evaluate(config, workdir, ssv1_task.TASK)
  return fake, config, kinetics, workdir, state


def test_training_steps_run_from_the_kinetics_checkpoint(run, capsys):
  fake, config, kinetics, workdir, state = run
  assert int(state['step']) == 2
  rows = metrics_lib.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_rows = [r for r in rows if r['split'] == 'train']
  test_rows = [r for r in rows if r['split'] == 'test']
  assert train_rows and all(np.isfinite(r['loss']) for r in train_rows)
  assert test_rows and np.isfinite(test_rows[-1]['loss'])
  params = jax.device_get(state['params'])
  stats = jax.device_get(state['batch_stats'])
  # Frozen BN: statistics and affine parameters are still the checkpoint's.
  np.testing.assert_array_equal(stats['res_conv1_bn']['mean'],
                                kinetics['batch_stats/res_conv1_bn/mean'])
  np.testing.assert_array_equal(params['res3_0']['branch2b_bn']['scale'],
                                kinetics['params/res3_0/branch2b_bn/scale'])
  # Convolutions trained away from the checkpoint, and so did the graph blocks' scales
  # (their only way to leave the identity).
  assert not np.allclose(params['conv1']['kernel'], kinetics['params/conv1/kernel'])
  for block in ('res3_graph', 'res4_graph'):
    assert float(params[block]['map']['residual_scale']) != 0.0
  assert params['pred']['kernel'].shape == (256, 3)  # res5 of width 8 x 32; 3-way head
  meta = json.load(open(os.path.join(workdir, 'checkpoints', '2', 'meta', 'metadata')))
  assert meta['class_names'] == list(fake.class_names)


def test_dense_evaluation_writes_one_prediction_per_video(run):
  fake, _, _, workdir, _ = run
  summary = evaluate_lib.run(None, workdir, 'latest')  # the config from the checkpoint
  good = [v for v, _ in fake.splits['validation'] if v != fake.bad['no_decodable_frame']]
  assert summary['eval_mode'] == 'dense' and summary['views_per_video'] == 22.0
  assert summary['count'] == len(good) and 0.0 <= summary['top1'] <= summary['top5'] <= 1.0
  with open(os.path.join(workdir, 'eval_2', 'predictions.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['video_id'] for r in rows) == sorted(good)
  labels = dict(fake.splits['validation'])
  for r in rows:
    assert int(r['label']) == labels[r['video_id']]
    assert r['label_name'] == fake.class_names[int(r['label'])]
    top5 = [int(c) for c in r['top5'].split()]
    assert len(top5) == 3 and top5[0] == int(r['pred'])  # 3 classes: top-5 holds all
  assert np.mean([int(r['pred']) == int(r['label']) for r in rows]) == summary['top1']


def test_dense_logits_are_the_mean_of_each_views_own_logits(run):
  """The dense protocol's per-video logits equal the mean of the 22 views' logits, each
  view run through the model on its own (no batching, padding or masking involved)."""
  _, _, _, workdir, _ = run
  config = evaluate_lib.config_from_checkpoint(workdir, 'latest')
  setup = setup_lib.make_setup(config, ssv1_task.TASK)
  with checkpoints.manager(workdir, read_only=True) as mngr:
    state, _ = checkpoints.restore(mngr, checkpoints.resolve_step(mngr, 'latest'),
                                   setup.abstract_state)
  result = ssv1_task.TASK.evaluator(config, setup.dataset, final=True)(setup, state)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  preprocess = setup.dataset.preprocess
  apply = jax.jit(lambda v, clip: setup.model.apply(v, preprocess(clip), train=False))
  per_video = collections.defaultdict(list)
  for b in setup.dataset.view_batches('dense', split=config.eval.split):
    for video, index, mask in zip(b['video'], b['video_index'], b['mask'], strict=True):
      if mask:
        logits = apply(variables, video[None])  # one clip: one view at a time
        per_video[int(index)].append(np.asarray(logits[0], np.float64))
  assert sorted(per_video) == list(range(len(result.labels)))
  assert all(len(v) == 22 for v in per_video.values())
  want = np.stack([np.mean(per_video[i], axis=0) for i in range(len(per_video))])
  np.testing.assert_allclose(result.logits, want, rtol=1e-4, atol=1e-5)
  # And not merely one of the views: the views disagree, so any single one differs.
  assert not np.allclose(result.logits, np.stack([per_video[i][0] for i in
                                                  range(len(per_video))]), atol=1e-6)


def test_training_stream_is_reproducible_from_any_start_step(run):
  # Resume semantics: the stream that starts at step s is a function of (seed, s), so a
  # run resumed from a checkpoint at step s reads the same data each time it is resumed.
  _, config, _, _, _ = run
  a, b = ssv1_task.TASK.create_dataset(config), ssv1_task.TASK.create_dataset(config)
  first = [a.batch(s)['video'] for s in (0, 1)]
  np.testing.assert_array_equal(b.batch(0)['video'], first[0])
  np.testing.assert_array_equal(b.batch(1)['video'], first[1])
  assert first[0].dtype == np.uint8 and first[0].shape == (2, T, CROP, CROP, 3)
  resumed = [ssv1_task.TASK.create_dataset(config).batch(5)['video'] for _ in range(2)]
  np.testing.assert_array_equal(resumed[0], resumed[1])
  assert a.stream_seed(5) != a.stream_seed(0)
