r"""Quick 3SyncMNIST run for a laptop: small RSTG on a frozen pretrained backbone, Adam.

Command (the README's main command):

  python -m rstg_jax.main --config=configs/syncmnist_quick.py --workdir=runs/quick
  python -m rstg_jax.evaluate --workdir=runs/quick --checkpoint=best

Budget: 2 CPU cores, <= 30 minutes (chance is 2%; the digit oracle, which knows the three
digits but not their motion, gets 32.6%).

What makes it fit, and why (tuned on 2 CPU cores):
  - the paper's model, positional all-temp RSTG (scales 1x1 + 2x2 + 3x3, attention), but
    small: node and LSTM size 64, backbone width 32 (512 in the paper), and K = 1
    (time stage, space stage, final time stage) instead of 3. K = 1 learns faster per
    video in this budget (top-1 at step 2,500: 36.7% for K = 1, 34.5% for K = 2, 34.2%
    for K = 3, in cosine schedules of 8,000, 6,500 and 5,000 steps) and a step runs 2x
    faster than at K = 3; a step at width 64 / D 128 ran 3x slower and learned no faster
    per step;
  - the backbone is pretrained on single digits for 1,000 steps at lr 5e-3 (95% single-digit
    accuracy) and then frozen: 500 steps (89%) learned the pair task about 1.5x slower,
    and fine-tuning it cut throughput 5-10x;
  - LayerNorm in the space stage; Adam at 2e-3 with warmup and cosine decay (4e-3
    diverged slowly, 1e-3 learned slower); batch 16 learned no faster per video;
  - 9,000 steps of 32 videos (288k fresh videos; the paper's epoch is 600k).

Expected runtime: 22 min 8 s on the idle 2-core machine (backbone pre-training 2 min,
then ~8 steps/s; `python -m rstg_jax.bench train` gives 275 videos/s for the step).
Expected result: 37.3% top-1, 88.5% top-5 on all 10,000 clean test videos with the
checkpoint chosen on val (step 7,500, val top-1 39.5% on 2,000 val videos; val at steps
1,500 / 3,000 / 4,500 / 6,000 / 7,500 / 9,000: 31.3 / 33.1 / 35.0 / 38.2 / 39.5 / 39.2);
the digit oracle gets 32.6%. An earlier run of the same config on a shared machine gave
38.6%. The tuning runs in the list above were measured on the previous data (the
authors' generator, evaluated on test), where this config reached 42.3%. The full
configs are expected to reach the paper's 98.9% on the authors' generator (not run here).
The full recipe is configs/syncmnist.py.

Trials on the clean data (issue 12: make the model learn the motion, not only the
digits). Each is this config with the changes named, for the steps named (the cosine
schedule spans them), val top-1 (%) on 2,000 val videos at the steps given; run two or
three at a time on the 2 cores, so only steps, not minutes, compare. The digit oracle
gets 32.6. Command: `python -m rstg_jax.main --config=configs/syncmnist_quick.py
--workdir=DIR --config.num_train_steps=N --config.eval.every=1000 --config.eval.size=100
CHANGES` (eval.size=100 only shortens the final test, which was not looked at).

  changes                                           steps  val top-1 at 1k / 2k / 3k / 4k / 5k
  (none)                                            2,000  30.4 / 32.4
  backbone.pretrain_target=digit_position           2,000  29.6 / 31.6
  rstg.num_iters=2                                  2,000  29.1 / (stopped; 1.5x slower)
  num_iters=2 + digit_position                      2,000  28.3 / (stopped)
  (none)                                            5,000  29.0 / 31.6 / 35.4 / 35.5 / 36.3
  backbone.pretrain_target=digit_position           5,000  29.2 / 30.0 / 33.5 / 35.0 / 35.1
  num_iters=2 + digit_position                      5,000  28.7 / (stopped)
  backbone.coords=True + digit_position             5,000  13.0 / (stopped)
  rstg.num_iters=2, run alone, eval.size 10,000      6,000  at 1.5k / 3k / 4.5k / 6k: 31.4 /
    (the ~20 minutes of training of this config's          33.4 / 36.8 / 38.1 (this config at
    9,000 steps)                                           its 9,000 steps: best 39.5)
  batch_size=128 (throughput only)                     --  no more videos/s than 32
  (none)                                            3,000  30.3 / 32.6 / 34.0
  + per-node pixel mass and centroid (prototype,    3,000  31.0 / 33.4 / 33.9
    3 extra node channels; code not kept)
  + per-node first moments of the features (x and   3,000  28.6 / 32.0 / 33.1
    y weighted, 64 extra channels; not kept)
  rstg.adjacency=full (every node attends to all)   3,000  30.6 / 32.4 / 32.7
  rstg.dim=128                                      3,000  30.0 / (stopped; 1.7x slower)
  data.num_digits=2 data.no_pair_prob=0.5 (the      2,000  at 0.5k / 1k / 1.5k / 2k: 47.9 /
    two-digit motion test: the digits say nothing          48.6 / 53.4 / 54.7 (the digit
    about the answer)                                      oracle gets 50)
  3 digits from that two-digit model (curriculum;   3,000  30.9 / 31.9 / (stopped)
    init_from.path=its workdir)

What did not work, and why we think so:
  - Position-aware pre-training (`digit_position`: the digit's row and column classified
    from the unpooled 6x6 map besides its class) gives features that locate a digit to
    0.41 px (92.5% digit accuracy), but learns the pair task no faster: the nodes'
    area pooling mixes the cells whose sub-cell positions these features encode.
  - Coordinate channels (`backbone.coords`, position heads on pooled features) locate
    a digit to 0.65 px from pooled features, but in 1,000 pre-training steps the digit
    accuracy fell to 73%, and the pair task started far slower (13.0 at step 1,000).
  - K = 2 (two hops, so that two distant nodes can be compared through a third) runs
    1.5x slower per step; per video it is about level with K = 1 (33.4 vs 33.1 val at
    96k videos, 36.8 vs 35.0 at 144k), so in the same 20 minutes of training it ends
    lower (38.1 val after 6,000 steps against 39.5; test 36.3 against 37.3).
  - Giving the nodes their digits' positions directly (pixel mass and centroid per
    node), letting every node attend to every other (full adjacency), a 2x wider state
    or a two-digit curriculum all follow the same curve as this config, within a point
    at every step: neither the features' position information, nor the graph's reach,
    nor the state size is what holds the learning back.
  - The two-digit motion test (2 digits, "none" half of the time, so only motion
    decides) isolates the motion: after 2,000 steps (64k videos) the model is at 54.7%
    against the oracle's 50. Comparing motions is learned slowly even when it is the
    whole task, so a curriculum that teaches it first did not help.
  - Every variant sits at or below the digit oracle for the first 2,000 steps and
    climbs slowly after: in this budget the model learns the digits first and the
    motion only a little (about +4 points over the oracle after 5,000 steps).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.num_digits = 3
  config.ablation = 'positional'

  config.backbone.width = 32
  config.backbone.pretrain_steps = 1_000
  config.backbone.pretrain_batch_size = 64
  config.backbone.pretrain_lr = 5e-3
  config.backbone.freeze = True
  config.rstg.dim = 64
  config.rstg.layer_norm = True
  config.rstg.num_iters = 1
  config.baseline.lstm_dim = 64

  config.optim.optimizer = 'adam'
  config.optim.learning_rate = 2e-3
  config.optim.lr_schedule = 'cosine'
  config.optim.warmup_steps = 100
  config.optim.grad_clip_norm = 1.0
  config.optim.plateau.enabled = False  # the cosine schedule already decays the lr.

  config.batch_size = 32
  config.num_train_steps = 9_000
  config.data.val_size = 2_000  # evaluated every 1,500 steps (selection, learning curve)
  config.eval.size = 10_000  # the whole test set, once at the end
  config.eval.every = 1_500
  config.checkpoint_every = 1_000
  config.log_every = 25
  return config
