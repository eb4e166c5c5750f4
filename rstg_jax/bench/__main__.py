"""Benchmark dispatcher: `python -m rstg_jax.bench NAME [args]` prints one JSON object.

Names: graph (the RSTG module, issue targets vs a matmul measured in the same run),
train (where the time of a SyncMNIST training step goes: data, backbone, head, optimizer),
backbone (the SyncMNIST backbone's forward and backward with each kernel-gradient method),
syncmnist (the SyncMNIST generator), ssv1 (I3D-R50 + RSTG forward and training step, and
the graph's share of the time). Each lives in `rstg_jax/bench/NAME.py`.
"""

import importlib
import sys

from rstg_jax import cli
from rstg_jax import runtime

BENCHMARKS = {  # name -> what it measures (each prints one JSON object)
    'graph': 'the RSTG module against a matmul measured in the same run',
    'syncmnist': 'the SyncMNIST video generator',
    'ssv1': 'I3D-R50 + RSTG forward and training step, and the graph\'s share',
    'train': 'where a SyncMNIST training step\'s time goes',
    'backbone': 'the SyncMNIST backbone\'s backward pass, XLA\'s kernel gradient vs matmuls',
}


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  cli.subcommand('python -m rstg_jax.bench', BENCHMARKS, argv)
  runtime.reuse_freed_memory()  # as the training entry points do
  module = importlib.import_module(f'rstg_jax.bench.{argv[0]}')
  return module.main(argv[1:])


if __name__ == '__main__':
  sys.exit(main())
