r"""Quick 3SyncMNIST run for a laptop: small RSTG on a frozen pretrained backbone, Adam.

Command (the README's main command):

  python -m rstg_jax.main --config=configs/syncmnist_quick.py --workdir=runs/quick
  python -m rstg_jax.evaluate --config=configs/syncmnist_quick.py --workdir=runs/quick

Budget: 2 CPU cores, <= 30 minutes, >= 40% top-1 on 2,000 test videos (3 digits; chance is
about 2%). What makes it fit: a 64-filter backbone (512 in the paper) pretrained for a few
hundred steps on single digits and then frozen, node and LSTM dims of 128, Adam with warmup
and cosine decay instead of SGD at 1e-4.

Expected runtime: TBD (full run not measured yet; the lead tunes this config). Measured
pieces, 2 CPU cores shared with 4 other jobs (load ~7): 12-15 videos/s in training
(~2.3 s/step at batch 32, so 1,500 steps ~ 55 min there), backbone pretraining ~2 s/step;
an idle 2-core machine should be several times faster, but may still need fewer steps.
Expected result: TBD (not measured yet; target >= 40% top-1 on the 2,000 test videos).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.num_digits = 3

  config.backbone.width = 64
  config.backbone.pretrain_steps = 300
  config.backbone.pretrain_batch_size = 64
  config.backbone.pretrain_lr = 1e-3
  config.backbone.freeze = True
  config.rstg.dim = 128
  config.lstm_dim = 128

  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.lr_schedule = 'cosine'
  config.warmup_steps = 100
  config.grad_clip_norm = 1.0
  config.plateau.enabled = False  # the cosine schedule already decays the lr.

  config.batch_size = 32
  config.num_train_steps = 1_500
  config.eval_size = 2_000
  config.eval_every = 500
  config.checkpoint_every = 250
  config.log_every = 25
  return config
