"""Something-Something-v1 as a TFDS data set, and the tf.data input pipeline that reads it.

This is the only place in the package that imports TensorFlow: nothing imports this module
at import time (the trainer imports it only when `config.data.name` asks for SSv1), so
`import rstg_jax` and the SyncMNIST path stay free of TF. Install `tensorflow-cpu`, not
`tensorflow`: the CPU build never reserves GPU memory that JAX needs.

Two steps:

1. Convert once (`prepare`, or `python -m rstg_jax.data.ssv1_tfds --root=ROOT
   --data_dir=DIR`): the builder `something_something_v1` reads ROOT (see
   `rstg_jax.data.ssv1` for the layout and the checks), and writes TFRecord shards under
   DIR/something_something_v1/1.0.0/ with, per video: 'frames' (the JPEG bytes of every
   frame, not decoded pixels), 'label' (ClassLabel in labels-file order; -1 in test),
   'video_id', 'num_frames', 'height', 'width'. Skipped videos and repaired frames are
   listed in DIR/something_something_v1/1.0.0/ssv1_report.json (format in
   `_new_report`) and summarised in one log line.

2. Read (`make_dataset`): decode only the sampled frames, resize the short side, crop,
   normalise, batch. See `make_dataset` for the sampling and the output format.
"""

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import sys
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rstg_jax.ssv1 import reader as ssv1

NAME = 'something_something_v1'
REPORT_FILE = 'ssv1_report.json'
# The authors' normalisation (Non-local / Caffe2 convention): same mean and std per channel.
MEAN, STD = 114.75, 57.375

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Something-Something-v1 cannot be downloaded automatically. Register and download it from
the Qualcomm AI datasets page (it was 20bn.com until 2021; look for
"20BN-SOMETHING-SOMETHING" v1), join and extract the archive parts, and arrange ROOT as:

  ROOT/{ssv1.FRAMES_DIR}/<video id>/00001.jpg ...
  ROOT/{ssv1.LABELS_FILE}
  ROOT/{ssv1.SPLIT_FILES['train']}
  ROOT/{ssv1.SPLIT_FILES['validation']}
  ROOT/{ssv1.SPLIT_FILES['test']}   (optional)

Then set config.data.root=ROOT (it becomes the TFDS manual_dir), or run
  python -m rstg_jax.data.ssv1_tfds --root=ROOT --data_dir=DIR
"""

_CITATION = """\
@inproceedings{goyal2017something,
  title={The "something something" video database for learning and evaluating visual
         common sense},
  author={Goyal, Raghav and others},
  booktitle={ICCV},
  year={2017}
}"""


def _new_report(root: str) -> dict:
  """The skip report written beside the shards.

  Keys:
    root: the ROOT converted; created: UTC time.
    splits: split -> {'listed': ids in the csv, 'written': videos stored,
      'skipped': videos dropped, 'repaired_frames': frames fixed,
      'frames_per_video': {'min', 'max', 'mean'} over the stored videos}.
    skipped: [{'split', 'id', 'reason'}], reason in 'missing_folder', 'empty_folder',
      'no_decodable_frame'.
    repaired_frames: [{'split', 'id', 'frame', 'problem', 'action'}].
  """
  return {'root': root,
          'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
          'splits': {}, 'skipped': [], 'repaired_frames': []}


class SomethingSomethingV1(tfds.core.GeneratorBasedBuilder):
  """Something-Something-v1, frames stored as JPEG bytes, checked at conversion."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Frames as JPEG bytes; bad videos skipped, bad frames repaired.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, num_workers: int = 8, **kwargs):
    """Args: num_workers: threads that read and check videos during conversion (the
    work is file reads and Pillow decodes, which release the GIL); kwargs: TFDS's."""
    self._num_workers = max(1, num_workers)
    self._report = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Something-Something-v1: 108k short videos of 174 hand-object '
                     'actions, as JPEG frames (about 100 px high, 12 fps).'),
        features=tfds.features.FeaturesDict({
            'video_id': tfds.features.Text(),
            # Names come from the labels file at conversion time (file order), and are
            # restored from the prepared directory when reading.
            'label': tfds.features.ClassLabel(),
            'num_frames': np.int32,
            'height': np.int32,
            'width': np.int32,
            'frames': tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')),
        }),
        # The original page; the data set has since moved (see MANUAL_DOWNLOAD_INSTRUCTIONS).
        homepage='https://20bn.com/datasets/something-something/v1',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:
      # TFDS says "does not exist or is empty"; ours also names the config field.
      manual_dir = dl_manager._manual_dir  # pylint: disable=protected-access
    root = ssv1.check_root(manual_dir)
    class_names = ssv1.read_class_names(root)
    self.info.features['label'].names = list(class_names)
    # Every split file is parsed (class names checked) before any video is converted, so
    # a typo in a csv fails in a second, not after hours of conversion.
    rows = {split: ssv1.read_split(root, split, class_names) for split in ssv1.SPLIT_FILES}
    if not rows['test']:
      logging.warning('SSv1: no %s in %s; preparing train and validation only.',
                      ssv1.SPLIT_FILES['test'], root)
    self._report = _new_report(root)
    return {split: self._generate_examples(root, split, r)
            for split, r in rows.items() if r}

  def _generate_examples(self, root, split, rows):
    stats = {'listed': len(rows), 'written': 0, 'skipped': 0, 'repaired_frames': 0}
    lengths = []
    window = 4 * self._num_workers  # Bounds the videos held in memory at once.
    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      pending = collections.deque()
      rows_iter = iter(rows)

      def fill():
        for video_id, label in rows_iter:
          pending.append(pool.submit(ssv1.load_video, root, video_id, label))
          if len(pending) >= window:
            return

      fill()
      while pending:
        video = pending.popleft().result()
        fill()
        if video.skip_reason:
          stats['skipped'] += 1
          self._report['skipped'].append(
              {'split': split, 'id': video.video_id, 'reason': video.skip_reason})
          continue
        for repair in video.repairs:
          self._report['repaired_frames'].append(
              {'split': split, 'id': video.video_id, **repair})
        stats['repaired_frames'] += len(video.repairs)
        stats['written'] += 1
        lengths.append(len(video.frames))
        yield video.video_id, {
            'video_id': video.video_id, 'label': video.label,
            'num_frames': len(video.frames), 'height': video.height,
            'width': video.width, 'frames': video.frames}
    if lengths:
      stats['frames_per_video'] = {'min': int(min(lengths)), 'max': int(max(lengths)),
                                   'mean': float(np.mean(lengths))}
    self._report['splits'][split] = stats

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is still TFDS's temporary directory here, renamed when all is written,
    # so the report appears only beside a complete data set.
    with open(os.path.join(self.data_dir, REPORT_FILE), 'w') as f:
      json.dump(self._report, f, indent=1)

  def download_and_prepare(self, *args, **kwargs):
    super().download_and_prepare(*args, **kwargs)
    report = read_report(self)
    if report is not None:
      logging.warning(
          'SSv1 prepared in %s: %s; %d videos skipped, %d frames repaired (list: %s).',
          self.data_dir,
          ', '.join(f'{s} {v["written"]}' for s, v in report['splits'].items()),
          len(report['skipped']), len(report['repaired_frames']),
          os.path.join(self.data_dir, REPORT_FILE))


def read_report(builder_or_dir) -> Optional[dict]:
  """The conversion report (see `_new_report`) of a prepared data set, or None.

  Args:
    builder_or_dir: a `SomethingSomethingV1`, or its versioned directory.
  """
  d = getattr(builder_or_dir, 'data_dir', builder_or_dir)
  path = os.path.join(os.fspath(d), REPORT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _default_data_dir(data_dir):
  return os.path.expanduser(data_dir) if data_dir else None  # None: TFDS's default.


def prepare(root, data_dir=None, *, num_workers: int = 8) -> SomethingSomethingV1:
  """Converts ROOT into TFDS shards under data_dir (once; later calls reuse them).

  Args:
    root: the SSv1 root (`config.data.root`).
    data_dir: where TFDS data sets live; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
    num_workers: reader threads.

  Returns:
    The prepared builder (`builder.info.features['label'].names` = class list).

  Raises:
    ssv1.SSv1DataError: ROOT, a label file or a class name is wrong (message says which).
  """
  root = ssv1.check_root(root)
  ssv1.read_class_names(root)  # Fail before TFDS creates any directory.
  builder = SomethingSomethingV1(data_dir=_default_data_dir(data_dir),
                                 num_workers=num_workers)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=root,
      # The data set is on no public bucket; asking would only cost a network timeout.
      try_download_gcs=False))
  return builder


def load_builder(data_dir=None, root=None, **prepare_kwargs) -> SomethingSomethingV1:
  """The prepared builder in data_dir; converts `root` first if it is not prepared yet.

  Raises:
    ssv1.SSv1DataError: not prepared and no root given (the message gives the command).
  """
  builder = SomethingSomethingV1(data_dir=_default_data_dir(data_dir))
  if builder.is_prepared():
    return builder
  if root is None:
    raise ssv1.SSv1DataError(
        f'No prepared Something-Something-v1 in {builder.data_dir}. Set config.data.root '
        f'to the raw data, or convert it first: python -m rstg_jax.data.ssv1_tfds '
        f'--root=ROOT --data_dir={builder.data_dir_root}')
  return prepare(root, data_dir, **prepare_kwargs)


def class_names(builder) -> tuple[str, ...]:
  """Class names in index order (labels-file order), for checkpoint metadata."""
  return tuple(builder.info.features['label'].names)


# ---------------------------------------------------------------------------------------
# The tf.data pipeline.


def segment_indices(num_frames, num_samples: int, offsets):
  """Frame indices that sample `num_samples` frames uniformly over a video.

  The video is cut into `num_samples` equal segments; sample i takes the frame at
  fraction offsets[i] of segment i. A video shorter than num_samples repeats frames.

  Args:
    num_frames: scalar int tensor, the video's length n.
    num_samples: T.
    offsets: float [T] in [0, 1): 0 = start of each segment, 0.5 = its centre.

  Returns:
    int32 [T], non-decreasing, in [0, n-1].
  """
  n = tf.cast(num_frames, tf.float32)
  pos = (tf.range(num_samples, dtype=tf.float32) + offsets) * n / num_samples
  idx = tf.cast(tf.floor(pos), tf.int32)
  return tf.clip_by_value(idx, 0, tf.cast(num_frames, tf.int32) - 1)


def _decode(frames, idx):
  """Decodes only the frames at idx (each distinct frame once): uint8 [len(idx), h, w, 3]."""
  unique, where = tf.unique(idx)
  imgs = tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3), tf.gather(frames, unique),
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return tf.gather(imgs, where)


def _resize_short_side(imgs, short_side: int):
  """Bilinear resize so that min(h, w) == short_side, aspect kept; float32 out."""
  shape = tf.shape(imgs)
  h, w = tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)
  scale = short_side / tf.minimum(h, w)
  nh = tf.maximum(short_side, tf.cast(tf.round(h * scale), tf.int32))
  nw = tf.maximum(short_side, tf.cast(tf.round(w * scale), tf.int32))
  return tf.image.resize(imgs, tf.stack([nh, nw]), method='bilinear')


def _finish(video, normalize: bool):
  if normalize:
    return (tf.cast(video, tf.float32) - MEAN) / STD
  return tf.cast(tf.clip_by_value(tf.round(video), 0, 255), tf.uint8)


def dense_crop_offsets(long_side, crop: int, num_crops: int):
  """Start offsets of num_crops crops spread evenly along a side: first 0, last L-crop."""
  span = tf.cast(long_side - crop, tf.float32)
  if num_crops == 1:
    return tf.cast(tf.round(span / 2)[None], tf.int32)
  k = tf.range(num_crops, dtype=tf.float32)
  return tf.cast(tf.round(k * span / (num_crops - 1)), tf.int32)


def make_dataset(split: str, *, data_dir=None, batch_size: int, num_frames: int = 32,
                 train: bool, crop_size: int = 224, short_side: int = 256,
                 eval_mode: str = 'center', num_spatial_crops: int = 11,
                 shuffle_seed: int = 0, shuffle_buffer: int = 1024,
                 normalize: bool = True, root=None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 num_parallel_calls: int = tf.data.AUTOTUNE, prefetch: int = 2,
                 builder: Optional[SomethingSomethingV1] = None) -> tf.data.Dataset:
  """The SSv1 input pipeline. Iterate with `.as_numpy_iterator()` to feed JAX.

  Sampling: T = num_frames segments of equal length over the whole video (frames repeat
  when the video is shorter than T). Frames are decoded, then resized so the short side is
  `short_side` (aspect kept, bilinear). No horizontal flip anywhere: many SSv1 labels are
  directional ("from left to right").

  train=True: one random offset per segment; one random crop_size x crop_size crop shared
    by all frames of the clip; videos shuffled (files, then a buffer), repeated forever;
    full batches only. Elements: {'video': [B, T, crop, crop, 3], 'label': int32 [B]}.
    Each process reads its own 1/process_count of the split (`tfds.split_for_jax_process`,
    which reads only that part of the files, unlike `ds.shard` that reads all and drops).
    Randomness is a function of (shuffle_seed, process_index, position in the stream).
  train=False, eval_mode='center': the centre frame of each segment, one centre crop.
    Elements: {'video': [B, T, crop, crop, 3], 'label', 'video_index', 'mask'}.
  train=False, eval_mode='dense': 2 temporal samplings (segment starts, and segment
    centres = offset by half a segment) x num_spatial_crops crops of short_side x
    short_side spread evenly along the long side (first at the left/top edge, last at the
    right/bottom edge) = 22 views per video by default, emitted as a flat stream of views:
    {'video': [B, T, short_side, short_side, 3], 'label', 'video_index', 'view_index',
    'mask'}, where view_index = temporal * num_spatial_crops + spatial and a video's views
    are consecutive (they may straddle two batches). Average the logits of the rows with
    equal video_index (and mask 1) to score a video.
  Evaluation reads the split once, in a fixed order; video_index is the video's position
  in that order (the same on every process); each process takes every process_count-th
  video, and the stream is padded with mask-0 rows (label -1, video_index -1) so that every
  process yields the same number of full batches.

  Args:
    split: 'train', 'validation' or 'test' (test labels are -1); TFDS slicing allowed.
    data_dir: TFDS data dir holding the prepared data set.
    batch_size: rows per batch for this process.
    num_frames: T.
    train: training or evaluation pipeline.
    crop_size: spatial crop for training and centre evaluation.
    short_side: frames are resized to this short side first.
    eval_mode: 'center' or 'dense'.
    num_spatial_crops: crops along the long side in dense evaluation.
    shuffle_seed: seeds file order, the shuffle buffer and augmentation.
    shuffle_buffer: videos (JPEG bytes, ~0.2 MB each in SSv1) in the shuffle buffer.
    normalize: True: float32 (x - 114.75) / 57.375; False: uint8 pixels (4x less to copy
      to the device; normalise there).
    root: raw SSv1 root, converted first if data_dir holds no prepared copy.
    process_index, process_count: default jax.process_index() / jax.process_count().
    num_parallel_calls: decoding parallelism.
    prefetch: batches prepared ahead.
    builder: a prepared builder (skips the lookup).

  Returns:
    A tf.data.Dataset of dicts as described above.

  Raises:
    ValueError: bad arguments; ssv1.SSv1DataError: no prepared data and no root.
  """
  if eval_mode not in ('center', 'dense'):
    raise ValueError(f"eval_mode must be 'center' or 'dense', got {eval_mode!r}.")
  if crop_size > short_side:
    raise ValueError(f'crop_size {crop_size} exceeds short_side {short_side}.')
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  _hide_gpus_from_tf()
  if builder is None:
    builder = load_builder(data_dir, root)
  decoders = {'frames': tfds.decode.SkipDecoding()}  # Decode only the sampled frames.
  T = num_frames

  if train:
    ds = builder.as_dataset(
        split=tfds.split_for_jax_process(split, process_index=process_index,
                                         process_count=process_count),
        shuffle_files=True, decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed))
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate()
    base = tf.constant([shuffle_seed, process_index], tf.int64)

    def train_fn(i, ex):
      seeds = tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(base, i), 3)
      offsets = tf.random.stateless_uniform([T], seed=seeds[0])
      idx = segment_indices(tf.shape(ex['frames'])[0], T, offsets)
      video = _resize_short_side(_decode(ex['frames'], idx), short_side)
      shape = tf.shape(video)
      oy = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - crop_size + 1, tf.int32)
      ox = tf.random.stateless_uniform([], seeds[2], 0, shape[2] - crop_size + 1, tf.int32)
      video = video[:, oy:oy + crop_size, ox:ox + crop_size, :]
      video = tf.ensure_shape(_finish(video, normalize), [T, crop_size, crop_size, 3])
      return {'video': video, 'label': tf.cast(ex['label'], tf.int32)}

    ds = ds.map(train_fn, num_parallel_calls=num_parallel_calls)
    return ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)

  n_videos = builder.info.splits[split].num_examples
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  ds = ds.enumerate().shard(process_count, process_index)
  local_videos = n_videos // process_count + (process_index < n_videos % process_count)
  max_local = -(-n_videos // process_count)
  dtype = tf.float32 if normalize else tf.uint8

  if eval_mode == 'center':
    views, size = 1, crop_size

    def center_fn(i, ex):
      idx = segment_indices(tf.shape(ex['frames'])[0], T, tf.fill([T], 0.5))
      video = _resize_short_side(_decode(ex['frames'], idx), short_side)
      shape = tf.shape(video)
      oy, ox = (shape[1] - crop_size) // 2, (shape[2] - crop_size) // 2
      video = video[:, oy:oy + crop_size, ox:ox + crop_size, :]
      video = tf.ensure_shape(_finish(video, normalize), [T, crop_size, crop_size, 3])
      return {'video': video, 'label': tf.cast(ex['label'], tf.int32),
              'video_index': tf.cast(i, tf.int32), 'mask': tf.constant(1, tf.float32)}

    ds = ds.map(center_fn, num_parallel_calls=num_parallel_calls)
  else:
    views, size = 2 * num_spatial_crops, short_side

    def dense_fn(i, ex):
      n = tf.shape(ex['frames'])[0]
      idx = tf.concat([segment_indices(n, T, tf.zeros([T])),
                       segment_indices(n, T, tf.fill([T], 0.5))], 0)
      video = _resize_short_side(_decode(ex['frames'], idx), short_side)
      # uint8 between the parallel decode and the view split: 22 float views of a video
      # would hold ~0.5 GB per video in flight.
      video = tf.cast(tf.clip_by_value(tf.round(video), 0, 255), tf.uint8)
      shape = tf.shape(video)
      offsets = dense_crop_offsets(tf.maximum(shape[1], shape[2]), short_side,
                                   num_spatial_crops)
      return {'clips': tf.reshape(video, [2, T, shape[1], shape[2], 3]),
              'offsets': offsets, 'label': tf.cast(ex['label'], tf.int32),
              'video_index': tf.cast(i, tf.int32)}

    def split_views(ex):
      clips = ex['clips']
      wide = tf.shape(clips)[3] >= tf.shape(clips)[2]

      def view(j):
        j = tf.cast(j, tf.int32)
        clip, o = clips[j // num_spatial_crops], ex['offsets'][j % num_spatial_crops]
        crop = tf.cond(wide, lambda: clip[:, :short_side, o:o + short_side],
                       lambda: clip[:, o:o + short_side, :short_side])
        crop = tf.ensure_shape(crop, [T, short_side, short_side, 3])
        return {'video': crop, 'label': ex['label'], 'video_index': ex['video_index'],
                'view_index': j, 'mask': tf.constant(1, tf.float32)}

      return tf.data.Dataset.range(views).map(view)

    def finish_view(ex):
      return {**ex, 'video': _finish(tf.cast(ex['video'], tf.float32), normalize)}

    # flat_map runs serially: it only slices uint8 views; normalising is mapped in parallel.
    ds = ds.map(dense_fn, num_parallel_calls=num_parallel_calls).flat_map(split_views)
    ds = ds.map(finish_view, num_parallel_calls=num_parallel_calls)

  # Pad to the same number of full batches on every process (one compiled eval step, and
  # no process waiting in a collective for a batch another one never makes).
  num_batches = -(-max_local * views // batch_size)
  pad = {'video': tf.zeros([T, size, size, 3], dtype), 'label': tf.constant(-1, tf.int32),
         'video_index': tf.constant(-1, tf.int32), 'mask': tf.constant(0, tf.float32)}
  if eval_mode == 'dense':
    pad['view_index'] = tf.constant(0, tf.int32)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(
      num_batches * batch_size - local_videos * views))
  return ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)


def _hide_gpus_from_tf():
  """Keeps a full `tensorflow` install off the GPUs: JAX owns them; tf.data needs none."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices; nothing to do then.
    pass


def main(argv=None) -> int:
  """`python -m rstg_jax.data.ssv1_tfds --root=ROOT [--data_dir=DIR]`: convert once."""
  parser = argparse.ArgumentParser(description='Convert Something-Something-v1 to TFDS.')
  parser.add_argument('--root', required=True, help='SSv1 root (config.data.root).')
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).')
  parser.add_argument('--num_workers', type=int, default=8, help='reader threads')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  try:
    builder = prepare(args.root, args.data_dir, num_workers=args.num_workers)
  except ssv1.SSv1DataError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  report = read_report(builder) or {'splits': {}, 'skipped': [], 'repaired_frames': []}
  print(f'{NAME} in {builder.data_dir}: ' +
        ', '.join(f'{s} {v["written"]} videos' for s, v in report['splits'].items()) +
        f'; {len(report["skipped"])} skipped, {len(report["repaired_frames"])} frames '
        f'repaired (see {os.path.join(builder.data_dir, REPORT_FILE)}).')
  return 0


if __name__ == '__main__':
  sys.exit(main())
