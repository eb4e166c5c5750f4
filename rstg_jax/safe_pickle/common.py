"""What the parts of `rstg_jax.safe_pickle` share: the limits, the errors and short text.

The limits are module constants so that a reader can see them in one place; `loads`
takes the two that a caller may want to change (`max_array_bytes`, `max_total_bytes`)
as arguments.
"""

from __future__ import annotations

import pickle
from typing import Any

from rstg_jax import errors

#: Largest pickle (after gunzip) read into memory, bytes.
MAX_PICKLE_BYTES = 4 << 30
#: Largest single array, bytes (MNIST's train images are 157 MB as float32).
MAX_ARRAY_BYTES = 2 << 30
#: Most bytes one load may build, counting every reference to a shared object as a copy
#: (the expanded size of the object graph) and every copy a call makes: MNIST needs about
#: 0.5 GB, a Caffe2 ResNet-50 checkpoint with its momentum blobs under 1 GB.
MAX_TOTAL_BYTES = 2 << 30
#: Deepest nesting of containers accepted (real files: 3 or 4 levels).
MAX_DEPTH = 64
#: Most objects one load may build, counting every reference to a shared object (a
#: Caffe2 checkpoint has a few tens of thousands).
MAX_OBJECTS = 1 << 20
#: Most opcodes in one pickle (each costs the pre-load scan about a microsecond).
MAX_OPCODES = 1 << 22
#: Most times one memo entry may be fetched (a Caffe2 checkpoint fetches its dtype and
#: `_reconstruct` once per blob: a few thousand times).
MAX_MEMO_REFS = 1 << 16
#: Most keys of one dict or set whose hashes are not randomised (anything but str and
#: bytes): an int whose hash collides with others costs every later insertion a probe, so
#: n colliding keys take n**2 / 2 probes (100,000 of them: about an hour).
MAX_PLAIN_HASHED = 4096
#: Most dimensions an array may have.
MAX_NDIM = 32

#: The only dtypes an array may have: numpy type strings without byte order.
TYPESTRS = ('b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8')


class UnsafePickleError(pickle.UnpicklingError, errors.DataError):
  """A pickle was refused: it asks for something outside the allow-list, is too large,
  or is malformed. The message is one line naming the file and what was refused."""


class Refusal(Exception):
  """Raised by the scan and the stand-ins; `loads` turns it into UnsafePickleError with
  the file name."""


def one_line(text: Any) -> str:
  return ' '.join(str(text).split())


def is_latin1(encoding: Any) -> bool:
  return (isinstance(encoding, str)
          and encoding.lower().replace('-', '').replace('_', '') == 'latin1')


def short(obj: Any, limit: int = 120) -> str:
  """A one-line description of `obj` of at most `limit` characters, built piece by piece:
  never the `repr` of a whole object (a shared-tuple DAG's repr is exponential, a large
  bytes object's repr is as large)."""
  parts: list[str] = []
  room = [limit + 1]

  def emit(text: str) -> bool:
    parts.append(text)
    room[0] -= len(text)
    return room[0] > 0

  def fmt(x: Any, depth: int) -> bool:
    if isinstance(x, (str, bytes, bytearray)):
      head = x[:limit]
      return emit(repr(bytes(head) if isinstance(x, bytearray) else head)
                  + ('...' if len(x) > limit else ''))
    if isinstance(x, bool) or x is None or isinstance(x, float):
      return emit(repr(x))
    if isinstance(x, int):
      return emit(repr(x) if x.bit_length() <= 64 else f'<int of {x.bit_length()} bits>')
    if isinstance(x, (tuple, list, set, frozenset, dict)):
      opening, closing = {tuple: '()', list: '[]', dict: '{}'}.get(type(x), '{}')
      if depth >= 3:
        return emit(f'{opening}...{closing}')
      if not emit(opening):
        return False
      items = x.items() if isinstance(x, dict) else x
      for i, item in enumerate(items):
        if i and not emit(', '):
          return False
        pair = item if isinstance(x, dict) else (item,)
        for j, v in enumerate(pair):
          if (j and not emit(': ')) or not fmt(v, depth + 1):
            return False
      return emit((',' if isinstance(x, tuple) and len(x) == 1 else '') + closing)
    return emit(f'<{type(x).__name__}>')

  fmt(obj, 0)
  text = one_line(''.join(parts))
  return text if len(text) <= limit else text[:limit - 3] + '...'
