"""C2D and I3D ResNet-50 backbones (Non-local / PySlowFast layout), channels-last.

These are the two Kinetics-400 pre-trained backbones of the paper's Something-Something
experiments (Table 2, Table 3, Appendix B / Table 4). The layout follows the Caffe2
checkpoints of the Non-local repo and the PySlowFast model zoo, so that
`rstg_jax.convert` can map every blob onto a parameter by name:

    conv1      1x7x7 (C2D) / 5x7x7 (I3D), 64 ch, stride (1,2,2)  + res_conv1_bn + ReLU
    pool1      max 1x3x3, stride (1,2,2), no padding (`stem='pyslowfast'`: padding 1)
    res2       3 bottlenecks, width 64  (out 256)
    pool2      max 2x1x1, stride (2,1,1)                         T -> T/2
    res3       4 bottlenecks, width 128 (out 512),  spatial stride 2 in block 0
    res4       6 bottlenecks, width 256 (out 1024), spatial stride 2 in block 0
    res5       3 bottlenecks, width 512 (out 2048), spatial stride `res5_stride`
    head       global average pool, dropout, Dense `pred`

For 32x224x224 input: conv1 32x112x112x64, pool1 and res2 32x55x55 (x64, x256),
res3 16x28x28x512, res4 16x14x14x1024 (and res5 16x14x14x2048 with the authors'
res5_stride=1, or 16x7x7x2048 with the Kinetics stride 2). The paper's Table 4 lists
res2 at 56x56, the size of the padded pool1 (see `STEMS`); res3..res5 are the same
either way, so the graphs see the same maps.

A bottleneck is branch2a (kt x1x1, kt in {1, 3}) -> branch2b (1x3x3, spatial stride) ->
branch2c (1x1x1, 4x width), each followed by BatchNorm, ReLU after the first two and after
the residual sum; the shortcut of block 0 is branch1 (1x1x1 with the block's stride) + BN.
I3D's temporal kernels per block are res2 [3,3,3], res3 [3,1,3,1], res4 [3,1,3,1,3,1],
res5 [1,3,1]; C2D uses 1 everywhere.

The stem (`stem`, see `STEMS`) is the original Caffe2 model's by default: the Non-local
repo's pool1 is `MaxPool(kernels=[1,3,3], strides=[1,2,2], pads=0)`, which takes a 112
map to floor((112 - 3) / 2) + 1 = 55. PySlowFast's PyTorch stem pads pool1 by 1 (112 ->
56, the size in Table 4). The parameters are the same, but the two are different
networks: padding shifts every pooling window by one pixel against the grid the other
was trained on, and a Kinetics checkpoint run in the wrong one gives logits several
percent off (checked against the Caffe2 rules in `tests/test_convert.py`). So take
'caffe2' for the Caffe2 pickles of the Non-local repo (the Kinetics weights the paper
starts from) and 'pyslowfast' only for weights trained in PySlowFast.

Extension points for the RSTG graph blocks: `insert` maps a stage name to a factory of a
module applied to that stage's output (x -> x, called as `block(x, train=train)`, named
f'{stage}_graph'), and `__call__(..., return_stages=True)` returns every stage's output.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from rstg_jax.layers import NonLocalBlock, batch_norm
from rstg_jax.train.state import param_count as count_params  # pylint: disable=unused-import

STAGES = ('res2', 'res3', 'res4', 'res5')

# Spatial padding of pool1 per stem convention: the Caffe2 Non-local / Kinetics models
# pool without padding (floor output size, 112 -> 55); PySlowFast's PyTorch ResNet stem
# pads by 1 (112 -> 56). Checkpoints must run in the stem they were trained with.
STEMS = {'caffe2': 0, 'pyslowfast': 1}

# Per-stage temporal kernel patterns, repeated over a stage's blocks (block i uses
# pattern[i % len(pattern)]). For the standard depths (3,4,6,3) these give the Non-local
# repo's I3D-R50 kernels; for reduced test depths they give a prefix of them.
TEMPORAL_KERNELS = {
    'c2d': {'conv1': 1, 'res2': (1,), 'res3': (1,), 'res4': (1,), 'res5': (1,)},
    'i3d': {'conv1': 5, 'res2': (3,), 'res3': (3, 1), 'res4': (3, 1), 'res5': (1, 3)},
}

# The NL-I3D baseline of the Non-local paper: 5 blocks, after every other residual block
# of res3 (blocks 1, 3) and res4 (blocks 1, 3, 5): the repo inserts one after block idx
# when idx % 2 == 1, and names it nonlocal_conv{stage}_{idx}.
NL_I3D_STAGES = {'res3': (1, 3), 'res4': (1, 3, 5)}

# Caffe2's MSRAFill, which the Kinetics models were trained from scratch with.
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def temporal_kernel(arch: str, stage: str, block: int) -> int:
  """The temporal kernel size of `stage`'s branch2a in `block` (or of conv1)."""
  try:
    pattern = TEMPORAL_KERNELS[arch][stage]
  except KeyError:
    raise ValueError(f'unknown arch {arch!r} or stage {stage!r}; arch is one of '
                     f'{sorted(TEMPORAL_KERNELS)}') from None
  if stage == 'conv1':
    return pattern
  return pattern[block % len(pattern)]


def stage_sizes(side: int, stem: str = 'caffe2', res5_stride: int = 2) -> dict[str, int]:
  """The spatial side of each stage's output for a square input of `side` pixels (the
  arithmetic of `ResNet3D`'s strides and paddings: 224 -> res2 55, res3 28, res4 14)."""
  def strided(n, kernel, stride, pad):
    return (n + 2 * pad - kernel) // stride + 1

  n = strided(strided(side, 7, 2, 3), 3, 2, STEMS[stem])  # conv1, pool1
  out = {'res2': n}
  for stage in STAGES[1:]:
    stride = res5_stride if stage == 'res5' else 2
    n = strided(n, 3, stride, 1)  # branch2b: 3x3, padding 1
    out[stage] = n
  return out


class Bottleneck(nn.Module):
  """A ResNet bottleneck block with an optional temporal kernel in branch2a.

  Attributes:
    width: channels of branch2a and branch2b; the output has 4 * width.
    temporal_kernel: 1 or 3, the temporal size of branch2a (3x1x1 in I3D blocks).
    stride: spatial stride, applied in branch2b and in the shortcut.
    bn_frozen: normalise with running statistics and keep BN parameters fixed.
    dtype: computation dtype.
  """

  width: int
  temporal_kernel: int = 1
  stride: int = 1
  bn_frozen: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_features = 4 * self.width
    kt = self.temporal_kernel

    def conv(features, kernel, stride, padding, name):
      return nn.Conv(features, kernel, strides=stride, padding=padding,
                     use_bias=False, kernel_init=_CONV_INIT, dtype=self.dtype,
                     name=name)

    def bn(name):
      return batch_norm(self.bn_frozen, train, name=name, dtype=self.dtype)

    # Explicit symmetric padding, as Caffe2 pads: flax's 'SAME' would pad a strided
    # 3x3 asymmetrically (0 before, 1 after) and shift every feature map by a pixel.
    y = conv(self.width, (kt, 1, 1), (1, 1, 1), ((kt // 2,) * 2, (0, 0), (0, 0)),
             'branch2a')(x)
    y = nn.relu(bn('branch2a_bn')(y))
    s = self.stride
    y = conv(self.width, (1, 3, 3), (1, s, s), ((0, 0), (1, 1), (1, 1)), 'branch2b')(y)
    y = nn.relu(bn('branch2b_bn')(y))
    y = conv(out_features, (1, 1, 1), (1, 1, 1), 'VALID', 'branch2c')(y)
    y = bn('branch2c_bn')(y)

    shortcut = x
    if x.shape[-1] != out_features or s != 1:
      shortcut = conv(out_features, (1, 1, 1), (1, s, s), 'VALID', 'branch1')(x)
      shortcut = bn('branch1_bn')(shortcut)
    return nn.relu(y + shortcut)


class ResNet3D(nn.Module):
  """C2D / I3D ResNet with optional non-local blocks and graph-block insertion points.

  Submodule names follow the Caffe2 blob names: `conv1`, `res_conv1_bn`,
  `res{2..5}_{i}` (each with `branch2{a,b,c}`, `branch2{a,b,c}_bn` and, in block 0,
  `branch1`, `branch1_bn`), `nonlocal_conv{k}_{i}` (`theta`, `phi`, `g`, `out`, `bn`),
  `pred`, plus `{stage}_graph` for inserted blocks.

  Attributes:
    num_classes: classifier outputs (400 for Kinetics, 174 for Something-Something-v1);
      0 or None drops the head and returns the pooled features.
    arch: 'i3d' or 'c2d' (temporal kernels, see `TEMPORAL_KERNELS`).
    blocks: bottlenecks per stage res2..res5; (3, 4, 6, 3) is ResNet-50.
    base_width: width of res2's bottleneck and of conv1 (64 in ResNet-50); every
      stage doubles it. Small values make tiny test networks.
    res5_stride: spatial stride of res5 (2 for the Kinetics models, 1 in the authors'
      Something-Something runs, which keeps res5 at 14x14).
    bn_frozen: BatchNorm uses running statistics even in training and its parameters
      get no gradient (the authors' Something-Something setting); False trains it
      (then pass `mutable=['batch_stats']` with `train=True`). The variable tree is
      the same either way.
    dropout_rate: dropout before the classifier (0.3 in the authors' SSv1 runs).
    nonlocal_stages: stage -> block indices after which a non-local block is inserted,
      e.g. `NL_I3D_STAGES` for the NL-I3D baseline.
    nonlocal_subsample: the non-local blocks' 1x2x2 max-pool on phi and g.
    insert: stage -> factory of a module applied to the stage's output as
      `block(x, train=train)` (after the stage's non-local blocks, before pool2 for
      res2). The factory is called as `factory(name=f'{stage}_graph')` inside this
      module's compact scope (a module class or a functools.partial of one fits), so
      the block's variables live under that name.
    use_pool2: the 2x1x1 temporal max-pool after res2 (T -> T/2).
    stem: pool1 convention, a key of `STEMS`: 'caffe2' (no padding, the original
      Non-local / Kinetics models; default) or 'pyslowfast' (padding 1, for weights
      trained with PySlowFast's PyTorch stem; gives Table 4's 56x56 res2).
    dtype: computation dtype (parameters stay float32).
  """

  num_classes: Optional[int] = 400
  arch: str = 'i3d'
  blocks: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  res5_stride: int = 2
  bn_frozen: bool = True
  dropout_rate: float = 0.0
  nonlocal_stages: Optional[Mapping[str, Sequence[int]]] = None
  nonlocal_subsample: bool = True
  insert: Optional[Mapping[str, Callable[[], nn.Module]]] = None
  use_pool2: bool = True
  stem: str = 'caffe2'
  dtype: Any = None

  def _check(self):
    if self.arch not in TEMPORAL_KERNELS:
      raise ValueError(f'arch must be one of {sorted(TEMPORAL_KERNELS)}, '
                       f'got {self.arch!r}')
    if len(self.blocks) != 4:
      raise ValueError(f'blocks needs 4 entries (res2..res5), got {self.blocks}')
    for field in ('nonlocal_stages', 'insert'):
      unknown = set(getattr(self, field) or {}) - set(STAGES)
      if unknown:
        raise ValueError(f'{field} has unknown stages {sorted(unknown)}; '
                         f'stages are {STAGES}')
    for stage, idx in (self.nonlocal_stages or {}).items():
      n = self.blocks[STAGES.index(stage)]
      bad = [i for i in idx if not 0 <= i < n]
      if bad:
        raise ValueError(f'non-local block indices {bad} out of range for '
                         f'{stage} with {n} blocks')
    if self.res5_stride not in (1, 2):
      raise ValueError(f'res5_stride must be 1 or 2, got {self.res5_stride}')
    if self.stem not in STEMS:
      raise ValueError(f'stem must be one of {sorted(STEMS)}, got {self.stem!r}')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_stages: bool = False):
    """Runs the network.

    Args:
      x: video clips [B, T, H, W, 3], normalised.
      train: enables dropout (and batch statistics when BN is not frozen).
      return_stages: also return a dict with the output of 'pool1', each stage
        'res2'..'res5' (after its inserted blocks) and 'pooled' (the head's input).

    Returns:
      logits [B, num_classes] (or pooled features [B, C] without a head), and the
      stage dict when `return_stages`.
    """
    self._check()
    stages = {}
    kt = temporal_kernel(self.arch, 'conv1', 0)
    x = nn.Conv(self.base_width, (kt, 7, 7), strides=(1, 2, 2),
                padding=((kt // 2,) * 2, (3, 3), (3, 3)), use_bias=False,
                kernel_init=_CONV_INIT, dtype=self.dtype, name='conv1')(x)
    x = batch_norm(self.bn_frozen, train, name='res_conv1_bn', dtype=self.dtype)(x)
    x = nn.relu(x)
    p = STEMS[self.stem]  # explicit and symmetric, as Caffe2 and PyTorch pad
    x = nn.max_pool(x, (1, 3, 3), strides=(1, 2, 2), padding=((0, 0), (p, p), (p, p)))
    stages['pool1'] = x

    nonlocal_stages = self.nonlocal_stages or {}
    insert = self.insert or {}
    for s, (stage, n) in enumerate(zip(STAGES, self.blocks)):
      width = self.base_width * 2 ** s
      stride = 1 if stage == 'res2' else (self.res5_stride if stage == 'res5' else 2)
      for i in range(n):
        x = Bottleneck(width, temporal_kernel(self.arch, stage, i),
                       stride if i == 0 else 1, self.bn_frozen, self.dtype,
                       name=f'{stage}_{i}')(x, train=train)
        if i in nonlocal_stages.get(stage, ()):
          x = NonLocalBlock(subsample=self.nonlocal_subsample,
                            bn_frozen=self.bn_frozen, dtype=self.dtype,
                            name=f'nonlocal_conv{s + 2}_{i}')(x, train=train)
      if stage in insert:
        # Built here, inside compact, so the block is a child of this module and
        # its variables live under f'{stage}_graph' next to the backbone's.
        x = insert[stage](name=f'{stage}_graph')(x, train=train)
      stages[stage] = x
      if stage == 'res2' and self.use_pool2:
        x = nn.max_pool(x, (2, 1, 1), strides=(2, 1, 1), padding='VALID')
        stages['pool2'] = x

    x = jnp.mean(x, axis=(1, 2, 3))
    stages['pooled'] = x
    if self.num_classes:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      # Caffe2 initialises `pred` from N(0, 0.01^2).
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                   dtype=self.dtype, name='pred')(x)
    return (x, stages) if return_stages else x


def frozen_bn_mask(params: Mapping[str, Any]) -> Any:
  """A pytree of bools over `params`: True for the backbone's BatchNorm scale/bias.

  `bn_frozen=True` already stops their gradients; this mask lets an optimiser also
  keep weight decay off them (e.g. `optax.masked(optax.add_decayed_weights(wd),
  jax.tree.map(lambda m: not m, frozen_bn_mask(params)))`). The non-local blocks'
  `bn` is not included: its scale and bias learn even with frozen statistics.
  """
  flat = traverse_util.flatten_dict(params)
  mask = {k: any(part == 'res_conv1_bn' or part.endswith('_bn') for part in k[:-1])
          for k in flat}
  return traverse_util.unflatten_dict(mask)

