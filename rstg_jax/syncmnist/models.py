"""The SyncMNIST model factory: `create_model(config)` builds the model `config.model` names.

It is the only SyncMNIST model code that reads the config; the modules take plain
arguments. Every model it returns follows one contract:

  logits = model.apply(variables, video, train=bool, mutable=[...])

with `video` float32 [B, T, 64, 64, 1] in [0, 1] and `logits` [B, num_classes].
BatchNorm statistics live in the `batch_stats` collection, and the per-frame backbone is
the submodule `backbone`, so pre-trained backbone parameters
(`rstg_jax.syncmnist.pretrain`) go at `params['backbone']`.

`config.input_norm` says which models normalise the backbone's features with one
per-channel BatchNorm (`baselines.node_batch_norm`, parameters `node_bn`) before their
head: 'rstg' (the default: the RSTG classifier's node BatchNorm of the authors' setup,
none in the paper's baselines), 'batchnorm' (every model) or 'none' (no model). The
baselines' widths are `config.baseline.*`; left unset they are the paper's, derived from
`backbone.width`.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from rstg_jax.model import ABLATIONS
from rstg_jax.syncmnist import baselines
from rstg_jax.syncmnist.backbone import feature_size
from rstg_jax.syncmnist.baselines import NUM_BACKBONE_LAYERS
from rstg_jax.syncmnist.generator import FRAME
from rstg_jax.train import config_checks
from rstg_jax.train.state import param_count
from rstg_jax.syncmnist.rstg_classifier import RSTGClassifier

MODEL_NAMES = ('rstg', 'mean_lstm', 'conv_lstm', 'i3d', 'nonlocal')
_BASELINES = {'mean_lstm': baselines.MeanLSTM, 'conv_lstm': baselines.ConvLSTM,
              'i3d': baselines.I3DSmall, 'nonlocal': baselines.NonLocalI3D}
INPUT_NORMS = ('rstg', 'batchnorm', 'none')


def _baseline_errors(config) -> list[str]:
  """`input_norm` and the optional `baseline.*` widths (absent from older configs)."""
  errors = []
  norm = config.get('input_norm', 'rstg')
  if norm not in INPUT_NORMS:
    errors.append(f'Unknown input_norm {norm!r}. Valid names: {", ".join(INPUT_NORMS)}.')
  b = config.baseline
  optional = [(f'baseline.{k}', b.get(k)) for k in ('conv_lstm_dim', 'conv_width')]
  planes = tuple(b.get('i3d_planes') or ())
  optional += [(f'baseline.i3d_planes[{i}]', p) for i, p in enumerate(planes)]
  errors += config_checks.positive_errors(*[
      (name, value, 'a positive integer (or unset)', dict(integer=True))
      for name, value in optional if value is not None])
  if planes and len(planes) != 3:
    errors.append(f'baseline.i3d_planes must have 3 entries (one per residual stage) or '
                  f'none, got {planes!r}.')
  return errors


def baseline_widths(config) -> dict:
  """The keyword arguments of `config.model`'s module that set its widths (empty for rstg).

  Unset (None or empty) `baseline.*` fields keep the module's own default, the paper's.
  """
  b = config.baseline
  if config.model == 'mean_lstm':
    return dict(lstm_dim=int(b.lstm_dim))
  if config.model == 'conv_lstm':
    dim = b.get('conv_lstm_dim')
    return dict(lstm_dim=int(b.lstm_dim if dim is None else dim),
                conv_width=None if b.get('conv_width') is None else int(b.conv_width))
  if config.model in ('i3d', 'nonlocal') and b.get('i3d_planes'):
    return dict(planes=tuple(int(p) for p in b.i3d_planes))
  return {}


def config_errors(config) -> list[str]:
  """Every value `create_model` reads that it or the model would reject: unknown model
  or ablation names (with the valid ones), sizes that are not positive (`baseline.*`
  widths included), `input_norm`, and the `rstg.*` block, whose scales must fit the
  backbone's feature map."""
  errors = []
  if config.model not in MODEL_NAMES:
    errors.append(f'Unknown model {config.model!r}. Valid names: {", ".join(MODEL_NAMES)}.')
  if config.ablation not in ABLATIONS:
    errors.append(f'Unknown ablation {config.ablation!r}. Valid names: '
                  f'{", ".join(ABLATIONS)}.')
  b = config.backbone
  integer = dict(integer=True)
  errors += config_checks.positive_errors(
      ('baseline.lstm_dim', config.baseline.lstm_dim, 'a positive integer', integer),
      ('backbone.width', b.width, 'a positive integer', integer))
  if config.model == 'rstg':  # the baselines read no rstg.* field
    side = feature_size(FRAME)
    errors += config_checks.rstg_errors(
        config.rstg, {f"the backbone's {side}x{side} feature map": (side, side)},
        time_only=config.ablation == 'time_only')
  errors += filter(None, [config_checks.bool_error('backbone.freeze', b.freeze),
                          config_checks.bool_error('rstg.frame_diff', _frame_diff(config))])
  errors += _baseline_errors(config)
  train_layers = b.get('train_layers', 0)
  if (isinstance(train_layers, bool) or not isinstance(train_layers, int)
      or not 0 <= train_layers <= NUM_BACKBONE_LAYERS):
    errors.append(f'backbone.train_layers must be an integer from 0 to '
                  f'{NUM_BACKBONE_LAYERS} (the backbone\'s last layers that train while it '
                  f'is frozen), got {train_layers!r}.')
  elif train_layers and not b.freeze:
    errors.append(f'backbone.train_layers={train_layers} only applies to a frozen backbone: '
                  'set --config.backbone.freeze=True, or train_layers=0 to fine-tune every '
                  'layer.')
  if b.frames not in (1, 2) or isinstance(b.frames, bool):
    errors.append(f'backbone.frames must be 1 (the paper: one frame at a time) or 2 (each '
                  f'frame with the one before it), got {b.frames!r}.')
  return errors


def _frame_diff(config):
  """`rstg.frame_diff`, False in configs saved before the field existed."""
  return config.rstg.get('frame_diff', False)


def create_model(config) -> nn.Module:
  """Builds the model named by `config.model`.

  Reads only: `model`, `ablation` (rstg only), `input_norm`, `data.num_classes`,
  `baseline.*` (`baseline_widths`), `backbone.width`, `backbone.freeze`,
  `backbone.train_layers`, `backbone.frames`,
  `rstg.dim`, `rstg.num_iters`, `rstg.scales`, `rstg.gather`, `rstg.adjacency`,
  `rstg.layer_norm`, `rstg.scalewise`, `rstg.frame_diff`.

  Raises:
    ValueError: unknown model or ablation name; the message lists the valid names.
  """
  errors = config_errors(config)
  if errors:
    raise ValueError(' '.join(errors))
  common = dict(num_classes=int(config.data.num_classes), width=int(config.backbone.width),
                freeze_backbone=bool(config.backbone.freeze),
                train_backbone_layers=int(config.backbone.get('train_layers', 0)),
                frames=int(config.backbone.frames))
  # Absent from configs saved before it existed: 'rstg', what those runs had.
  norm = config.get('input_norm', 'rstg')
  common['node_bn'] = norm == 'batchnorm' or (norm == 'rstg' and config.model == 'rstg')
  if config.model == 'rstg':
    r = config.rstg
    return RSTGClassifier(dim=int(r.dim), num_iters=int(r.num_iters),
                          scales=tuple(int(s) for s in r.scales), ablation=config.ablation,
                          gather=r.gather, adjacency=r.adjacency,
                          layer_norm=bool(r.layer_norm), scalewise=bool(r.scalewise),
                          frame_diff=bool(_frame_diff(config)), **common)
  return _BASELINES[config.model](**baseline_widths(config), **common)


def head_param_count(config) -> int:
  """Parameters of `config`'s model outside the backbone that every model shares: its
  head (all it trains when `backbone.freeze`). From `jax.eval_shape` of the model's init
  on a 64x64 video: nothing is allocated or computed."""
  model = create_model(config)
  video = jax.ShapeDtypeStruct((1, 2, FRAME, FRAME, 1), jnp.float32)
  params = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video)['params']
  return param_count({k: v for k, v in params.items() if k != 'backbone'})
