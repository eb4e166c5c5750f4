"""The Something-Something-v1 task: what the trainer gets for `config.data.name == 'ssv1'`.

Model: a ResNet-50 (C2D or I3D) with RSTG blocks (`rstg_jax.ssv1.models`). Data: the
TFDS shards that the first run converts from the raw download, read with tf.data
(`rstg_jax.ssv1.pipeline`). Pre-trained weights: a converted Kinetics checkpoint
(`init_from.path` ending in .npz, from `python -m rstg_jax.convert`; the graph blocks and
the new head keep their init), or another run. Frozen: the backbone's BatchNorm scale
and bias when `backbone.bn_frozen`. Evaluation: one centre crop of the first
`eval.size` videos during training; the evaluate command runs `eval.views` ('dense':
2 temporal samplings x 11 crops per video, logits averaged) on all of `eval.split`.

TensorFlow stays inside this package and is imported only when the data set is built;
`check_data` and everything else here need numpy only.
"""

import glob
import os

import jax
import numpy as np

from rstg_jax import errors
from rstg_jax.ssv1 import models
from rstg_jax.ssv1 import quiet
from rstg_jax.ssv1 import reader
from rstg_jax.train import config_checks
from rstg_jax.train import evaluators
from rstg_jax.train import init_from
from rstg_jax.train import task as task_lib

VIEWS = ('center', 'dense')
# Model variables that a Kinetics checkpoint cannot hold: the inserted graph blocks (and
# the new head, `convert.DEFAULT_DONT_LOAD`).
GRAPH_DONT_LOAD = ('(params|batch_stats)/res[2-5]_graph/.*',)


def tfds_dir(config) -> str:
  """Where the converted TFDS shards live: config.data.tfds_dir, else TFDS's default."""
  d = config.data.tfds_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.expanduser(d)


class SSv1Task(task_lib.Task):
  """See the module docstring."""

  name = 'ssv1'

  def config_errors(self, config) -> list[str]:
    problems = models.config_errors(config) + data_config_errors(config)
    for field in ('periodic_views', 'views'):
      if config.eval[field] not in VIEWS:
        problems.append(f'Unknown eval.{field} {config.eval[field]!r}. Valid: '
                        f'{", ".join(VIEWS)}.')
    return problems

  def check_data(self, config) -> None:
    """Raises a `DataError` at once if no usable SSv1 copy is reachable, and a
    `ConfigError` if `data.num_classes` (when given, not 0) differs from its labels file.

    Usable: TFDS shards already prepared in `tfds_dir(config)` and, when
    `config.data.root` is given, converted from that copy as it is now (else they are
    replaced only with `data.rebuild`; see `tfds_builder.load_builder`); or a raw copy at
    `config.data.root` (checked for its frame folder and label files) that the first run
    converts. Only file-system checks: no TensorFlow import, nothing compiled.
    """
    shards = tfds_dir(config)
    # TFDS writes dataset_info.json last, when every shard of every split is complete.
    prepared = sorted(glob.glob(os.path.join(shards, 'something_something_v1', '*',
                                             'dataset_info.json')))
    root = config.data.root
    if prepared:
      version_dir = os.path.dirname(prepared[-1])
      if not root:  # the shards as they are
        names = _shard_class_names(version_dir)
        return _check_num_classes(config, names, f'the shards in {version_dir}')
      reader.check_root(root)
      problem = reader.shards_source_problem(version_dir, root)
      if problem and not config.data.get('rebuild', False):
        raise reader.SSv1DataError(problem)
    where = (f'No converted copy in config.data.tfds_dir={shards!r} either (set '
             f'--config.data.tfds_dir=DIR where the shards are, or where the first run '
             f'should write them).')
    try:
      root = reader.check_root(root)
      names = reader.read_class_names(root)
      for split in reader.REQUIRED_SPLITS:
        path = os.path.join(root, reader.SPLIT_FILES[split])
        if not os.path.isfile(path):
          raise reader.SSv1DataError(
              f'Label file {path!r} is missing (expected in config.data.root={root!r}). '
              f'{reader.DOWNLOAD_HINT}')
        reader.read_split(root, split, names)  # encoding, class names, ids: seconds
    except reader.SSv1DataError as e:
      raise reader.SSv1DataError(f'{e}' if prepared else f'{e} {where}') from None
    _check_num_classes(config, names, f'the labels file of {root}')

  def create_model(self, config):
    return models.create_ssv1_model(config)

  def create_dataset(self, config, process_index: int = 0, process_count: int = 1):
    self.check_data(config)  # before TensorFlow is imported: a missing copy fails fast
    quiet.quiet_tensorflow()  # before TensorFlow logs anything
    # pylint: disable=g-import-not-at-top
    from rstg_jax.ssv1 import pipeline
    from rstg_jax.ssv1 import tfds_builder
    d = config.data
    return pipeline.SSv1Dataset(
        tfds_builder.load_builder(tfds_dir(config), d.root, rebuild=d.get('rebuild', False)),
        num_frames=d.num_frames,
        crop_size=d.crop_size, short_side=d.short_side, seed=config.seed,
        batch_size=config.batch_size, eval_batch_size=config.eval.batch_size,
        eval_split=config.eval.split, eval_size=config.eval.size,
        periodic_views=config.eval.periodic_views, process_index=process_index,
        process_count=process_count)

  def frozen_mask(self, config, params):
    if not config.backbone.bn_frozen:
      return None
    # Frozen BatchNorm gets no gradient, but weight decay or momentum would still move
    # its scale and bias: they get no update at all.
    from rstg_jax.ssv1.resnet3d import frozen_bn_mask  # pylint: disable=g-import-not-at-top
    return frozen_bn_mask(params)

  def load_pretrained(self, config, workdir: str, variables: dict, say) -> dict:
    path = config.init_from.path
    if path and path.endswith('.npz'):
      return load_converted(config, variables, say)
    return super().load_pretrained(config, workdir, variables, say)

  def describe_model(self, config, params) -> str:
    return models.describe(config, params)

  def explainer(self, config, dataset):
    from rstg_jax.ssv1 import explain_figures  # pylint: disable=g-import-not-at-top
    return explain_figures.SSv1Explainer(config, dataset)

  def evaluator(self, config, dataset, final: bool = False):
    if not final:
      return evaluators.SingleView()
    split, views = config.eval.split, config.eval.views
    return evaluators.MultiView(
        batches=lambda: dataset.view_batches(views, split=split),
        num_videos=dataset.num_videos(split), video_ids=lambda: dataset.video_ids(split),
        info={'eval_mode': views, 'split': split})


def _shard_class_names(version_dir: str) -> list[str]:
  """The class names TFDS stored with the shards (label.labels.txt), [] if unreadable."""
  try:
    with open(os.path.join(version_dir, 'label.labels.txt'), encoding='utf-8') as f:
      return [line.rstrip('\n') for line in f if line.strip()]
  except OSError:
    return []


def _check_num_classes(config, names, where: str) -> None:
  """ConfigError if `data.num_classes` is given (not 0) and differs from len(names)."""
  n = config.data.num_classes
  if names and n and n != len(names):
    raise errors.ConfigError(
        f'data.num_classes={n}, but there are {len(names)} classes in {where}: leave it '
        f'at 0 (the labels file decides) or set --config.data.num_classes={len(names)}.')


def data_config_errors(config) -> list[str]:
  """Every data field the input pipeline would reject: the clip's frames and crop sizes,
  and the evaluated split (a split name, optionally with a TFDS slice)."""
  d = config.data
  problems = config_checks.positive_errors(
      # pool2 halves the frames: one frame would leave none.
      ('data.num_frames', d.num_frames, 'an integer >= 2 (frames per clip)',
       dict(integer=True)),
      ('data.crop_size', d.crop_size, 'a positive integer', dict(integer=True)),
      ('data.short_side', d.short_side, 'a positive integer', dict(integer=True)))
  if not problems:
    if d.num_frames < 2:
      problems.append(f'data.num_frames={d.num_frames} must be an integer >= 2 (frames '
                      'per clip; the I3D pool halves them).')
    if d.crop_size > d.short_side:
      problems.append(f'data.crop_size={d.crop_size} must be at most data.short_side='
                      f'{d.short_side} (crops are cut from frames of that short side).')
  split = str(config.eval.split).split('[', 1)[0]
  if split not in reader.SPLIT_FILES:
    problems.append(f'Unknown eval.split {config.eval.split!r}. Valid: '
                    f'{", ".join(reader.SPLIT_FILES)} (a TFDS slice such as '
                    "'validation[:500]' too).")
  return problems


def load_converted(config, variables: dict, say) -> dict:
  """Variables filled from a converted Kinetics checkpoint (`rstg_jax.convert` .npz).

  Strict (`rstg_jax.train.init_from.merge_params`): every checkpoint tensor is used or
  skipped (the Kinetics head by default) and every model variable is loaded or matched
  by a dont_load pattern (the graph blocks, the head, `config.init_from.dont_load`);
  shapes must agree. BatchNorm statistics come from the checkpoint too: with frozen BN
  they are the model.
  """
  from rstg_jax.ssv1 import convert  # pylint: disable=g-import-not-at-top
  path = config.init_from.path
  if not os.path.isfile(path):
    raise errors.CheckpointError(
        f'config.init_from.path={path!r}: no such file. Convert a Kinetics checkpoint '
        f'first: python -m rstg_jax.convert --src MODEL.pkl --dst {path} '
        '--arch i3d_r50|c2d_r50')
  dont_load = (convert.DEFAULT_DONT_LOAD + GRAPH_DONT_LOAD
               + tuple(config.init_from.dont_load))
  try:
    loaded = convert.load_converted(path)
  except OSError as e:
    raise errors.CheckpointError(f'config.init_from.path={path!r}: cannot read the '
                                 f'converted checkpoint ({e}).') from None
  meta = loaded[2]
  arch, want = meta.get('arch'), config.backbone.arch
  if arch and arch != want:
    raise errors.ConfigError(f'config.init_from.path={path!r} holds a {arch} network but '
                             f'config.backbone.arch={want!r}; convert the {want} checkpoint '
                             f'(--arch {want}_r50) or set --config.backbone.arch={arch}.')
  host = jax.tree.map(np.asarray, jax.device_get(variables))
  merged, report = convert.merge_pretrained(host, loaded, dont_load=dont_load)
  source = os.path.basename(str(meta.get('source', '?')))
  say(init_from.summary(f'init_from {path} ({meta.get("arch", "?")}, source {source})',
                        report))
  # pool1's padding is no tensor, so the merge cannot catch a stem mismatch: report it.
  line, differs = convert.stem_report(meta, config.backbone.stem)
  say(f'{"WARNING: " if differs else ""}init_from {path}: {line}')
  return merged


TASK = SSv1Task()
