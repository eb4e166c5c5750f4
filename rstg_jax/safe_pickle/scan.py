"""The pre-load scan of `rstg_jax.safe_pickle`: the pickle machine, run on costs only.

Before the C unpickler builds anything, `scan` walks the opcode stream with
`pickletools.genops` and plays the pickle machine (stack, marks, memo) on `_Value`
records that hold what a value would cost instead of the value: its bytes and its number
of objects, both counting every reference to a shared object (the expanded size of the
DAG, so `(t, t)` nested 64 times costs 2**64), its nesting depth, and how many keys it
hashes whose hashes are not randomised. It refuses, with the byte offset:

- nesting deeper than `MAX_DEPTH` (the C unpickler hashes a dict key or set member
  recursively: 300,000 nested 1-tuples as a key overflow the C stack);
- a value, or the whole load, over `max_total_bytes` or `MAX_OBJECTS` (a 64-level DAG of
  shared tuples would take 2**64 steps to hash or walk; a memoised 1 MiB bytes object
  copied by `list()` 3,000 times would ask for 24 GiB);
- a memo entry fetched more than `MAX_MEMO_REFS` times, a memo index that a pickler
  cannot have written (the C unpickler sizes its memo table by the largest index), more
  than `MAX_OPCODES` opcodes;
- more than `MAX_PLAIN_HASHED` int / float / tuple keys in one dict or set (colliding
  hashes make each insertion probe all earlier keys);
- a container changed after it was used inside another value (a cycle, or a late change
  that would make the costs above wrong: a standard pickler fills every container before
  using it, cycles aside);
- a truncated or malformed stream.

Calls cost what they may copy: `list(x)`, `tuple(x)`, `set(x)`, `frozenset(x)`,
`dict(x)`, `OrderedDict(x)` one slot (and object) per element of `x`, every other call
its arguments, and BUILD its state (an array is copied out of its raw bytes).
"""

from __future__ import annotations

import io
import pickletools
from typing import Optional

from rstg_jax.safe_pickle.common import (MAX_DEPTH, MAX_MEMO_REFS, MAX_OBJECTS, MAX_OPCODES,
                                         MAX_PLAIN_HASHED, Refusal, one_line)

_TEXT = frozenset(('STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE',
                   'SHORT_BINUNICODE', 'BINUNICODE8'))  # str (Python 2 strings as latin1)
_BYTES = frozenset(('BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8', 'BYTEARRAY8'))
_NUMBERS = frozenset(('INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4',
                      'FLOAT', 'BINFLOAT', 'NONE', 'NEWTRUE', 'NEWFALSE'))
_EMPTY = {'EMPTY_LIST': 'list', 'EMPTY_TUPLE': 'tuple', 'EMPTY_DICT': 'dict',
          'EMPTY_SET': 'set'}
_FROM_MARK = {'LIST': 'list', 'TUPLE': 'tuple', 'DICT': 'dict', 'FROZENSET': 'frozenset'}
_TUPLE_N = {'TUPLE1': 1, 'TUPLE2': 2, 'TUPLE3': 3}
_PUTS = frozenset(('PUT', 'BINPUT', 'LONG_BINPUT'))
_GETS = frozenset(('GET', 'BINGET', 'LONG_BINGET'))
_COPIERS = frozenset(('list', 'tuple', 'set', 'frozenset', 'dict', 'OrderedDict',
                      'bytearray'))
_SLOT = 8  # bytes per container slot (a pointer)


class _Value:
  """What one value on the machine's stack costs (not the value)."""

  __slots__ = ('kind', 'size', 'count', 'depth', 'slots', 'plain', 'pairs', 'hashed',
               'first', 'sealed', 'refs', 'text')

  def __init__(self, kind: str, size: int = 0, text: Optional[str] = None):
    self.kind = kind        # 'str', 'bytes', 'number', 'list', ..., 'global', 'object'
    self.size = size        # bytes, counting every reference to a shared value
    self.count = 1          # objects, likewise
    self.depth = 0          # containers nested inside it
    self.slots = 0          # direct items
    self.plain = 0          # direct items with hashes that are not randomised
    self.pairs = 0          # direct items that are sequences starting with such an item
    self.hashed = 0         # keys or members with such hashes (dicts and sets)
    self.first: Optional[_Value] = None  # the first direct item
    self.sealed = False     # used inside another value: may no longer change
    self.refs = 0           # memo fetches
    self.text = text        # a short str's value (for STACK_GLOBAL)

  def is_plain(self) -> bool:
    return self.kind not in ('str', 'bytes')


class _Machine:
  """The pickle machine on `_Value`s, with the limits of one load."""

  def __init__(self, max_total_bytes: int):
    self.budget = max_total_bytes
    self.stack: list[_Value] = []
    self.marks: list[int] = []
    self.memo: dict[int, _Value] = {}
    self.puts = 0     # memo entries written
    self.alloc = 0    # bytes the load builds (shared values once, copies each time)
    self.objects = 0  # objects the load builds
    self.pos = 0

  # -------------------------------------------------------------------------- limits

  def refuse(self, what: str):
    raise Refusal(f'refusing {what} (at byte {self.pos})')

  def allocate(self, nbytes: int, objects: int = 1) -> None:
    self.alloc += nbytes
    self.objects += objects
    if self.alloc > self.budget:
      self.refuse(f'a pickle that builds more than {self.budget:,} bytes')
    if self.objects > MAX_OBJECTS:
      self.refuse(f'a pickle of more than {MAX_OBJECTS:,} objects')

  def check(self, v: _Value) -> _Value:
    if v.depth > MAX_DEPTH:
      self.refuse(f'containers nested deeper than {MAX_DEPTH} levels')
    if v.size > self.budget:
      self.refuse(f'a value of more than {self.budget:,} bytes, counting every reference '
                  'to a shared value')
    if v.count > MAX_OBJECTS:
      self.refuse(f'a value of more than {MAX_OBJECTS:,} objects, counting every reference '
                  'to a shared value')
    if v.hashed > MAX_PLAIN_HASHED:
      self.refuse(f'a dict or set with more than {MAX_PLAIN_HASHED:,} keys that are not '
                  'strings (their hashes can be made to collide)')
    return v

  # --------------------------------------------------------------------------- stack

  def pop(self, n: int = 1) -> list[_Value]:
    floor = self.marks[-1] if self.marks else 0
    if len(self.stack) - n < floor:
      self.refuse('a malformed pickle: stack underflow')
    items = self.stack[len(self.stack) - n:]
    del self.stack[len(self.stack) - n:]
    return items

  def pop_mark(self) -> list[_Value]:
    if not self.marks:
      self.refuse('a malformed pickle: no mark')
    at = self.marks.pop()
    items = self.stack[at:]
    del self.stack[at:]
    return items

  def top(self) -> _Value:
    if len(self.stack) <= (self.marks[-1] if self.marks else 0):
      self.refuse('a malformed pickle: stack underflow')
    return self.stack[-1]

  # ---------------------------------------------------------------------- containers

  def add(self, target: _Value, items: list[_Value], keys: list[_Value]) -> _Value:
    """Puts `items` into `target`; `keys` are those of them that get hashed."""
    if target.sealed or any(v is target for v in items):
      self.refuse(f'a {target.kind} changed after it was used (cycles are not accepted)')
    for v in items:
      v.sealed = True
      target.size += v.size + _SLOT
      target.count += v.count
      target.depth = max(target.depth, v.depth + 1)
      target.plain += v.is_plain()
      target.pairs += v.first is not None and v.first.is_plain()
    if target.first is None and items:
      target.first = items[0]
    target.slots += len(items)
    target.hashed += sum(k.is_plain() for k in keys)
    self.allocate(_SLOT * len(items), 0)
    return self.check(target)

  def new(self, kind: str, items: list[_Value], keys: list[_Value]) -> _Value:
    self.allocate(0)
    return self.add(_Value(kind), items, keys)

  def build(self, target: _Value, state: _Value) -> None:
    """BUILD: the state goes into the object (an array copies its raw bytes)."""
    if target.sealed or state is target:
      self.refuse(f'a {target.kind} changed after it was used (cycles are not accepted)')
    state.sealed = True
    target.size += state.size
    target.count += state.count
    target.depth = max(target.depth, state.depth)
    self.allocate(state.size, 0)
    self.check(target)

  def call(self, fn: _Value, args: _Value) -> _Value:
    """REDUCE and its kin: a copier costs a slot per element, any call its arguments."""
    args.sealed = True
    out = _Value('object', args.size)
    out.count, out.depth = args.count + 1, args.depth
    name = (fn.text or '').rsplit('.', 1)[-1]
    x = args.first
    if fn.kind == 'global' and name in _COPIERS and x is not None:
      if x.kind in ('list', 'tuple', 'dict', 'set', 'frozenset'):
        n, plain, pairs = x.slots, x.plain, x.pairs
      else:  # iterating bytes, text or an array: count one element per byte
        n = x.size
        plain = pairs = 0 if x.kind == 'str' else n
      if name == 'bytearray':
        out.size += n
        self.allocate(n)
      else:
        out.size += _SLOT * n
        out.count += n
        out.slots, out.plain, out.pairs = n, plain, pairs
        self.allocate(_SLOT * n, n + 1)
      if name in ('set', 'frozenset'):
        out.hashed = plain
      elif name in ('dict', 'OrderedDict'):
        out.hashed = x.hashed if x.kind == 'dict' else pairs
      out.kind = {'OrderedDict': 'dict', 'bytearray': 'bytes'}.get(name, name)
    else:
      self.allocate(args.size)
    return self.check(out)

  # ------------------------------------------------------------------------- opcodes

  def step(self, name: str, arg) -> None:
    """One opcode: values and containers here, the rest in `control`."""
    if name in _TEXT or name in _BYTES:
      kind = 'str' if name in _TEXT else 'bytes'
      self.allocate(len(arg))
      text = arg if kind == 'str' and len(arg) <= 200 else None
      self.stack.append(self.check(_Value(kind, len(arg), text)))
    elif name in _NUMBERS:
      size = max(8, (arg.bit_length() + 7) // 8) if isinstance(arg, int) else 8
      self.allocate(size)
      self.stack.append(_Value('number', size))
    elif name in _EMPTY:
      self.stack.append(self.new(_EMPTY[name], [], []))
    elif name in _FROM_MARK:
      items = self.pop_mark()
      keys = items[0::2] if name == 'DICT' else items if name == 'FROZENSET' else []
      self.stack.append(self.new(_FROM_MARK[name], items, keys))
    elif name in _TUPLE_N:
      self.stack.append(self.new('tuple', self.pop(_TUPLE_N[name]), []))
    elif name in ('APPEND', 'SETITEM'):
      items = self.pop(1 if name == 'APPEND' else 2)
      self.add(self.top(), items, items[:1] if name == 'SETITEM' else [])
    elif name in ('APPENDS', 'SETITEMS', 'ADDITEMS'):
      items = self.pop_mark()
      keys = {'APPENDS': [], 'SETITEMS': items[0::2], 'ADDITEMS': items}[name]
      self.add(self.top(), items, keys)
    elif name == 'BUILD':
      state, = self.pop(1)
      self.build(self.top(), state)
    elif name in _PUTS or name in _GETS or name == 'MEMOIZE':
      self.memo_op(name, arg)
    else:
      self.control(name, arg)

  def memo_op(self, name: str, arg) -> None:
    if name in _GETS:
      v = self.memo.get(arg) if isinstance(arg, int) else None
      if v is None:
        self.refuse(f'a malformed pickle: memo index {arg} was never set')
      v.refs += 1
      if v.refs > MAX_MEMO_REFS:
        self.refuse(f'a pickle that fetches memo entry {arg} more than {MAX_MEMO_REFS:,} '
                    'times')
      self.stack.append(v)
      return
    if name == 'MEMOIZE':
      arg = len(self.memo)
    elif not isinstance(arg, int) or not 0 <= arg <= 2 * self.puts + 16:
      self.refuse(f'memo index {arg} after {self.puts} memo entries')
    self.puts += 1
    self.memo[arg] = self.top()

  def control(self, name: str, arg) -> None:
    """Marks, calls, globals and the opcodes that only move values."""
    if name == 'MARK':
      self.marks.append(len(self.stack))
    elif name == 'POP':  # as in the C unpickler: pops a mark when nothing is above it
      if self.marks and self.marks[-1] == len(self.stack):
        self.marks.pop()
      else:
        self.pop(1)
    elif name == 'POP_MARK':
      self.pop_mark()
    elif name == 'DUP':
      self.stack.append(self.top())
    elif name == 'GLOBAL':
      self.stack.append(_Value('global', 0, str(arg).replace(' ', '.')))
    elif name == 'STACK_GLOBAL':
      module, qualname = self.pop(2)
      self.stack.append(_Value('global', 0, f'{module.text}.{qualname.text}'))
    elif name in ('REDUCE', 'NEWOBJ'):
      fn, args = self.pop(2)
      self.stack.append(self.call(fn, args))
    elif name == 'NEWOBJ_EX':
      cls, args, kwargs = self.pop(3)
      self.stack.append(self.call(cls, self.new('tuple', [args, kwargs], [])))
    elif name in ('OBJ', 'INST'):
      items = self.pop_mark()
      if name == 'INST':
        items.insert(0, _Value('global', 0, str(arg).replace(' ', '.')))
      if not items:
        self.refuse('a malformed pickle: OBJ without a class')
      self.stack.append(self.call(items[0], self.new('tuple', items[1:], [])))
    elif name in ('BINPERSID', 'READONLY_BUFFER'):
      v, = self.pop(1)
      self.stack.append(v if name == 'READONLY_BUFFER' else _Value('object'))
    elif name in ('EXT1', 'EXT2', 'EXT4', 'PERSID', 'NEXT_BUFFER'):
      self.allocate(0)
      self.stack.append(_Value('object'))
    elif name == 'STOP':
      self.pop(1)
    elif name not in ('PROTO', 'FRAME'):
      self.refuse(f'opcode {name}')


def scan(data: bytes, max_total_bytes: int) -> None:
  """Plays the pickle `data` on costs; raises `Refusal` for what the module docstring
  lists, without building any value of the pickle."""
  machine = _Machine(max_total_bytes)
  try:
    for i, (op, arg, pos) in enumerate(pickletools.genops(io.BytesIO(data))):
      machine.pos = pos
      if i >= MAX_OPCODES:  # marks and pops build nothing: only this stops a flood
        machine.refuse(f'a pickle of more than {MAX_OPCODES:,} opcodes')
      machine.step(op.name, arg)
  except Refusal:
    raise
  except Exception as e:  # pylint: disable=broad-except  # genops: ValueError and others
    raise Refusal(f'refusing a malformed pickle: {one_line(e)[:200]} (after byte '
                  f'{machine.pos})') from None
