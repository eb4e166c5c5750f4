r"""Quick 3SyncMNIST run for 2 CPU cores: small RSTG on a frozen motion-aware backbone.

Command (the README's main command; the protocols: README, "Protocols"):

  python -m rstg_jax.main --config=configs/syncmnist_quick.py --workdir=runs/quick
  python -m rstg_jax.main --config=configs/syncmnist_quick.py:paper --workdir=runs/quick_paper
  python -m rstg_jax.evaluate --workdir=runs/quick --checkpoint=best

Recipe, protocol 'motion_backbone' (':paper': a one-frame backbone pre-trained on single
digits' class only, and frame differences at the nodes, rstg.frame_diff; the rest
unchanged): a 32-wide backbone that sees each frame with the one before it, pre-trained
1,000 steps on single digits' class, then 1,000 on their class and step between the two
frames, then frozen; all-temp RSTG without positional maps, every node attending to
every other (full adjacency), K = 1, D = 64, LayerNorm in the space stage; Adam 2e-3
with warmup, cosine decay and clipping; batch 32; val (2,000 videos) every 1,000 steps,
the whole test set once at the end. Why each choice, and the trials behind it:
docs/syncmnist_cpu.md; where it departs from the paper: docs/departures.md.

Budget: <= 30 minutes on 2 CPU cores (chance is 2%; the digit oracle, which knows the
three digits but not their motion, gets 32.6%).
Expected runtime: 21 min 56 s on the idle 2-core machine (fresh clone at caf396d);
48 min 18 s, with the same result, on a slower one (f1ca7fe; README, "Results").
Expected result: 70.8% test top-1 (top-5 91.4) on all 10,000 test videos, chosen on val
(step 12,000, val 72.2), seed 0; 70.7 with --config.seed=1. With the scene stage
(':privileged', --config.num_train_steps=7500): 74.6% in 27 min 52 s. ':paper': 45.0%
(step 13,000, val 46.6) in 44 min 39 s on a slower machine (635536d); 58.5% and 48.7%
with --config.seed=1 and 2 (seed 2: 24 min 38 s on a faster one, ce3d5fe); before
rstg.frame_diff 40.9% (40 min 46 s, slower machine) and 43.6% (20 min 12 s, faster).
"""

from configs import syncmnist_base


def get_config(preset=None):
  """The quick recipe; `preset`: one of PRESETS (None: 'motion', no privileged label)."""
  config = syncmnist_base.get_config()
  config.data.num_digits = 3
  config.ablation = 'all_temp'  # positional maps learned slower here (docstring)

  config.backbone.width = 32
  syncmnist_base.motion_backbone(config)  # frame pairs; the digit, then its step
  config.backbone.pretrain.steps.update(dict(digit=1_000, motion=1_000, scene=1_000))
  config.backbone.pretrain.batch_size = 64
  config.backbone.pretrain.lr = 5e-3
  config.backbone.freeze = True
  config.rstg.dim = 64
  config.rstg.layer_norm = True
  config.rstg.num_iters = 1
  config.rstg.adjacency = 'full'  # two synchronous digits can be far apart
  config.baseline.lstm_dim = 64

  config.optim.optimizer = 'adam'
  config.optim.learning_rate = 2e-3
  config.optim.lr_schedule = 'cosine'
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 1.0
  config.optim.plateau.enabled = False  # the cosine schedule already decays the lr.

  config.batch_size = 32
  config.num_train_steps = 13_000  # ~11 steps/s with the dense space stage: <= 30 min
  config.data.val_size = 2_000  # evaluated every 1,000 steps and at the end
  config.eval.size = 10_000  # the whole test set, once at the end
  config.eval.every = 1_000
  config.checkpoint_every = 1_000
  config.log_every = 25
  return syncmnist_base.with_preset(config, preset, PRESETS, 'syncmnist_quick')


# --- Protocol presets: --config=configs/syncmnist_quick.py:NAME --------------------------


def paper(config):
  """'paper': a one-frame backbone pre-trained on single digits' class only; the graph,
  optimizer and budget as above; each node also gets its features' change since the
  frame before (`rstg.frame_diff`, not in the paper: docs/departures.md)."""
  syncmnist_base.paper_backbone(config)
  config.rstg.frame_diff = True


PRESETS = {'motion': syncmnist_base.motion_backbone,  # the default
           'paper': paper,
           'privileged': syncmnist_base.privileged_backbone}  # + the 'scene' stage
