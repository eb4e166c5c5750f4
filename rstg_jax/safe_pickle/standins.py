"""The allow-list of `rstg_jax.safe_pickle`: the names a pickle may load, and stand-ins.

`find_class` resolves only the names in `Standins.table`, and those resolve to stand-ins
defined here, never to numpy's own `_reconstruct`, `dtype`, `ndarray` or `scalar`. The
stand-ins record what the stream asks for; arrays are then built here, from plain data (a
type string, a shape of ints, raw bytes) with `np.frombuffer`.
"""

from __future__ import annotations

import collections
import math
import pickle
from typing import Optional

import numpy as np

from rstg_jax.safe_pickle.common import MAX_NDIM, TYPESTRS, Refusal, is_latin1, short

# ---------------------------------------------------------------------------- stand-ins


class _NdarrayName:
  """What `numpy.ndarray` resolves to: a marker for `_reconstruct`, not a constructor."""

  __slots__ = ()

  def __call__(self, *args, **kwargs):
    raise Refusal('refusing a direct numpy.ndarray construction (only arrays rebuilt '
                  'from raw bytes are accepted)')

  def __setstate__(self, state):
    raise Refusal('refusing to set the state of numpy.ndarray')


class _Callable:
  """A stand-in function as the stream sees it: callable, but its state cannot be set
  (BUILD on a plain function would write into the function's attributes)."""

  __slots__ = ('_fn', '_name')

  def __init__(self, fn, name: str):
    self._fn, self._name = fn, name

  def __call__(self, *args, **kwargs):
    return self._fn(*args, **kwargs)

  def __setstate__(self, state):
    raise Refusal(f'refusing to set the state of {self._name}')


_NDARRAY = _NdarrayName()


class DtypeSpec:
  """What a stream's `numpy.dtype(typestr, align, copy)` becomes: a type string from
  `TYPESTRS` plus a byte order, set by a `__setstate__` that only accepts plain states."""

  __hash__ = None  # type: ignore[assignment]  # never a dict key or set member

  def __init__(self, typestr: str):
    self.typestr = typestr
    self.byteorder = '='

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (8, 9):
      raise Refusal(f'refusing dtype {self.typestr!r} with an unexpected state {short(state)}')
    version, byteorder, subarray, names, fields, elsize, alignment, flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    if (version not in (3, 4) or byteorder not in ('<', '>', '|', '=')
        or subarray is not None or names is not None or fields is not None
        or elsize != -1 or alignment != -1 or flags != 0 or metadata is not None):
      raise Refusal(
          f'refusing dtype {self.typestr!r} with a forged state {short(state)}: only plain '
          'bool/int/uint/float dtypes are accepted (no fields, subarrays or flags)')
    self.byteorder = byteorder

  def dtype(self) -> np.dtype:
    dt = np.dtype(self.typestr)
    if self.byteorder in ('<', '>'):
      dt = dt.newbyteorder(self.byteorder)
    return dt


def _dtype(typestr, align=False, copy=True):
  if isinstance(typestr, bytes):
    typestr = typestr.decode('latin1')
  if not isinstance(typestr, str) or typestr not in TYPESTRS:
    raise Refusal(f'refusing dtype {short(typestr)}: not one of the accepted types '
                  f'{", ".join(TYPESTRS)} (no structured, object or string dtypes)')
  if not isinstance(align, (bool, int)) or not isinstance(copy, (bool, int)) or align:
    raise Refusal(f'refusing dtype {typestr!r} with arguments {short((align, copy))}')
  return DtypeSpec(typestr)


def _check_shape(shape) -> tuple[int, ...]:
  if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or not all(
      type(d) is int and d >= 0 for d in shape):  # pylint: disable=unidiomatic-typecheck
    raise Refusal(f'refusing array shape {short(shape)}: not a tuple of at most {MAX_NDIM} '
                  'non-negative ints')
  return shape


def _raw_bytes(data, what: str) -> bytes:
  if isinstance(data, str):  # a Python 2 `str`, decoded as latin1 by the unpickler
    try:
      return data.encode('latin1')
    except UnicodeEncodeError:
      raise Refusal(f'refusing {what}: data is text, not latin1 bytes') from None
  if isinstance(data, (bytes, bytearray)):
    return data
  raise Refusal(f'refusing {what}: data is a {type(data).__name__}, not raw bytes '
                '(no object arrays)')


def _build(spec, shape, data, order: str, max_array_bytes: int) -> np.ndarray:
  """The array, checked before anything is allocated; a native-endian C-order copy."""
  if not isinstance(spec, DtypeSpec):
    raise Refusal(f'refusing an array whose dtype is a {type(spec).__name__}, not a '
                  'plain numpy dtype')
  shape = _check_shape(shape)
  dt = spec.dtype()
  n = math.prod(shape)
  nbytes = n * dt.itemsize
  if nbytes > max_array_bytes:
    raise Refusal(f'refusing an array of shape {shape} ({dt.str}): it would take '
                  f'{nbytes:,} bytes, over the limit of {max_array_bytes:,}')
  data = _raw_bytes(data, f'array of shape {shape}')
  if len(data) != nbytes:
    raise Refusal(f'refusing an array of shape {shape} ({dt.str}): it needs {nbytes:,} '
                  f'bytes, the stream holds {len(data):,}')
  flat = np.frombuffer(data, dtype=dt, count=n)
  out = flat.reshape(shape, order=order).astype(dt.newbyteorder('='), order='C', copy=True)
  return out


class PendingArray:
  """What `_reconstruct(ndarray, (0,), b'b')` returns; its `__setstate__` (BUILD) gets
  (version, shape, dtype, is_fortran, raw bytes) and builds the array with `_build`."""

  __hash__ = None  # type: ignore[assignment]

  def __init__(self, max_array_bytes: int):
    self.array: Optional[np.ndarray] = None
    self._max = max_array_bytes

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise Refusal(f'refusing an array with an unexpected state {short(state)}')
    if len(state) == 5:
      if state[0] != 1:
        raise Refusal(f'refusing array state version {short(state[0])}')
      state = state[1:]
    shape, spec, is_fortran, data = state
    if not isinstance(is_fortran, (bool, int)):
      raise Refusal(f'refusing array order flag {short(is_fortran)}')
    self.array = _build(spec, shape, data, 'F' if is_fortran else 'C', self._max)


class Standins:
  """The allow-list: (module, name) -> stand-in, for one load (holds its limits)."""

  def __init__(self, max_array_bytes: int):
    self.max_array_bytes = max_array_bytes
    table = {}
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
      table[(mod, '_reconstruct')] = self.reconstruct
      table[(mod, 'scalar')] = self.scalar
    for mod in ('numpy.core.numeric', 'numpy._core.numeric'):
      table[(mod, '_frombuffer')] = self.frombuffer
    table[('numpy', 'ndarray')] = _NDARRAY
    table[('numpy', 'dtype')] = _dtype
    table[('_codecs', 'encode')] = _latin1_encode
    table[('collections', 'OrderedDict')] = collections.OrderedDict
    for name, obj in (('dict', dict), ('list', list), ('tuple', tuple), ('set', set),
                      ('frozenset', frozenset), ('bytes', _bytes),
                      ('bytearray', _bytearray)):
      table[('builtins', name)] = obj
      table[('__builtin__', name)] = obj
    self.table = {k: v if isinstance(v, (type, _NdarrayName)) else
                  _Callable(v, '.'.join(k)) for k, v in table.items()}

  def reconstruct(self, cls, shape, typecode):
    if cls is not _NDARRAY or shape != (0,) or typecode not in ('b', b'b'):
      raise Refusal(f'refusing numpy _reconstruct{short((cls, shape, typecode))}: only '
                    "_reconstruct(numpy.ndarray, (0,), b'b') is accepted")
    return PendingArray(self.max_array_bytes)

  def frombuffer(self, buf, spec, shape, order):
    if order not in ('C', 'F'):
      raise Refusal(f'refusing numpy _frombuffer order {short(order)}')
    if isinstance(buf, pickle.PickleBuffer):  # out-of-band buffers are not supported
      buf = bytes(buf.raw())
    return _build(spec, shape, buf, order, self.max_array_bytes)

  def scalar(self, spec, data):
    if not isinstance(spec, DtypeSpec):
      raise Refusal(f'refusing a numpy scalar of a {type(spec).__name__}, not a plain dtype')
    dt = spec.dtype()
    data = _raw_bytes(data, f'numpy scalar ({dt.str})')
    if len(data) != dt.itemsize:
      raise Refusal(f'refusing a numpy scalar ({dt.str}) of {len(data)} bytes')
    return np.frombuffer(data, dtype=dt, count=1).astype(dt.newbyteorder('='))[0]


def _latin1_encode(text, encoding='utf-8', errors='strict'):
  """`_codecs.encode`, as protocol-2 pickles of Python 3 bytes use it: latin1 only."""
  if not isinstance(text, str) or not is_latin1(encoding) or errors != 'strict':
    raise Refusal(f'refusing _codecs.encode with encoding {short(encoding)}: only latin1 is '
                  'accepted')
  try:
    return text.encode('latin1')
  except UnicodeEncodeError:
    raise Refusal('refusing _codecs.encode of text that is not latin1') from None


def _bytes(*args):
  """`bytes()`: protocol-2 pickles of Python 3 write an empty bytes object this way."""
  if args:
    raise Refusal(f'refusing bytes{short(args)}: only bytes() is accepted')
  return b''


def _bytearray(source=b'', encoding=None):
  """`bytearray` from bytes, or from text with encoding latin1; never bytearray(n)."""
  if isinstance(source, (bytes, bytearray)) and encoding is None:
    return bytearray(source)
  if isinstance(source, str) and is_latin1(encoding):
    return bytearray(_latin1_encode(source, 'latin1'))
  raise Refusal(f'refusing bytearray{short((source, encoding))}: only bytes or latin1 text are '
                'accepted')


# ---------------------------------------------------------------------------- unpickler


class Unpickler(pickle.Unpickler):
  """The C unpickler with `find_class` limited to the stand-ins and no persistent ids."""

  def __init__(self, file, standins: Standins):
    super().__init__(file, encoding='latin1', errors='strict')
    self._standins = standins

  def find_class(self, module: str, name: str):
    try:
      return self._standins.table[(module, name)]
    except (KeyError, TypeError):
      raise Refusal(f"refusing to load global '{module}.{name}': not on the allow-list (only "
                    'numpy arrays of bool/int/uint/float and plain containers are '
                    'accepted; a pickle naming other globals can run arbitrary code)'
                    ) from None

  def persistent_load(self, pid):
    raise Refusal('refusing persistent ids')
