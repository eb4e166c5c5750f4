"""Speed of the Something-Something model: I3D-R50 + RSTG (res3 and res4), in clips/s.

Prints one JSON object. Everything is measured side by side in one run:

  - model: `configs/ssv1_i3d.py` (I3D ResNet-50, res5 stride 1, frozen BN, two
    RSTG-to-map graphs after res3 and res4, D=512, K=3, the config's scales), and the
    same backbone with `rstg.placement='none'` (the plain I3D-R50);
  - forward: `model.apply(..., train=False)` on a batch of uint8 clips, normalised on
    the device as in training;
  - train step: the trainer's own `train_step` (forward, backward, SGD-Nesterov update,
    dropout), i.e. what one optimisation step of `rstg_jax.main` costs;
  - graph share: 1 - time(backbone alone) / time(backbone + graphs), for both. The
    timed runs of the two models alternate, so load from other jobs on a shared machine
    falls on both alike; every run's time is in the output (`*_runs_s`).

The paper's shapes (32 x 224 x 224 per clip) are far too slow for a 2-core CPU, so the
default is a smaller clip (batch 2 of 8 x 112 x 112: res3 14x14, res4 7x7); the shapes
used are in the output. Parameters are random (filled from the shapes without compiling
`init`): only the time is measured. Times are medians of `--repeats` runs after one
warm-up (compile) call.

  python -m rstg_jax.bench ssv1 [--batch 2] [--frames 8] [--size 112] [--repeats 5]
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import ssv1_i3d
from rstg_jax import cli
from rstg_jax.ssv1 import models as ssv1_models
from rstg_jax.ssv1 import reader
from rstg_jax.ssv1 import task as ssv1_task
from rstg_jax.train import optim
from rstg_jax.train import state as state_lib
from rstg_jax.train import steps


def _once(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def _random_variables(model, input_shape, seed=0):
  """Variables of the right shapes and scale (He-scaled kernels, unit BN), no `init`."""
  shapes = ssv1_models.init_shapes(model, input_shape)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if name == 'kernel' or name.startswith('w'):
      fan_in = max(1, int(np.prod(leaf.shape[:-1])))
      return (rng.normal(size=leaf.shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    if name == 'residual_scale':
      return np.full(leaf.shape, 0.1, np.float32)  # the graph's output is used
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def build_cases(config, batch, frames, size):
  """(params summary, {'forward': (fn, args), 'train_step': (fn, args)}) of a config."""
  model = ssv1_models.create_ssv1_model(config)
  input_shape = (frames, size, size, 3)
  variables = _random_variables(model, input_shape)
  rng = np.random.default_rng(1)
  video = jnp.asarray(rng.integers(0, 256, (batch, *input_shape), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, config.data.num_classes, batch), jnp.int32)
  normalize = reader.normalize

  forward = jax.jit(lambda v, x: model.apply(v, normalize(x), train=False))
  tx = optim.create_optimizer(config.optim, lambda step: config.optim.learning_rate,
                              ssv1_task.TASK.frozen_mask(config, variables['params']))
  state = state_lib.create_train_state(variables['params'], variables['batch_stats'], tx)
  # No donation: the same state is reused by every timed call.
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   base_key=jax.random.key(0), preprocess=normalize))
  cases = {'forward': (forward, (variables, video)),
           'train_step': (step, (state, {'video': video, 'label': labels}))}
  return ssv1_models.param_summary(variables['params']), cases


def bench_models(configs: dict, batch, frames, size, repeats) -> dict:
  """Times every (model, case); the timed runs of the models alternate, so that a change
  of machine load during the run hits all of them alike (the machine may be shared)."""
  built = {name: build_cases(c, batch, frames, size) for name, c in configs.items()}
  out = {name: {'params': summary, 'compile_and_first_run_s': {}}
         for name, (summary, _) in built.items()}
  for case in ('forward', 'train_step'):
    for name, (_, cases) in built.items():
      fn, args = cases[case]
      out[name]['compile_and_first_run_s'][case] = _once(fn, *args)
    times = {name: [] for name in built}
    for _ in range(repeats):
      for name, (_, cases) in built.items():
        fn, args = cases[case]
        times[name].append(_once(fn, *args))
    for name in built:
      t = statistics.median(times[name])
      out[name][f'{case}_s'] = t
      out[name][f'{case}_clips_per_s'] = batch / t
      out[name][f'{case}_runs_s'] = times[name]
  return out


def main(argv=None):
  def define(fv):
    flags.DEFINE_integer('batch', 2, 'clips per step', flag_values=fv)
    flags.DEFINE_integer('frames', 8, 'frames per clip (paper: 32)', flag_values=fv)
    flags.DEFINE_integer('size', 112, 'crop size (paper: 224)', flag_values=fv)
    flags.DEFINE_integer('repeats', 5, 'timed runs (median)', flag_values=fv)

  args, _ = cli.parse_command(define, argv or [], 'python -m rstg_jax.bench ssv1')

  config = ssv1_i3d.get_config()
  config.batch_size = args.batch
  config.data.num_classes = 174  # SSv1's classes (the config reads them from the data)
  result = {
      'benchmark': 'ssv1',
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'machine': platform.machine(),
      'clip_shape': [args.batch, args.frames, args.size, args.size, 3],
      'paper_clip_shape': [2, 32, 224, 224, 3],
      'model': ('I3D-R50 (res5 stride 1, frozen BN) + RSTG-to-map res3 and res4, '
                f'scales {tuple(config.rstg.scales)}, D={config.rstg.dim}, '
                f'K={config.rstg.num_iters}, {config.ablation}'),
      'repeats': args.repeats,
  }
  backbone_config = ssv1_i3d.get_config()
  backbone_config.batch_size = args.batch
  backbone_config.data.num_classes = 174
  backbone_config.rstg.placement = 'none'
  timings = bench_models({'i3d_rstg_res3_4': config, 'i3d_backbone_only': backbone_config},
                         args.batch, args.frames, args.size, args.repeats)
  result.update(timings)
  full, backbone = timings['i3d_rstg_res3_4'], timings['i3d_backbone_only']
  result['graph_share_forward'] = 1.0 - backbone['forward_s'] / full['forward_s']
  result['graph_share_train_step'] = 1.0 - backbone['train_step_s'] / full['train_step_s']
  result['backbone_share_forward'] = 1.0 - result['graph_share_forward']
  result['backbone_share_train_step'] = 1.0 - result['graph_share_train_step']
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
