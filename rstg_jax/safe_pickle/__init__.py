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
- Before the C unpickler runs, `scan` plays the opcode stream on costs only
  (`rstg_jax.safe_pickle.scan`): nesting depth, the bytes and objects the load would
  build counting every reference to a shared object (so a DAG of shared tuples costs its
  expanded size), memo fetches per entry, memo indices, colliding dict keys. What the
  C unpickler would crash, hang or run out of memory on is refused there.
- Sizes are checked before anything is allocated: the file (`max_bytes`, also against
  gzip bombs), each array (`max_array_bytes`), the whole load (`max_total_bytes`), and
  each array's byte count against its shape times item size.
- Byte strings: `_codecs.encode` (how protocol-2 pickles of Python 3 store bytes) and
  `bytearray` accept latin1 only; Python 2 strings are decoded as latin1.
- After loading, every array is validated (kind in 'biuf', no fields, C-contiguous,
  size within the limit), containers are checked to hold only plain values, and nesting
  deeper than `MAX_DEPTH` is refused.

Every refusal, and every malformed or truncated file, raises `UnsafePickleError` (a
`pickle.UnpicklingError`) with a one-line message naming the file and what was refused;
messages describe values piece by piece (`common.short`), never by a whole `repr`.

The parts: `common` (limits, errors), `scan` (the pre-load scan), `standins` (the
allow-list and the stand-ins); this module loads, resolves and validates.

    from rstg_jax import safe_pickle
    obj = safe_pickle.load_file('mnist.pkl.gz')   # gzip detected by its magic bytes
"""

from __future__ import annotations

import collections
import gzip
import io
import os
import zlib
from typing import Any, Optional

import numpy as np

from rstg_jax.safe_pickle import scan, standins
from rstg_jax.safe_pickle.common import (MAX_ARRAY_BYTES, MAX_DEPTH, MAX_MEMO_REFS, MAX_NDIM,
                                         MAX_OBJECTS, MAX_OPCODES, MAX_PICKLE_BYTES,
                                         MAX_PLAIN_HASHED, MAX_TOTAL_BYTES, TYPESTRS, Refusal,
                                         UnsafePickleError, one_line)

__all__ = ['MAX_ARRAY_BYTES', 'MAX_DEPTH', 'MAX_MEMO_REFS', 'MAX_NDIM', 'MAX_OBJECTS',
           'MAX_OPCODES', 'MAX_PICKLE_BYTES', 'MAX_PLAIN_HASHED', 'MAX_TOTAL_BYTES',
           'TYPESTRS', 'UnsafePickleError', 'check_array', 'load', 'load_file', 'loads',
           'read_capped']

_CHUNK = 16 << 20


def _resolve(obj, max_array_bytes: int):
  """Replaces pending arrays by the arrays, checks every value, returns the result."""
  done: dict[int, Any] = {}
  keep = []  # keeps ids of visited objects valid during the walk

  def walk(x, depth):
    if depth > MAX_DEPTH:
      raise Refusal(f'refusing containers nested deeper than {MAX_DEPTH} levels')
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes, bytearray)):
      return x
    key = id(x)
    if key in done:
      return done[key]
    keep.append(x)
    if isinstance(x, standins.PendingArray):
      if x.array is None:
        raise Refusal('refusing an array without data (its state was never set)')
      out = x.array
      check_array(out, max_array_bytes)
    elif isinstance(x, np.ndarray):
      check_array(x, max_array_bytes)
      out = x
    elif isinstance(x, np.generic):
      if x.dtype.kind not in 'biuf':
        raise Refusal(f'refusing a numpy scalar of dtype {x.dtype}')
      out = x
    elif isinstance(x, standins.DtypeSpec):
      raise Refusal('refusing a bare numpy dtype in the data (dtypes are accepted only inside '
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
        raise Refusal(f'refusing a {type(x).__name__} with attributes')
      out = x
    elif isinstance(x, tuple):
      items = [walk(v, depth + 1) for v in x]
      out = x if all(a is b for a, b in zip(items, x)) else tuple(items)
    elif isinstance(x, (set, frozenset)):
      for v in x:
        walk(v, depth + 1)
      out = x
    else:
      raise Refusal(f'refusing a value of type {type(x).__name__}')
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


def loads(data: bytes, *, source: str = '<bytes>', max_array_bytes: int = MAX_ARRAY_BYTES,
          max_total_bytes: int = MAX_TOTAL_BYTES) -> Any:
  """Scans `data`, unpickles it with the stand-ins, then validates the result.

  Args:
    data: the pickle (already decompressed).
    source: how the message names the data (a file path).
    max_array_bytes: largest accepted array.
    max_total_bytes: most bytes the load may build, counting every reference to a
      shared object and every copy a call makes (see `rstg_jax.safe_pickle.scan`).

  Raises:
    UnsafePickleError: refused or malformed; one line starting with `source`.
  """
  try:
    scan.scan(data, max_total_bytes)
    table = standins.Standins(max_array_bytes)
    obj = standins.Unpickler(io.BytesIO(data), table).load()
    return _resolve(obj, max_array_bytes)
  except (Refusal, UnsafePickleError) as e:
    raise UnsafePickleError(f'{source}: {one_line(e)}') from None
  except MemoryError:
    raise UnsafePickleError(f'{source}: refusing the pickle: it asks for more memory '
                            'than there is') from None
  except RecursionError:
    raise UnsafePickleError(f'{source}: refusing the pickle: nested too deeply') from None
  except Exception as e:  # pylint: disable=broad-except  # malformed stream, bad args
    raise UnsafePickleError(
        f'{source}: not a readable pickle ({type(e).__name__}: {one_line(e)[:200]})') from None


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
                            f'{one_line(e)[:200]})') from None
  return b''.join(chunks)


def load_file(path: str | os.PathLike, *, max_bytes: int = MAX_PICKLE_BYTES,
              max_array_bytes: int = MAX_ARRAY_BYTES,
              max_total_bytes: int = MAX_TOTAL_BYTES) -> Any:
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
  return loads(data, source=path, max_array_bytes=max_array_bytes,
               max_total_bytes=max_total_bytes)


def load(fileobj, *, source: Optional[str] = None, max_bytes: int = MAX_PICKLE_BYTES,
         max_array_bytes: int = MAX_ARRAY_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> Any:
  """Like `load_file` for an open binary file object (not decompressed here)."""
  source = source or getattr(fileobj, 'name', None) or '<stream>'
  data = read_capped(fileobj, max_bytes, str(source))
  return loads(data, source=str(source), max_array_bytes=max_array_bytes,
               max_total_bytes=max_total_bytes)
