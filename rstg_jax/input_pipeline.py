"""Input pipeline: deterministic, resumable batches and a background prefetch thread.

The trainer only knows the small `Dataset` protocol below, so a new data set (Something-
Something) needs one more class here, not changes to the training loop:

  dataset.batch(step)   -> dict of numpy arrays: this process's part of the global
                           training batch of step `step` ('video' uint8 [b,T,H,W,C],
                           'label' int32 [b]). A pure function of (seed, step): this is
                           what makes a resumed run equal an uninterrupted one.
  dataset.eval_batches() -> iterator over the fixed test set, in fixed-size batches with a
                           'mask' (1 for real videos, 0 for padding of the last batch).
  dataset.class_names, dataset.num_classes, dataset.input_shape (T,H,W,C),
  dataset.eval_size, dataset.description (one line for the log).

`Prefetcher` runs `batch(step)` in a thread (the numpy generation releases the GIL for most
of its time) and puts the result on the devices, so the next batch is ready when the
jitted step returns.
"""

import functools
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

  Training stream: indices 0..train_size-1 of the 'train' split; test set: indices
  0..eval_size-1 of the 'test' split, generated once and kept in memory (10k videos are
  41 MB of uint8).
  """

  def __init__(self, config, process_index: int = 0, process_count: int = 1):
    # Imported here so that the trainer imports (and its tests run) without the module.
    from rstg_jax.data import syncmnist  # pylint: disable=g-import-not-at-top
    self._gen = syncmnist
    self.num_digits = config.data.num_digits
    self.data_seed = config.data.seed
    self.mnist_path = config.data.mnist_path
    self.class_names = tuple(syncmnist.CLASS_NAMES)
    self.num_classes = len(self.class_names)
    self.input_shape = (10, 64, 64, 1)
    self.eval_size = config.eval_size
    self.eval_batch_size = config.eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    self._local = _local_slice(config.batch_size, process_index, process_count)
    self._order = StreamOrder(config.data.train_size, config.batch_size, config.seed)
    self._test: Optional[dict[str, np.ndarray]] = None
    self.description = (
        f'SyncMNIST ({self.num_digits} digits, generated from real MNIST'
        f'{" at " + self.mnist_path if self.mnist_path else ""}, data seed '
        f'{self.data_seed}): train stream of {config.data.train_size} videos, '
        f'test = first {self.eval_size} videos of the test split')

  def _generate(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    out = self._gen.generate(split, indices, num_digits=self.num_digits,
                             seed=self.data_seed, mnist_path=self.mnist_path)
    return {'video': np.asarray(out['video'], np.uint8),
            'label': np.asarray(out['label'], np.int32)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self._generate('train', self._order.indices(step, self._local))

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    if self._test is None:
      self._test = self._generate('test', np.arange(self.eval_size))
    test = self._test
    return padded_eval_batches(lambda idx: {k: v[idx] for k, v in test.items()},
                               self.eval_size, self.eval_batch_size,
                               self.process_index, self.process_count)


def create_dataset(config, process_index: int = 0, process_count: int = 1) -> Dataset:
  """The data set named by `config.data.name`."""
  if config.data.name == 'syncmnist':
    return SyncMNIST(config, process_index, process_count)
  raise ValueError(f'Unknown data set {config.data.name!r}; known: syncmnist.')


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
