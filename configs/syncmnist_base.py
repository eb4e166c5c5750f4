"""SyncMNIST base configuration: the trainer's fields (`configs/common.py`) plus the
SyncMNIST data and model fields.

The variants (`syncmnist.py`, `syncmnist5.py`, `syncmnist_quick.py`) import this file and
override a few fields, so a field added here is available (and overridable from the command
line) in all of them. Override any field with `--config.<name>=<value>`, e.g.

  python -m rstg_jax.main --config=configs/syncmnist.py --workdir=runs/x \
      --config.ablation=space_only --config.rstg.num_iters=2

The config is locked, so a misspelt field fails with ml_collections' "did you mean".
"""

from ml_collections import config_dict

from configs import common


def get_config():
  """Returns the base (3-digit SyncMNIST, full RSTG, no pre-training) configuration."""
  config = common.get_config()

  # --- Model (read by rstg_jax.syncmnist.models.create_model) -------------------------
  # One of rstg_jax.syncmnist.models.MODEL_NAMES: rstg, mean_lstm, conv_lstm, i3d, nonlocal.
  config.model = 'rstg'
  # One of rstg_jax.model.ABLATIONS; only used by the rstg model.
  # all_temp = Alg. 1.
  config.ablation = 'all_temp'

  config.backbone = config_dict.ConfigDict()
  config.backbone.width = 512  # 3 conv layers, 3x3, `width` filters (paper).
  config.backbone.freeze = False  # True: backbone params get no updates.
  # With freeze: the backbone's last `train_layers` conv layers (of 3) still train, and the
  # gradient stops below them (0: the whole backbone frozen).
  config.backbone.train_layers = 0
  # Frames the backbone sees at once: 1 (the paper) or 2 (each frame stacked with the one
  # before it, a temporal kernel of 2 as in I3D; rstg_jax.syncmnist.backbone.SmallCNN),
  # so that features can encode the last step of motion (the 'motion' stage).
  config.backbone.frames = 1
  # Pre-training, in stages run in order (rstg_jax.syncmnist.pretrain): 'digit' (the
  # paper: a digit's class in one frame), 'motion' (a digit's class and step between two
  # frames; needs frames = 2), 'scene' (every digit's class and step in two frames of the
  # task's videos: the 'privileged' protocol). () = none. From the command line:
  # --config.backbone.pretrain.stages=digit,motion. Cached in WORKDIR/backbone.npz, or at
  # cache_path, which several runs can share; a cache made otherwise is recomputed.
  config.backbone.pretrain = config_dict.ConfigDict()
  config.backbone.pretrain.stages = ()
  config.backbone.pretrain.steps = config_dict.ConfigDict(
      dict(digit=1_000, motion=1_000, scene=1_000))  # Adam steps of each stage
  config.backbone.pretrain.batch_size = 64
  config.backbone.pretrain.lr = 1e-3
  config.backbone.pretrain.cache_path = config_dict.placeholder(str)

  config.rstg = config_dict.ConfigDict()
  config.rstg.dim = 512
  config.rstg.num_iters = 3
  config.rstg.scales = (1, 2, 3)
  config.rstg.gather = 'attention'
  config.rstg.adjacency = 'sparse'
  config.rstg.layer_norm = False
  config.rstg.scalewise = False
  # Not in the paper: each node also gets its features' change since the frame before
  # (rstg_jax.syncmnist.rstg_classifier.with_frame_difference).
  config.rstg.frame_diff = False

  # Which models normalise the backbone's features per channel with one BatchNorm before
  # their head (rstg_jax.syncmnist.models): 'rstg' (only RSTG's node BatchNorm, the
  # authors' setup), 'batchnorm' (every model alike) or 'none'.
  config.input_norm = 'rstg'

  # The baselines' widths; unset (None, ()) they are the paper's, from backbone.width.
  config.baseline = config_dict.ConfigDict()
  config.baseline.lstm_dim = 512  # LSTM hidden size of mean_lstm and conv_lstm
  config.baseline.conv_lstm_dim = config_dict.placeholder(int)  # conv_lstm's (None: lstm_dim)
  # Filters of conv_lstm's three extra convolutions (None: backbone.width).
  config.baseline.conv_width = config_dict.placeholder(int)
  # Inner widths of the 3 residual stages of i3d and nonlocal (empty: width/8, /4, /2).
  config.baseline.i3d_planes = ()

  # --- Data ---------------------------------------------------------------------------
  config.data.name = 'syncmnist'
  # 45 unordered pairs of distinct digits + 1 "no synchronous pair" class.
  config.data.num_classes = 46
  config.data.num_digits = 3
  # Seed of the video generator: fixes the content of every video (and so the test set).
  # The training order is drawn from `config.seed`.
  config.data.seed = 0
  config.data.mnist_path = config_dict.placeholder(str)  # None: the data module's default.
  # Size of the training stream: 600k videos as in the authors' recipe (their 10 passes over
  # 60k digits; here 12 passes over the 50k train digits, val holds out the other 10k).
  config.data.train_size = 600_000
  config.data.prefetch = 2  # batches generated ahead by the background thread.
  # 'clean': every digit's track has the same distribution, pair or not, so only
  # comparing motions finds the pair. 'authors': the authors' generator (clipped at the
  # border, pair kept apart), which has single-digit shortcuts; for comparison only.
  config.data.motion = 'clean'
  # Probability that a video has no synchronous pair (class "none"); the paper's 1/47.
  config.data.no_pair_prob = 1.0 / 47.0
  # Val videos evaluated during training (indices 0..val_size-1 of the val split, made
  # from the last 10k MNIST training digits): plateau, best checkpoint, printed numbers.
  config.data.val_size = 10_000

  # --- Evaluation ---------------------------------------------------------------------
  # Test videos (indices 0..size-1 of the test split), evaluated once at the end of
  # training (checkpoint chosen on val) and by rstg_jax.evaluate.
  config.eval.size = 10_000
  config.eval.batch_size = 100
  return config


# --- Protocol presets (`--config=configs/<config>.py:<preset>`) -------------------------
# What the backbone sees and how it is pre-trained decides a run's protocol
# (rstg_jax.syncmnist.protocols): each function sets those fields only.


def paper_backbone(config):
  """'paper': a one-frame backbone pre-trained on single digits' class only."""
  config.backbone.frames = 1
  config.backbone.pretrain.stages = ('digit',)


def motion_backbone(config):
  """'motion_backbone': a two-frame backbone pre-trained on the digit, then its step."""
  config.backbone.frames = 2
  config.backbone.pretrain.stages = ('digit', 'motion')


def privileged_backbone(config):
  """'privileged': the motion backbone, then the 'scene' stage on the task's videos."""
  config.backbone.frames = 2
  config.backbone.pretrain.stages = ('digit', 'motion', 'scene')


def with_preset(config, preset, presets: dict, name: str):
  """`config` changed by `presets[preset]` (None: unchanged); ValueError naming the valid
  presets of the config file `name` otherwise."""
  if preset is None:
    return config
  if preset not in presets:
    raise ValueError(f'unknown preset {preset!r} of configs/{name}.py; valid: '
                     f'{", ".join(presets)} (--config=configs/{name}.py:PRESET)')
  presets[preset](config)
  return config
