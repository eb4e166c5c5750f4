"""Restricted unpickling: the one reader of untrusted pickles (MNIST, Caffe2 checkpoints).

A pickle can run arbitrary code when it is loaded: it names globals (functions, classes)
that the unpickler looks up and calls. `load` resolves only an allow-list: what numpy
arrays, numpy scalars and plain containers need, and `_codecs.encode` restricted to the
latin-1 round trip that protocol-2 pickles use for bytes. Any other global is refused with
an `UnsafePickleError` that names it, before it is looked up.
"""

import collections
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core.
  from numpy._core import multiarray as _multiarray
  from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _multiarray
  from numpy.core import numeric as _numeric


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle referenced a global outside the allow-list (it could run code)."""


def _latin1_encode(text, encoding='latin1'):
  """Stand-in for `_codecs.encode`, which Python 3 protocol-2 pickles use for bytes.

  Only the latin-1 round trip that pickle itself writes is allowed; any other codec name
  is refused rather than handed to the codec machinery.
  """
  if (not isinstance(text, str)
      or encoding.lower().replace('-', '').replace('_', '') != 'latin1'):
    raise UnsafePickleError(
        f'refusing _codecs.encode with encoding {encoding!r}: only latin1 bytes are allowed')
  return text.encode('latin1')


# Everything a pickle of numpy arrays needs, and nothing that can call out: array and
# scalar reconstruction (protocol 5 writes arrays with `_frombuffer`), dtypes, containers.
_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,  # pylint: disable=protected-access
    ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,  # pylint: disable=protected-access
    ('numpy.core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy._core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy.core.numeric', '_frombuffer'): _numeric._frombuffer,  # pylint: disable=protected-access
    ('numpy._core.numeric', '_frombuffer'): _numeric._frombuffer,  # pylint: disable=protected-access
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('_codecs', 'encode'): _latin1_encode,
}
_BUILTINS = {'tuple': tuple, 'list': list, 'dict': dict, 'set': set,
             'frozenset': frozenset, 'bytearray': bytearray}


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that only resolves the allow-list (see the module docstring)."""

  what = 'the pickle'

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ('builtins', '__builtin__') and name in _BUILTINS:
      return _BUILTINS[name]
    raise UnsafePickleError(
        f"refusing to load global '{module}.{name}' from {self.what}: only numpy arrays "
        'and plain containers are allowed (a pickle that names other globals can run '
        'arbitrary code)')


def load(fileobj, what: str = 'the pickle', encoding: str = 'latin1') -> Any:
  """`pickle.load` with the allow-list.

  Args:
    fileobj: binary file object positioned at the start of a pickle.
    what: how error messages name the file ('an MNIST pickle', ...).
    encoding: how Python 2 `str` objects are decoded; latin1 turns them into bytes byte
      for byte, which is what numpy arrays in Python 2 pickles need.
  """
  unpickler = RestrictedUnpickler(fileobj, encoding=encoding)
  unpickler.what = what
  return unpickler.load()
