"""SyncMNIST default configuration: the trainer's fields (`configs/common.py`) plus the
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
  """Returns the default (3-digit SyncMNIST, full RSTG) configuration."""
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
  # > 0: pretrain the backbone on single-digit classification first (paper: "pre-trained
  # to classify a digit randomly placed in a frame"); cached in workdir/backbone.npz.
  # Two coordinate input channels (CoordConv; rstg_jax.syncmnist.backbone.SmallCNN):
  # features that know where they are, so pooled nodes keep their digits' positions.
  config.backbone.coords = False
  # Frames the backbone sees at once: 1 (the paper) or 2 (each frame stacked with the one
  # before it, a temporal kernel of 2 as in I3D; rstg_jax.syncmnist.backbone.SmallCNN),
  # so that features can encode the last step of motion ('digit_motion' pre-training).
  config.backbone.frames = 1
  config.backbone.pretrain_steps = 0
  config.backbone.pretrain_batch_size = 64
  config.backbone.pretrain_lr = 1e-3
  # 'digit' (the paper: classify the digit), 'digit_position' (also where it is, from
  # the unpooled feature map: features that keep sub-cell position) or 'digit_motion'
  # (backbone.frames = 2: pretrain_steps of 'digit', then pretrain_motion_steps on the
  # digit and how it moved between two frames; see rstg_jax.syncmnist.pretrain.TARGETS).
  config.backbone.pretrain_target = 'digit'
  # 'digit_motion' only: steps of its second stage (digit and step on two frames), after
  # pretrain_steps of 'digit' on one frame.
  config.backbone.pretrain_motion_steps = 1_000
  # 'digit_motion' only: steps of an optional third stage (0: none) on two consecutive
  # frames of the task's videos, every digit and its step classified at the feature-map
  # cell under its centre (rstg_jax.syncmnist.pretrain.SceneMotionClassifier).
  config.backbone.pretrain_scene_steps = 0
  # Where the pre-trained backbone is cached (None: WORKDIR/backbone.npz). Runs that share
  # a path share one pre-training, e.g. the rows of a sweep; a cache made with other
  # settings is never reused (it is recomputed and replaced).
  config.backbone.cache_path = config_dict.placeholder(str)

  config.rstg = config_dict.ConfigDict()
  config.rstg.dim = 512
  config.rstg.num_iters = 3
  config.rstg.scales = (1, 2, 3)
  config.rstg.gather = 'attention'
  config.rstg.adjacency = 'sparse'
  config.rstg.layer_norm = False
  config.rstg.scalewise = False

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
