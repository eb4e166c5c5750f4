"""Video classifiers for SyncMNIST and the factory the trainer calls.

`create_model(config)` is the only place that reads the config; the modules take plain
arguments. Every model it returns follows one contract:

  logits = model.apply(variables, video, train=bool, mutable=[...])

with `video` float32 [B, T, 64, 64, 1] in [0, 1] and `logits` [B, num_classes].
BatchNorm statistics live in the `batch_stats` collection (pass `mutable=['batch_stats']`
when `train=True`; the apply then returns `(logits, updates)`), and the per-frame backbone
is the submodule `backbone`, so pre-trained backbone parameters
(`rstg_jax.pretrain.load_backbone`) go at `params['backbone']`.

The model modules are imported inside `create_model`: importing this package (e.g. for
the ResNet-50 models next to it) then does not pull in the RSTG core.
"""

from __future__ import annotations

from flax import linen as nn

MODEL_NAMES = ("rstg", "mean_lstm", "conv_lstm", "i3d", "nonlocal")
# The ablations of the paper's SyncMNIST table, for the "rstg" model: the core's
# schedules (rstg_jax.model.SCHEDULES), plus "positional" = all_temp with positional maps.
ABLATIONS = ("all_temp", "one_temp", "homogeneous", "space_only", "time_only", "positional")


def create_model(config) -> nn.Module:
  """Builds the model named by `config.model`.

  Reads only: `model`, `ablation` (rstg only), `num_classes`, `lstm_dim` (mean_lstm and
  conv_lstm), `backbone.width`, `backbone.freeze`, `rstg.dim`, `rstg.num_iters`,
  `rstg.scales`, `rstg.gather`, `rstg.adjacency`, `rstg.layer_norm`, `rstg.scalewise`.

  Args:
    config: an ml_collections.ConfigDict (or anything with those attributes).

  Returns:
    An unbound flax.linen.Module (see the module docstring for its contract).

  Raises:
    ValueError: unknown model or ablation name; the message lists the valid names.
  """
  # pylint: disable=g-import-not-at-top
  name = config.model
  if name not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
  common = dict(num_classes=int(config.num_classes), width=int(config.backbone.width),
                freeze_backbone=bool(config.backbone.freeze))
  if name == "rstg":
    if config.ablation not in ABLATIONS:
      raise ValueError(f"unknown RSTG ablation {config.ablation!r}; valid: "
                       f"{', '.join(ABLATIONS)}")
    from rstg_jax.syncmnist.rstg_classifier import RSTGClassifier
    r = config.rstg
    return RSTGClassifier(dim=int(r.dim), num_iters=int(r.num_iters),
                          scales=tuple(int(s) for s in r.scales), ablation=config.ablation,
                          gather=r.gather, adjacency=r.adjacency,
                          layer_norm=bool(r.layer_norm), scalewise=bool(r.scalewise),
                          **common)
  from rstg_jax.syncmnist import baselines
  if name == "mean_lstm":
    return baselines.MeanLSTM(lstm_dim=int(config.lstm_dim), **common)
  if name == "conv_lstm":
    return baselines.ConvLSTM(lstm_dim=int(config.lstm_dim), **common)
  if name == "i3d":
    return baselines.I3DSmall(**common)
  return baselines.NonLocalI3D(**common)
