"""The SyncMNIST data set the trainer gets: a training stream, fixed val and test sets.

Videos come from `rstg_jax.syncmnist.generator` (generated on the fly from real MNIST);
every batch is a pure function of (seed, step), so a resumed run reads the same batches
as an uninterrupted one.
"""

from typing import Iterator, Optional

import numpy as np

from rstg_jax.syncmnist import generator
from rstg_jax.train import input as input_lib


class SyncMNISTDataset:
  """Training stream: indices 0..train_size-1 of the 'train' split in a fresh
  permutation each epoch (`input_lib.StreamOrder`). Evaluated during training (plateau,
  best checkpoint, printed numbers): indices 0..val_size-1 of the 'val' split
  (`eval_batches`). Test set: indices 0..eval_size-1 of the 'test' split
  (`test_batches`), evaluated once at the end of training and by `rstg_jax.evaluate`.
  Both are generated once and kept in memory (10k videos are 41 MB of uint8).
  """

  input_shape = (10, 64, 64, 1)

  def __init__(self, *, num_digits: int, data_seed: int, mnist_path: Optional[str],
               train_size: int, batch_size: int, seed: int, eval_size: int,
               eval_batch_size: int, val_size: Optional[int] = None,
               motion: str = 'clean', no_pair_prob: float = generator.NO_PAIR_PROB,
               process_index: int = 0, process_count: int = 1):
    self.num_digits, self.data_seed, self.mnist_path = num_digits, data_seed, mnist_path
    self.motion, self.no_pair_prob = motion, no_pair_prob
    self.class_names = tuple(generator.CLASS_NAMES)
    self.num_classes = len(self.class_names)
    self.eval_size, self.eval_batch_size = eval_size, eval_batch_size
    self.val_size = eval_size if val_size is None else val_size
    self.process_index, self.process_count = process_index, process_count
    self._local = input_lib.local_slice(batch_size, process_index, process_count)
    self._order = input_lib.StreamOrder(train_size, batch_size, seed)
    self._held: dict[str, dict[bytes, dict[str, np.ndarray]]] = {}
    self.description = (
        f'SyncMNIST ({num_digits} digits, {motion} motion, generated from real MNIST'
        f'{" at " + mnist_path if mnist_path else ""}, data seed {data_seed}): train '
        f'stream of {train_size} videos; model selection on the first {self.val_size} val '
        f'videos; test = first {eval_size} videos of the test split')

  def _generate(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    out = generator.generate(split, indices, num_digits=self.num_digits,
                             seed=self.data_seed, mnist_path=self.mnist_path,
                             motion=self.motion, no_pair_prob=self.no_pair_prob)
    return {'video': np.asarray(out['video'], np.uint8),
            'label': np.asarray(out['label'], np.int32)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self._generate('train', self._order.indices(step, self._local))

  def _held_out_batches(self, split: str, size: int) -> Iterator[dict[str, np.ndarray]]:
    # Generated batch by batch on the first pass (so that a progress bar moves from the
    # start), then kept for the next evaluations.
    held = self._held.setdefault(split, {})

    def make_batch(idx: np.ndarray) -> dict[str, np.ndarray]:
      key = idx.tobytes()
      if key not in held:
        held[key] = self._generate(split, idx)
      return dict(held[key])

    return input_lib.padded_eval_batches(make_batch, size, self.eval_batch_size,
                                         self.process_index, self.process_count)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The val videos: what training evaluates, schedules and selects on."""
    return self._held_out_batches('val', self.val_size)

  def test_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The test videos: reported, never selected on."""
    return self._held_out_batches('test', self.eval_size)

  def digits(self, split: str = 'test') -> np.ndarray:
    """int32 [n, num_digits]: the digit classes of the videos `test_batches` (or, for
    'val', `eval_batches`) yield, in order (for the digit-oracle diagnostic)."""
    n = self.eval_size if split == 'test' else self.val_size
    return generator.generate_tracks(split, np.arange(n), num_digits=self.num_digits,
                                     seed=self.data_seed, mnist_path=self.mnist_path,
                                     motion=self.motion,
                                     no_pair_prob=self.no_pair_prob)['digits']
