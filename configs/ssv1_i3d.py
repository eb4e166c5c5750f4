r"""Something-Something-v1: I3D ResNet-50 + RSTG-to-map after res3 and res4 (paper's best).

Command (convert the Kinetics-400 I3D-R50 checkpoint first, see rstg_jax/convert.py):

  python -m rstg_jax.convert --src i3d_baseline_8x8_IN_pretrain_400k.pkl \
      --dst kinetics_i3d_r50.npz --arch i3d_r50
  python -m rstg_jax.main --config=configs/ssv1_i3d.py --workdir=runs/ssv1_i3d \
      --config.data.root=PATH --config.init_from.path=kinetics_i3d_r50.npz
  python -m rstg_jax.evaluate --workdir=runs/ssv1_i3d --checkpoint=best   # dense, 22 views

PATH holds 20bn-something-something-v1/ and the something-something-v1-*.csv files (a
manual download, see rstg_jax/ssv1/reader.py); the first run converts it into TFDS shards
under `data.tfds_dir` (default $TFDS_DATA_DIR or ~/tensorflow_datasets), later runs read
only the shards. Shards record their copy: another or a changed copy stops in one line
(give it its own data.tfds_dir, or data.rebuild=True); num_classes comes from the labels.

Recipe (paper Sec. 3.2 and App. B; where it is silent, the authors' config): 32 frames
sampled uniformly, short side 256, random 224 crop, no flip, (x - 114.75) / 57.375;
I3D-R50, res5 stride 1, frozen BatchNorm, dropout 0.3, 174 classes; the Caffe2 stem
('caffe2': pool1 unpadded, as the Kinetics weights were trained; 'pyslowfast' for
PySlowFast weights); graphs of 3 scales, D = 512, K = 3, all-temp, LayerNorm, per-scale
updates, each block starting as identity (x + s * LN(graph(x)), s = 0); SGD Nesterov 0.9,
batch 8 at lr 4e-4 (the authors: 2 clips at 1e-4, `--config.batch_size=2
--config.optim.learning_rate=1e-4`), /10 when the centre-crop top-1 on 2,048 validation
videos stops improving, 20 epochs. Each departure from the paper and the option that
restores it: docs/departures.md.

Paper (Tables 2, 3): 49.2 top-1, 78.8 top-5 on validation, dense (11 crops x 2 clips).
Expected runtime: not measured yet (needs a GPU; `python -m rstg_jax.bench ssv1` shows a
CPU step is far too slow to be useful). Expected result: not measured yet.
"""

from ml_collections import config_dict

from configs import common


def get_config():
  config = common.get_config()

  # --- Model (read by rstg_jax.ssv1.models.create_ssv1_model) ------------------------
  config.model = 'resnet3d'  # ResNet3D with RSTG blocks at `rstg.placement`.
  # RSTG schedule (rstg_jax.model.ABLATIONS).
  config.ablation = 'all_temp'
  config.head = config_dict.ConfigDict()
  config.head.dropout_rate = 0.3  # before the classifier (authors).

  config.backbone = config_dict.ConfigDict()
  config.backbone.arch = 'i3d'  # 'i3d' or 'c2d'.
  config.backbone.blocks = (3, 4, 6, 3)  # ResNet-50.
  config.backbone.base_width = 64
  config.backbone.res5_stride = 1  # authors: res5 stays 14x14 (Kinetics models use 2).
  # Frozen BN: running statistics in training too, scale/bias not updated (batches of a
  # few clips give useless batch statistics).
  config.backbone.bn_frozen = True
  config.backbone.nonlocal_blocks = False  # True: NL-I3D's 5 non-local blocks.
  # pool1 padding: 'caffe2' (none, as the Kinetics checkpoints were trained) or
  # 'pyslowfast' (1, Table 4's 56x56 res2); see the docstring.
  config.backbone.stem = 'caffe2'

  config.rstg = config_dict.ConfigDict()
  # One of res2, res3, res4, res3_4 (RSTG-to-map), vec (RSTG-to-vec on res5), none.
  config.rstg.placement = 'res3_4'
  config.rstg.scales = (1, 2, 3)
  config.rstg.dim = 512
  config.rstg.num_iters = 3
  config.rstg.gather = 'attention'
  config.rstg.adjacency = 'sparse'
  config.rstg.layer_norm = True
  config.rstg.scalewise = True

  # --- Data ---------------------------------------------------------------------------
  config.data.name = 'ssv1'
  # 0: the number of classes in the labels file (174 in SSv1); a value given here is
  # checked against it.
  config.data.num_classes = 0
  # ROOT with 20bn-something-something-v1/ and the csv files (manual download).
  config.data.root = config_dict.placeholder(str)
  # Where the TFDS shards are written / read (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data.tfds_dir = config_dict.placeholder(str)
  # Shards in tfds_dir that were converted from another copy than data.root (or from an
  # older state of it) stop the run; True replaces them with a conversion of data.root.
  config.data.rebuild = False
  config.data.num_frames = 32
  config.data.crop_size = 224
  config.data.short_side = 256
  config.data.train_size = 86_017  # only used to turn num_epochs into steps.

  # --- Training -----------------------------------------------------------------------
  # init_from.path: a converted Kinetics .npz (or a workdir). The graph blocks and the
  # head always keep their init; init_from.dont_load adds more patterns.
  config.batch_size = 8
  config.num_epochs = 20.0
  config.optim.optimizer = 'sgd'
  config.optim.learning_rate = 4e-4
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 0.0
  config.optim.lr_schedule = 'constant'
  config.optim.plateau.enabled = True
  config.optim.plateau.patience = 3

  # --- Evaluation, logging, checkpoints -----------------------------------------------
  config.eval.split = 'validation'
  config.eval.size = 2_048  # the first N videos of eval.split during training ...
  config.eval.periodic_views = 'center'  # ... one centre crop each (cheap).
  # The evaluate command: 'dense' = 11 crops of 256x256 x 2 temporal samplings per video,
  # on the whole eval.split.
  config.eval.views = 'dense'
  config.eval.batch_size = 8
  config.eval.every = 5_000
  config.log_every = 50
  config.checkpoint_every = 1_000
  return config
