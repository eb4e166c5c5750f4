"""Tests for the Something-Something-v1 reader, TFDS conversion and tf.data pipeline.

All run on the tiny fake tree of `tests/ssv1_fixtures.py` (32x48 frames, crop 24, short
side 32, T=4), whose pixels encode frame index (red), class (green) and x position (blue),
so the tests read back which frames and which crop the pipeline chose. Tests that need
TensorFlow are skipped where tensorflow_datasets is not installed; the reader tests run
everywhere.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from rstg_jax.ssv1 import reader as ssv1
import ssv1_fixtures as fx
from conftest import require

T, CROP, SHORT = 4, 24, 32
FRAMES = 8  # Frames per good fake video.


def _unnormalise(video):
  return video * 57.375 + 114.75


def _frames_of(video):
  """Frame indices of a clip [T, H, W, 3] (normalised), from the red code."""
  return fx.frame_index(_unnormalise(video)[..., 0].mean(axis=(1, 2)))


# ---------------------------------------------------------------------------------------
# Reader (no TensorFlow).


@pytest.fixture()
def raw(tmp_path):
  return fx.make_fake_ssv1(tmp_path / 'raw', videos_per_split={'train': 1,
                                                                'validation': 1})


def test_class_index_is_labels_file_order(raw):
  names = ssv1.read_class_names(raw.root)
  assert names == raw.class_names
  assert list(names) != sorted(names)  # The fixture would not tell the orders apart else.
  rows = dict(ssv1.read_split(raw.root, 'train', names))
  assert rows[raw.bad['grayscale_frame']] == 2  # Third line of the labels file.


def test_missing_root_names_path_source_and_config_field(tmp_path):
  missing = tmp_path / 'no_such_dir'
  with pytest.raises(ssv1.SSv1DataError) as e:
    ssv1.check_root(missing)
  msg = str(e.value)
  assert str(missing) in msg and 'config.data.root' in msg and 'download' in msg
  with pytest.raises(ssv1.SSv1DataError, match='20bn-something-something-v1'):
    ssv1.check_root(tmp_path)  # Exists, but holds no frame folder.
  with pytest.raises(ssv1.SSv1DataError, match='No Something-Something-v1 root'):
    ssv1.check_root(None)


def test_missing_label_file_is_named(raw):
  os.remove(os.path.join(raw.root, 'something-something-v1-validation.csv'))
  names = ssv1.read_class_names(raw.root)
  with pytest.raises(ssv1.SSv1DataError, match='something-something-v1-validation.csv'):
    ssv1.read_split(raw.root, 'validation', names)
  os.remove(os.path.join(raw.root, 'something-something-v1-test.csv'))
  assert ssv1.read_split(raw.root, 'test', names) == []  # Optional: unlabelled.
  os.remove(os.path.join(raw.root, fx.LABELS_FILE))
  with pytest.raises(ssv1.SSv1DataError, match='something-something-v1-labels.csv'):
    ssv1.read_class_names(raw.root)


def test_unknown_class_name_names_the_line(raw):
  path = os.path.join(raw.root, 'something-something-v1-train.csv')
  with open(path, 'a') as f:
    f.write('999;Juggling something\n')
  line = len(raw.splits['train']) + 1
  with pytest.raises(ssv1.SSv1DataError,
                     match=rf"train.csv, line {line}: class 'Juggling something'"):
    ssv1.read_split(raw.root, 'train', ssv1.read_class_names(raw.root))


@pytest.mark.parametrize('bad_id', ['../../x', '..', '/etc', '12/../../x', 'a\\b'])
def test_video_ids_are_confined_to_the_root(raw, bad_id):
  path = os.path.join(raw.root, 'something-something-v1-train.csv')
  with open(path, 'a') as f:
    f.write(f'{bad_id};{raw.class_names[0]}\n')
  line = len(raw.splits['train']) + 1
  with pytest.raises(ssv1.SSv1DataError, match=rf'train.csv, line {line}: video id') as e:
    ssv1.read_split(raw.root, 'train', raw.class_names)
  assert repr(bad_id) in str(e.value)
  with pytest.raises(ssv1.SSv1DataError, match='not a folder name'):
    ssv1.load_video(raw.root, bad_id, 0)  # direct callers are refused too


def test_non_utf8_label_file_names_file_and_line(raw):
  path = os.path.join(raw.root, 'something-something-v1-validation.csv')
  with open(path, 'ab') as f:
    f.write(b'77;Moving something \xe0 la up\n')  # latin-1, not UTF-8
  line = len(raw.splits['validation']) + 1
  with pytest.raises(ssv1.SSv1DataError,
                     match=rf'validation.csv, line {line}: not UTF-8 text'):
    ssv1.read_split(raw.root, 'validation', raw.class_names)
  labels = os.path.join(raw.root, fx.LABELS_FILE)
  with open(labels, 'wb') as f:
    f.write(b'\xef\xbb\xbfPushing\nPulling \xff\n')  # BOM, then a bad byte on line 2
  with pytest.raises(ssv1.SSv1DataError, match=r'labels.csv, line 2: not UTF-8'):
    ssv1.read_class_names(raw.root)


def test_cmyk_and_wrong_size_frames_are_repaired(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  fake = fx.make_fake_ssv1(tmp_path / 'raw', videos_per_split={'train': 0}, more_bad=True)
  h, w = fake.frame_size
  for case, frame, problem in (('cmyk_frame', '00003.jpg', 'CMYK image'),
                               ('wrong_size_frame', '00004.jpg',
                                f'size {2 * w}x{2 * h}, not {w}x{h}')):
    video = ssv1.load_video(fake.root, fake.bad[case], 0)
    assert video.skip_reason is None and (video.width, video.height) == (w, h)
    assert video.repairs == [{'frame': frame, 'problem': problem,
                              'action': 're-encoded as an RGB JPEG'}], case
    t = int(frame[:5]) - 1
    img = Image.open(io.BytesIO(video.frames[t]))
    assert img.format == 'JPEG' and img.mode == 'RGB' and img.size == (w, h)
    pixels = np.asarray(img, np.float64)
    assert abs(pixels[..., 0].mean() - fx.frame_code(t)) < 4  # the same frame, repaired
    assert pixels[:, 0, 2].mean() < 8 and pixels[:, -1, 2].mean() > 247  # x-ramp kept
    for other in set(range(len(video.frames))) - {t}:  # the others untouched
      assert video.frames[other] == (tmp_path / 'raw' / fx.FRAMES_DIR / video.video_id /
                                     f'{other + 1:05d}.jpg').read_bytes()


_LOAD_HOSTILE = r'''
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # /dev/zero: MemoryError, not OOM
import ssv1_fixtures as fx
from rstg_jax.ssv1 import reader
spec = json.loads(sys.argv[1])
fake = fx.FakeSSv1(root=spec['root'], class_names=(), splits={}, num_frames={},
                   bad=spec['bad'], frame_size=(0, 0), unreadable=tuple(spec['unreadable']),
                   chmod_denies=spec['chmod_denies'])
out = {}
with fx.deny_unreadable(fake):
  for case in spec['cases']:
    video = reader.load_video(fake.root, fake.bad[case], 0)
    out[case] = {'skip': video.skip_reason, 'repairs': video.repairs,
                 'frames': len(video.frames)}
print(json.dumps(out))
'''
HOSTILE_FRAMES = ('fifo_frame', 'dev_zero_frame', 'huge_frame', 'unreadable_frame',
                  'unreadable_folder')


def test_frames_that_attack_the_reader_are_replaced_and_reported(tmp_path):
  """A FIFO, a symlink to /dev/zero, a 64 MiB file and a chmod-000 frame, and a chmod-000
  folder, read by `load_video` in a subprocess (memory capped at 4 GiB, 60 s). Planted
  bug caught: frames read with a plain open().read() (the old reader): the FIFO blocks
  forever (timeout), /dev/zero exhausts memory, the chmod-000 frame raises
  PermissionError; each ends the subprocess without its JSON line. As root, chmod 000
  does not stop reads, so `ssv1_fixtures.deny_unreadable` refuses those two paths
  in open / os.open / os.listdir as the kernel would for another user."""
  fake = fx.make_fake_ssv1(tmp_path / 'raw', videos_per_split={'train': 0}, hostile=True)
  spec = {'root': fake.root, 'bad': fake.bad, 'unreadable': list(fake.unreadable),
          'chmod_denies': fake.chmod_denies, 'cases': HOSTILE_FRAMES}
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(tests_dir), tests_dir]),
             OPENBLAS_NUM_THREADS='1')
  proc = subprocess.run([sys.executable, '-c', _LOAD_HOSTILE, json.dumps(spec)], env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  big = f'larger than {ssv1.MAX_FRAME_BYTES:,} bytes ({64 << 20:,})'
  for case, frame, problem, neighbour in (
      ('fifo_frame', '00003.jpg', 'not a regular file (a FIFO)', '00002.jpg'),
      ('dev_zero_frame', '00004.jpg', 'not a regular file (a character device)',
       '00003.jpg'),
      ('huge_frame', '00002.jpg', big, '00001.jpg'),
      ('unreadable_frame', '00005.jpg', 'unreadable (Permission denied)', '00004.jpg')):
    assert out[case] == {'skip': None, 'frames': 6, 'repairs': [
        {'frame': frame, 'problem': problem, 'action': f'replaced by {neighbour}'}]}, case
  assert out['unreadable_folder'] == {'skip': 'unreadable_folder', 'repairs': [],
                                      'frames': 0}


def test_a_frame_that_declares_too_many_pixels_is_not_decoded(raw):
  """A 45-byte PNG declaring 8,000 x 8,000 RGB pixels: under Pillow's own bomb limit
  (89M pixels), so Pillow would allocate 192 MB to decode it, per frame. Planted bug
  caught: no pixel limit before `img.load()` ('does not decode', after the allocation)."""
  ihdr = struct.pack('>IIBBBBB', 8000, 8000, 8, 2, 0, 0, 0)
  chunk = lambda kind, body: (struct.pack('>I', len(body)) + kind + body
                              + struct.pack('>I', zlib.crc32(kind + body)))
  video_id = raw.bad['corrupt_frame']
  path = os.path.join(raw.root, fx.FRAMES_DIR, video_id, '00003.jpg')
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IEND', b''))
  video = ssv1.load_video(raw.root, video_id, 0)
  assert video.repairs == [{'frame': '00003.jpg', 'problem': (
      f'declares 8000x8000 pixels, over the limit of {ssv1.MAX_FRAME_PIXELS:,}'),
                            'action': 'replaced by 00002.jpg'}]


def test_import_rstg_jax_does_not_import_tensorflow():
  code = ('import sys, rstg_jax, rstg_jax.syncmnist, rstg_jax.ssv1.reader, rstg_jax.train.input\n'
          'bad = [m for m in sys.modules if m.split(".")[0] in '
          '("tensorflow", "tensorflow_datasets")]\n'
          'assert not bad, bad')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


# ---------------------------------------------------------------------------------------
# TFDS conversion and the tf.data pipeline.


@pytest.fixture(scope='module')
def tfds_mod():
  require('tensorflow_datasets', 'the Something-Something pipeline')
  from rstg_jax.ssv1 import tfds_builder as ssv1_tfds  # pylint: disable=g-import-not-at-top
  return ssv1_tfds


@pytest.fixture(scope='module')
def prepared(tfds_mod, tmp_path_factory):
  d = tmp_path_factory.mktemp('ssv1')
  fake = fx.make_fake_ssv1(d / 'raw', num_frames=FRAMES)
  builder = tfds_mod.prepare(fake.root, d / 'tfds', num_workers=2)
  return fake, builder, d / 'tfds'


def _dataset(tfds_mod, builder, split, **kw):
  kw.setdefault('batch_size', 4)
  from rstg_jax.ssv1 import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_dataset(split, builder=builder, num_frames=T, crop_size=CROP,
                               short_side=SHORT, process_index=kw.pop('process_index', 0),
                               process_count=kw.pop('process_count', 1), **kw)


def test_split_sizes_classes_and_skip_report(tfds_mod, prepared):
  fake, builder, data_dir = prepared
  for split in ('train', 'validation', 'test'):
    assert builder.info.splits[split].num_examples == len(fake.usable(split)), split
  assert tfds_mod.class_names(builder) == fake.class_names
  # A fresh builder reading the prepared directory gets the same class list back.
  assert tfds_mod.class_names(tfds_mod.load_builder(data_dir)) == fake.class_names

  report = tfds_mod.read_report(builder)
  assert os.path.isfile(os.path.join(builder.data_dir, 'ssv1_report.json'))
  skipped = {(r['split'], r['id'], r['reason']) for r in report['skipped']}
  assert skipped == {('train', fake.bad['missing_folder'], 'missing_folder'),
                     ('train', fake.bad['empty_folder'], 'empty_folder'),
                     ('validation', fake.bad['no_decodable_frame'], 'no_decodable_frame')}
  repaired = {(r['id'], r['frame']): r for r in report['repaired_frames']}
  assert set(repaired) == {(fake.bad['corrupt_frame'], '00003.jpg'),
                           (fake.bad['grayscale_frame'], '00005.jpg')}
  assert repaired[(fake.bad['corrupt_frame'], '00003.jpg')]['action'] == (
      'replaced by 00002.jpg')
  assert 'grayscale' in repaired[(fake.bad['grayscale_frame'], '00005.jpg')]['problem']
  assert report['splits']['train'] == {
      'listed': len(fake.splits['train']), 'written': len(fake.usable('train')),
      'skipped': 2, 'repaired_frames': 2,
      'frames_per_video': {'min': 2, 'max': FRAMES, 'mean': pytest.approx(
          (FRAMES * (len(fake.usable('train')) - 1) + 2) / len(fake.usable('train')))}}


def test_stored_frames_are_repaired_and_rgb(tfds_mod, prepared):
  fake, builder, _ = prepared
  videos = {ex['video_id'].decode(): ex for ex in
            builder.as_dataset(split='train').as_numpy_iterator()}
  assert set(videos) == set(fake.usable('train'))
  corrupt = videos[fake.bad['corrupt_frame']]['frames']
  assert list(fx.frame_index(corrupt[..., 0].mean(axis=(1, 2)))) == [0, 1, 1, 3, 4, 5, 6, 7]
  gray = videos[fake.bad['grayscale_frame']]['frames'][4].astype(np.float64)
  assert gray.shape == fake.frame_size + (3,)
  np.testing.assert_allclose(gray, fx.frame_code(4), atol=3)  # R = G = B = the gray level.
  short = videos[fake.bad['short_video']]
  assert short['num_frames'] == 2 and short['frames'].shape[0] == 2


def test_train_pipeline_shapes_normalisation_and_shared_crop(tfds_mod, prepared):
  fake, builder, _ = prepared
  it = _dataset(tfds_mod, builder, 'train', train=True, shuffle_seed=3,
                shuffle_buffer=16).as_numpy_iterator()
  offsets = set()
  for _ in range(6):
    batch = next(it)
    assert batch['video'].shape == (4, T, CROP, CROP, 3)
    assert batch['video'].dtype == np.float32 and batch['label'].dtype == np.int32
    pixels = _unnormalise(batch['video'])
    assert pixels.min() > -4 and pixels.max() < 259  # JPEG noise around [0, 255].
    for clip, label in zip(pixels, batch['label'], strict=True):
      # Leave out the fixture's grayscale frame (flat, no colour pattern).
      clip = clip[clip[..., 2].std(axis=(1, 2)) > 20]
      assert len(clip) >= T - 1
      # The class pattern survives: labels match the pixels.
      np.testing.assert_allclose(clip[..., 1], fx.class_level(label, 3), atol=4)
      # Same crop on every frame: the blue x-ramp is identical across frames, and its
      # first column gives the crop's x offset (no resize at short side 32 for 32x48).
      blue = clip[..., 2].mean(axis=1)  # [T, CROP]
      np.testing.assert_allclose(blue, blue[:1].repeat(len(blue), 0), atol=3)
      ox = int(np.round(blue[0, 0] * 47 / 255))
      assert 0 <= ox <= 48 - CROP
      np.testing.assert_allclose(blue[0], (ox + np.arange(CROP)) * 255 / 47, atol=4)
      offsets.add(ox)
  assert len(offsets) > 1  # The crop is random across clips.


def test_train_sampling_covers_video_and_repeats_short_one(tfds_mod, prepared):
  _, builder, _ = prepared
  it = _dataset(tfds_mod, builder, 'train', train=True, shuffle_seed=0, batch_size=9,
                shuffle_buffer=16).as_numpy_iterator()
  clips = np.concatenate([[_frames_of(c) for c in next(it)['video']] for _ in range(4)])
  short = np.all(clips == [0, 0, 1, 1], axis=1)  # 2 frames over 4 segments: repeated.
  assert 1 <= short.sum() < len(clips)
  long_clips = clips[~short]
  seg = FRAMES // T
  # Sample i comes from segment i: frames [i*seg, (i+1)*seg), offset random within it.
  segment = long_clips // seg
  # Except that the fixture's corrupt frame 3 (index 2) holds a copy of frame 2 (code 1).
  segment[:, 1] = np.where(long_clips[:, 1] == 1, 1, segment[:, 1])
  assert np.all(segment == np.arange(T))
  assert set(long_clips[:, 0]) == {0, 1}  # From the very start ...
  assert set(long_clips[:, -1]) == {FRAMES - 2, FRAMES - 1}  # ... to the very end.


def test_center_eval_and_process_padding(tfds_mod, prepared):
  fake, builder, _ = prepared
  n = len(fake.usable('validation'))
  batches = list(_dataset(tfds_mod, builder, 'validation', train=False,
                          eval_mode='center').as_numpy_iterator())
  assert len(batches) == 1
  b = batches[0]
  assert b['video'].shape == (4, T, CROP, CROP, 3)
  assert list(b['mask']) == [1] * n + [0] * (4 - n)
  assert list(b['video_index'][:n]) == list(range(n))
  assert list(b['label'][n:]) == [-1] * (4 - n)
  for clip in b['video'][:n]:
    assert list(_frames_of(clip)) == [1, 3, 5, 7]  # Centre frame of each segment.
    blue = _unnormalise(clip)[0, :, :, 2].mean(axis=0)
    np.testing.assert_allclose(blue[0], 12 * 255 / 47, atol=4)  # Centre crop: x = 12.

  # Two processes: disjoint videos, equal number of full batches.
  seen, counts = [], []
  for p in range(2):
    bs = list(_dataset(tfds_mod, builder, 'validation', train=False, batch_size=1,
                       process_index=p, process_count=2).as_numpy_iterator())
    counts.append(len(bs))
    seen += [int(x['video_index'][0]) for x in bs if x['mask'][0]]
  assert counts[0] == counts[1] == -(-n // 2)
  assert sorted(seen) == list(range(n))


def test_dense_eval_22_views_per_video(tfds_mod, prepared):
  fake, builder, _ = prepared
  n = len(fake.usable('validation'))
  batches = list(_dataset(tfds_mod, builder, 'validation', train=False, eval_mode='dense',
                          batch_size=5).as_numpy_iterator())
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert rows['video'].shape[1:] == (T, SHORT, SHORT, 3)
  assert len(rows['mask']) == -(-22 * n // 5) * 5
  real = rows['mask'] == 1
  assert real.sum() == 22 * n
  assert list(rows['video_index'][real]) == list(np.repeat(np.arange(n), 22))
  assert list(rows['view_index'][real]) == list(np.tile(np.arange(22), n))
  first = rows['video'][:22]
  expected_x = np.round(np.arange(11) * (48 - SHORT) / 10)
  for view, clip in enumerate(first):
    temporal, spatial = divmod(view, 11)
    # Segment starts, then segment centres (half a segment later).
    assert list(_frames_of(clip)) == ([0, 2, 4, 6] if temporal == 0 else [1, 3, 5, 7])
    blue = _unnormalise(clip)[0, :, :, 2].mean(axis=0)
    np.testing.assert_allclose(blue, (expected_x[spatial] + np.arange(SHORT)) * 255 / 47,
                               atol=4)
  blue_first = _unnormalise(first[0])[0, :, 0, 2].mean()
  blue_last = _unnormalise(first[10])[0, :, -1, 2].mean()
  assert blue_first < 4 and blue_last > 251  # Left edge, right edge.


def test_split_with_no_usable_video_is_a_clear_error(tfds_mod, tmp_path):
  fake = fx.make_fake_ssv1(tmp_path / 'raw', videos_per_split={'train': 0,
                                                               'validation': 1})
  for video_id, _ in fake.splits['train']:  # every train video loses its frames
    shutil.rmtree(os.path.join(fake.root, fx.FRAMES_DIR, video_id), ignore_errors=True)
  with pytest.raises(ssv1.SSv1DataError, match='No usable video in the train split') as e:
    tfds_mod.prepare(fake.root, tmp_path / 'tfds', num_workers=1)
  assert f'all {len(fake.splits["train"])} videos' in str(e.value)
  assert 'missing_folder' in str(e.value)
  assert not list((tmp_path / 'tfds').glob('*/*/dataset_info.json'))  # nothing prepared
  assert tfds_mod.main(['--root', fake.root, '--data_dir', str(tmp_path / 'tfds')]) == 1


def test_tfds_build_reports_frames_that_attack_the_reader(tfds_mod, tmp_path):
  """The TFDS conversion of a tree with the FIFO, /dev/zero, huge and chmod-000 frames and
  a chmod-000 folder finishes and lists each in ssv1_report.json. Planted bug caught: a
  PermissionError from the chmod-000 frame or folder escaping `load_video` ends the build
  in a traceback (as root, `deny_unreadable` refuses those paths as the kernel would)."""
  fake = fx.make_fake_ssv1(tmp_path / 'raw', videos_per_split={'train': 1, 'validation': 1},
                           hostile=True)
  with fx.deny_unreadable(fake):
    builder = tfds_mod.prepare(fake.root, tmp_path / 'tfds', num_workers=2)
  assert builder.info.splits['train'].num_examples == len(fake.usable('train'))
  report = tfds_mod.read_report(builder)
  assert ('train', fake.bad['unreadable_folder'], 'unreadable_folder') in {
      (r['split'], r['id'], r['reason']) for r in report['skipped']}
  problems = {r['id']: r['problem'] for r in report['repaired_frames']}
  assert problems[fake.bad['fifo_frame']] == 'not a regular file (a FIFO)'
  assert problems[fake.bad['dev_zero_frame']] == 'not a regular file (a character device)'
  assert problems[fake.bad['huge_frame']].startswith('larger than ')
  assert problems[fake.bad['unreadable_frame']] == 'unreadable (Permission denied)'


def test_prepare_errors_and_command_line(tfds_mod, prepared, tmp_path, capsys):
  fake, builder, data_dir = prepared
  with pytest.raises(ssv1.SSv1DataError, match='config.data.root'):
    tfds_mod.prepare(tmp_path / 'missing', tmp_path / 'tfds')
  assert not (tmp_path / 'tfds').exists()  # Nothing created for a wrong root.
  with pytest.raises(ssv1.SSv1DataError, match='No prepared Something-Something-v1'):
    tfds_mod.load_builder(tmp_path / 'empty')

  assert tfds_mod.main(['--root', str(tmp_path / 'missing')]) == 1
  err = capsys.readouterr().err
  assert err.startswith('ERROR: ') and 'missing' in err and 'Traceback' not in err
  # Already prepared: reused, and the summary comes from the stored report.
  assert tfds_mod.main(['--root', fake.root, '--data_dir', str(data_dir)]) == 0
  out = capsys.readouterr().out
  assert f'train {len(fake.usable("train"))} videos' in out and '3 skipped' in out
