"""Input helpers every data set shares: stream order, padded test batches, prefetching.

The data set contract itself is in `rstg_jax.train.task`. Here:

- `StreamOrder`: which example each row of each training step reads, a pure function of
  (seed, step), so that a resumed run reads the same batches as an uninterrupted one;
- `local_slice` / `local_size`: this process's rows of a global batch;
- `padded_eval_batches`: fixed-size test batches, the last one padded (mask 0), as a
  `Sized` iterable (its length gives a progress bar its ETA);
- `Prefetcher`: runs `batch(step)` in a thread (numpy generation releases the GIL for most
  of its time) and puts the result on the devices, so the next batch is ready when the
  jitted step returns.
"""

import functools
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np


def local_slice(global_size: int, process_index: int, process_count: int) -> slice:
  """This process's rows of a global batch of `global_size`."""
  if global_size % process_count:
    raise ValueError(f'Batch size {global_size} is not divisible by the number of '
                     f'processes {process_count}.')
  n = global_size // process_count
  return slice(process_index * n, (process_index + 1) * n)


def local_size(global_size: int, process_index: int, process_count: int) -> int:
  """This process's number of rows of a global batch of `global_size`."""
  rows = local_slice(global_size, process_index, process_count)
  return rows.stop - rows.start


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


class Sized:
  """An iterable that knows its length: `iter(make())` batches, `n` of them (so that a
  progress bar can show an ETA)."""

  def __init__(self, make: Callable[[], Iterator[Any]], n: int):
    self._make, self._n = make, int(n)

  def __len__(self) -> int:
    return self._n

  def __iter__(self):
    return iter(self._make())


def padded_eval_batches(make_batch: Callable[[np.ndarray], dict[str, np.ndarray]],
                        eval_size: int, batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> Sized:
  """This process's part of fixed-size test batches (an iterable with a length); the
  last one is padded.

  A fixed batch shape keeps one compiled eval step; padded rows repeat index 0 and carry
  mask 0, so they count in no metric.
  """
  local = local_slice(batch_size, process_index, process_count)

  def batches():
    for start in range(0, eval_size, batch_size):
      idx = np.arange(start, start + batch_size)
      mask = (idx < eval_size).astype(np.float32)
      idx = np.where(idx < eval_size, idx, 0)
      batch = make_batch(idx[local])
      batch['mask'] = mask[local]
      yield batch

  return Sized(batches, -(-eval_size // batch_size))


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
