"""The RSTG classifier under a batch sharded over 4 (fake CPU) devices equals 1 device.

The trainer's own 4-vs-1 test uses a tiny conv model; this one runs the real SyncMNIST
RSTG classifier, whose jraph gathers and segment sums must partition along the batch.
Runs in a child process: the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r'''
import json
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
from rstg_jax.syncmnist.rstg_classifier import RSTGClassifier

assert jax.device_count() == 4, jax.devices()
model = RSTGClassifier(num_classes=46, width=8, dim=8, num_iters=2, scales=(1, 2, 3),
                       ablation='positional')
video = jax.random.uniform(jax.random.key(0), (8, 4, 64, 64, 1))
labels = jnp.arange(8) % 46
variables = model.init(jax.random.key(1), video[:1])

def loss_and_grads(variables, video, labels):
  def loss_fn(params):
    logits, _ = model.apply({**variables, 'params': params}, video, train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return jax.value_and_grad(loss_fn)(variables['params'])

one = jax.devices()[0]
single = jax.jit(loss_and_grads)(*jax.device_put((variables, video, labels), one))
mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
video4, labels4 = jax.device_put(video, data), jax.device_put(labels, data)
assert len(video4.addressable_shards) == 4 and video4.addressable_shards[0].data.shape[0] == 2
sharded = jax.jit(loss_and_grads, in_shardings=(rep, data, data))(
    jax.device_put(variables, rep), video4, labels4)
out = [[np.asarray(x).tolist() for x in jax.tree.leaves(r)] for r in (single, sharded)]
print('RESULT' + json.dumps(out))
'''


def test_rstg_classifier_on_four_devices_equals_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', _CHILD], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT')][0]
  single, sharded = json.loads(line[len('RESULT'):])
  assert len(single) == len(sharded) > 10  # the loss and every parameter's gradient
  for a, b in zip(single, sharded, strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    # Reduction order differs across devices (float32 sums, BatchNorm statistics, the
    # attention softmax): compare on the scale of each array. A batch split wrongly
    # (e.g. statistics per shard) would differ by O(1) of that scale.
    scale = float(np.abs(a).max()) if a.size else 0.0
    assert float(np.abs(a - b).max()) <= 1e-3 * scale + 1e-7, (a, b)
