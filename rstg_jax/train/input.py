"""Input pipeline: deterministic, resumable batches and a background prefetch thread.

The trainer only knows the small `Dataset` protocol below, so a new data set (Something-
Something) needs one more class here, not changes to the training loop:

  dataset.batch(step)   -> dict of numpy arrays: this process's part of the global
                           training batch of step `step` ('video' uint8 [b,T,H,W,C],
                           'label' int32 [b]). A pure function of (seed, step): this is
                           what makes a resumed run equal an uninterrupted one.
  dataset.eval_batches() -> iterator over the fixed set evaluated during training (model
                           selection), in fixed-size batches with a 'mask' (1 for real
                           videos, 0 for padding of the last batch).
  dataset.class_names, dataset.num_classes, dataset.input_shape (T,H,W,C),
  dataset.eval_size, dataset.description (one line for the log).

Optional members: `preprocess` (the on-device normalisation of 'video'; default uint8 /
255); `eval_split` (the name metrics.jsonl gives the eval_batches rows; default 'test')
with `test_batches()` and `test_size` (a held-out test set, evaluated once at the end of
training and by `rstg_jax.evaluate`; see `SyncMNIST`); for multi-view evaluation,
`view_batches(mode, split)`, `num_videos(split)` and `video_ids(split)` (see `SSv1`).

Data sets: `SyncMNIST` (generated on the fly) and `SSv1` (Something-Something-v1 through
`rstg_jax.data.ssv1_tfds`, imported only when `config.data.name == 'ssv1'`, so that the
SyncMNIST path never imports TensorFlow). `check_data(config)` fails at once, with what to
do, when the configured data is not on disk.

`Prefetcher` runs `batch(step)` in a thread (the numpy generation releases the GIL for most
of its time) and puts the result on the devices, so the next batch is ready when the
jitted step returns.
"""

import functools
import glob
import os
import queue
import threading
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np


class Dataset(Protocol):
  class_names: tuple[str, ...]
  num_classes: int
  input_shape: tuple[int, int, int, int]
  eval_size: int
  description: str

  def batch(self, step: int) -> dict[str, np.ndarray]:
    ...

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    ...


def _local_slice(global_size: int, process_index: int, process_count: int) -> slice:
  if global_size % process_count:
    raise ValueError(f'Batch size {global_size} is not divisible by the number of '
                     f'processes {process_count}.')
  n = global_size // process_count
  return slice(process_index * n, (process_index + 1) * n)


class StreamOrder:
  """Which stream index each training example of each step reads.

  The training stream is `train_size` videos visited in a fresh permutation each epoch;
  the global batch of step s holds stream positions [s*B, (s+1)*B), which may straddle two
  epochs. Everything is a function of (seed, step), with no state carried between steps.
  """

  def __init__(self, train_size: int, batch_size: int, seed: int):
    self.train_size = train_size
    self.batch_size = batch_size
    self.seed = seed

  @functools.lru_cache(maxsize=2)
  def _permutation(self, epoch: int) -> np.ndarray:
    # A 600k permutation takes ~10 ms: cached for the (at most two) epochs of one batch.
    return np.random.default_rng([self.seed, epoch]).permutation(self.train_size)

  def indices(self, step: int, positions: slice) -> np.ndarray:
    """Stream indices for the `positions` slice of the global batch of `step`."""
    offsets = np.arange(self.batch_size)[positions]
    stream = step * self.batch_size + offsets
    epochs, within = np.divmod(stream, self.train_size)
    out = np.empty_like(stream)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._permutation(int(epoch))[within[sel]]
    return out


def padded_eval_batches(make_batch: Callable[[np.ndarray], dict[str, np.ndarray]],
                        eval_size: int, batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's part of fixed-size test batches; the last one is padded.

  A fixed batch shape keeps one compiled eval step; padded rows repeat index 0 and carry
  mask 0, so they count in no metric.
  """
  local = _local_slice(batch_size, process_index, process_count)
  for start in range(0, eval_size, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = (idx < eval_size).astype(np.float32)
    idx = np.where(idx < eval_size, idx, 0)
    batch = make_batch(idx[local])
    batch['mask'] = mask[local]
    yield batch


class SyncMNIST:
  """SyncMNIST videos from `rstg_jax.data.syncmnist` (generated on the fly from MNIST).

  Training stream: indices 0..train_size-1 of the 'train' split. Evaluated during
  training (plateau, best checkpoint): indices 0..data.val_size-1 of the 'val' split
  (`eval_batches`). Test set: indices 0..eval_size-1 of the 'test' split
  (`test_batches`), evaluated once at the end of training and by `rstg_jax.evaluate`.
  Both are generated once and kept in memory (10k videos are 41 MB of uint8).
  """

  eval_split = 'val'

  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    # Imported here so that the trainer imports (and its tests run) without the module.
    from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
    self._gen = syncmnist
    self.num_digits = config.data.num_digits
    self.data_seed = config.data.seed
    self.mnist_path = config.data.mnist_path
    self.motion = config.data.get('motion', 'clean')
    self.class_names = tuple(syncmnist.CLASS_NAMES)
    self.num_classes = len(self.class_names)
    self.input_shape = (10, 64, 64, 1)
    self.eval_size = config.data.get('val_size', config.eval_size)
    self.test_size = config.eval_size
    self.eval_batch_size = config.eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    self._local = _local_slice(config.batch_size, process_index, process_count)
    self._order = StreamOrder(config.data.train_size, config.batch_size, config.seed)
    self._held: dict[str, dict[str, np.ndarray]] = {}
    self.description = (
        f'SyncMNIST ({self.num_digits} digits, {self.motion} motion, generated from real '
        f'MNIST{" at " + self.mnist_path if self.mnist_path else ""}, data seed '
        f'{self.data_seed}): train stream of {config.data.train_size} videos; model '
        f'selection on the first {self.eval_size} val videos; test = first '
        f'{self.test_size} videos of the test split')

  def _generate(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    out = self._gen.generate(split, indices, num_digits=self.num_digits,
                             seed=self.data_seed, mnist_path=self.mnist_path,
                             motion=self.motion)
    return {'video': np.asarray(out['video'], np.uint8),
            'label': np.asarray(out['label'], np.int32)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self._generate('train', self._order.indices(step, self._local))

  def _held_out_batches(self, split: str, size: int) -> Iterator[dict[str, np.ndarray]]:
    if split not in self._held:
      self._held[split] = self._generate(split, np.arange(size))
    held = self._held[split]
    return padded_eval_batches(lambda idx: {k: v[idx] for k, v in held.items()},
                               size, self.eval_batch_size,
                               self.process_index, self.process_count)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The val videos: what training evaluates, schedules and selects on."""
    return self._held_out_batches('val', self.eval_size)

  def test_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The test videos: reported, never selected on."""
    return self._held_out_batches('test', self.test_size)

  def digits(self, split: str = 'test') -> np.ndarray:
    """int32 [n, num_digits]: the digit classes of the videos `test_batches` (or, for
    'val', `eval_batches`) yield, in order (for the digit-oracle diagnostic)."""
    n = self.test_size if split == 'test' else self.eval_size
    return self._gen.generate_tracks(split, np.arange(n), num_digits=self.num_digits,
                                     seed=self.data_seed, mnist_path=self.mnist_path,
                                     motion=self.motion)['digits']


# Something-Something-v1 ------------------------------------------------------------------

# The authors' input normalisation for the Kinetics ResNets (Caffe2 convention).
SSV1_MEAN, SSV1_STD = 114.75, 57.375


def normalize_ssv1(video):
  """uint8 pixels -> (x - 114.75) / 57.375, on the device (jnp or np arrays)."""
  return (video.astype('float32') - SSV1_MEAN) / SSV1_STD


def ssv1_tfds_dir(config) -> str:
  """Where the converted TFDS shards live: config.data.tfds_dir, else TFDS's default."""
  d = config.data.tfds_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.expanduser(d)


def check_ssv1_data(config) -> None:
  """Raises `SSv1DataError` (a ValueError) at once if no usable SSv1 copy is reachable.

  Usable: TFDS shards already prepared in `ssv1_tfds_dir(config)`, or a raw copy at
  `config.data.root` (checked for its frame folder and label files) that the first run
  converts. Only file-system checks: no TensorFlow import, nothing compiled.
  """
  from rstg_jax.ssv1 import reader as ssv1  # pylint: disable=g-import-not-at-top  # numpy only
  tfds_dir = ssv1_tfds_dir(config)
  # TFDS writes dataset_info.json last, when every shard of every split is complete.
  if glob.glob(os.path.join(tfds_dir, 'something_something_v1', '*', 'dataset_info.json')):
    return
  where = (f'No converted copy in config.data.tfds_dir={tfds_dir!r} either (set '
           f'--config.data.tfds_dir=DIR where the shards are, or where the first run '
           f'should write them).')
  try:
    root = ssv1.check_root(config.data.root)
    ssv1.read_class_names(root)
    for split in ssv1.REQUIRED_SPLITS:
      path = os.path.join(root, ssv1.SPLIT_FILES[split])
      if not os.path.isfile(path):
        raise ssv1.SSv1DataError(
            f'Label file {path!r} is missing (expected in config.data.root={root!r}). '
            f'{ssv1.DOWNLOAD_HINT}')
  except ssv1.SSv1DataError as e:
    raise ssv1.SSv1DataError(f'{e} {where}') from None


class SSv1:
  """Something-Something-v1 through `rstg_jax.data.ssv1_tfds` (TFDS shards + tf.data).

  Training stream: `make_dataset('train', train=True)`, an endless shuffled stream read
  sequentially. `batch(step)` must be called with consecutive steps (the Prefetcher
  does); a jump to another step starts a new stream. Resume: the stream is seeded by
  (config.seed, first step), so a run resumed at step s reads a fresh, reproducible
  shuffle, not the rest of the interrupted one (skipping s batches would mean decoding
  them). Model, optimiser, dropout and lr state resume exactly; the data order does not.

  Evaluation during training: the first `eval_size` videos of `data.eval_split`, one
  centre crop each (`data.eval_mode`). `view_batches(mode)` gives the evaluate
  command's views ('dense': 2 temporal samplings x 11 crops of 256x256 per video).
  Batches hold uint8 pixels (4x fewer bytes to the device); `preprocess` normalises
  them on the device.
  """

  preprocess = staticmethod(normalize_ssv1)

  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    check_ssv1_data(config)  # before TensorFlow is imported: a missing copy fails fast
    from rstg_jax.ssv1 import tfds_builder as ssv1_tfds  # pylint: disable=g-import-not-at-top
    self._tfds = ssv1_tfds
    d = config.data
    self._config = config
    self._builder = ssv1_tfds.load_builder(ssv1_tfds_dir(config), d.root)
    self.class_names = tuple(ssv1_tfds.class_names(self._builder))
    self.num_classes = len(self.class_names)
    self.input_shape = (int(d.num_frames), int(d.crop_size), int(d.crop_size), 3)
    splits = self._builder.info.splits
    n_eval = self.num_videos(d.eval_split)
    self.eval_size = min(int(config.eval_size), n_eval)
    self.eval_split = (d.eval_split if self.eval_size == n_eval
                       else f'{d.eval_split}[:{self.eval_size}]')
    self.process_index, self.process_count = process_index, process_count
    self._local_batch = _local_slice(config.batch_size, process_index, process_count)
    self._local_batch = self._local_batch.stop - self._local_batch.start
    self._local_eval = _local_slice(config.eval_batch_size, process_index, process_count)
    self._local_eval = self._local_eval.stop - self._local_eval.start
    self._train_iter, self._next_step = None, None
    self.description = (
        f'Something-Something-v1 ({self._builder.data_dir}): train {splits["train"].num_examples} '
        f'videos, {d.num_frames} frames, {d.crop_size}px crops of short side {d.short_side}; '
        f'test = {self.eval_split} ({self.eval_size} videos, {d.eval_mode} crop)')

  def num_videos(self, split: str) -> int:
    """Videos in a split ('validation', or a TFDS slice such as 'validation[:500]')."""
    return int(self._builder.info.splits[split].num_examples)

  def _common(self):
    d = self._config.data
    return dict(builder=self._builder, num_frames=int(d.num_frames),
                crop_size=int(d.crop_size), short_side=int(d.short_side), normalize=False,
                process_index=self.process_index, process_count=self.process_count)

  def stream_seed(self, step: int) -> int:
    return int(np.random.SeedSequence([int(self._config.seed), int(step)])
               .generate_state(1)[0] & 0x7FFFFFFF)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    if self._train_iter is None or step != self._next_step:
      ds = self._tfds.make_dataset('train', train=True, batch_size=self._local_batch,
                                   shuffle_seed=self.stream_seed(step), **self._common())
      self._train_iter = ds.as_numpy_iterator()
    b = next(self._train_iter)
    self._next_step = step + 1
    return {'video': b['video'], 'label': b['label'].astype(np.int32)}

  def view_batches(self, mode: str, split: Optional[str] = None,
                   batch_size: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of fixed-size eval batches: 'video', 'label', 'mask',
    'video_index' (and 'view_index' in dense mode); padding rows have mask 0."""
    local = self._local_eval if batch_size is None else batch_size // self.process_count
    ds = self._tfds.make_dataset(split or self.eval_split, train=False, batch_size=local,
                                 eval_mode=mode, **self._common())
    for b in ds.as_numpy_iterator():
      out = {k: v for k, v in b.items() if k != 'video_id'}
      # Padding rows carry label -1; any valid index keeps the masked loss finite.
      out['label'] = np.maximum(out['label'], 0).astype(np.int32)
      yield out

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    for b in self.view_batches(self._config.data.eval_mode):
      yield {k: b[k] for k in ('video', 'label', 'mask')}

  def video_ids(self, split: Optional[str] = None) -> list[str]:
    """Video ids of a split in the evaluation order (index = 'video_index')."""
    tfds = self._tfds.tfds
    ds = self._builder.as_dataset(split=split or self.eval_split, shuffle_files=False,
                                  decoders={'frames': tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: ex['video_id'])
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds.as_numpy_iterator()]


DATASETS = ('syncmnist', 'ssv1')


def check_data(config) -> None:
  """Fails at once (ValueError with what to do) if the configured data is not there."""
  if config.data.name == 'ssv1':
    check_ssv1_data(config)


def create_dataset(config, process_index: int = 0, process_count: int = 1) -> Dataset:
  """The data set named by `config.data.name`."""
  if config.data.name == 'syncmnist':
    return SyncMNIST(config, process_index, process_count)
  if config.data.name == 'ssv1':
    return SSv1(config, process_index, process_count)
  raise ValueError(f'Unknown data set {config.data.name!r}; known: {", ".join(DATASETS)}.')


class Prefetcher:
  """Iterates (step, device batch) for steps [start, stop), produced in a thread.

  Args:
    dataset: anything with `batch(step)`.
    start, stop: the steps to produce.
    to_device: host batch -> device batch (runs in the thread too, so the transfer also
      overlaps the running step).
    size: how many batches may wait in the queue.

  An exception in the thread is re-raised in the consumer at the step it belongs to.
  """

  _END = object()

  def __init__(self, dataset, start: int, stop: int,
               to_device: Callable[[dict[str, np.ndarray]], Any], size: int = 2):
    self._queue = queue.Queue(maxsize=max(1, size))
    self._stop_event = threading.Event()
    self._thread = threading.Thread(
        target=self._work, args=(dataset, start, stop, to_device), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop_event.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, dataset, start, stop, to_device):
    try:
      for step in range(start, stop):
        if not self._put((step, to_device(dataset.batch(step)))):
          return
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)
      return
    self._put(self._END)

  def __iter__(self):
    while True:
      item = self._queue.get()
      if item is self._END:
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self):
    """Stops the thread (it may be blocked on a full queue) and waits for it."""
    self._stop_event.set()
    self._thread.join(timeout=30)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
