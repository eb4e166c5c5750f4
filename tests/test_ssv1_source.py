"""Something-Something shards belong to the copy they came from (issue 31).

Two fake trees (`tests/ssv1_fixtures.py`) differ only in their videos: B is a copy of A
in which one training video's first frame comes from a video of another class. A is
converted; a run on B must convert B or stop in one line, never read A's shards. Also:
`data.num_classes` comes from the labels file (a wrong value is one line), a changed
source is caught, the SSv1 data set builds for the values of its fields that the config
check accepts, and a run on the fixture prints no TensorFlow line.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from configs import ssv1_i3d
from rstg_jax import errors
from rstg_jax.ssv1 import reader
from rstg_jax.ssv1 import task as ssv1_task
import ssv1_fixtures as fx
from conftest import require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {'data.num_frames': 2, 'data.crop_size': 24, 'data.short_side': 32,
         'backbone.blocks': (1, 1, 1, 1), 'backbone.base_width': 4, 'rstg.dim': 8,
         'rstg.scales': (1, 2), 'rstg.num_iters': 1, 'batch_size': 2,
         'eval.batch_size': 2, 'eval.size': 2, 'num_train_steps': 1, 'log_every': 1,
         'eval.every': 1, 'checkpoint_every': 1, 'progress_bar': False}


def _config(root, tfds_dir, **changes):
  config = ssv1_i3d.get_config()
  for field, value in {**SMALL, 'data.root': root and str(root),
                       'data.tfds_dir': str(tfds_dir), **changes}.items():
    node = config
    *parents, leaf = field.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _frame_path(root, video_id, frame=1):
  return os.path.join(root, fx.FRAMES_DIR, video_id, f'{frame:05d}.jpg')


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
  """(fake A, root B, the altered video id, A's prepared shards folder)."""
  require('tensorflow_datasets', 'the Something-Something pipeline')
  from rstg_jax.ssv1 import tfds_builder  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp('ssv1_source')
  fake = fx.make_fake_ssv1(d / 'A', num_classes=4,
                           videos_per_split={'train': 4, 'validation': 2})
  root_b = d / 'B'
  shutil.copytree(fake.root, root_b)
  (victim, label), (donor, donor_label) = fake.splits['train'][:2]
  assert label != donor_label
  shutil.copyfile(_frame_path(fake.root, donor), _frame_path(root_b, victim))
  tfds_builder.prepare(fake.root, d / 'tfds', num_workers=2)
  return fake, str(root_b), victim, d / 'tfds'


def _stored_first_frame(builder, video_id) -> bytes:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split='train', decoders={'frames': tfds.decode.SkipDecoding()})
  for ex in ds.as_numpy_iterator():
    if ex['video_id'].decode() == video_id:
      return bytes(ex['frames'][0])
  raise AssertionError(f'video {video_id} not in the shards')


def test_shards_of_another_copy_stop_in_one_line(trees):
  fake, root_b, _, tfds_dir = trees
  from rstg_jax.ssv1 import tfds_builder  # pylint: disable=g-import-not-at-top
  ssv1_task.TASK.check_data(_config(fake.root, tfds_dir))  # its own copy: fine
  for check in (lambda: ssv1_task.TASK.check_data(_config(root_b, tfds_dir)),
                lambda: tfds_builder.load_builder(str(tfds_dir), root_b)):
    with pytest.raises(reader.SSv1DataError) as e:
      check()
    message = str(e.value)
    assert '\n' not in message
    assert f'converted from {os.path.realpath(fake.root)}, not from config.data.root=' \
           f'{root_b!r}' in message
    assert '--config.data.tfds_dir' in message and '--config.data.rebuild=True' in message


def test_shards_are_used_as_they_are_without_a_root(trees, caplog):
  fake, _, _, tfds_dir = trees
  from rstg_jax.ssv1 import tfds_builder  # pylint: disable=g-import-not-at-top
  ssv1_task.TASK.check_data(_config(None, tfds_dir))
  builder = tfds_builder.load_builder(str(tfds_dir), None)
  assert tfds_builder.class_names(builder) == fake.class_names
  assert f'converted from {fake.root}' in caplog.text


def test_rebuild_replaces_the_shards_with_the_other_copy(trees, tmp_path):
  fake, root_b, victim, tfds_dir = trees
  from rstg_jax.ssv1 import tfds_builder  # pylint: disable=g-import-not-at-top
  own = tmp_path / 'tfds'
  shutil.copytree(tfds_dir, own)  # A's shards, in a folder this test may replace
  config = _config(root_b, own, **{'data.rebuild': True})
  ssv1_task.TASK.check_data(config)  # rebuild: no longer an error
  builder = tfds_builder.load_builder(str(own), root_b, rebuild=True)
  assert tfds_builder.read_report(builder)['source']['root'] == os.path.realpath(root_b)
  with open(_frame_path(root_b, victim), 'rb') as f:
    b_frame = f.read()
  with open(_frame_path(fake.root, victim), 'rb') as f:
    assert f.read() != b_frame
  assert _stored_first_frame(builder, victim) == b_frame  # B's video, not A's
  assert reader.shards_source_problem(str(builder.data_dir), root_b) == ''
  assert 'not from config.data.root' in reader.shards_source_problem(
      str(builder.data_dir), fake.root)


def test_a_copy_changed_since_conversion_is_caught(trees, tmp_path):
  fake, _, _, tfds_dir = trees
  shards = tmp_path / 'shards'
  shutil.copytree(os.path.join(tfds_dir, 'something_something_v1', '1.0.0'), shards)
  assert reader.shards_source_problem(str(shards), fake.root) == ''
  copy = tmp_path / 'copy'
  shutil.copytree(fake.root, copy)
  report = json.loads((shards / 'ssv1_report.json').read_text())
  report['source']['root'] = os.path.realpath(copy)  # as if converted from the copy
  (shards / 'ssv1_report.json').write_text(json.dumps(report))
  assert reader.shards_source_problem(str(shards), copy) == ''
  os.makedirs(os.path.join(copy, fx.FRAMES_DIR, '999'))
  assert 'before it changed (the frame folders: ' in reader.shards_source_problem(
      str(shards), copy)
  csv = copy / 'something-something-v1-train.csv'
  csv.write_text(csv.read_text().splitlines(keepends=True)[0])
  problem = reader.shards_source_problem(str(shards), copy)
  assert 'before it changed (the label files, the frame folders' in problem


def test_num_classes_comes_from_the_labels_file(trees):
  fake, _, _, tfds_dir = trees
  with pytest.raises(errors.ConfigError) as e:
    ssv1_task.TASK.check_data(_config(fake.root, tfds_dir, **{'data.num_classes': 2}))
  assert str(e.value) == (
      f'data.num_classes=2, but there are 4 classes in the labels file of {fake.root}: '
      'leave it at 0 (the labels file decides) or set --config.data.num_classes=4.')
  from rstg_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  config = _config(fake.root, tfds_dir)
  assert config.data.num_classes == 0  # the config's default
  setup = setup_lib.make_setup(config, ssv1_task.TASK)
  assert config.data.num_classes == 4 == setup.config_json['data']['num_classes']


@pytest.mark.parametrize('changes', [
    {'data.num_frames': 3},
    {'data.crop_size': 32},  # = short_side
    {'eval.split': 'validation[:1]', 'eval.size': 1},
    {'eval.size': 50, 'eval.batch_size': 4, 'batch_size': 4},  # more than the split holds
    {'data.train_size': 1, 'seed': 5},
])
def test_the_ssv1_data_set_builds_for_accepted_values(trees, changes):
  """The SSv1 half of test_config_checks' build test: accepted data fields build."""
  fake, _, _, tfds_dir = trees
  config = _config(fake.root, tfds_dir, **changes)
  assert ssv1_task.TASK.config_errors(config) == []
  dataset = ssv1_task.TASK.create_dataset(config)
  batch = dataset.batch(0)
  d = config.data
  assert batch['video'].shape == (config.batch_size, d.num_frames, d.crop_size,
                                  d.crop_size, 3)
  views = list(dataset.view_batches('dense'))
  assert len(views) == len(dataset.view_batches('dense'))  # the length the ETA uses
  assert views[0]['video'].shape[2:4] == (d.short_side, d.short_side)
  assert list(dataset.eval_batches())


def _main(*flags, timeout=900):
  return subprocess.run([sys.executable, '-m', 'rstg_jax.main',
                         '--config=configs/ssv1_i3d.py', *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _flags(**values):
  def text(v):
    return f'({",".join(str(x) for x in v)})' if isinstance(v, tuple) else str(v)
  return [f'--config.{k}={text(v)}' for k, v in {**SMALL, **values}.items()]


# TensorFlow's and TFDS's own output, none of which may reach the user.
TF_NOISE = ('oneDNN', 'cpu_feature_guard', 'absl::InitializeLog',
            'Instructions for updating', 'TensorInfo', 'Downloading and preparing',
            'Generating splits', 'Shuffling', 'tensorflow/core', 'tensorflow_datasets/',
            'I0000', 'W0000')


def test_a_run_on_the_fixture_shows_no_tensorflow_line_and_one_line_errors(trees, tmp_path):
  fake, root_b, _, _ = trees
  tfds_dir = tmp_path / 'tfds'  # converted by this run
  proc = _main(f'--workdir={tmp_path / "a"}', *_flags(**{'data.root': fake.root,
                                                         'data.tfds_dir': tfds_dir}))
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert not [n for n in TF_NOISE if n in out], out
  assert 'SSv1 prepared in' in out and 'Done: step 1' in out  # the project's own lines
  saved = json.loads((tmp_path / 'a' / 'config.json').read_text())['config']
  assert saved['data']['num_classes'] == 4  # from the labels file
  for root, extra, needle in ((root_b, {}, 'not from config.data.root'),
                              (fake.root, {'data.num_classes': 3}, 'data.num_classes=3')):
    proc = _main(f'--workdir={tmp_path / "b"}',
                 *_flags(**{'data.root': root, 'data.tfds_dir': tfds_dir, **extra}))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith('ERROR: ') and needle in lines[0], lines
    assert not (tmp_path / 'b').exists()
