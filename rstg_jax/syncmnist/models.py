"""The SyncMNIST model factory: `create_model(config)` builds the model `config.model` names.

It is the only SyncMNIST model code that reads the config; the modules take plain
arguments. Every model it returns follows one contract:

  logits = model.apply(variables, video, train=bool, mutable=[...])

with `video` float32 [B, T, 64, 64, 1] in [0, 1] and `logits` [B, num_classes].
BatchNorm statistics live in the `batch_stats` collection, and the per-frame backbone is
the submodule `backbone`, so pre-trained backbone parameters
(`rstg_jax.syncmnist.pretrain`) go at `params['backbone']`.
"""

from flax import linen as nn

from rstg_jax.syncmnist import baselines
from rstg_jax.syncmnist.backbone import feature_size
from rstg_jax.syncmnist.generator import FRAME
from rstg_jax.train import config_checks
from rstg_jax.syncmnist.rstg_classifier import ABLATIONS, RSTGClassifier

MODEL_NAMES = ('rstg', 'mean_lstm', 'conv_lstm', 'i3d', 'nonlocal')
_BASELINES = {'mean_lstm': baselines.MeanLSTM, 'conv_lstm': baselines.ConvLSTM,
              'i3d': baselines.I3DSmall, 'nonlocal': baselines.NonLocalI3D}


def config_errors(config) -> list[str]:
  """Every value `create_model` reads that it or the model would reject: unknown model
  or ablation names (with the valid ones), sizes that are not positive, and the `rstg.*`
  block, whose scales must fit the backbone's feature map."""
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
  errors += filter(None, [config_checks.bool_error('backbone.freeze', b.freeze)])
  if b.get('frames', 1) not in (1, 2) or isinstance(b.get('frames', 1), bool):
    errors.append(f'backbone.frames must be 1 (the paper: one frame at a time) or 2 (each '
                  f'frame with the one before it), got {b.get("frames")!r}.')
  return errors


def create_model(config) -> nn.Module:
  """Builds the model named by `config.model`.

  Reads only: `model`, `ablation` (rstg only), `data.num_classes`, `baseline.lstm_dim`
  (mean_lstm and conv_lstm), `backbone.width`, `backbone.freeze`, `backbone.coords`,
  `backbone.frames`, `rstg.dim`,
  `rstg.num_iters`, `rstg.scales`, `rstg.gather`, `rstg.adjacency`, `rstg.layer_norm`,
  `rstg.scalewise`.

  Raises:
    ValueError: unknown model or ablation name; the message lists the valid names.
  """
  errors = config_errors(config)
  if errors:
    raise ValueError(' '.join(errors))
  common = dict(num_classes=int(config.data.num_classes), width=int(config.backbone.width),
                freeze_backbone=bool(config.backbone.freeze),
                coords=bool(config.backbone.coords),
                # Absent from configs saved before it existed: one frame.
                frames=int(config.backbone.get('frames', 1)))
  if config.model == 'rstg':
    r = config.rstg
    return RSTGClassifier(dim=int(r.dim), num_iters=int(r.num_iters),
                          scales=tuple(int(s) for s in r.scales), ablation=config.ablation,
                          gather=r.gather, adjacency=r.adjacency,
                          layer_norm=bool(r.layer_norm), scalewise=bool(r.scalewise),
                          **common)
  if config.model in ('mean_lstm', 'conv_lstm'):
    return _BASELINES[config.model](lstm_dim=int(config.baseline.lstm_dim), **common)
  return _BASELINES[config.model](**common)
