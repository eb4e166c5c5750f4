"""Hostile pickles against `rstg_jax.safe_pickle` and the two readers that use it.

Every hostile file is built here, opcode by opcode, as an attacker would write it:

  forged_dtype     numpy.dtype('V8') whose forged __setstate__ gives it an object field
                   with the flags cleared, in _reconstruct with raw bytes: plain pickle
                   (and the earlier allow-list unpicklers) segfault when numpy copies it;
  forged_f4_state  an allow-listed type string ('f4') whose state sets the object flags;
  object_array     an object-dtype array (a list as its "raw data");
  structured       a structured dtype ([('a', 'f4'), ('b', 'i4')]);
  codec_rot13 / codec_zlib   _codecs.encode with another codec than latin1;
  ndarray_call     numpy.ndarray((2**42,), 'f4') called directly: a 16 TiB request;
  huge_shape       _reconstruct with a state claiming a 2**50-element shape;
  huge_frombuffer  protocol-5 style _frombuffer with a huge shape;
  bytearray_bomb   bytearray(2**44);
  memo_bomb        LONG_BINPUT 0xfffffff0 (the C unpickler would size its memo for it);
  bytes8_bomb      BINBYTES8 declaring 2**50 bytes;
  deep_nesting     100,000 nested lists;
  os_system / builtins_eval / getattr   reducers that run code.

Each is refused, in a subprocess that must exit normally (not by a signal), by the
Caffe2 converter's command line (`python -m rstg_jax.convert`: exit 1, one error line,
no traceback) and by the MNIST `mnist.pkl.gz` loader.
"""

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from rstg_jax import safe_pickle
from rstg_jax.syncmnist import mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- builders


def g(module, name):
  """GLOBAL opcode."""
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def obj(x):
  """The opcodes that push a plain Python value (a pickle without PROTO and STOP)."""
  return pickle.dumps(x, protocol=3)[2:-1]


def dtype_ops(typestr, state_ops):
  return g('numpy', 'dtype') + obj((typestr, False, True)) + b'R' + state_ops + b'b'


def reconstruct_ops(state_ops):
  return (g('numpy.core.multiarray', '_reconstruct') + g('numpy', 'ndarray') + obj((0,))
          + obj(b'b') + b'\x87R' + state_ops + b'b')


def forged_dtype_ops(typestr):
  """A dtype whose state gives it an object field 'a' at offset 0 and clears the flags."""
  o8 = dtype_ops('O8', obj((3, '|', None, None, None, -1, -1, 63)))
  state = (b'(' + obj(3) + obj('|') + b'N' + obj(('a',)) + b'}' + obj('a') + b'(' + o8
           + obj(0) + b't' + b's' + obj(8) + obj(1) + obj(0) + b't')
  return dtype_ops(typestr, state)


def array_state(shape, dtype_code, data_ops):
  return b'(' + obj(1) + obj(shape) + dtype_code + obj(False) + data_ops + b't'


def plain_dtype(typestr='f4'):
  return dtype_ops(typestr, obj((3, '<', None, None, None, -1, -1, 0)))


HOSTILE = {
    'forged_dtype': (reconstruct_ops(array_state((2,), forged_dtype_ops('V8'),
                                                 obj(b'\x41' * 16))), "dtype 'V8'"),
    'forged_f4_state': (reconstruct_ops(array_state((2,), dtype_ops('f4', obj(
        (3, '<', None, None, None, -1, -1, 63))), obj(b'\x41' * 8))), 'forged state'),
    'object_array': (pickle.dumps(np.array([1, 'x'], dtype=object), protocol=2)[2:-1],
                     "dtype 'O8'"),
    'structured': (pickle.dumps(np.zeros(2, [('a', 'f4'), ('b', 'i4')]), protocol=2)[2:-1],
                   "dtype 'V8'"),
    'codec_rot13': (g('_codecs', 'encode') + obj(('abc', 'rot13')) + b'R', 'rot13'),
    'codec_zlib': (g('_codecs', 'encode') + obj(('abc', 'zlib_codec')) + b'R',
                   'zlib_codec'),
    'ndarray_call': (g('numpy', 'ndarray') + obj(((1 << 42,), 'f4')) + b'R',
                     'numpy.ndarray construction'),
    'huge_shape': (reconstruct_ops(array_state((1 << 25, 1 << 25), plain_dtype(),
                                               obj(b'\0' * 16))),
                   'over the limit'),
    'huge_frombuffer': (g('numpy.core.numeric', '_frombuffer') + b'(' + obj(b'\0' * 8)
                        + plain_dtype('f8') + obj((1 << 44,)) + obj('C') + b'tR',
                        'over the limit'),
    'bytearray_bomb': (g('builtins', 'bytearray') + obj((1 << 44,)) + b'R', 'bytearray'),
    'memo_bomb': (obj(1) + b'r' + struct.pack('<I', 0xfffffff0), 'memo index'),
    'bytes8_bomb': (b'\x8e' + struct.pack('<Q', 1 << 50) + b'xyz', 'malformed pickle'),
    'deep_nesting': (b']' * 100_000 + b'a' * 99_999, 'nested deeper'),
    'os_system': (g('os', 'system') + obj(('touch pwned',)) + b'R', "global 'os.system'"),
    'builtins_eval': (g('builtins', 'eval') + obj(('__import__("os")',)) + b'R',
                      "global 'builtins.eval'"),
    'getattr': (g('builtins', 'getattr') + g('numpy', 'ndarray') + obj('__new__')
                + b'\x86R', "global 'builtins.getattr'"),
}


def caffe2_file(path, value_ops):
  """{'blobs': {'conv1_w': <value>}} around the hostile value."""
  data = (b'\x80\x02}' + obj('blobs') + b'}' + obj('conv1_w') + value_ops + b'ss.')
  path.write_bytes(data)
  return path


def mnist_file(path, value_ops):
  """((<value>, y), (x, y), (x, y)) around the hostile value, gzipped like mnist.pkl.gz."""
  pair = obj((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)))
  data = b'\x80\x02' + value_ops + obj(np.zeros(1, np.int64)) + b'\x86' + pair + pair
  data += b'\x87.'
  with gzip.open(path, 'wb') as f:
    f.write(data)
  return path


def _run(args, cwd):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


# ------------------------------------------------------------------- the real attack


def test_forged_dtype_pickle_is_the_real_attack(tmp_path):
  """Plain pickle + numpy crash on the forged file: the test builds the real thing."""
  path = caffe2_file(tmp_path / 'forged.pkl', HOSTILE['forged_dtype'][0])
  proc = _run(['-c', 'import pickle, sys\n'
               'a = pickle.load(open(sys.argv[1], "rb"))["blobs"]["conv1_w"]\n'
               'print(a.dtype.hasobject, flush=True)\n'
               'a.copy()\n', str(path)], tmp_path)
  if proc.returncode == 0:
    pytest.skip('this numpy copes with the forged state by itself')
  # numpy was told the field holds no objects, then reads 0x4141... as object pointers.
  assert proc.returncode < 0, proc.stderr[-2000:]  # killed by a signal
  assert proc.stdout.strip() == 'False'


# ------------------------------------------------------------------ both readers, CLI


@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_convert_command_refuses_in_one_line(case, tmp_path):
  ops, expected = HOSTILE[case]
  src = caffe2_file(tmp_path / f'{case}.pkl', ops)
  dst = tmp_path / 'out.npz'
  proc = _run(['-m', 'rstg_jax.convert', '--src', str(src), '--dst', str(dst), '--arch',
               'i3d_r50'], tmp_path)
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # not a signal
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert lines[0].startswith(f'error: {src}: refusing'), lines[0]
  assert expected in lines[0], lines[0]
  assert not dst.exists() and not (tmp_path / 'pwned').exists()


_MNIST_SCRIPT = '''
import sys
from rstg_jax.syncmnist import mnist
try:
    mnist.load_local(sys.argv[1])
except mnist.UnsafePickleError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
print("loaded")
'''


@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_mnist_loader_refuses(case, tmp_path):
  ops, expected = HOSTILE[case]
  path = mnist_file(tmp_path / 'mnist.pkl.gz', ops)
  proc = _run(['-c', _MNIST_SCRIPT, str(path)], tmp_path)
  assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr[-2000:])
  line = proc.stderr.strip()
  assert '\n' not in line and line.startswith(f'{path}: refusing'), line
  assert expected in line, line
  assert not (tmp_path / 'pwned').exists()


def test_mnist_loader_wrapper_reads_a_plain_file(tmp_path):
  # The wrappers above are valid files once the hostile value is an honest array.
  x = np.zeros((1, 784), np.float32)
  path = mnist_file(tmp_path / 'mnist.pkl.gz', obj(x))
  data = mnist.load_local(path)
  assert data['train'][0].shape == (2, 28, 28) and data['test'][0].shape == (1, 28, 28)


# ----------------------------------------------------------------------- in-process


@pytest.mark.parametrize('protocol', [0, 2, 4, 5])
def test_plain_arrays_round_trip(protocol):
  rng = np.random.default_rng(0)
  value = {
      'f4': rng.normal(size=(3, 4)).astype(np.float32),
      'f8_fortran': np.asfortranarray(rng.normal(size=(3, 5))),
      'big_endian': np.arange(5, dtype='>i4'),
      'u1': np.arange(7, dtype=np.uint8), 'b1': np.array([True, False]),
      'f2': np.ones(3, np.float16), 'empty': np.zeros((0, 3), np.int64),
      'scalar': np.float32(0.5), 'nested': [(1, 2.5, 'a', b'\x00\xff', None)],
      'set': {1, 2}, 'frozen': frozenset({3}),
  }
  out = safe_pickle.loads(pickle.dumps(value, protocol=protocol))
  assert set(out) == set(value)
  for k, v in value.items():
    if isinstance(v, np.ndarray):
      np.testing.assert_array_equal(out[k], v)
      assert out[k].dtype == v.dtype.newbyteorder('=') and out[k].flags.c_contiguous
      assert out[k].flags.writeable
    else:
      assert out[k] == v
  assert out['big_endian'].dtype == np.dtype('i4')


def test_shared_dtype_and_arrays_keep_sharing():
  a = np.arange(4, dtype=np.float32)
  out = safe_pickle.loads(pickle.dumps([a, a, {'k': a}], protocol=2))
  assert out[0] is out[1] is out[2]['k']


@pytest.mark.parametrize('case', ['forged_f4_state', 'object_array', 'structured',
                                  'codec_rot13', 'ndarray_call', 'huge_shape',
                                  'bytearray_bomb', 'memo_bomb', 'bytes8_bomb',
                                  'deep_nesting', 'builtins_eval'])
def test_refusals_in_process(case):
  ops, expected = HOSTILE[case]
  with pytest.raises(safe_pickle.UnsafePickleError, match='^weights.pkl: ') as e:
    safe_pickle.loads(b'\x80\x02' + ops + b'.', source='weights.pkl')
  assert expected in str(e.value) and '\n' not in str(e.value)


def test_state_of_allowed_names_cannot_be_set():
  for module, name in (('numpy', 'dtype'), ('numpy', 'ndarray'), ('_codecs', 'encode')):
    data = b'\x80\x02' + g(module, name) + obj({'x': 1}) + b'b.'
    with pytest.raises(safe_pickle.UnsafePickleError, match='refusing to set the state'):
      safe_pickle.loads(data)


def test_bare_dtype_and_other_values_are_refused():
  with pytest.raises(safe_pickle.UnsafePickleError, match='bare numpy dtype'):
    safe_pickle.loads(pickle.dumps(np.dtype('f4'), protocol=2))
  with pytest.raises(safe_pickle.UnsafePickleError, match='datetime'):
    import datetime  # pylint: disable=g-import-not-at-top
    safe_pickle.loads(pickle.dumps(datetime.date(2020, 1, 1)))
  with pytest.raises(safe_pickle.UnsafePickleError, match="dtype 'U3'"):
    safe_pickle.loads(pickle.dumps(np.array(['abc']), protocol=2))


def test_size_limits_are_checked_before_reading_it_all(tmp_path):
  big = np.zeros(1000, np.float64)
  with pytest.raises(safe_pickle.UnsafePickleError, match='over the limit of 4,000'):
    safe_pickle.loads(pickle.dumps(big), max_array_bytes=4000)
  # A gzip bomb stops at max_bytes: 1 MB of zeros compresses to about 1 kB.
  path = tmp_path / 'bomb.pkl.gz'
  with gzip.open(path, 'wb') as f:
    f.write(b'\x80\x02' + b'\0' * (1 << 20))
  assert path.stat().st_size < 10_000
  with pytest.raises(safe_pickle.UnsafePickleError, match='larger than 65,536 bytes'):
    safe_pickle.load_file(path, max_bytes=1 << 16)


def test_malformed_files_get_one_line(tmp_path):
  for name, data in (('empty.pkl', b''), ('text.pkl', b'hello'),
                     ('truncated.pkl', pickle.dumps(np.zeros(100), protocol=2)[:-50]),
                     ('bad.pkl.gz', b'\x1f\x8b\x08\x00garbage')):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(safe_pickle.UnsafePickleError) as e:
      safe_pickle.load_file(path)
    assert str(e.value).startswith(f'{path}: ') and '\n' not in str(e.value)


def test_load_reads_an_open_stream():
  data = pickle.dumps((np.arange(3), 'x'), protocol=2)
  out = safe_pickle.load(io.BytesIO(data), source='s')
  np.testing.assert_array_equal(out[0], np.arange(3))
  assert out[1] == 'x'
