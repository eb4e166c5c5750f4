"""Layers both tasks share: the non-local block and BatchNorm in two modes.

`NonLocalBlock` is the embedded-Gaussian non-local block (Wang et al., CVPR 2018) for
[B, T, H, W, C] maps: the block of the Non-local I3D baseline that the paper compares
against (Table 2, "NL I3D"), laid out so that the Caffe2 checkpoints of the Non-local
repo and the PySlowFast model zoo map onto it name by name:

    nonlocal_conv{stage}_{block}_{theta,phi,g,out}_{w,b}  ->  theta / phi / g / out
    nonlocal_conv{stage}_{block}_bn_{s,b,rm,riv}          ->  bn

    y = x + BN(W_out (softmax(theta(x) phi(p(x))^T / sqrt(C')) g(p(x))))

with p a 1x2x2 max-pool ("subsample", which the NL repo applies to phi and g only, not to
theta, so every query position keeps its own output) and C' = C/2. BN's scale starts at
zero so that inserting the block into a pre-trained network does not change its output.

The module sits beside the core because both tasks build on it: the ResNet-50 backbones
of Something-Something (`ssv1/resnet3d`) and the SyncMNIST non-local baseline
(`syncmnist/baselines`). It also holds `FrozenBatchNorm` and `batch_norm`, the BatchNorm
of both tasks' networks, which the non-local block uses too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

# Caffe2's ConvNd in the NL repo draws these weights from N(0, 0.01^2) with zero bias.
_NL_CONV_INIT = nn.initializers.normal(stddev=0.01)


class FrozenBatchNorm(nn.Module):
  """BatchNorm that always normalises with its running statistics.

  Its variables have the same names and shapes as `nn.BatchNorm`'s ('params': scale,
  bias; 'batch_stats': mean, var), so a checkpoint fits both and a model can switch
  between frozen and trained BatchNorm without renaming anything.

  The running statistics are never updated. The authors froze the backbone's BatchNorm
  on Something-Something because a batch of 2 clips gives useless batch statistics.

  Attributes:
    epsilon: added to the variance (1e-5 in the Caffe2 checkpoints).
    train_affine: if False, scale and bias are cut from the gradient as well, which
      freezes the layer entirely (weight decay in the optimiser can still move them;
      mask them there with `resnet3d.frozen_bn_mask`). If True, only the statistics are
      frozen and scale/bias learn, as the non-local block's BN must: it starts at zero.
    scale_init: initialiser of the scale (ones, or zeros for a residual branch that
      should start as identity).
    dtype: computation dtype; statistics and parameters stay float32.
  """

  epsilon: float = 1e-5
  train_affine: bool = False
  scale_init: Callable[..., Any] = nn.initializers.ones
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', self.scale_init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
    var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
    if not self.train_affine:
      scale = jax.lax.stop_gradient(scale)
      bias = jax.lax.stop_gradient(bias)
    # Folding the four vectors into one multiply-add keeps the per-element work
    # to two operations on the large activation tensor.
    mul = scale * jax.lax.rsqrt(jax.lax.stop_gradient(var.value) + self.epsilon)
    add = bias - jax.lax.stop_gradient(mean.value) * mul
    dtype = self.dtype or x.dtype
    return x.astype(dtype) * mul.astype(dtype) + add.astype(dtype)


def batch_norm(frozen: bool, train: bool, *, name: str, scale_init=nn.initializers.ones,
               train_affine: bool = False, dtype: Any = None) -> nn.Module:
  """A BatchNorm layer in one of the two modes the backbones use.

  Args:
    frozen: use `FrozenBatchNorm` (running statistics, in training as well).
    train: the caller's training flag; only matters when not frozen.
    name: the module name (Caffe2-style, e.g. 'branch2a_bn').
    scale_init: initialiser of the scale.
    train_affine: for frozen layers, whether scale and bias still learn.
    dtype: computation dtype.
  """
  if frozen:
    return FrozenBatchNorm(train_affine=train_affine, scale_init=scale_init,
                           dtype=dtype, name=name)
  # Caffe2's SpatialBN momentum 0.9 (flax's momentum is the weight of the old value).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=scale_init, dtype=dtype, name=name)


class NonLocalBlock(nn.Module):
  """Embedded-Gaussian non-local block with a residual connection.

  Attributes:
    inner_features: width of theta/phi/g (None: half the input channels, as in the
      NL paper).
    subsample: max-pool phi's and g's input 1x2x2 (stride 1x2x2, no padding), which
      quarters the cost of the attention; the NL repo's Kinetics models use it.
    use_scale: divide the logits by sqrt(inner_features), as the NL repo's configs do.
    bn_frozen: normalise with running statistics in training too (the backbone's
      frozen-BN setting). The scale and bias still learn: with its scale frozen at its
      zero initialisation the block would stay an identity for ever.
    zero_init: start the output BN's scale at zero so the block is an identity map.
    dtype: computation dtype.
  """

  inner_features: Optional[int] = None
  subsample: bool = True
  use_scale: bool = True
  bn_frozen: bool = False
  zero_init: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b, t, h, w, c = x.shape
    inner = self.inner_features or c // 2

    def conv(features, name):
      return nn.Conv(features, (1, 1, 1), use_bias=True, kernel_init=_NL_CONV_INIT,
                     dtype=self.dtype, name=name)

    theta = conv(inner, 'theta')(x).reshape(b, t * h * w, inner)
    kv = x
    if self.subsample:
      kv = nn.max_pool(x, (1, 2, 2), strides=(1, 2, 2), padding='VALID')
    phi = conv(inner, 'phi')(kv).reshape(b, -1, inner)
    g = conv(inner, 'g')(kv).reshape(b, -1, inner)

    logits = jnp.einsum('bqc,bkc->bqk', theta, phi)
    if self.use_scale:
      logits = logits * inner ** -0.5
    # Softmax in float32: with bf16 activations the logits of 1568 keys overflow.
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(g.dtype)
    y = jnp.einsum('bqk,bkc->bqc', attn, g).reshape(b, t, h, w, inner)

    y = conv(c, 'out')(y)
    scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
    y = batch_norm(self.bn_frozen, train, name='bn', scale_init=scale_init,
                   train_affine=True, dtype=self.dtype)(y)
    return x + y
