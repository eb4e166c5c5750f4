"""Default configuration: every field the trainer and the model factory read.

The variants (`syncmnist.py`, `syncmnist5.py`, `syncmnist_quick.py`) import this file and
override a few fields, so a field added here is available (and overridable from the command
line) everywhere. Override any field with `--config.<name>=<value>`, e.g.

  python -m rstg_jax.main --config=configs/syncmnist.py --workdir=runs/x \
      --config.ablation=space_only --config.rstg.num_iters=2

The config is locked, so a misspelt field fails with ml_collections' "did you mean".
Optional paths are `placeholder(str)`: a field that defaults to a bare None could not be
set from the command line.
"""

from ml_collections import config_dict


def get_config():
  """Returns the default (3-digit SyncMNIST, full RSTG) configuration."""
  config = config_dict.ConfigDict()

  # --- Model (read by rstg_jax.models.create_model) ---------------------------------
  # One of rstg_jax.models.MODEL_NAMES: rstg, mean_lstm, conv_lstm, i3d, nonlocal.
  config.model = 'rstg'
  # One of rstg_jax.models.ABLATIONS; only used by the rstg model. all_temp = Alg. 1.
  config.ablation = 'all_temp'
  # 45 unordered pairs of distinct digits + 1 "no synchronous pair" class.
  config.num_classes = 46
  config.lstm_dim = 512

  config.backbone = config_dict.ConfigDict()
  config.backbone.width = 512  # 3 conv layers, 3x3, `width` filters (paper).
  config.backbone.freeze = False  # True: backbone params get no updates.
  # > 0: pretrain the backbone on single-digit classification first (paper: "pre-trained
  # to classify a digit randomly placed in a frame"); cached in workdir/backbone.npz.
  config.backbone.pretrain_steps = 0
  config.backbone.pretrain_batch_size = 64
  config.backbone.pretrain_lr = 1e-3

  config.rstg = config_dict.ConfigDict()
  config.rstg.dim = 512
  config.rstg.num_iters = 3
  config.rstg.scales = (1, 2, 3)
  config.rstg.gather = 'attention'
  config.rstg.adjacency = 'sparse'
  config.rstg.layer_norm = False
  config.rstg.scalewise = False

  # --- Data ---------------------------------------------------------------------------
  config.data = config_dict.ConfigDict()
  config.data.name = 'syncmnist'
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
  # Val videos evaluated during training (indices 0..val_size-1 of the val split, made
  # from the last 10k MNIST training digits): plateau, best checkpoint, printed numbers.
  config.data.val_size = 10_000

  # --- Training -----------------------------------------------------------------------
  config.seed = 0  # parameter init, training order, dropout.
  config.batch_size = 32  # global, over all devices and hosts.
  config.num_epochs = 10.0  # epochs of `data.train_size` videos ...
  config.num_train_steps = -1  # ... unless this is > 0.
  config.init_from = config_dict.placeholder(str)  # workdir or checkpoint to start from.

  config.optimizer = 'sgd'  # 'sgd' (Nesterov momentum) or 'adam'.
  config.learning_rate = 1e-4
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0  # 0: no clipping.
  config.lr_schedule = 'constant'  # 'constant' or 'cosine' (to 0 at the last step).
  config.warmup_steps = 0

  # Learning rate divided by 10 when the val metric stops improving (paper).
  config.plateau = config_dict.ConfigDict()
  config.plateau.enabled = True
  config.plateau.metric = 'top1'  # 'top1' (higher is better) or 'loss' (lower).
  config.plateau.factor = 0.1
  config.plateau.patience = 3  # evaluations without improvement before a reduction.
  config.plateau.min_delta = 1e-3  # an improvement smaller than this does not count.
  config.plateau.min_scale = 1e-3  # at most three reductions of 10x.

  # --- Evaluation, logging, checkpoints -----------------------------------------------
  # SyncMNIST test videos (indices 0..eval_size-1 of the test split), evaluated once at
  # the end of training (checkpoint chosen on val) and by rstg_jax.evaluate. SSv1: the
  # validation videos evaluated during training.
  config.eval_size = 10_000
  config.eval_batch_size = 100
  config.eval_every = 2_000  # steps; also evaluated at the last step.
  config.log_every = 50
  config.checkpoint_every = 1_000  # also saved at every evaluation and the last step.
  config.keep_checkpoints = 3  # the latest N are kept, plus the best by val top-1.
  config.progress_bar = True

  return config
