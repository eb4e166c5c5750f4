"""Something-Something-v1 models: C2D / I3D ResNet-50 with RSTG blocks (paper Sec. 3.2).

`create_ssv1_model(config)` returns one `ResNet3D` (Kinetics layout, so a converted
Kinetics checkpoint maps onto it name by name) with RSTG blocks put in through its
`insert` hook, following `config.rstg.placement`:

  res2, res3, res4   RSTG-to-map after that stage (`GraphToMap`, variables under
                     '{stage}_graph'): nodes area-pooled from the stage's map, C projected
                     to D=512 (and back), x + s * LayerNorm(graph(x)) with s = 0 at init.
  res3_4             two graphs, after res3 and after res4: the paper's best (Table 3).
  vec                RSTG-to-vec on res5 (`GraphToVec`, under 'res5_graph'): the graph's
                     vector, projected 512 -> 2048, is added to the pooled features.
  none               the backbone alone (with `backbone.nonlocal_blocks`: NL-I3D).

Every graph is built from the feature map the block receives when it is called, not
fixed in advance: the same parameters run on 224 px training crops (res3 28x28, res4
14x14) and on the 256 px crops of the dense evaluation (32x32, 16x16). No parameter
shape depends on H or W (the pool / unpool matrices are constants of the graph), which
`tests/test_ssv1_models.py` checks.

Because every block starts as the identity (its residual scale is 0), a freshly built
model with Kinetics weights computes exactly what the plain backbone computes.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from rstg_jax.graph import RSTGGraph, build_graph, pool_nodes
from rstg_jax.model import ABLATIONS, RSTG, RSTGToMap, ablation_to_core_args, rstg_to_vec
from rstg_jax.train import config_checks
from rstg_jax.ssv1.resnet3d import (NL_I3D_STAGES, STAGES, STEMS, TEMPORAL_KERNELS,
                                    ResNet3D, count_params, stage_sizes)

MODEL_NAMES = ('resnet3d',)
ARCHS = tuple(sorted(TEMPORAL_KERNELS))  # ('c2d', 'i3d')
PLACEMENTS = ('res2', 'res3', 'res4', 'res3_4', 'vec', 'none')
# Which backbone stages get a block for each placement.
PLACEMENT_STAGES = {'res2': ('res2',), 'res3': ('res3',), 'res4': ('res4',),
                    'res3_4': ('res3', 'res4'), 'vec': ('res5',), 'none': ()}
GRAPH_SUFFIX = '_graph'

@functools.lru_cache(maxsize=32)
def cached_graph(scales: tuple[int, ...], height: int, width: int,
                 adjacency: str) -> RSTGGraph:
  # Tracing at two input sizes (train 224, eval 256) and re-tracing for train/eval
  # steps would rebuild the same numpy matrices each time; they are immutable.
  return build_graph(scales, (height, width), adjacency=adjacency)


class _GraphBlock(nn.Module):
  """Fields shared by the graph blocks inserted into the backbone.

  Attributes:
    scales: grid sizes of the graph, e.g. (1, 2, 3) or the paper's (1, 2, 3, 4).
    dim: node size D (the map's C is projected C -> D -> C when they differ).
    adjacency: 'sparse' (the paper's graph) or 'full'.
    rstg: keyword arguments for `rstg_jax.model.RSTG` (num_iters, schedule, ...).
  """
  scales: Sequence[int]
  dim: int = 512
  adjacency: str = 'sparse'
  rstg: Optional[Mapping[str, Any]] = None

  def graph_for(self, x: jax.Array):
    """The graph for x's spatial size: the same params serve 224 and 256 crops."""
    return cached_graph(tuple(self.scales), x.shape[-3], x.shape[-2], self.adjacency)


class GraphToMap(_GraphBlock):
  """RSTG-to-map on a backbone feature map, with the graph built for its size."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    graph = self.graph_for(x)
    return RSTGToMap(graph, dim=self.dim, rstg=dict(self.rstg or {}), name='map')(
        x, train=train)


class GraphToVec(_GraphBlock):
  """RSTG-to-vec on res5, added to the backbone's pooled features (paper App. B).

  x [B, T, H, W, C] -> x + s * LayerNorm(proj_out(rstg_to_vec(RSTG(proj_in(pool(x))))))
  broadcast over T, H, W, with s a scalar initialised to 0. The backbone's head takes
  the mean of its input over (T, H, W), and a mean is linear, so adding the vector v at
  every position gives exactly mean(x) + v: the graph's vector is added to the globally
  pooled features before dropout and the classifier, as in the paper, while the
  ResNet3D stays one module whose parameters match the Kinetics checkpoint by name.

  Attributes: as `_GraphBlock`.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No train-time-only behaviour (kept for the insert hook's signature).
    c = x.shape[-1]
    graph = self.graph_for(x)
    nodes = pool_nodes(graph, x)  # [B, T, N, C]
    if c != self.dim:
      nodes = nn.Dense(self.dim, name='proj_in')(nodes)
    states = RSTG(graph, dim=self.dim, name='rstg', **dict(self.rstg or {}))(nodes)
    vec = nn.Dense(c, name='proj_out')(rstg_to_vec(states))  # [B, C]
    vec = nn.LayerNorm(name='norm')(vec)
    scale = self.param('residual_scale', nn.initializers.zeros, (), x.dtype)
    return x + (scale * vec)[:, None, None, None, :]


def rstg_kwargs(config) -> dict:
  """The `RSTG` keyword arguments a config asks for (ablation -> schedule, positional)."""
  r = config.rstg
  return dict(num_iters=int(r.num_iters), gather=r.gather, layer_norm=bool(r.layer_norm),
              scalewise=bool(r.scalewise), **ablation_to_core_args(config.ablation))


def config_errors(config) -> list[str]:
  """Every value `create_ssv1_model` reads that it or the model would reject (empty when
  the config is usable): names, sizes, and the `rstg.*` block, whose scales must fit the
  feature map of each stage a graph is put after, at the training crop
  (`data.crop_size`) and at the dense evaluation's `data.short_side`."""
  problems = []
  if config.model not in MODEL_NAMES:
    problems.append(f'Unknown model {config.model!r} for Something-Something. Valid names: '
                    f"{', '.join(MODEL_NAMES)}.")
  if config.ablation not in ABLATIONS:
    problems.append(f'Unknown ablation {config.ablation!r}. Valid names: '
                    f"{', '.join(ABLATIONS)}.")
  b, r, d = config.backbone, config.rstg, config.data
  if b.arch not in ARCHS:
    problems.append(f"Unknown backbone.arch {b.arch!r}. Valid: {', '.join(ARCHS)}.")
  if r.placement not in PLACEMENTS:
    problems.append(f'Unknown rstg.placement {r.placement!r}. Valid: '
                    f"{', '.join(PLACEMENTS)}.")
  blocks = tuple(b.blocks)
  if len(blocks) != 4 or not all(
      isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in blocks):
    problems.append(f'backbone.blocks needs 4 positive integers (res2..res5), got {blocks}.')
  if b.res5_stride not in (1, 2) or isinstance(b.res5_stride, bool):
    problems.append(f'backbone.res5_stride must be 1 or 2, got {b.res5_stride}.')
  if config.backbone.stem not in STEMS:
    problems.append(f'Unknown backbone.stem {config.backbone.stem!r}. Valid: '
                    f"{', '.join(STEMS)}.")
  if b.nonlocal_blocks and blocks != (3, 4, 6, 3):
    problems.append("backbone.nonlocal_blocks places NL-I3D's blocks after blocks 1, 3 of "
                    f'res3 and 1, 3, 5 of res4, which needs blocks=(3, 4, 6, 3), got '
                    f'{blocks}.')
  rate = config.head.dropout_rate
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
    problems.append(f'head.dropout_rate={rate!r} must be in [0, 1).')
  problems += config_checks.positive_errors(
      ('backbone.base_width', b.base_width, 'a positive integer', dict(integer=True)),
      ('data.num_classes', d.num_classes, 'an integer >= 0 (0: from the labels file)',
       dict(integer=True, allow_zero=True)))
  problems += filter(None, [config_checks.bool_error('backbone.bn_frozen', b.bn_frozen),
                            config_checks.bool_error('backbone.nonlocal_blocks',
                                                     b.nonlocal_blocks)])
  maps = {}
  if (not problems and r.placement in PLACEMENTS and isinstance(d.crop_size, int)
      and isinstance(d.short_side, int) and d.crop_size > 0):
    for name, side in (('data.crop_size', d.crop_size), ('data.short_side', d.short_side)):
      sizes = stage_sizes(side, b.stem, b.res5_stride)
      for stage in PLACEMENT_STAGES[r.placement]:
        maps[f'the {stage} map of {sizes[stage]}x{sizes[stage]} at {name}={side}'] = (
            sizes[stage], sizes[stage])
  if r.placement != 'none':
    problems += config_checks.rstg_errors(r, maps, time_only=config.ablation == 'time_only')
  return problems


def create_ssv1_model(config) -> ResNet3D:
  """Builds the Something-Something model a config describes.

  Reads: `model`, `ablation`, `data.num_classes`, `head.dropout_rate`, `backbone.{arch,
  blocks, base_width, res5_stride, bn_frozen, nonlocal_blocks, stem}`, `rstg.{placement,
  scales, dim, num_iters, gather, adjacency, layer_norm, scalewise}`.

  Returns:
    An unbound `ResNet3D`: `logits = model.apply(variables, video, train=...)` with
    `video` float32 [B, T, H, W, 3] (normalised) and logits [B, num_classes].

  Raises:
    ValueError: listing every problem of the config (see `config_errors`).
  """
  errors = config_errors(config)
  if errors:
    raise ValueError('Invalid Something-Something model config:\n  ' + '\n  '.join(errors))
  b, r = config.backbone, config.rstg
  block_cls = GraphToVec if r.placement == 'vec' else GraphToMap
  factory = functools.partial(block_cls, scales=tuple(int(s) for s in r.scales),
                              dim=int(r.dim), adjacency=r.adjacency,
                              rstg=rstg_kwargs(config))
  insert = {stage: factory for stage in PLACEMENT_STAGES[r.placement]}
  return ResNet3D(
      num_classes=int(config.data.num_classes), arch=b.arch,
      blocks=tuple(int(n) for n in b.blocks), base_width=int(b.base_width),
      res5_stride=int(b.res5_stride), bn_frozen=bool(b.bn_frozen),
      dropout_rate=float(config.head.dropout_rate),
      nonlocal_stages=NL_I3D_STAGES if b.nonlocal_blocks else None,
      insert=insert or None, stem=config.backbone.stem)


def is_graph_path(path: Sequence[str]) -> bool:
  return any(str(p).endswith(GRAPH_SUFFIX) and str(p)[:-len(GRAPH_SUFFIX)] in STAGES
             for p in path)


def param_summary(params: Mapping[str, Any]) -> dict[str, int]:
  """Parameter counts: total, backbone (incl. head and non-local blocks) and graph,
  plus one entry per graph block ('res3_graph', ...). Works on `ShapeDtypeStruct`s."""
  flat = traverse_util.flatten_dict(params)
  out = {'total': count_params(list(flat.values())), 'backbone': 0, 'graph': 0}
  for path, leaf in flat.items():
    n = count_params([leaf])
    if is_graph_path(path):
      out['graph'] += n
      out[path[0]] = out.get(path[0], 0) + n
    else:
      out['backbone'] += n
  return out


def describe(config, params: Mapping[str, Any]) -> str:
  """One log line: the architecture and its parameter counts."""
  s = param_summary(params)
  blocks = ', '.join(f'{k} {v:,}' for k, v in s.items() if k.endswith(GRAPH_SUFFIX))
  b, r = config.backbone, config.rstg
  name = f'{b.arch.upper()}-R50' if tuple(b.blocks) == (3, 4, 6, 3) else (
      f'{b.arch.upper()} ResNet blocks={tuple(b.blocks)} width={b.base_width}')
  if b.nonlocal_blocks:
    name = 'NL-' + name
  graph = 'no graph' if r.placement == 'none' else (
      f"RSTG-{'to-vec' if r.placement == 'vec' else 'to-map'} {r.placement}, scales "
      f'{tuple(r.scales)}, D={r.dim}, K={r.num_iters}, {config.ablation}')
  return (f"{name} + {graph}: {s['total']:,} parameters = backbone {s['backbone']:,} + "
          f"graph {s['graph']:,}" + (f' ({blocks})' if blocks else ''))


def init_shapes(model: nn.Module, input_shape: Sequence[int]):
  """Variable shapes of `model` for one clip of `input_shape` (T, H, W, C), no compute."""
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, *input_shape))),
                        jax.random.key(0))
