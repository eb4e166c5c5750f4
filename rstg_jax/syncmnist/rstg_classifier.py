"""The RSTG video classifier for SyncMNIST (paper Sec. 3.1, "Implementation details").

video [B, T, 64, 64, 1]
  -> `SmallCNN` on every frame (submodule `backbone`; with `frames=2` on every frame
     stacked with the one before it)   [B, T, 6, 6, C]
  -> area-pooled node features of a 1x1 + 2x2 + 3x3 grid graph   [B, T, 14, C]
  -> BatchNorm on the node features (the authors' SyncMNIST setup; `node_bn`)
  -> with `frame_diff`, each node's features and their change since the frame before
     [B, T, 14, 2C] (`with_frame_difference`; not in the paper)
  -> `RSTG` core (schedule = the ablation)   [B, T, 14, D]
  -> RSTG-to-vec (mean over time, sum over nodes)   [B, D]
  -> linear classifier   [B, num_classes]

With `online=True` the core runs frame by frame (`RSTG.step`) and the classifier reads
the readout of the frames seen so far after every frame: logits [B, T, num_classes],
whose last row is the offline logits (what `python -m rstg_jax.explain` draws).

The graph is built from the backbone's actual output size, so other frame sizes or
backbone paddings need no change here.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rstg_jax.graph import build_graph, pool_nodes
from rstg_jax.model import RSTG, ablation_to_core_args, rstg_to_vec
from rstg_jax.syncmnist.baselines import backbone_features, node_batch_norm


def with_frame_difference(nodes: jax.Array) -> jax.Array:
  """[B, T, N, C] -> [B, T, N, 2C]: every frame's node features, then their change since
  the frame before (zero at frame 0). Frame t reads frames t-1 and t only, so the online
  mode stays causal. A one-frame backbone's nodes then carry the step of their content
  as an input instead of something the first LSTM must learn to compute."""
  prev = jnp.concatenate([nodes[:, :1], nodes[:, :-1]], axis=1)
  return jnp.concatenate([nodes, nodes - prev], axis=-1)


class RSTGClassifier(nn.Module):
  """Backbone + RSTG + RSTG-to-vec + linear classifier.

  Attributes:
    num_classes: number of classes (46 for SyncMNIST).
    width: backbone filters (512 in the paper).
    dim: RSTG node state size D (512).
    num_iters: K, space (and internal time) stages (3).
    scales: grid sizes of the graph ((1, 2, 3): 14 nodes).
    ablation: one of `rstg_jax.model.ABLATIONS`.
    gather: "attention" or "sum" (how a node combines incoming messages).
    adjacency: "sparse" (the paper's graph) or "full" (Appendix C).
    layer_norm: LayerNorm in the space stage.
    scalewise: per-scale update parameters.
    freeze_backbone: stop gradients at the backbone output.
    train_backbone_layers: with `freeze_backbone`, the backbone's last conv layers that
      still train (`baselines.backbone_features`).
    frames: frames the backbone sees at once (`SmallCNN.frames`: 2 adds the previous one).
    node_bn: BatchNorm on the pooled node features (`baselines.node_batch_norm`).
    frame_diff: give the core each node's features and their change since the frame
      before (`with_frame_difference`), a departure from the paper (docs/departures.md).
  """

  num_classes: int
  width: int = 512
  dim: int = 512
  num_iters: int = 3
  scales: Sequence[int] = (1, 2, 3)
  ablation: str = 'all_temp'
  gather: str = 'attention'
  adjacency: str = 'sparse'
  layer_norm: bool = False
  scalewise: bool = False
  freeze_backbone: bool = False
  train_backbone_layers: int = 0
  frames: int = 1
  node_bn: bool = True
  frame_diff: bool = False

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False,
               online: bool = False) -> jax.Array:
    """Maps a video [B, T, H, W, 1] in [0, 1] to logits [B, num_classes].

    With `online`, logits [B, T, num_classes]: row t classifies frames 0..t, computed
    one frame at a time by the core's online mode. The backbone sees each frame (and,
    with `frames=2`, the one before it) and the node BatchNorm is per frame at test
    time, so row t depends on frames 0..t only.
    """
    core_args = ablation_to_core_args(self.ablation)
    fmap = backbone_features(self, video)
    graph = build_graph(scales=tuple(self.scales), feature_size=fmap.shape[-3:-1],
                        adjacency=self.adjacency)
    nodes = pool_nodes(graph, fmap)  # [B, T, N, C]
    # The backbone's ReLU features are unnormalised and their scale drifts while it is
    # fine-tuned; normalising per channel keeps the LSTM gates out of saturation.
    if self.node_bn:
      nodes = node_batch_norm(nodes, train)
    if self.frame_diff:
      nodes = with_frame_difference(nodes)
    core = RSTG(graph=graph, dim=self.dim, num_iters=self.num_iters,
                gather=self.gather, layer_norm=self.layer_norm,
                scalewise=self.scalewise, name='rstg', **core_args)
    classifier = nn.Dense(self.num_classes, name='classifier')
    if not online:
      return classifier(rstg_to_vec(core(nodes)))
    state, sums = core.initial_state(nodes.shape[0], nodes.dtype), []
    for t in range(nodes.shape[1]):
      state, out = core.step(state, nodes[:, t])
      sums.append(out.sum(axis=-2))
    # RSTG-to-vec of frames 0..t: the running mean of the per-frame node sums.
    seen = jnp.arange(1, nodes.shape[1] + 1, dtype=nodes.dtype)[:, None]
    return classifier(jnp.cumsum(jnp.stack(sums, 1), axis=1) / seen)
