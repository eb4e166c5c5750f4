"""The per-frame convolutional backbone shared by every SyncMNIST model.

The paper (Sec. 3.1, App. D) uses "a small CNN with 3 layers": 3x3 convolutions with
512 filters, ReLU and 2x2 max-pooling after each, pre-trained to classify a single digit
placed at random in a frame (see `rstg_jax.syncmnist.pretrain`). The authors' feature map for a
64x64 frame is 6x6, which only VALID (unpadded) convolutions give:
64 -conv-> 62 -pool-> 31 -conv-> 29 -pool-> 14 -conv-> 12 -pool-> 6.
SAME padding would give 8x8 and a different graph (cells of a 3x3 grid would no longer
be 2x2 feature pixels), so VALID is the default here.

Every model in `rstg_jax.syncmnist` applies the backbone frame by frame: by default it never
sees time, so all temporal reasoning happens in the model on top of it. With `frames=2`
it sees each frame together with the one before it (stacked as input channels; the first
frame with itself), a temporal kernel of 2 in its first layer as in I3D's inflated
kernels: its features can then say how the digit under them moved in the last step
(the 'motion' pre-training stage), and the graph above still does all the reasoning
over more than one step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax


def feature_size(input_size: int, num_layers: int = 3, padding: str = 'VALID') -> int:
  """Side of the backbone's output map for a square input of side `input_size`.

  Used to build the graph for the feature map without hard-coding 6x6.
  """
  size = input_size
  for _ in range(num_layers):
    if padding.upper() == 'VALID':
      size -= 2  # a 3x3 kernel without padding eats one pixel per side
    size //= 2  # 2x2 max-pool, stride 2, floor like VALID pooling
  if size < 1:
    raise ValueError(
      f'input of side {input_size} is too small for {num_layers} conv+pool layers')
  return size


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 and VALID padding (an odd last row/column is dropped).

  The forward pass is `nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`; the
  gradient is written as a masked broadcast over the four inputs of each window, which
  XLA:CPU fuses into one pass, where the reduce-window gradient (select-and-scatter)
  took half of a backbone pre-training step. A tie splits the gradient equally among
  the tied inputs (after a ReLU, ties are at 0, where the ReLU passes no gradient).
  """
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


def _max_pool_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _max_pool_bwd(res, g):
  x, y = res
  b, h, w, c = x.shape
  windows = x[:, :h - h % 2, :w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c)
  hit = (windows == y[:, :, None, :, None, :]).astype(g.dtype)
  share = hit / jnp.sum(hit, axis=(2, 4), keepdims=True)
  dx = (share * g[:, :, None, :, None, :]).reshape(b, h - h % 2, w - w % 2, c)
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


#: Up to this many patch channels (kh * kw * Cin) the kernel gradient is one matmul over
#: the patches; above, one matmul per tap.
_PATCH_CHANNELS = 64


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1, undilated, ungrouped VALID convolution, x NHWC, kernel HWIO."""
  return lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`lax.conv_general_dilated(x, kernel, (1, 1), 'VALID')` (x NHWC, kernel HWIO) whose
  kernel gradient is computed as matmuls.

  The forward pass and the input gradient are XLA's. XLA:CPU's kernel gradient of a
  convolution (a convolution of the input with the output's gradient) ran ~10x slower
  than the forward pass at the backbone's sizes. The gradient is the sum over every
  frame and output cell of `x[cell + tap] * grad[cell]`: for an input of few channels
  (the frames themselves) one [kh*kw*Cin, M] @ [M, Cout] matmul over the taps' patches
  (M = N*Ho*Wo), which reads the large output gradient once; otherwise one
  [Cin, M] @ [M, Cout] matmul per tap, which needs no kh*kw-times-larger copy of the
  input (`python -m rstg_jax.bench backbone` compares it with XLA's side by side).
  """
  return _conv(x, kernel)


def _conv_valid_fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _conv_valid_bwd(res, g):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  ho, wo = g.shape[1:3]
  dx = jax.vjp(lambda x: _conv(x, kernel), x)[1](g)[0]
  g2 = g.reshape(-1, cout)
  taps = [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]
  if cin * kh * kw <= _PATCH_CHANNELS:
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * cin)
    dk = jnp.dot(patches.T, g2).reshape(kh, kw, cin, cout)
  else:
    dk = jnp.stack([jnp.dot(t.reshape(-1, cin).T, g2) for t in taps]).reshape(
        kh, kw, cin, cout)
  return dx, dk.astype(kernel.dtype)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: `conv_valid`
  (after explicit padding for 'SAME') for the stride-1, undilated, ungrouped 2-D NHWC
  convolutions of `SmallCNN`, `lax.conv_general_dilated` itself for anything else."""
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  simple = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and feature_group_count == 1
            and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
            and padding in ('VALID', 'SAME') and precision is None and not kwargs)
  if not simple:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  if padding == 'SAME':  # stride 1: k - 1 cells in all, the extra one after
    kh, kw = rhs.shape[:2]
    lhs = jnp.pad(lhs, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  return conv_valid(lhs, rhs)


def with_previous_frame(video: jax.Array) -> jax.Array:
  """video [B, T, H, W, C] -> [B, T, H, W, 2C]: frame t-1's channels, then frame t's
  (frame 0 is paired with itself: no motion before the first frame)."""
  previous = jnp.concatenate([video[:, :1], video[:, :-1]], axis=1)
  return jnp.concatenate([previous, video], axis=-1)


def apply_per_frame(fn: Callable[[jax.Array], jax.Array], video: jax.Array) -> jax.Array:
  """Applies a frame-wise function to a video by folding time into the batch.

  Args:
    fn: maps frames [N, H, W, C] to anything with a leading axis N, e.g. SmallCNN.
    video: [B, T, H, W, C].

  Returns:
    fn's output reshaped to [B, T, ...].
  """
  b, t = video.shape[:2]
  out = fn(video.reshape((b * t,) + video.shape[2:]))
  return out.reshape((b, t) + out.shape[1:])


class SmallCNN(nn.Module):
  """The paper's 3-layer frame backbone.

  Attributes:
    width: filters in every conv layer (512 in the paper).
    num_layers: conv+ReLU+max-pool layers (3 in the paper).
    padding: "VALID" (default; 64x64 -> 6x6 as in the authors' code) or "SAME"
      (64x64 -> 8x8).
    frames: 1 (the paper: one frame at a time) or 2 (`video` gives every frame with
      its predecessor, `with_previous_frame`; `__call__` then takes 2C input channels).
    kernel_grad: how the convolutions' kernel gradients are computed: 'matmul' (as
      matmuls, `conv_valid`), 'xla' (XLA's own) or 'auto' (matmuls on CPU, where XLA's
      ran ~10x slower than the forward pass; XLA's elsewhere). The same parameters and
      forward pass either way.
    frozen_layers: the first `frozen_layers` conv blocks get no gradient: their output
      is wrapped in `stop_gradient`, so their parameters get exactly zero gradient and
      XLA prunes their backward pass (0: every layer trains; `num_layers`: none does).
  """

  width: int = 512
  num_layers: int = 3
  padding: str = 'VALID'
  frames: int = 1
  kernel_grad: str = 'auto'
  frozen_layers: int = 0

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    """Maps frames [B, H, W, C] (float in [0, 1]) to a feature map [B, h, w, width]."""
    x = jnp.asarray(frames, jnp.float32)
    if self.kernel_grad not in ('auto', 'matmul', 'xla'):
      raise ValueError(f"SmallCNN.kernel_grad must be 'auto', 'matmul' or 'xla', got "
                       f'{self.kernel_grad!r}')
    if not 0 <= self.frozen_layers <= self.num_layers:
      raise ValueError(f'SmallCNN.frozen_layers must be in 0..{self.num_layers}, got '
                       f'{self.frozen_layers}')
    matmul = self.kernel_grad == 'matmul' or (self.kernel_grad == 'auto'
                                              and jax.default_backend() == 'cpu')
    conv = dict(conv_general_dilated=conv_general_dilated) if matmul else {}
    for i in range(self.num_layers):
      x = nn.Conv(self.width, (3, 3), padding=self.padding, name=f'conv{i}', **conv)(x)
      x = nn.relu(x)
      x = max_pool_2x2(x)
      if i + 1 == self.frozen_layers:
        x = jax.lax.stop_gradient(x)
    return x

  def video(self, video: jax.Array) -> jax.Array:
    """Maps a video [B, T, H, W, C] to per-frame feature maps [B, T, h, w, width]."""
    if self.frames == 2:
      video = with_previous_frame(jnp.asarray(video))
    elif self.frames != 1:
      raise ValueError(f'SmallCNN.frames must be 1 or 2, got {self.frames}')
    return apply_per_frame(self, video)
