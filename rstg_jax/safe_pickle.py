"""Restricted unpickling of numpy arrays: the one reader of pickles in this package.

Two files we read are pickles: Caffe2 checkpoints (`rstg_jax.convert`) and the
deeplearning.net `mnist.pkl.gz` (`rstg_jax.syncmnist.mnist`). A pickle is a program: besides
calling arbitrary functions, it can hand numpy a forged object state (a "dtype" whose
`__setstate__` describes an object field with its flags cleared, then raw bytes that numpy
takes for object pointers) and crash the process the moment the array is copied. An
allow-list of numpy globals alone does not stop that, so this module never gives numpy
anything from the stream:

- `find_class` resolves only a fixed set of names, and those resolve to stand-ins
  defined here, never to numpy's own `_reconstruct`, `dtype`, `ndarray` or `scalar`.
  The stand-ins record what the stream asks for; arrays are then built here, from plain
  data (a type string, a shape of ints, raw bytes) with `np.frombuffer`.
- Dtypes: only bool / int / uint / float from `TYPESTRS`, with a plain state (no fields,
  no subarray, no names, no flags). No structured, object, string or void dtypes.
- `numpy.ndarray` may only appear as `_reconstruct`'s first argument; calling it (a
  direct allocation request of any shape) is refused, and so is a bare dtype left in
  the data.
- Sizes are checked before anything is allocated: the file (`max_bytes`, also against
  gzip bombs), each array (`max_array_bytes`), and each array's byte count against its
  shape times item size. The memo indices a pickle writes are checked too (a huge index
  makes the C unpickler allocate a memo table of that size).
- Byte strings: `_codecs.encode` (how protocol-2 pickles of Python 3 store bytes) and
  `bytearray` accept latin1 only; Python 2 strings are decoded as latin1.
- After loading, every array is validated (kind in 'biuf', no fields, C-contiguous,
  size within the limit), containers are checked to hold only plain values, and nesting
  deeper than `MAX_DEPTH` is refused.

Every refusal, and every malformed or truncated file, raises `UnsafePickleError` (a
`pickle.UnpicklingError`) with a one-line message naming the file and what was refused.

    from rstg_jax import safe_pickle
    obj = safe_pickle.load_file('mnist.pkl.gz')   # gzip detected by its magic bytes
"""

from __future__ import annotations

import collections
import gzip
import io
import math
import os
import pickle
import pickletools
import zlib
from typing import Any, Optional

import numpy as np

from rstg_jax import errors

#: Largest pickle (after gunzip) read into memory, bytes.
MAX_PICKLE_BYTES = 4 << 30
#: Largest single array, bytes (MNIST's train images are 157 MB as float32).
MAX_ARRAY_BYTES = 2 << 30
#: Deepest nesting of containers accepted (real files: 3 or 4 levels).
MAX_DEPTH = 64
#: Most dimensions an array may have.
MAX_NDIM = 32

#: The only dtypes an array may have: numpy type strings without byte order.
TYPESTRS = ('b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8')

_CHUNK = 16 << 20


class UnsafePickleError(pickle.UnpicklingError, errors.DataError):
  """A pickle was refused: it asks for something outside the allow-list, is too large,
  or is malformed. The message is one line naming the file and what was refused."""


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def _latin1(encoding: Any) -> bool:
  return (isinstance(encoding, str)
          and encoding.lower().replace('-', '').replace('_', '') == 'latin1')


class _Refusal(Exception):
  """Raised by the stand-ins; turned into UnsafePickleError with the file name."""


# ---------------------------------------------------------------------------- stand-ins


class _NdarrayName:
  """What `numpy.ndarray` resolves to: a marker for `_reconstruct`, not a constructor."""

  __slots__ = ()

  def __call__(self, *args, **kwargs):
    raise _Refusal('refusing a direct numpy.ndarray construction (only arrays rebuilt '
                   'from raw bytes are accepted)')

  def __setstate__(self, state):
    raise _Refusal('refusing to set the state of numpy.ndarray')


class _Callable:
  """A stand-in function as the stream sees it: callable, but its state cannot be set
  (BUILD on a plain function would write into the function's attributes)."""

  __slots__ = ('_fn', '_name')

  def __init__(self, fn, name: str):
    self._fn, self._name = fn, name

  def __call__(self, *args, **kwargs):
    return self._fn(*args, **kwargs)

  def __setstate__(self, state):
    raise _Refusal(f'refusing to set the state of {self._name}')


_NDARRAY = _NdarrayName()


class _DtypeSpec:
  """What a stream's `numpy.dtype(typestr, align, copy)` becomes: a type string from
  `TYPESTRS` plus a byte order, set by a `__setstate__` that only accepts plain states."""

  __hash__ = None  # type: ignore[assignment]  # never a dict key or set member

  def __init__(self, typestr: str):
    self.typestr = typestr
    self.byteorder = '='

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (8, 9):
      raise _Refusal(f'refusing dtype {self.typestr!r} with an unexpected state {_short(state)}')
    version, byteorder, subarray, names, fields, elsize, alignment, flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    if (version not in (3, 4) or byteorder not in ('<', '>', '|', '=')
        or subarray is not None or names is not None or fields is not None
        or elsize != -1 or alignment != -1 or flags != 0 or metadata is not None):
      raise _Refusal(
          f'refusing dtype {self.typestr!r} with a forged state {_short(state)}: only plain '
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
    raise _Refusal(f'refusing dtype {_short(typestr)}: not one of the accepted types '
                   f'{", ".join(TYPESTRS)} (no structured, object or string dtypes)')
  if not isinstance(align, (bool, int)) or not isinstance(copy, (bool, int)) or align:
    raise _Refusal(f'refusing dtype {typestr!r} with arguments {_short((align, copy))}')
  return _DtypeSpec(typestr)


def _check_shape(shape) -> tuple[int, ...]:
  if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or not all(
      type(d) is int and d >= 0 for d in shape):  # pylint: disable=unidiomatic-typecheck
    raise _Refusal(f'refusing array shape {_short(shape)}: not a tuple of at most {MAX_NDIM} '
                   'non-negative ints')
  return shape


def _raw_bytes(data, what: str) -> bytes:
  if isinstance(data, str):  # a Python 2 `str`, decoded as latin1 by the unpickler
    try:
      return data.encode('latin1')
    except UnicodeEncodeError:
      raise _Refusal(f'refusing {what}: data is text, not latin1 bytes') from None
  if isinstance(data, (bytes, bytearray)):
    return data
  raise _Refusal(f'refusing {what}: data is a {type(data).__name__}, not raw bytes '
                 '(no object arrays)')


def _build(spec, shape, data, order: str, max_array_bytes: int) -> np.ndarray:
  """The array, checked before anything is allocated; a native-endian C-order copy."""
  if not isinstance(spec, _DtypeSpec):
    raise _Refusal(f'refusing an array whose dtype is a {type(spec).__name__}, not a '
                   'plain numpy dtype')
  shape = _check_shape(shape)
  dt = spec.dtype()
  n = math.prod(shape)
  nbytes = n * dt.itemsize
  if nbytes > max_array_bytes:
    raise _Refusal(f'refusing an array of shape {shape} ({dt.str}): it would take '
                   f'{nbytes:,} bytes, over the limit of {max_array_bytes:,}')
  data = _raw_bytes(data, f'array of shape {shape}')
  if len(data) != nbytes:
    raise _Refusal(f'refusing an array of shape {shape} ({dt.str}): it needs {nbytes:,} bytes, the '
                   f'stream holds {len(data):,}')
  flat = np.frombuffer(data, dtype=dt, count=n)
  out = flat.reshape(shape, order=order).astype(dt.newbyteorder('='), order='C', copy=True)
  return out


class _PendingArray:
  """What `_reconstruct(ndarray, (0,), b'b')` returns; its `__setstate__` (BUILD) gets
  (version, shape, dtype, is_fortran, raw bytes) and builds the array with `_build`."""

  __hash__ = None  # type: ignore[assignment]

  def __init__(self, max_array_bytes: int):
    self.array: Optional[np.ndarray] = None
    self._max = max_array_bytes

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise _Refusal(f'refusing an array with an unexpected state {_short(state)}')
    if len(state) == 5:
      if state[0] != 1:
        raise _Refusal(f'refusing array state version {_short(state[0])}')
      state = state[1:]
    shape, spec, is_fortran, data = state
    if not isinstance(is_fortran, (bool, int)):
      raise _Refusal(f'refusing array order flag {_short(is_fortran)}')
    self.array = _build(spec, shape, data, 'F' if is_fortran else 'C', self._max)


class _Standins:
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
      raise _Refusal(f'refusing numpy _reconstruct{_short((cls, shape, typecode))}: only '
                     "_reconstruct(numpy.ndarray, (0,), b'b') is accepted")
    return _PendingArray(self.max_array_bytes)

  def frombuffer(self, buf, spec, shape, order):
    if order not in ('C', 'F'):
      raise _Refusal(f'refusing numpy _frombuffer order {_short(order)}')
    if isinstance(buf, pickle.PickleBuffer):  # out-of-band buffers are not supported
      buf = bytes(buf.raw())
    return _build(spec, shape, buf, order, self.max_array_bytes)

  def scalar(self, spec, data):
    if not isinstance(spec, _DtypeSpec):
      raise _Refusal(f'refusing a numpy scalar of a {type(spec).__name__}, not a plain dtype')
    dt = spec.dtype()
    data = _raw_bytes(data, f'numpy scalar ({dt.str})')
    if len(data) != dt.itemsize:
      raise _Refusal(f'refusing a numpy scalar ({dt.str}) of {len(data)} bytes')
    return np.frombuffer(data, dtype=dt, count=1).astype(dt.newbyteorder('='))[0]


def _latin1_encode(text, encoding='utf-8', errors='strict'):
  """`_codecs.encode`, as protocol-2 pickles of Python 3 bytes use it: latin1 only."""
  if not isinstance(text, str) or not _latin1(encoding) or errors != 'strict':
    raise _Refusal(f'refusing _codecs.encode with encoding {_short(encoding)}: only latin1 is '
                   'accepted')
  try:
    return text.encode('latin1')
  except UnicodeEncodeError:
    raise _Refusal('refusing _codecs.encode of text that is not latin1') from None


def _bytes(*args):
  """`bytes()`: protocol-2 pickles of Python 3 write an empty bytes object this way."""
  if args:
    raise _Refusal(f'refusing bytes{_short(args)}: only bytes() is accepted')
  return b''


def _bytearray(source=b'', encoding=None):
  """`bytearray` from bytes, or from text with encoding latin1; never bytearray(n)."""
  if isinstance(source, (bytes, bytearray)) and encoding is None:
    return bytearray(source)
  if isinstance(source, str) and _latin1(encoding):
    return bytearray(_latin1_encode(source, 'latin1'))
  raise _Refusal(f'refusing bytearray{_short((source, encoding))}: only bytes or latin1 text are '
                 'accepted')


def _short(obj, limit: int = 120) -> str:
  try:
    text = repr(obj)
  except Exception:  # pylint: disable=broad-except
    text = f'<{type(obj).__name__}>'
  text = _one_line(text)
  return text if len(text) <= limit else text[:limit - 3] + '...'


# ------------------------------------------------------------------------------ loading


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, standins: _Standins):
    super().__init__(file, encoding='latin1', errors='strict')
    self._standins = standins

  def find_class(self, module: str, name: str):
    try:
      return self._standins.table[(module, name)]
    except (KeyError, TypeError):
      raise _Refusal(f"refusing to load global '{module}.{name}': not on the allow-list (only "
                     'numpy arrays of bool/int/uint/float and plain containers are '
                     'accepted; a pickle naming other globals can run arbitrary code)'
                     ) from None

  def persistent_load(self, pid):
    raise _Refusal('refusing persistent ids')


_MEMO_PUTS = ('PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE')


def _scan(data: bytes) -> None:
  """Walks the opcodes without building anything: refuses truncated data and memo
  indices that a standard pickler cannot have written (the C unpickler sizes its memo
  table by the largest index it sees)."""
  puts = 0
  try:
    for op, arg, pos in pickletools.genops(io.BytesIO(data)):
      if op.name in _MEMO_PUTS:
        if op.name != 'MEMOIZE' and (not isinstance(arg, int) or arg > 2 * puts + 16):
          raise _Refusal(f'refusing memo index {arg} at byte {pos} after {puts} memo entries')
        puts += 1
  except _Refusal:
    raise
  except Exception as e:  # pylint: disable=broad-except  # genops: ValueError and others
    raise _Refusal(f'refusing a malformed pickle: {e}') from None


def _resolve(obj, max_array_bytes: int):
  """Replaces pending arrays by the arrays, checks every value, returns the result."""
  done: dict[int, Any] = {}
  keep = []  # keeps ids of visited objects valid during the walk

  def walk(x, depth):
    if depth > MAX_DEPTH:
      raise _Refusal(f'refusing containers nested deeper than {MAX_DEPTH} levels')
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes, bytearray)):
      return x
    key = id(x)
    if key in done:
      return done[key]
    keep.append(x)
    if isinstance(x, _PendingArray):
      if x.array is None:
        raise _Refusal('refusing an array without data (its state was never set)')
      out = x.array
      check_array(out, max_array_bytes)
    elif isinstance(x, np.ndarray):
      check_array(x, max_array_bytes)
      out = x
    elif isinstance(x, np.generic):
      if x.dtype.kind not in 'biuf':
        raise _Refusal(f'refusing a numpy scalar of dtype {x.dtype}')
      out = x
    elif isinstance(x, _DtypeSpec):
      raise _Refusal('refusing a bare numpy dtype in the data (dtypes are accepted only inside '
                     'arrays)')
    elif isinstance(x, list):
      done[key] = x
      for i, v in enumerate(x):
        x[i] = walk(v, depth + 1)
      out = x
    elif isinstance(x, dict):  # OrderedDict included
      done[key] = x
      for k in list(x):
        walk(k, depth + 1)
        x[k] = walk(x[k], depth + 1)
      if type(x) not in (dict, collections.OrderedDict) or getattr(x, '__dict__', None):
        raise _Refusal(f'refusing a {type(x).__name__} with attributes')
      out = x
    elif isinstance(x, tuple):
      items = [walk(v, depth + 1) for v in x]
      out = x if all(a is b for a, b in zip(items, x)) else tuple(items)
    elif isinstance(x, (set, frozenset)):
      for v in x:
        walk(v, depth + 1)
      out = x
    else:
      raise _Refusal(f'refusing a value of type {type(x).__name__}')
    done[key] = out
    return out

  return walk(obj, 0)


def check_array(a: np.ndarray, max_array_bytes: int = MAX_ARRAY_BYTES) -> None:
  """Raises UnsafePickleError (without a file name) unless `a` is a plain numeric array:
  kind bool/int/uint/float, no fields, not object, C-contiguous, size within the limit."""
  try:
    dt = a.dtype
    ok = (isinstance(a, np.ndarray) and dt.kind in 'biuf' and dt.fields is None
          and not dt.hasobject and dt.subdtype is None and a.flags['C_CONTIGUOUS']
          and 0 <= a.size and a.nbytes <= max_array_bytes)
  except Exception:  # pylint: disable=broad-except
    ok = False
  if not ok:
    raise UnsafePickleError(
        f'refusing an array of dtype {getattr(a, "dtype", "?")} and shape '
        f'{getattr(a, "shape", "?")}: not a plain C-contiguous bool/int/uint/float array '
        'within the size limit')


def loads(data: bytes, *, source: str = '<bytes>',
          max_array_bytes: int = MAX_ARRAY_BYTES) -> Any:
  """Unpickles `data` with the stand-ins, then validates the result.

  Args:
    data: the pickle (already decompressed).
    source: how the message names the data (a file path).
    max_array_bytes: largest accepted array.

  Raises:
    UnsafePickleError: refused or malformed; one line starting with `source`.
  """
  try:
    _scan(data)
    standins = _Standins(max_array_bytes)
    obj = _Unpickler(io.BytesIO(data), standins).load()
    return _resolve(obj, max_array_bytes)
  except (_Refusal, UnsafePickleError) as e:
    raise UnsafePickleError(f'{source}: {_one_line(e)}') from None
  except MemoryError:
    raise UnsafePickleError(f'{source}: refusing the pickle: it asks for more memory '
                            'than there is') from None
  except RecursionError:
    raise UnsafePickleError(f'{source}: refusing the pickle: nested too deeply') from None
  except Exception as e:  # pylint: disable=broad-except  # malformed stream, bad args
    raise UnsafePickleError(
        f'{source}: not a readable pickle ({type(e).__name__}: {_one_line(e)})') from None


def read_capped(f, limit: int, source: str) -> bytes:
  """All of a binary stream, refusing more than `limit` bytes (read in chunks, so a
  gzip bomb stops at the limit)."""
  chunks, total = [], 0
  try:
    while True:
      chunk = f.read(min(_CHUNK, limit + 1 - total))
      if not chunk:
        break
      chunks.append(chunk)
      total += len(chunk)
      if total > limit:
        raise UnsafePickleError(f'{source}: refusing the pickle: larger than {limit:,} '
                                'bytes')
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise UnsafePickleError(f'{source}: not a readable gzip file ({type(e).__name__}: '
                            f'{_one_line(e)})') from None
  return b''.join(chunks)


def load_file(path: str | os.PathLike, *, max_bytes: int = MAX_PICKLE_BYTES,
              max_array_bytes: int = MAX_ARRAY_BYTES) -> Any:
  """Reads a pickle file (gzip-compressed or not, detected by its first bytes).

  Raises:
    UnsafePickleError: refused or malformed (one line naming the file).
    OSError: the file cannot be opened.
  """
  path = os.fspath(path)
  with open(path, 'rb') as raw:
    gz = raw.read(2) == b'\x1f\x8b'
    raw.seek(0)
    f = gzip.GzipFile(fileobj=raw, mode='rb') if gz else raw
    data = read_capped(f, max_bytes, path)
  return loads(data, source=path, max_array_bytes=max_array_bytes)


def load(fileobj, *, source: Optional[str] = None, max_bytes: int = MAX_PICKLE_BYTES,
         max_array_bytes: int = MAX_ARRAY_BYTES) -> Any:
  """Like `load_file` for an open binary file object (not decompressed here)."""
  source = source or getattr(fileobj, 'name', None) or '<stream>'
  data = read_capped(fileobj, max_bytes, str(source))
  return loads(data, source=str(source), max_array_bytes=max_array_bytes)
