"""Throughput of the SyncMNIST generator (videos/s), to check it never limits training.

Prints one JSON object: median videos/s of `rstg_jax.syncmnist.generator.generate` for 3 and
5 digits at a given batch size, and single-digit images/s of
`rstg_jax.syncmnist.pretrain_data.generate_single_digit`.
The one-off MNIST load is timed separately and excluded from the rates.

  python -m rstg_jax.bench syncmnist [--batch 64 --repeats 5 --split train]
  python -m rstg_jax.bench syncmnist      (the benchmark dispatcher calls main())
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

from absl import flags
import numpy as np

from rstg_jax import cli


def _median_rate(fn: Callable[[np.ndarray], object], batch: int, repeats: int, first: int) -> float:
  """Median items/s of ``fn(indices)`` over ``repeats`` batches of fresh indices.

  Fresh indices each repeat, so nothing is served from a cache; one untimed warm-up
  call first (first-call allocations, OpenBLAS start-up).
  """
  fn(np.arange(first, first + batch))
  times = []
  for r in range(1, repeats + 1):
    idx = np.arange(first + r * batch, first + (r + 1) * batch)
    start = time.perf_counter()
    fn(idx)
    times.append(time.perf_counter() - start)
  return batch / statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
  """Run the benchmark and print its result as one JSON object on stdout.

  Args:
    argv: command line arguments (default: sys.argv[1:]); see ``--help``.

  Returns:
    None, so that ``sys.exit(main())`` exits with status 0.
  """
  def define(fv):
    flags.DEFINE_integer('batch', 64, 'videos per generate() call', flag_values=fv)
    flags.DEFINE_integer('repeats', 5, 'timed calls per setting (median)', flag_values=fv)
    flags.DEFINE_enum('split', 'train', ['train', 'val', 'test'], 'split', flag_values=fv)
    flags.DEFINE_integer('seed', 0, 'generator seed', flag_values=fv)
    flags.DEFINE_string('mnist_path', None, 'local MNIST copy', flag_values=fv)

  args, _ = cli.parse_command(define, list(argv or []), 'python -m rstg_jax.bench syncmnist')
  if args.batch <= 0 or args.repeats <= 0:
    cli.usage_error('python -m rstg_jax.bench syncmnist', '--batch and --repeats must be positive')
  if (args.repeats + 1) * args.batch > 10_000:
    cli.usage_error('python -m rstg_jax.bench syncmnist',
                    '(--repeats + 1) * --batch must be at most 10000 (the test split size)')

  from rstg_jax.syncmnist import mnist, generator as syncmnist, pretrain_data

  start = time.perf_counter()
  mnist.load_mnist(args.split, args.mnist_path)
  load_s = time.perf_counter() - start

  def video_fn(k):
    return lambda idx: syncmnist.generate(args.split, idx, k, args.seed, args.mnist_path)

  result = {
      'benchmark': 'syncmnist',
      'split': args.split,
      'batch': args.batch,
      'repeats': args.repeats,
      'videos_per_s_3_digits': round(_median_rate(video_fn(3), args.batch, args.repeats, 0), 1),
      'videos_per_s_5_digits': round(_median_rate(video_fn(5), args.batch, args.repeats, 0), 1),
      'single_digit_images_per_s': round(
          _median_rate(
              lambda idx: pretrain_data.generate_single_digit(args.split, idx, args.seed,
                                                              args.mnist_path),
              args.batch,
              args.repeats,
              0,
          ),
          1,
      ),
      'mnist_load_s': round(load_s, 2),
      'mnist_source': mnist.mnist_source(args.mnist_path),
      'numpy': np.__version__,
      'python': platform.python_version(),
      'cpu_count': os.cpu_count(),
      'loadavg_1min': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None,
  }
  print(json.dumps(result))


if __name__ == '__main__':
  main()
