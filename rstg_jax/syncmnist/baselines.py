"""The SyncMNIST baselines of the paper (Sec. 3.1 and Appendix D).

All four take a video [B, T, H, W, 1] in [0, 1], run the shared `SmallCNN` backbone
(submodule `backbone`) on every frame (with `frames=2`, on every frame stacked with the
one before it: `SmallCNN.frames`), and differ in how they reason over the per-frame
feature maps [B, T, h, w, C] (6x6x512 for 64x64 frames):

- `MeanLSTM`: global average pool per frame, LSTM, classifier on the last hidden state.
- `ConvLSTM`: three more 3x3 convolutions (stride 1, no pooling, BatchNorm + ReLU), the
  map flattened per frame, the same LSTM.
- `I3DSmall`: an I3D (inflated 3D ResNet, bottleneck blocks) with 3 residual stages of 2
  blocks, applied to the backbone's feature maps. The paper says "for all tested models
  we used a convolutional network as a backbone", so the 3D network starts from the
  6x6 maps instead of raw pixels; its widths are chosen so the whole model, backbone
  included, has about 10M parameters as in Appendix D.
- `NonLocalI3D`: the same with one non-local block in the second residual stage.

With `node_bn`, a model normalises the backbone's features per channel with one
BatchNorm (`node_batch_norm`, parameters `node_bn`) where its head first reads them:
Mean+LSTM on each frame's pooled vector (its one node), Conv+LSTM and I3D on the map's
cells, as `RSTGClassifier` does on its pooled graph nodes. The paper's baselines have
none (the default); `config.input_norm` switches it for every model alike
(`rstg_jax.syncmnist.models`).

The non-local block is `rstg_jax.layers.NonLocalBlock`, the one the ResNet-50 models
of Something-Something use. Every BatchNorm is that module's `batch_norm` (momentum 0.9,
epsilon 1e-5, as in Caffe2): a running average over ~10 steps rather than the ~100 of
Flax's default 0.99 suits short SyncMNIST runs too.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rstg_jax.layers import NonLocalBlock, batch_norm
from rstg_jax.syncmnist.backbone import SmallCNN

__all__ = ['backbone_features', 'NUM_BACKBONE_LAYERS', 'node_batch_norm', 'LSTMHead',
           'MeanLSTM', 'ConvLSTM', 'Bottleneck3D', 'I3DSmall', 'NonLocalI3D']


NUM_BACKBONE_LAYERS = SmallCNN.num_layers  # the paper's 3 conv layers


def backbone_features(model: nn.Module, video: jax.Array) -> jax.Array:
  """Per-frame backbone feature maps [B, T, h, w, C] of a video [B, T, H, W, C_in], as
  every SyncMNIST model reads them, from its fields `width`, `frames`, `freeze_backbone`
  and `train_backbone_layers`.

  With `freeze_backbone`, the gradient stops below the backbone's last
  `train_backbone_layers` conv layers (0: at its output; `SmallCNN.frozen_layers`): the
  layers below get exactly zero gradient and XLA prunes their backward pass. Call from
  the model's compact method: it creates the model's `backbone` submodule.
  """
  frozen = NUM_BACKBONE_LAYERS - model.train_backbone_layers if model.freeze_backbone else 0
  return SmallCNN(model.width, frames=model.frames, frozen_layers=frozen,
                  name='backbone').video(video)


def _bn(train: bool, name: str) -> nn.Module:
  """A trainable BatchNorm (statistics in `batch_stats`), as the ResNet-50 models use."""
  return batch_norm(False, train, name=name)


def node_batch_norm(features: jax.Array, train: bool) -> jax.Array:
  """The input normalisation every SyncMNIST model can have: one BatchNorm per channel
  (the last axis) of the backbone features its head reads, named `node_bn`.

  Must be called inside a compact method, which it adds the submodule to.
  """
  return _bn(train, 'node_bn')(features)


class LSTMHead(nn.Module):
  """An LSTM over per-frame vectors, classifying from the last hidden state.

  Attributes:
    hidden: LSTM hidden size (512 in the paper).
    num_classes: number of output logits.
  """

  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, seq: jax.Array) -> jax.Array:
    """Maps [B, T, D] to logits [B, num_classes]."""
    outputs = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name='lstm')(seq)
    return nn.Dense(self.num_classes, name='classifier')(outputs[:, -1])


class MeanLSTM(nn.Module):
  """Mean pooling + LSTM baseline (App. D).

  Attributes:
    num_classes: number of classes (46 for SyncMNIST).
    width: backbone filters.
    lstm_dim: LSTM hidden size.
    freeze_backbone: stop gradients at the backbone output.
    train_backbone_layers: with `freeze_backbone`, the backbone's last conv layers that
      still train (`backbone_features`).
    node_bn: BatchNorm on each frame's pooled features (`node_batch_norm`).
  """

  num_classes: int
  width: int = 512
  frames: int = 1  # frames the backbone sees at once (SmallCNN.frames)
  lstm_dim: int = 512
  freeze_backbone: bool = False
  train_backbone_layers: int = 0  # with freeze_backbone: its last layers still train
  node_bn: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> jax.Array:
    fmap = backbone_features(self, video)
    # Global average pool throws away where things are: this baseline's weakness.
    pooled = fmap.mean(axis=(2, 3))
    if self.node_bn:
      pooled = node_batch_norm(pooled, train)
    return LSTMHead(self.lstm_dim, self.num_classes, name='head')(pooled)


class ConvLSTM(nn.Module):
  """ConvNet + LSTM baseline (App. D).

  After the backbone: three 3x3 convolutions, stride 1, SAME padding (no down-sizing),
  each followed by BatchNorm and ReLU; then each frame's map is flattened and fed to
  the LSTM. With the paper's widths the LSTM input is 6*6*512 = 18432 wide, which makes
  this the largest baseline (about 51M parameters).

  Attributes:
    num_classes: number of classes.
    width: backbone filters.
    lstm_dim: LSTM hidden size.
    conv_width: filters of the three extra convolutions (None: same as `width`).
    freeze_backbone: stop gradients at the backbone output.
    train_backbone_layers: with `freeze_backbone`, the backbone's last conv layers that
      still train (`backbone_features`).
    node_bn: BatchNorm on the backbone's map before the convolutions (`node_batch_norm`).
  """

  num_classes: int
  width: int = 512
  frames: int = 1  # frames the backbone sees at once (SmallCNN.frames)
  lstm_dim: int = 512
  conv_width: Optional[int] = None
  freeze_backbone: bool = False
  train_backbone_layers: int = 0  # with freeze_backbone: its last layers still train
  node_bn: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> jax.Array:
    x = backbone_features(self, video)
    if self.node_bn:
      x = node_batch_norm(x, train)
    conv_width = self.conv_width or self.width
    for i in range(3):
      x = nn.Conv(conv_width, (3, 3), padding='SAME', use_bias=False,
                  name=f'conv{i}')(x)
      x = _bn(train, f'bn{i}')(x)
      x = nn.relu(x)
    b, t = x.shape[:2]
    # Flattening keeps every cell's position, which the LSTM can then relate over time.
    return LSTMHead(self.lstm_dim, self.num_classes, name='head')(x.reshape(b, t, -1))


class Bottleneck3D(nn.Module):
  """Inflated ResNet bottleneck: 3x1x1 -> 1x3x3 (spatial stride) -> 1x1x1, as in I3D-R50.

  Attributes:
    planes: width of the inner convolutions; the block outputs 4 * planes channels.
    stride: spatial stride of the 1x3x3 convolution.
    temporal_kernel: temporal extent of the first convolution (3 inflates it, 1 = C2D).
  """

  planes: int
  stride: int = 1
  temporal_kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_dim = 4 * self.planes
    y = nn.Conv(self.planes, (self.temporal_kernel, 1, 1), padding='SAME',
                use_bias=False, name='conv_a')(x)
    y = nn.relu(_bn(train, 'bn_a')(y))
    y = nn.Conv(self.planes, (1, 3, 3), strides=(1, self.stride, self.stride),
                padding='SAME', use_bias=False, name='conv_b')(y)
    y = nn.relu(_bn(train, 'bn_b')(y))
    y = nn.Conv(out_dim, (1, 1, 1), use_bias=False, name='conv_c')(y)
    y = _bn(train, 'bn_c')(y)
    if x.shape[-1] != out_dim or self.stride != 1:
      x = nn.Conv(out_dim, (1, 1, 1), strides=(1, self.stride, self.stride),
                  use_bias=False, name='shortcut')(x)
      x = _bn(train, 'shortcut_bn')(x)
    return nn.relu(x + y)


class I3DSmall(nn.Module):
  """A small I3D (inflated 3D ResNet) on top of the per-frame backbone (App. D).

  Three residual stages of `blocks_per_stage` bottleneck blocks with inner widths
  `planes` (outputs 4x wider) and spatial strides `strides`, on the backbone maps
  [B, T, 6, 6, C]: 6x6 -> 6x6 -> 3x3 -> 2x2. Time keeps its full length (10 frames are
  too few to stride). Then global average pooling over T, H, W and a linear
  classifier.
  With width 512 and planes (64, 128, 256) the model has about 9.4M parameters,
  4.7M of them in the backbone: the paper's "around 10M".

  Attributes:
    num_classes: number of classes.
    width: backbone filters.
    planes: inner width of each stage's bottlenecks (None: width/8, width/4, width/2,
      i.e. (64, 128, 256) at the paper's width, so a narrower backbone shrinks the whole
      model alike).
    strides: spatial stride of each stage's first block.
    blocks_per_stage: residual blocks per stage (2 in the paper).
    nonlocal_stage: index of the stage that gets one non-local block before its last
      residual block (Wang et al.'s placement), or None for plain I3D.
    freeze_backbone: stop gradients at the backbone output.
    train_backbone_layers: with `freeze_backbone`, the backbone's last conv layers that
      still train (`backbone_features`).
    node_bn: BatchNorm on the backbone's map before the first stage (`node_batch_norm`).
  """

  num_classes: int
  width: int = 512
  frames: int = 1  # frames the backbone sees at once (SmallCNN.frames)
  planes: Optional[Sequence[int]] = None
  strides: Sequence[int] = (1, 2, 2)
  blocks_per_stage: int = 2
  nonlocal_stage: Optional[int] = None
  freeze_backbone: bool = False
  train_backbone_layers: int = 0  # with freeze_backbone: its last layers still train
  node_bn: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> jax.Array:
    x = backbone_features(self, video)
    if self.node_bn:
      x = node_batch_norm(x, train)
    all_planes = self.planes or tuple(max(self.width // d, 1) for d in (8, 4, 2))
    if len(all_planes) != len(self.strides):
      raise ValueError(f'planes {all_planes} and strides {self.strides} must have the same '
                       'length (one entry per residual stage)')
    for s, (planes, stride) in enumerate(zip(all_planes, self.strides)):
      for i in range(self.blocks_per_stage):
        if s == self.nonlocal_stage and i == self.blocks_per_stage - 1:
          # No 2x2 subsampling of keys: the maps are at most 6x6, attention is cheap.
          x = NonLocalBlock(subsample=False, name=f'stage{s}_nonlocal')(x, train)
        x = Bottleneck3D(planes, stride if i == 0 else 1,
                         name=f'stage{s}_block{i}')(x, train)
    return nn.Dense(self.num_classes, name='classifier')(x.mean(axis=(1, 2, 3)))


class NonLocalI3D(I3DSmall):
  """`I3DSmall` with one non-local block in the second residual stage (App. D).

  Attributes: as `I3DSmall`; `nonlocal_stage` defaults to 1 (the second stage).
  """

  nonlocal_stage: Optional[int] = 1
