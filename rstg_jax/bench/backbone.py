"""The SyncMNIST backbone's forward and backward passes, with each way of computing its
kernels' gradients, side by side.

Prints one JSON object. For `SmallCNN` at the config's width and frames, on random
frames (the numbers depend on shapes only), at two batch shapes:

  - ``video_batch``: batch_size x 10 frames, what a fine-tuned (`backbone.freeze=False`)
    training step runs the backbone on;
  - ``pretrain_batch``: `backbone.pretrain.batch_size` frames, one pre-training step;

and for each `SmallCNN.kernel_grad` (``matmul``: as matmuls, `backbone.conv_valid`; ``xla``: XLA's
own kernel gradient), timed in turn (A B A B ...) so that both see the same machine
load: ``fwd_ms`` (forward), ``grad_ms`` (forward and the gradient of every parameter, the
frames not differentiated, as in training), ``grad_over_fwd``; then
``matmul_speedup`` = xla grad_ms / matmul grad_ms, and ``kernel_grad_auto``, what the
backbone uses by default on this backend.

  python -m rstg_jax.bench backbone [--config=configs/syncmnist_cpu.py] [--repeats 5]
      [--config.backbone.width=32 ...]
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence

from absl import flags

from rstg_jax import cli

_DEFAULT_CONFIG = 'configs/syncmnist_cpu.py'
KERNEL_GRADS = ('matmul', 'xla')


def measure(width: int, frames: int, batches: dict[str, int], repeats: int) -> dict:
  """{batch name: {kernel_grad: {fwd_ms, grad_ms, grad_over_fwd}, matmul_speedup}}."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from rstg_jax.bench.train import _interleaved_ms  # pylint: disable=g-import-not-at-top
  from rstg_jax.syncmnist.backbone import SmallCNN  # pylint: disable=g-import-not-at-top
  from rstg_jax.syncmnist.render import FRAME  # pylint: disable=g-import-not-at-top

  out = {}
  for name, n in batches.items():
    x = jnp.asarray(np.random.default_rng(0).random((n, FRAME, FRAME, frames)), jnp.float32)
    models = {k: SmallCNN(width, frames=frames, kernel_grad=k) for k in KERNEL_GRADS}
    params = models['xla'].init(jax.random.key(0), x[:1])
    fns = {}
    for k, m in models.items():
      fwd = jax.jit(lambda p, x, m=m: m.apply(p, x))
      grad = jax.jit(jax.grad(lambda p, x, m=m: jnp.mean(m.apply(p, x) ** 2)))
      fns[f'{k}_fwd'] = lambda f=fwd: jax.block_until_ready(f(params, x))
      fns[f'{k}_grad'] = lambda f=grad: jax.block_until_ready(f(params, x))
    ms = _interleaved_ms(fns, repeats)
    row = {'frames': n}
    for k in KERNEL_GRADS:
      row[k] = {'fwd_ms': round(ms[f'{k}_fwd'], 2), 'grad_ms': round(ms[f'{k}_grad'], 2),
                'grad_over_fwd': round(ms[f'{k}_grad'] / ms[f'{k}_fwd'], 2)}
    row['matmul_speedup'] = round(ms['xla_grad'] / ms['matmul_grad'], 2)
    out[name] = row
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the benchmark and prints its result as one JSON object on stdout."""
  prog = 'python -m rstg_jax.bench backbone'

  def define(fv):
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'experiment config',
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_integer('repeats', 5, 'timed calls per measurement (median)',
                         flag_values=fv)

  args, _ = cli.parse_command(define, list(argv or []), prog)
  if args.repeats <= 0:
    cli.usage_error(prog, '--repeats must be positive')
  config = args.config
  import jax  # pylint: disable=g-import-not-at-top

  from rstg_jax.syncmnist.motion import NUM_FRAMES  # pylint: disable=g-import-not-at-top
  batches = {'video_batch': int(config.batch_size) * NUM_FRAMES,
             'pretrain_batch': int(config.backbone.pretrain.batch_size)}
  result = {'benchmark': 'backbone', 'width': int(config.backbone.width),
            'frames': int(config.backbone.frames),
            **measure(int(config.backbone.width), int(config.backbone.frames), batches,
                      args.repeats),
            'kernel_grad_auto': 'matmul' if jax.default_backend() == 'cpu' else 'xla',
            'jax': jax.__version__, 'backend': jax.default_backend(),
            'python': platform.python_version(), 'cpu_count': os.cpu_count(),
            'loadavg_1min': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None}
  print(json.dumps(result))


if __name__ == '__main__':
  main()
