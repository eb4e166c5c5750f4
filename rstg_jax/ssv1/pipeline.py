"""The Something-Something-v1 input pipeline: tf.data over the TFDS shards, and the data set.

`make_dataset` reads the shards that `rstg_jax.ssv1.tfds_builder` wrote: it decodes only
the sampled frames, resizes the short side, crops, (optionally) normalises and batches.
`SSv1Dataset` is the data set the trainer gets (`rstg_jax.train.task`): a training
stream, the first videos of the evaluation split (one centre crop) for the evaluations
during training, and the multi-view batches of the evaluate command. TensorFlow stays
inside this package: only the SSv1 task imports this module, when it builds the data set.
"""

from typing import Iterator, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rstg_jax.ssv1 import reader
from rstg_jax.ssv1 import tfds_builder
from rstg_jax.ssv1.reader import MEAN, STD
from rstg_jax.train import input as input_lib


_NUM_SPATIAL_CROPS = 11  # make_dataset's default num_spatial_crops (the paper's)


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
                 builder: Optional[tfds_builder.SomethingSomethingV1] = None) -> tf.data.Dataset:
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
    ValueError: bad arguments; reader.SSv1DataError: no prepared data and no root.
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
    builder = tfds_builder.load_builder(data_dir, root)
  common = dict(num_frames=num_frames, crop_size=crop_size, short_side=short_side,
                normalize=normalize, batch_size=batch_size, process_index=process_index,
                process_count=process_count, num_parallel_calls=num_parallel_calls,
                prefetch=prefetch)
  if train:
    return _train_dataset(builder, split, shuffle_seed, shuffle_buffer, **common)
  return _eval_dataset(builder, split, eval_mode, num_spatial_crops, **common)


def _train_dataset(builder, split, shuffle_seed, shuffle_buffer, *, num_frames, crop_size,
                   short_side, normalize, batch_size, process_index, process_count,
                   num_parallel_calls, prefetch) -> tf.data.Dataset:
  """`make_dataset`'s training stream: random offsets and crops, shuffled, endless."""
  decoders = {'frames': tfds.decode.SkipDecoding()}  # Decode only the sampled frames.
  T = num_frames
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


def _eval_dataset(builder, split, eval_mode, num_spatial_crops, *, num_frames, crop_size,
                  short_side, normalize, batch_size, process_index, process_count,
                  num_parallel_calls, prefetch) -> tf.data.Dataset:
  """`make_dataset`'s evaluation views, in a fixed order, padded to full batches."""
  decoders = {'frames': tfds.decode.SkipDecoding()}  # Decode only the sampled frames.
  T = num_frames
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
    ds = _dense_views(ds, num_frames=T, short_side=short_side, normalize=normalize,
                      num_spatial_crops=num_spatial_crops,
                      num_parallel_calls=num_parallel_calls)

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


def _dense_views(ds, *, num_frames, short_side, normalize, num_spatial_crops,
                 num_parallel_calls) -> tf.data.Dataset:
  """The (index, video) stream as a flat stream of dense views: 2 temporal samplings x
  `num_spatial_crops` crops per video, consecutive (see `make_dataset`)."""
  T, views = num_frames, 2 * num_spatial_crops

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
  return ds.map(finish_view, num_parallel_calls=num_parallel_calls)


def _hide_gpus_from_tf():
  """Keeps a full `tensorflow` install off the GPUs: JAX owns them; tf.data needs none."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices; nothing to do then.
    pass


class SSv1Dataset:
  """Something-Something-v1 through `make_dataset` (TFDS shards + tf.data).

  Training stream: `make_dataset('train', train=True)`, an endless shuffled stream read
  sequentially. `batch(step)` must be called with consecutive steps (the Prefetcher
  does); a jump to another step starts a new stream. Resume: the stream is seeded by
  (seed, first step), so a run resumed at step s reads a fresh, reproducible shuffle, not
  the rest of the interrupted one (skipping s batches would mean decoding them). Model,
  optimiser, dropout and lr state resume exactly; the data order does not.

  Evaluation during training: the first `eval_size` videos of `eval_split`, views
  `periodic_views` (one centre crop). `view_batches(mode)` gives the evaluate command's
  views ('dense': 2 temporal samplings x 11 crops of 256x256 per video). Batches hold
  uint8 pixels (4x fewer bytes to the device); `preprocess` normalises them on the
  device.
  """

  preprocess = staticmethod(reader.normalize)

  def __init__(self, builder, *, num_frames: int, crop_size: int, short_side: int,
               seed: int, batch_size: int, eval_batch_size: int, eval_split: str,
               eval_size: int, periodic_views: str, process_index: int = 0,
               process_count: int = 1):
    self._builder = builder
    self._frames, self._crop, self._short = int(num_frames), int(crop_size), int(short_side)
    self._seed = int(seed)
    self._periodic_views = periodic_views
    self.class_names = tuple(tfds_builder.class_names(builder))
    self.num_classes = len(self.class_names)
    self.input_shape = (self._frames, self._crop, self._crop, 3)
    if not builder.info.splits['train'].num_examples:  # prepared before the converter refused it
      raise self._empty_train_error()
    n_eval = self.num_videos(eval_split)
    self.eval_size = min(int(eval_size), n_eval)
    self.eval_split = (eval_split if self.eval_size == n_eval
                       else f'{eval_split}[:{self.eval_size}]')
    self.process_index, self.process_count = process_index, process_count
    self._local_batch = input_lib.local_size(batch_size, process_index, process_count)
    self._local_eval = input_lib.local_size(eval_batch_size, process_index, process_count)
    self._train_iter, self._next_step = None, None
    splits = builder.info.splits
    self.description = (
        f'Something-Something-v1 ({builder.data_dir}): train '
        f'{splits["train"].num_examples} videos, {num_frames} frames, {crop_size}px crops '
        f'of short side {short_side}; test = {self.eval_split} ({self.eval_size} videos, '
        f'{periodic_views} crop)')

  def _empty_train_error(self):
    return reader.SSv1DataError(
        f'The prepared Something-Something-v1 in {self._builder.data_dir} has no training '
        'video (every train video was skipped at conversion; see its ssv1_report.json). '
        'Fix the data under config.data.root and convert again into an empty '
        'config.data.tfds_dir.')

  def num_videos(self, split: str) -> int:
    """Videos in a split ('validation', or a TFDS slice such as 'validation[:500]')."""
    return int(self._builder.info.splits[split].num_examples)

  def _common(self):
    return dict(builder=self._builder, num_frames=self._frames, crop_size=self._crop,
                short_side=self._short, normalize=False,
                process_index=self.process_index, process_count=self.process_count)

  def stream_seed(self, step: int) -> int:
    return int(np.random.SeedSequence([self._seed, int(step)])
               .generate_state(1)[0] & 0x7FFFFFFF)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    if self._train_iter is None or step != self._next_step:
      ds = make_dataset('train', train=True, batch_size=self._local_batch,
                        shuffle_seed=self.stream_seed(step), **self._common())
      self._train_iter = ds.as_numpy_iterator()
    try:
      b = next(self._train_iter)
    except StopIteration:  # would surface as "generator raised StopIteration"
      raise self._empty_train_error() from None
    self._next_step = step + 1
    return {'video': b['video'], 'label': b['label'].astype(np.int32)}

  def view_batches(self, mode: str, split: Optional[str] = None,
                   batch_size: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of fixed-size eval batches: 'video', 'label', 'mask',
    'video_index' (and 'view_index' in dense mode); padding rows have mask 0."""
    local = self._local_eval if batch_size is None else batch_size // self.process_count
    ds = make_dataset(split or self.eval_split, train=False, batch_size=local,
                      eval_mode=mode, **self._common())

    def batches():
      for b in ds.as_numpy_iterator():
        out = {k: v for k, v in b.items() if k != 'video_id'}
        # Padding rows carry label -1; any valid index keeps the masked loss finite.
        out['label'] = np.maximum(out['label'], 0).astype(np.int32)
        yield out

    # make_dataset pads every process to this many batches (a progress bar's ETA).
    views = 1 if mode == 'center' else 2 * _NUM_SPATIAL_CROPS
    per_process = -(-self.num_videos(split or self.eval_split) // self.process_count)
    return input_lib.Sized(batches, -(-per_process * views // local))

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    for b in self.view_batches(self._periodic_views):
      yield {k: b[k] for k in ('video', 'label', 'mask')}

  def video_ids(self, split: Optional[str] = None) -> list[str]:
    """Video ids of a split in the evaluation order (index = 'video_index')."""
    ds = self._builder.as_dataset(split=split or self.eval_split, shuffle_files=False,
                                  decoders={'frames': tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: ex['video_id'])
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds.as_numpy_iterator()]
