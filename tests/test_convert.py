"""Tests of the Caffe2 checkpoint import (`rstg_jax.convert`).

The fake checkpoints below follow the real naming scheme and shapes of the Non-local
repo / PySlowFast pickles for a reduced-depth, reduced-width network, and are written the
way Python 2 wrote them (numpy globals under `numpy.core.multiarray`, array bytes and
names as Python 2 `str`), so that the latin1 path is exercised.

"Converted weights compute the original network" is checked against a float64 numpy
reference written from the Caffe2 operators' rules (Non-local repo, `resnet_video.py`,
`resnet_helper.py`): explicit symmetric pads, output size floor((n + 2p - k) / s) + 1,
pool1 a 1x3x3 / (1,2,2) MaxPool with no pads, BN from the `_s/_b/_rm/_riv` blobs.
"""

import functools
import os
import pickle
import pickletools
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import ssv1_i3d
from rstg_jax import convert as convert_cli
from rstg_jax.ssv1 import caffe2
from rstg_jax.ssv1 import convert
from rstg_jax.ssv1 import models as ssv1_models
from rstg_jax.ssv1 import task as ssv1_task
from rstg_jax.ssv1.resnet3d import Bottleneck, ResNet3D

try:
  from numpy._core import multiarray as _ma
except ImportError:  # numpy 1.x
  from numpy.core import multiarray as _ma

ARCH_KT = {  # written out independently of resnet3d.TEMPORAL_KERNELS
    'i3d': (5, [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]]),
    'c2d': (1, [[1] * 3, [1] * 4, [1] * 6, [1] * 3]),
}
# pool1's spatial pads: Caffe2 Non-local `MaxPool(kernels=[1,3,3], strides=[1,2,2],
# pads=[0,0,0]*2)`; PySlowFast `MaxPool3d([1,3,3], [1,2,2], padding=[0,1,1])`.
STEM_POOL1_PAD = {'caffe2': 0, 'pyslowfast': 1}
BLOCKS = (2, 2, 1, 1)
WIDTH = 4
NL = {'res3': (1,)}
CLASSES = 5


def fake_blobs(arch='i3d', blocks=BLOCKS, width=WIDTH, nonlocal_stages=NL,
               classes=CLASSES, two_d=False, affine_only=False, seed=0):
  """Caffe2 blobs for a ResNet3D with the given structure, random values."""
  rng = np.random.default_rng(seed)
  kt1, kts = ARCH_KT[arch]
  b = {}

  def rand(*shape):
    return rng.normal(size=shape).astype(np.float32)

  def conv(name, cout, cin, t, k):
    b[f'{name}_w'] = rand(cout, cin, k, k) if two_d else rand(cout, cin, t, k, k)

  def bn(name, c):
    b[f'{name}_s'], b[f'{name}_b'] = rand(c), rand(c)
    if not affine_only:
      b[f'{name}_rm'] = rand(c)
      b[f'{name}_riv'] = rng.uniform(0.5, 1.5, c).astype(np.float32)

  conv('conv1', width, 3, kt1, 7)
  bn('res_conv1_bn', width)
  cin = width
  for s, n in enumerate(blocks):
    inner = width * 2 ** s
    for i in range(n):
      p = f'res{s + 2}_{i}'
      conv(f'{p}_branch2a', inner, cin, kts[s][i], 1)
      bn(f'{p}_branch2a_bn', inner)
      conv(f'{p}_branch2b', inner, inner, 1, 3)
      bn(f'{p}_branch2b_bn', inner)
      conv(f'{p}_branch2c', 4 * inner, inner, 1, 1)
      bn(f'{p}_branch2c_bn', 4 * inner)
      if i == 0:
        conv(f'{p}_branch1', 4 * inner, cin, 1, 1)
        bn(f'{p}_branch1_bn', 4 * inner)
      cin = 4 * inner
      if i in (nonlocal_stages or {}).get(f'res{s + 2}', ()):
        q = f'nonlocal_conv{s + 2}_{i}'
        for part, (co, ci) in {'theta': (cin // 2, cin), 'phi': (cin // 2, cin),
                               'g': (cin // 2, cin), 'out': (cin, cin // 2)}.items():
          b[f'{q}_{part}_w'] = rand(co, ci, 1, 1, 1)
          b[f'{q}_{part}_b'] = rand(co)
        bn(f'{q}_bn', cin)
  b['pred_w'], b['pred_b'] = rand(classes, cin), rand(classes)
  return b


class Py2StylePickler(pickle._Pickler):
  """Writes pickles the way Python 2 + numpy 1 did: `str` (bytes and names) as
  BINSTRING, numpy globals under `numpy.core.multiarray`."""

  dispatch = dict(pickle._Pickler.dispatch)
  _PY2_GLOBALS = {id(_ma._reconstruct): b'numpy.core.multiarray\n_reconstruct\n',
                  id(_ma.scalar): b'numpy.core.multiarray\nscalar\n',
                  id(np.ndarray): b'numpy\nndarray\n', id(np.dtype): b'numpy\ndtype\n'}

  def save_py2_str(self, obj):
    data = obj if isinstance(obj, bytes) else obj.encode('latin1')
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = save_py2_str
  dispatch[str] = save_py2_str

  def save_global(self, obj, name=None):
    if id(obj) in self._PY2_GLOBALS:
      self.write(pickle.GLOBAL + self._PY2_GLOBALS[id(obj)])
      self.memoize(obj)
    else:
      super().save_global(obj, name)


def write_caffe2_pickle(path, blobs, junk=True):
  blobs = dict(blobs)
  if junk:  # what the Caffe2 solver saves next to the weights
    blobs['res2_0_branch2a_w_momentum'] = np.zeros_like(blobs['res2_0_branch2a_w'])
    blobs['pred_b_momentum'] = np.zeros_like(blobs['pred_b'])
    blobs['model_iter'] = np.array([400000], np.int64)
    blobs['lr'] = np.float32(0.0001)  # a numpy scalar: numpy.core.multiarray.scalar
  with open(path, 'wb') as f:
    Py2StylePickler(f, protocol=2).dump({'blobs': blobs})
  return path


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """A fake I3D pickle converted with the command line; (blobs, npz path)."""
  d = tmp_path_factory.mktemp('ckpt')
  blobs = fake_blobs()
  src = write_caffe2_pickle(str(d / 'i3d.pkl'), blobs)
  dst = str(d / 'i3d.npz')
  assert convert_cli.main(['--src', src, '--dst', dst, '--arch', 'i3d_r50']) == 0
  return blobs, dst


def test_fake_pickle_looks_like_python2(tmp_path):
  path = write_caffe2_pickle(str(tmp_path / 'x.pkl'), fake_blobs())
  with open(path, 'rb') as f:
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(f.read())]
  names = {op for op, _ in ops}
  assert 'BINUNICODE' not in names and 'SHORT_BINSTRING' in names
  assert ('GLOBAL', 'numpy.core.multiarray _reconstruct') in ops


def test_conversion_round_trips_every_array(converted):
  blobs, dst = converted
  params, stats, meta = convert.load_converted(dst)
  assert meta['arch'] == 'i3d' and meta['format'] == convert.FORMAT
  assert meta['blocks'] == list(BLOCKS) and meta['nonlocal_stages'] == {'res3': [1]}
  assert sorted(meta['dropped']) == ['lr', 'model_iter', 'pred_b_momentum',
                                     'res2_0_branch2a_w_momentum']
  assert meta['skipped'] == [] and meta['inflated'] == []
  # Every blob is found at its expected place, with the expected transposition.
  for name, w in blobs.items():
    parts = name.split('_')
    if name == 'pred_w':
      got, want = params['pred']['kernel'], w.T
    elif name == 'pred_b':
      got, want = params['pred']['bias'], w
    elif parts[-1] in ('s', 'b', 'rm', 'riv') and 'bn' in parts:
      leaf = {'s': 'scale', 'b': 'bias', 'rm': 'mean', 'riv': 'var'}[parts[-1]]
      col = stats if parts[-1] in ('rm', 'riv') else params
      if name.startswith('res_conv1'):
        node = col['res_conv1_bn']
      elif name.startswith('nonlocal'):
        node = col['_'.join(parts[:3])]['bn']
      else:
        node = col['_'.join(parts[:2])][f'{parts[2]}_bn']
      got, want = node[leaf], w
    elif name == 'conv1_w':
      got, want = params['conv1']['kernel'], w.transpose(2, 3, 4, 1, 0)
    elif name.startswith('nonlocal'):
      node = params['_'.join(parts[:3])][parts[3]]
      got = node['kernel'] if parts[-1] == 'w' else node['bias']
      want = w.transpose(2, 3, 4, 1, 0) if parts[-1] == 'w' else w
    else:  # res{k}_{i}_branch{..}_w
      got, want = params['_'.join(parts[:2])][parts[2]]['kernel'], \
          w.transpose(2, 3, 4, 1, 0)
    np.testing.assert_array_equal(got, want, err_msg=name)
  # Nothing else is in the file, and the metadata names the source of every tensor.
  n_leaves = sum(len(jax.tree.leaves(t)) for t in (params, stats))
  assert n_leaves == len(blobs) == len(meta['sources'])
  assert meta['sources']['params/res2_0/branch2a/kernel'] == 'res2_0_branch2a_w'


def _conv3d_np(x, k, stride=(1, 1, 1), pad=((0, 0), (0, 0), (0, 0))):
  """Direct 3D convolution: x [T, H, W, Ci], k [t, h, w, Ci, Co] (cross-correlation,
  as Caffe2 and XLA compute it), explicit zero padding."""
  x = np.pad(x, tuple(pad) + ((0, 0),))
  kt, kh, kw = k.shape[:3]
  st, sh, sw = stride
  to = (x.shape[0] - kt) // st + 1
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  out = np.zeros((to, ho, wo, k.shape[-1]), np.float64)
  for t in range(to):
    for i in range(ho):
      for j in range(wo):
        patch = x[t * st:t * st + kt, i * sh:i * sh + kh, j * sw:j * sw + kw]
        out[t, i, j] = np.einsum('thwc,thwco->o', patch, k)
  return out


def _bn_np(x, blobs, prefix):
  s, b, rm, riv = (blobs[f'{prefix}_{f}'] for f in ('s', 'b', 'rm', 'riv'))
  return (x - rm) / np.sqrt(riv + 1e-5) * s + b


def _bottleneck_np(x, blobs, p, kt, stride, shortcut):
  """A bottleneck computed straight from the Caffe2 arrays."""
  def w(name):  # Caffe2 [out, in, t, h, w] -> [t, h, w, in, out] for _conv3d_np
    return blobs[f'{p}_{name}_w'].transpose(2, 3, 4, 1, 0).astype(np.float64)

  relu = functools.partial(np.maximum, 0)
  y = relu(_bn_np(_conv3d_np(x, w('branch2a'), pad=((kt // 2,) * 2, (0, 0), (0, 0))),
                  blobs, f'{p}_branch2a_bn'))
  y = relu(_bn_np(_conv3d_np(y, w('branch2b'), (1, stride, stride),
                             ((0, 0), (1, 1), (1, 1))), blobs, f'{p}_branch2b_bn'))
  y = _bn_np(_conv3d_np(y, w('branch2c')), blobs, f'{p}_branch2c_bn')
  sc = x
  if shortcut:
    sc = _bn_np(_conv3d_np(x, w('branch1'), (1, stride, stride)), blobs,
                f'{p}_branch1_bn')
  return relu(y + sc)


@pytest.mark.parametrize('block,width,cin,kt,stride', [
    ('res2_0', 4, 4, 3, 1),    # temporal kernel 3, shortcut conv (4 -> 16 channels)
    ('res2_1', 4, 16, 3, 1),   # identity shortcut
    ('res3_0', 8, 16, 3, 2),   # spatial stride 2 in branch2b and the shortcut
    ('res3_1', 8, 32, 1, 1),   # temporal kernel 1
])
def test_converted_bottleneck_matches_numpy(converted, block, width, cin, kt, stride):
  blobs, dst = converted
  params, stats, _ = convert.load_converted(dst)
  x = np.random.default_rng(1).normal(size=(1, 3, 5, 5, cin)).astype(np.float32)
  module = Bottleneck(width, temporal_kernel=kt, stride=stride, bn_frozen=True)
  y = jax.jit(module.apply)({'params': params[block], 'batch_stats': stats[block]}, x)
  want = _bottleneck_np(x[0].astype(np.float64), blobs, block, kt, stride,
                        shortcut=block.endswith('_0'))
  np.testing.assert_allclose(np.asarray(y[0]), want, rtol=1e-4, atol=1e-4)


def _caffe2_out_size(n, k, s, p):
  """Caffe2's conv/pool output size (ConvPoolOpBase, no legacy pad): floor rounding."""
  return (n + 2 * p - k) // s + 1


def _max_pool_np(x, kernel, stride, pad):
  """Caffe2 MaxPool on x [T, H, W, C]: symmetric explicit pads (which never win the
  max), floor output size; every window lies inside the padded input."""
  sizes = [_caffe2_out_size(n, k, s, p) for n, k, s, p in zip(x.shape, kernel, stride, pad)]
  x = np.pad(x, [(p, p) for p in pad] + [(0, 0)], constant_values=-np.inf)
  out = np.empty(sizes + [x.shape[-1]], np.float64)
  for t in range(sizes[0]):
    for i in range(sizes[1]):
      for j in range(sizes[2]):
        t0, i0, j0 = t * stride[0], i * stride[1], j * stride[2]
        out[t, i, j] = x[t0:t0 + kernel[0], i0:i0 + kernel[1],
                         j0:j0 + kernel[2]].max(axis=(0, 1, 2))
  return out


def _network_np(x, blobs, arch, blocks, pool1_pad, res5_stride=2):
  """Every stage of the C2D / I3D ResNet straight from the Caffe2 blobs, in float64
  (no non-local blocks): a dict like ResNet3D's `return_stages`."""
  kt1, kts = ARCH_KT[arch]
  relu = functools.partial(np.maximum, 0)
  w1 = blobs['conv1_w'].transpose(2, 3, 4, 1, 0).astype(np.float64)
  y = _conv3d_np(x, w1, (1, 2, 2), ((kt1 // 2,) * 2, (3, 3), (3, 3)))
  assert y.shape[1] == _caffe2_out_size(x.shape[1], 7, 2, 3)
  y = relu(_bn_np(y, blobs, 'res_conv1_bn'))
  y = _max_pool_np(y, (1, 3, 3), (1, 2, 2), (0, pool1_pad, pool1_pad))
  out = {'pool1': y}
  for s, n in enumerate(blocks):
    stride = 1 if s == 0 else (res5_stride if s == 3 else 2)
    for i in range(n):
      y = _bottleneck_np(y, blobs, f'res{s + 2}_{i}', kts[s][i],
                         stride if i == 0 else 1, shortcut=i == 0)
    out[f'res{s + 2}'] = y
    if s == 0:  # pool2: MaxPool kernels [2,1,1], strides [2,1,1], no pads
      y = _max_pool_np(y, (2, 1, 1), (2, 1, 1), (0, 0, 0))
  out['pooled'] = y.mean(axis=(0, 1, 2))
  out['logits'] = out['pooled'] @ blobs['pred_w'].T.astype(np.float64) + blobs['pred_b']
  return out


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize('arch,stem', [('i3d', None), ('c2d', None), ('i3d', 'pyslowfast')])
def test_converted_network_computes_the_caffe2_original(tmp_path, arch, stem):
  # A 30x30 clip: conv1 15x15, pool1 7x7 (Caffe2) or 8x8 (padded), res3 4x4 either way,
  # res4 2x2, res5 1x1. No non-local blocks: the numpy reference has none.
  blobs = fake_blobs(arch, nonlocal_stages=None, seed=3)
  src = write_caffe2_pickle(str(tmp_path / 'k.pkl'), blobs)
  dst = str(tmp_path / 'k.npz')
  assert convert_cli.main(['--src', src, '--dst', dst, '--arch', f'{arch}_r50']) == 0
  params, stats, meta = convert.load_converted(dst)
  assert meta['stem'] == 'caffe2'
  kw = {} if stem is None else {'stem': stem}  # None: ResNet3D's default
  model = ResNet3D(num_classes=CLASSES, arch=arch, blocks=BLOCKS, base_width=WIDTH, **kw)
  x = np.random.default_rng(4).normal(size=(1, 4, 30, 30, 3)).astype(np.float32)
  logits, stages = jax.jit(functools.partial(model.apply, return_stages=True))(
      {'params': params, 'batch_stats': stats}, x)
  stages = {**stages, 'logits': logits}
  want = _network_np(x[0].astype(np.float64), blobs, arch, BLOCKS,
                     STEM_POOL1_PAD[stem or 'caffe2'])
  for name, ref in want.items():
    got = np.asarray(stages[name][0])
    assert got.shape == ref.shape, name
    # float32 against float64: 1e-5 relative, elementwise up to the stage's scale.
    assert _rel_err(got, ref) < 1e-5, (name, _rel_err(got, ref))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(),
                               err_msg=name)
  if stem is None:
    # The padded pool1 is another network on the same weights: from res3 on the
    # shapes agree but the values do not (the bug this test guards against).
    other = _network_np(x[0].astype(np.float64), blobs, arch, BLOCKS, 1)
    assert other['res3'].shape == want['res3'].shape
    assert _rel_err(other['logits'], want['logits']) > 1e-2


def _model(**kw):
  return ResNet3D(**{**dict(arch='i3d', blocks=BLOCKS, base_width=WIDTH,
                            num_classes=174, nonlocal_stages=NL), **kw})


class _Graph(nn.Module):
  """Stand-in for a graph block with one new parameter."""

  @nn.compact
  def __call__(self, x, train=False):
    return x + self.param('w', jax.nn.initializers.zeros, (x.shape[-1],))


def _shapes(model):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))


def test_merge_fills_everything_but_the_new_parts(converted):
  _, dst = converted
  loaded = convert.load_converted(dst)
  model = _model(insert={'res4': _Graph})
  init = _shapes(model)
  merged, report = convert.merge_pretrained(
      init, loaded, dont_load=convert.DEFAULT_DONT_LOAD + ('params/res4_graph/.*',))
  assert report['kept_at_init'] == ['params/pred/bias', 'params/pred/kernel',
                                    'params/res4_graph/w']
  assert report['skipped'] == ['params/pred/bias (pred_b): skip pred_.*',
                               'params/pred/kernel (pred_w): skip pred_.*']
  np.testing.assert_array_equal(merged['params']['res3_1']['branch2a']['kernel'],
                                loaded[0]['res3_1']['branch2a']['kernel'])
  np.testing.assert_array_equal(merged['batch_stats']['nonlocal_conv3_1']['bn']['var'],
                                loaded[1]['nonlocal_conv3_1']['bn']['var'])
  # The merged tree runs in the model once the kept-at-init parts have values.
  merged = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype)
                        if isinstance(a, jax.ShapeDtypeStruct) else a, merged)
  out = jax.jit(model.apply)(merged, jnp.ones((1, 4, 32, 32, 3)))
  assert out.shape == (1, 174) and np.all(np.isfinite(out))


def test_merge_reports_an_unused_checkpoint_tensor(converted):
  params, stats, meta = convert.load_converted(converted[1])
  params['res5_0']['branch2d'] = {'kernel': np.zeros((1, 1, 1, 2, 2), np.float32)}
  with pytest.raises(convert.MergeError, match=r'not used.*params/res5_0/branch2d/kernel'):
    convert.merge_pretrained(_shapes(_model()), (params, stats, meta))
  # ... unless a skip pattern names it.
  _, report = convert.merge_pretrained(_shapes(_model()), (params, stats, meta),
                                       skip=('pred_.*', '.*/branch2d/.*'))
  assert any('branch2d' in s for s in report['skipped'])


def test_merge_reports_missing_model_variables(converted):
  with pytest.raises(convert.MergeError,
                     match=r'missing from the checkpoint.*params/res4_graph/w'):
    convert.merge_pretrained(_shapes(_model(insert={'res4': _Graph})),
                             convert.load_converted(converted[1]))
  # A deeper model than the checkpoint: res5_1 is missing.
  with pytest.raises(convert.MergeError, match=r'batch_stats/res5_1/branch2a_bn/mean'):
    convert.merge_pretrained(_shapes(_model(blocks=(2, 2, 1, 2))),
                             convert.load_converted(converted[1]))


def test_merge_reports_shape_mismatches_with_both_shapes(converted):
  # A C2D model has 1x1x1 branch2a where the I3D checkpoint has 3x1x1.
  with pytest.raises(convert.MergeError) as e:
    convert.merge_pretrained(_shapes(_model(arch='c2d')),
                             convert.load_converted(converted[1]))
  msg = str(e.value)
  assert ('params/res2_0/branch2a/kernel (res2_0_branch2a_w): checkpoint '
          '(3, 1, 1, 4, 4) vs model (1, 1, 1, 4, 4)') in msg
  assert 'params/conv1/kernel (conv1_w): checkpoint (5, 7, 7, 3, 4) vs model ' \
         '(1, 7, 7, 3, 4)' in msg
  assert 'missing' not in msg  # a mismatched variable is reported once, as such


def test_num_classes_option_keeps_a_matching_head_and_drops_another(tmp_path):
  src = write_caffe2_pickle(str(tmp_path / 'c.pkl'), fake_blobs(nonlocal_stages=None))
  flat, meta = convert.convert(src, 'i3d_r50', num_classes=CLASSES)
  assert 'params/pred/kernel' in flat and meta['num_classes'] == CLASSES
  flat, meta = convert.convert(src, 'i3d_r50', num_classes=174)
  assert 'params/pred/kernel' not in flat and meta['num_classes'] is None
  assert [s['name'] for s in meta['skipped']] == ['pred_w', 'pred_b']
  assert 'not --num_classes 174' in meta['skipped'][0]['reason']
  convert.check_against_model(flat, meta)  # a head-less model fits


def test_unknown_blob_is_an_error_unless_skipped(tmp_path):
  blobs = fake_blobs(nonlocal_stages=None)
  blobs['res4_0_branch2a_w_ema'] = blobs['res4_0_branch2a_w']
  src = write_caffe2_pickle(str(tmp_path / 'u.pkl'), blobs)
  with pytest.raises(convert.ConversionError, match='res4_0_branch2a_w_ema'):
    convert.convert(src, 'i3d_r50')
  _, meta = convert.convert(src, 'i3d_r50', skip=('.*_ema',))
  assert meta['skipped'][0]['name'] == 'res4_0_branch2a_w_ema'


def test_check_catches_a_wrong_arch(tmp_path):
  src = write_caffe2_pickle(str(tmp_path / 'c2d.pkl'), fake_blobs('c2d'))
  with pytest.raises(convert.MergeError, match='conv1_w'):
    convert_cli.main(['--src', src, '--dst', str(tmp_path / 'x.npz'), '--arch', 'i3d_r50'])
  assert not os.path.exists(tmp_path / 'x.npz')
  assert convert_cli.main(['--src', src, '--dst', str(tmp_path / 'x.npz'),
                       '--arch', 'c2d_r50']) == 0


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def test_unpickler_refuses_code(tmp_path):
  marker = tmp_path / 'pwned'
  src = tmp_path / 'evil.pkl'
  src.write_bytes(pickle.dumps({'blobs': {'conv1_w': _Evil(marker)}}, protocol=2))
  with pytest.raises(convert.UnsafePickleError,
                     match=rf"refusing to load global '{os.name}\.system'|"
                           r"refusing to load global '(posix|nt)\.system'"):
    caffe2.read_caffe2_pickle(str(src))
  assert not marker.exists()


def test_unpickler_reads_python3_pickles_too(tmp_path):
  src = tmp_path / 'py3.pkl'
  blobs = {'conv1_w': np.arange(6, dtype=np.float32).reshape(1, 1, 1, 2, 3),
           'model_iter': np.int64(7)}
  for protocol in (2, pickle.HIGHEST_PROTOCOL):
    src.write_bytes(pickle.dumps({'blobs': blobs}, protocol=protocol))
    got, dropped = caffe2.read_caffe2_pickle(str(src))
    np.testing.assert_array_equal(got['conv1_w'], blobs['conv1_w'])
    assert dropped == ['model_iter']


@pytest.mark.parametrize('mode', ['center', 'average'])
def test_inflation_preserves_response_to_constant_video(mode):
  rng = np.random.default_rng(0)
  k2 = rng.normal(size=(3, 3, 2, 4))
  k3 = caffe2.inflate(k2, 3, mode)
  assert k3.shape == (3, 3, 3, 2, 4)
  frame = rng.normal(size=(6, 6, 2))
  video = np.repeat(frame[None], 5, axis=0)  # constant in time
  pad = ((0, 0), (1, 1), (1, 1))  # no temporal padding: every output sees 3 frames
  want = _conv3d_np(frame[None], k2[None], pad=pad)[0]
  got = _conv3d_np(video, k3, pad=pad)
  assert got.shape[0] == 3
  for t in range(3):
    np.testing.assert_allclose(got[t], want, rtol=1e-10, atol=1e-10)
  if mode == 'center':
    assert not k3[0].any() and not k3[2].any()


def test_imagenet_2d_weights_are_inflated_to_i3d(tmp_path):
  blobs = fake_blobs('i3d', two_d=True, affine_only=True, nonlocal_stages=None,
                     classes=1000)
  src = write_caffe2_pickle(str(tmp_path / 'r50.pkl'), blobs, junk=False)
  dst = str(tmp_path / 'r50.npz')
  assert convert_cli.main(['--src', src, '--dst', dst, '--arch', 'i3d_r50',
                       '--inflate', 'center', '--skip', 'pred_.*']) == 0
  params, stats, meta = convert.load_converted(dst)
  assert params['conv1']['kernel'].shape == (5, 7, 7, 3, WIDTH)
  np.testing.assert_array_equal(params['conv1']['kernel'][2],
                                blobs['conv1_w'].transpose(2, 3, 1, 0))
  assert params['res3_0']['branch2a']['kernel'].shape[0] == 3
  assert params['res3_1']['branch2a']['kernel'].shape[0] == 1
  assert params['res3_0']['branch2b']['kernel'].shape[0] == 1
  assert 'pred' not in params and meta['inflate_mode'] == 'center'
  assert len(meta['inflated']) == sum(name.endswith('_w') and name != 'pred_w'
                                      for name in blobs)
  # AffineChannel BN: y = x * s + b, i.e. mean 0 and var 1 - eps.
  np.testing.assert_array_equal(stats['res_conv1_bn']['mean'], 0)
  np.testing.assert_allclose(stats['res_conv1_bn']['var'] + 1e-5, 1, rtol=1e-7)
  assert 'res_conv1_bn' in meta['affine_only_bn']


def test_stem_is_recorded_and_reported_once(tmp_path, capsys):
  src = write_caffe2_pickle(str(tmp_path / 'k.pkl'), fake_blobs(nonlocal_stages=None))
  dst = str(tmp_path / 'k.npz')
  assert convert_cli.main(['--src', src, '--dst', dst, '--arch', 'i3d_r50']) == 0
  out, err = capsys.readouterr()
  meta = convert.load_converted(dst)[2]
  assert (meta['stem'], meta['stem_from'], meta['source_format']) == (
      'caffe2', 'source format', 'caffe2_pickle')
  assert out.count('stem:') == 1 and 'WARNING' not in out + err
  assert "trained with 'caffe2' (pool1 padding 0" in out
  assert "default model (--config.backbone.stem) uses 'caffe2'" in out
  # Weights trained with PySlowFast's padded stem: recorded, and a warning, since the
  # default model does not pad.
  assert convert_cli.main(['--src', src, '--dst', dst, '--arch', 'i3d_r50',
                           '--stem', 'pyslowfast']) == 0
  out, err = capsys.readouterr()
  meta = convert.load_converted(dst)[2]
  assert (meta['stem'], meta['stem_from']) == ('pyslowfast', '--stem')
  assert 'stem:' not in out and err.count('WARNING: stem:') == 1
  assert '--config.backbone.stem=pyslowfast' in err


def test_stem_of_older_and_foreign_files():
  # Files converted before 'stem' was recorded came from Caffe2 pickles.
  assert convert.checkpoint_stem({'format': convert.FORMAT}) == 'caffe2'
  line, differs = convert.stem_report({'arch': 'i3d'}, 'caffe2')
  assert not differs and 'does not record' in line


def test_init_from_reports_the_stems_and_warns_on_a_mismatch(tmp_path):
  src = write_caffe2_pickle(str(tmp_path / 'k.pkl'), fake_blobs(nonlocal_stages=None))
  dst = str(tmp_path / 'k.npz')
  assert convert_cli.main(['--src', src, '--dst', dst, '--arch', 'i3d_r50']) == 0
  config = ssv1_i3d.get_config()
  assert config.backbone.stem == 'caffe2'  # the default follows the Caffe2 original
  config.data.num_classes = CLASSES
  config.init_from.path = dst
  config.backbone.blocks, config.backbone.base_width = BLOCKS, WIDTH
  config.rstg.placement = 'none'
  for stem, warns in (('caffe2', False), ('pyslowfast', True)):
    config.backbone.stem = stem
    model = ssv1_models.create_ssv1_model(config)
    assert model.stem == stem
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                             ssv1_models.init_shapes(model, (4, 32, 32, 3)))
    said = []
    ssv1_task.load_converted(config, variables, said.append)
    lines = [m for m in said if 'stem:' in m]
    assert len(lines) == 1, said
    assert lines[0].startswith('WARNING: ') == warns
    assert f"the model uses '{stem}'" in lines[0]
    assert "trained with 'caffe2'" in lines[0]
