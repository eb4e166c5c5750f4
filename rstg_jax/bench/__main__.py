"""Benchmark dispatcher: `python -m rstg_jax.bench NAME [args]` prints one JSON object.

Names: graph (the RSTG module, issue targets vs a matmul measured in the same run),
train (where the time of a SyncMNIST training step goes: data, backbone, head, optimizer),
syncmnist (the SyncMNIST generator), ssv1 (I3D-R50 + RSTG forward and training step, and
the graph's share of the time). Each lives in `rstg_jax/bench/NAME.py`.
"""

import importlib
import sys

from rstg_jax import runtime

BENCHMARKS = ('graph', 'syncmnist', 'ssv1', 'train')


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in BENCHMARKS:
    sys.exit(f"usage: python -m rstg_jax.bench {{{','.join(BENCHMARKS)}}} [options]\n"
             f'  (each benchmark takes --help)')
  runtime.reuse_freed_memory()  # as the training entry points do
  module = importlib.import_module(f'rstg_jax.bench.{argv[0]}')
  return module.main(argv[1:])


if __name__ == '__main__':
  sys.exit(main())
