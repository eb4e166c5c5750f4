"""Tests of the C2D / I3D ResNet-50 backbones and the non-local block.

Full-size networks are only traced with `jax.eval_shape` (no weights are materialised);
everything that runs uses a reduced-depth, reduced-width network.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from rstg_jax.layers import FrozenBatchNorm, NonLocalBlock
from rstg_jax.ssv1.resnet3d import (NL_I3D_STAGES, ResNet3D, count_params,
                                      frozen_bn_mask)

# --- Parameter counts of the 400-class Kinetics models (trainable params, no BN stats).
#
# C2D-R50 is exactly torchvision's ResNet-50 (1x7x7 conv1, 1x1x1/1x3x3 kernels; where
# the stride sits does not change the count): 25,557,032 with 1000 classes, minus the
# 600 * 2048 weights and 600 biases of the extra classes.
C2D_R50_PARAMS = 25_557_032 - 600 * 2048 - 600  # 24,327,632
# I3D-R50 adds two temporal taps (3x1x1 instead of 1x1x1, i.e. 2 * in * out) to each
# branch2a with kernel 3, and four taps (5x7x7) to conv1:
I3D_EXTRA = (
    4 * 3 * 64 * 49                                # conv1 5x7x7
    + 2 * (64 * 64 + 2 * 256 * 64)                 # res2 [3,3,3]: in 64, 256, 256
    + 2 * (256 * 128 + 512 * 128)                  # res3 [3,1,3,1]: blocks 0 and 2
    + 2 * (512 * 256 + 2 * 1024 * 256)             # res4 [3,1,3,1,3,1]: blocks 0,2,4
    + 2 * (2048 * 512))                            # res5 [1,3,1]: block 1
I3D_R50_PARAMS = C2D_R50_PARAMS + I3D_EXTRA  # 28,043,472
# A non-local block on C channels: theta/phi/g (C -> C/2, with bias), out (C/2 -> C,
# with bias) and a BN (scale, bias) on C. NL-I3D has 2 in res3 (C=512), 3 in res4 (1024).
def _nl_params(c):
  return 3 * (c * c // 2 + c // 2) + (c // 2 * c + c) + 2 * c


NL_I3D_R50_PARAMS = I3D_R50_PARAMS + 2 * _nl_params(512) + 3 * _nl_params(1024)


def _shapes(model, x_shape, **kw):
  return jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), jnp.zeros(x_shape), **kw))


@pytest.mark.parametrize('arch,nl,expected', [
    ('c2d', None, C2D_R50_PARAMS),
    ('i3d', None, I3D_R50_PARAMS),
    ('i3d', NL_I3D_STAGES, NL_I3D_R50_PARAMS),
])
def test_param_counts_match_published_sizes(arch, nl, expected):
  model = ResNet3D(num_classes=400, arch=arch, nonlocal_stages=nl)
  _, variables = _shapes(model, (1, 8, 32, 32, 3))
  assert count_params(variables['params']) == expected
  # Every BN of ResNet-50 keeps a mean and a var: 26,560 channels (conv1 64, res2 1408,
  # res3 3584, res4 10240, res5 11264), plus the NL blocks' BNs (2 x 512 + 3 x 1024).
  bn_channels = 26_560 + (2 * 512 + 3 * 1024 if nl else 0)
  assert count_params(variables['batch_stats']) == 2 * bn_channels


def test_expected_param_numbers_are_the_published_ones():
  # The derivations above give ~24.3M and ~28.0M, the sizes quoted for the Kinetics
  # C2D / I3D ResNet-50 (NL-I3D ~35.4M).
  assert C2D_R50_PARAMS == 24_327_632
  assert I3D_R50_PARAMS == 28_043_472
  assert NL_I3D_R50_PARAMS == 35_401_936


# The Caffe2 original's unpadded pool1 takes conv1's 112x112 to floor((112 - 3) / 2) + 1
# = 55; Table 4's 56 is the padded pool1 (stem='pyslowfast'). From res3 on the sizes
# agree: res3's stride-2 3x3 (padding 1) gives floor((55 + 2 - 3) / 2) + 1 = 28 too.
@pytest.mark.parametrize('stem,res2_hw', [(None, 55), ('caffe2', 55), ('pyslowfast', 56)])
@pytest.mark.parametrize('res5_stride,res5_hw', [(1, 14), (2, 7)])
def test_table4_feature_sizes(stem, res2_hw, res5_stride, res5_hw):
  kw = {} if stem is None else {'stem': stem}  # None: the default
  model = ResNet3D(num_classes=174, arch='i3d', res5_stride=res5_stride, **kw)
  (logits, stages), _ = _shapes(model, (2, 32, 224, 224, 3), return_stages=True)
  assert stages['pool1'].shape == (2, 32, res2_hw, res2_hw, 64)
  assert stages['res2'].shape == (2, 32, res2_hw, res2_hw, 256)
  assert stages['pool2'].shape == (2, 16, res2_hw, res2_hw, 256)
  assert stages['res3'].shape == (2, 16, 28, 28, 512)
  assert stages['res4'].shape == (2, 16, 14, 14, 1024)
  assert stages['res5'].shape == (2, 16, res5_hw, res5_hw, 2048)
  assert logits.shape == (2, 174)


def test_c2d_kernels_are_temporal_size_one_and_i3d_follow_the_nl_repo():
  def kts(arch):
    _, v = _shapes(ResNet3D(num_classes=10, arch=arch), (1, 8, 32, 32, 3))
    p = v['params']
    return p['conv1']['kernel'].shape[0], [
        p[f'res{s}_{i}']['branch2a']['kernel'].shape[0]
        for s, n in zip(range(2, 6), (3, 4, 6, 3), strict=True) for i in range(n)]

  assert kts('c2d') == (1, [1] * 16)
  assert kts('i3d') == (5, [3, 3, 3, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 1, 3, 1])


TINY = dict(blocks=(1, 1, 1, 1), base_width=4, num_classes=5)
X = jax.random.normal(jax.random.key(1), (2, 4, 16, 16, 3))


def _tiny(**kw):
  return ResNet3D(**{**TINY, **kw})


# Compiling `model.init` costs tens of seconds on a busy CPU (one random-number
# generator per kernel); the tests only need some well-scaled values, so they take the
# shapes from `jax.eval_shape` and fill them with numpy: He-scaled kernels, unit BN
# scales (zero for the non-local blocks' BN, as their init), zero biases and means, unit
# variances.
def _init(model, x=X, seed=0):
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [getattr(p, 'key', str(p)) for p in path]
    if names[-1] == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    if names[-1] in ('scale', 'var'):
      zero = names[-1] == 'scale' and any(n.startswith('nonlocal') for n in names)
      return np.full(leaf.shape, 0.0 if zero else 1.0, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# Eager execution compiles every op on its own; one jit per function is much faster.
def _apply(model, variables, x=X, **kw):
  return jax.jit(functools.partial(model.apply, **kw))(variables, x)


def _perturb_bn_stats(variables):
  # Non-trivial running stats so that "used the running stats" is observable.
  flat = traverse_util.flatten_dict(variables['batch_stats'])
  flat = {k: v - 0.1 if k[-1] == 'mean' else v + 0.3 for k, v in flat.items()}
  return {**variables, 'batch_stats': traverse_util.unflatten_dict(flat)}


def test_frozen_bn_uses_running_stats_in_training_and_gets_no_gradient():
  model = _tiny(bn_frozen=True, dropout_rate=0.0)
  variables = _perturb_bn_stats(_init(model))
  train_out, updates = _apply(model, variables, train=True, mutable=['batch_stats'])
  eval_out = _apply(model, variables, train=False)
  np.testing.assert_allclose(train_out, eval_out, rtol=1e-6, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, updates['batch_stats'],
               variables['batch_stats'])

  def loss(params):
    return jnp.sum(model.apply({**variables, 'params': params}, X, train=True) ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  mask = frozen_bn_mask(grads)
  flat_g = traverse_util.flatten_dict(grads)
  flat_m = traverse_util.flatten_dict(mask)
  assert sum(flat_m.values()) == 2 * (1 + 3 * 4 + 4)  # conv1 BN + 3 per block + 4 shortcuts
  for k, g in flat_g.items():
    if flat_m[k]:
      assert not np.any(g), k
  assert np.any(flat_g[('pred', 'kernel')]) and np.any(flat_g[('conv1', 'kernel')])


def test_trained_bn_updates_statistics():
  model = _tiny(bn_frozen=False)
  variables = _init(model)
  _, updates = _apply(model, variables, train=True, mutable=['batch_stats'])
  before = variables['batch_stats']['res_conv1_bn']['mean']
  assert not np.allclose(updates['batch_stats']['res_conv1_bn']['mean'], before)
  # Same variable tree in both modes, so one checkpoint fits either.
  frozen_vars = _init(_tiny(bn_frozen=True))
  assert (jax.tree.structure(frozen_vars) == jax.tree.structure(variables))


def test_dropout_only_in_training():
  model = _tiny(dropout_rate=0.5)
  variables = _init(model)
  a = _apply(model, variables, train=False)
  np.testing.assert_array_equal(a, _apply(model, variables, train=False))
  b = _apply(model, variables, train=True, rngs={'dropout': jax.random.key(3)})
  assert not np.allclose(a, b)


class _Scale(nn.Module):
  """Stand-in for a graph block: x -> x * (factor + s), s a parameter (init 0)."""
  factor: float = 1.0

  @nn.compact
  def __call__(self, x, train=False):
    s = self.param('s', nn.initializers.zeros, ())
    return x * (self.factor + s)


def test_insert_hook_names_and_applies_the_block():
  plain = _tiny()
  hooked = _tiny(insert={'res3': _Scale, 'res4': functools.partial(_Scale, factor=2.0)})
  variables = _init(hooked)
  assert variables['params']['res3_graph']['s'].shape == ()
  assert variables['params']['res4_graph']['s'].shape == ()
  (_, st_h) = _apply(hooked, variables, return_stages=True)
  plain_vars = {k: {m: v for m, v in c.items() if not m.endswith('_graph')}
                for k, c in variables.items()}
  (_, st_p) = _apply(plain, plain_vars, return_stages=True)
  np.testing.assert_allclose(st_h['res3'], st_p['res3'], rtol=1e-6)  # factor 1: identity
  # The res4 block doubles the stage output; the stage dict holds the block's output.
  np.testing.assert_allclose(st_h['res4'], 2 * st_p['res4'], rtol=1e-6)
  assert st_h['res4'].shape == st_p['res4'].shape == (2, 2, 1, 1, 64)


def test_invalid_configurations_are_refused():
  with pytest.raises(ValueError, match='unknown stages'):
    jax.eval_shape(_tiny(insert={'res6': _Scale}).init, jax.random.key(0), X)
  with pytest.raises(ValueError, match='out of range'):
    jax.eval_shape(_tiny(nonlocal_stages={'res3': (1,)}).init, jax.random.key(0), X)
  with pytest.raises(ValueError, match='arch'):
    jax.eval_shape(_tiny(arch='x3d').init, jax.random.key(0), X)
  with pytest.raises(ValueError, match='stem must be one of'):
    jax.eval_shape(_tiny(stem='torch').init, jax.random.key(0), X)


@functools.lru_cache(maxsize=None)
def _nl_real_init(channels=32):
  """The block's own initial variables (not the tests' numpy fill), compiled once."""
  return jax.jit(NonLocalBlock().init)(jax.random.key(0),
                                       jnp.zeros((1, 2, 4, 4, channels)))


def test_nonlocal_block_is_identity_at_init():
  x = jax.random.normal(jax.random.key(2), (2, 3, 4, 6, 32))
  variables = _nl_real_init()
  np.testing.assert_array_equal(_apply(NonLocalBlock(), variables, x), x)
  # Inside the network too: the NL model's output equals the plain one's.
  model_nl = _tiny(blocks=(1, 2, 1, 1), nonlocal_stages={'res3': (1,)})
  v = _init(model_nl)
  assert set(v['params']['nonlocal_conv3_1']) == {'theta', 'phi', 'g', 'out', 'bn'}
  for col in v:  # res3 has 32 channels in this network
    v[col]['nonlocal_conv3_1'] = variables[col]
  plain = {k: {m: c for m, c in col.items() if not m.startswith('nonlocal')}
           for k, col in v.items()}
  np.testing.assert_allclose(_apply(model_nl, v),
                             _apply(_tiny(blocks=(1, 2, 1, 1)), plain), rtol=1e-6)


def test_nonlocal_block_matches_numpy_reference():
  b, t, h, w, c = 1, 2, 4, 4, 6
  x = np.asarray(jax.random.normal(jax.random.key(2), (b, t, h, w, c)))
  block = NonLocalBlock(bn_frozen=True)
  rng = np.random.default_rng(0)
  v = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                   jax.eval_shape(block.init, jax.random.key(0), x))
  v['batch_stats']['bn']['var'] = np.abs(v['batch_stats']['bn']['var']) + 0.5
  y = np.asarray(_apply(block, v, jnp.asarray(x)))

  p, st = v['params'], v['batch_stats']['bn']

  def conv1(a, name):
    return a @ p[name]['kernel'].reshape(p[name]['kernel'].shape[-2:]) + p[name]['bias']

  pooled = x.reshape(b, t, h // 2, 2, w // 2, 2, c).max(axis=(3, 5))
  theta = conv1(x, 'theta').reshape(b, -1, c // 2)
  phi = conv1(pooled, 'phi').reshape(b, -1, c // 2)
  g = conv1(pooled, 'g').reshape(b, -1, c // 2)
  logits = theta @ phi.transpose(0, 2, 1) / np.sqrt(c // 2)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  z = conv1((attn @ g).reshape(b, t, h, w, c // 2), 'out')
  z = (z - st['mean']) / np.sqrt(st['var'] + 1e-5) * p['bn']['scale'] + p['bn']['bias']
  np.testing.assert_allclose(y, x + z, rtol=1e-4, atol=1e-4)


def test_frozen_batch_norm_can_train_its_affine_only():
  x = jnp.ones((2, 3))
  for train_affine, expect_grad in ((False, False), (True, True)):
    bn = FrozenBatchNorm(train_affine=train_affine)
    v = bn.init(jax.random.key(0), x)
    g = jax.grad(lambda p: jnp.sum(bn.apply({**v, 'params': p}, x)))(v['params'])
    assert bool(np.any(g['bias'])) == expect_grad
