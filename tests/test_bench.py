"""The benchmarks print one JSON object with the documented fields (the README's tables
are read off them), and the graph benchmark's FLOP count is the traced program's."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxpr_flops
from configs import syncmnist_quick
from rstg_jax.bench import graph as graph_bench
from rstg_jax.graph import build_graph
from rstg_jax.model import RSTG

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args, timeout=600) -> dict:
  proc = subprocess.run([sys.executable, '-m', 'rstg_jax.bench', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout)  # the whole of stdout is one JSON object


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow  # 45 s on 2 idle cores; the FLOP counts it reports are tested below
def test_graph_benchmark_json():
  out = _bench('graph', '--quick', '--repeats=1')
  assert out['benchmark'] == 'graph' and out['dim'] == 64 and out['batch'] == 2
  assert _positive(out['matmul_gflops'])
  for shapes, nodes in (('ssv1', 30), ('syncmnist', 14)):
    assert set(out[shapes]) == {'sparse', 'full'}
    sparse, full = out[shapes]['sparse'], out[shapes]['full']
    assert sparse['nodes'] == full['nodes'] == nodes
    assert sparse['directed_edges'] < full['directed_edges'] == nodes * (nodes - 1)
    for case in (sparse, full):
      for key in ('fwd_s', 'fwd_clips_per_s', 'fwd_bwd_s', 'fwd_bwd_clips_per_s',
                  'fwd_fraction_of_matmul', 'fwd_bwd_fraction_of_matmul',
                  'matmul_gflops_beside', 'model_gflop_fwd'):
        assert _positive(case[key]), (shapes, key, case)
      assert case['fwd_clips_per_s'] == pytest.approx(2 / case['fwd_s'])
  assert set(out['time_scaling_fwd_bwd_s']) == {'8', '16', '32', '64'}
  assert all(_positive(v) for v in out['time_scaling_fwd_bwd_s'].values())
  assert out['t64_over_t16'] == pytest.approx(
      out['time_scaling_fwd_bwd_s']['64'] / out['time_scaling_fwd_bwd_s']['16'])
  assert set(out['targets']) == {
      'fraction_of_matmul>=0.60', 't64_over_t16<=4.4', 'paper_module_fraction_of_matmul>=0.85',
      'space_full_syncmnist_speedup>=1.5', 'space_sparse_syncmnist_auto_not_slower',
      'space_paper_auto_not_slower'}
  # Both space-stage implementations side by side at the three shapes, "auto" named.
  space = out['space_stage']
  assert set(space) == {'syncmnist_full', 'syncmnist_sparse', 'paper'}
  assert [space[k]['messages'] for k in ('syncmnist_full', 'syncmnist_sparse', 'paper')] == [
      182, 90, 274]
  for case in space.values():
    assert set(case['fwd_bwd_s']) == {'segment', 'dense'}
    assert all(_positive(t) for t in case['fwd_bwd_s'].values())
    assert case['dense_speedup'] == pytest.approx(
        case['fwd_bwd_s']['segment'] / case['fwd_bwd_s']['dense'])
    assert case['auto_speedup'] == pytest.approx(
        case['fwd_bwd_s']['segment'] / case['fwd_bwd_s'][case['auto']])
  assert space['paper']['auto'] == 'segment' and space['syncmnist_full']['auto'] == 'dense'
  # Where the paper-shape module's time goes: its matmuls alone, and the rest.
  account = out['ssv1']['sparse']['fwd_bwd_account']
  assert 0 < account['matmul_share_of_time'] and _positive(account['matmul_gflop'])
  assert account['other_s'] == pytest.approx(
      out['ssv1']['sparse']['fwd_bwd_s'] - account['matmul_s_alone'])


def test_syncmnist_benchmark_json():
  out = _bench('syncmnist', '--batch=8', '--repeats=1')
  assert out['benchmark'] == 'syncmnist' and out['batch'] == 8
  for key in ('videos_per_s_3_digits', 'videos_per_s_5_digits',
              'single_digit_images_per_s'):
    assert _positive(out[key]), key
  assert isinstance(out['mnist_source'], str) and out['mnist_source']


def test_train_benchmark_json():
  """The training step's split: every part measured, the step at least as slow as its
  slowest part, and the with-data rate consistent with its ms per step."""
  out = _bench('train', '--steps=3', '--repeats=2', '--config.batch_size=4',
               '--config.backbone.width=4', '--config.rstg.dim=8',
               '--config.data.prefetch=1')
  assert out['benchmark'] == 'train' and out['batch_size'] == 4 and out['timed_steps'] == 2
  parts = ('data_ms', 'backbone_fwd_ms', 'head_fwd_bwd_ms', 'optimizer_ms', 'step_ms',
           'ms_per_step_with_data', 'videos_per_s')
  assert all(_positive(out[k]) for k in parts), out
  assert out['videos_per_s'] == pytest.approx(4e3 / out['ms_per_step_with_data'], rel=0.02)
  assert out['backbone_frozen'] is True
  assert out['ablation'] == syncmnist_quick.get_config().ablation == 'all_temp'
  # Each space-stage implementation timed, and run as named; the top-level numbers are
  # those of the one the model runs by default (dense for the quick config's full graph).
  impls = out['space_impls']
  assert set(impls) == {'segment', 'dense'} and out['space_impl_auto'] == ['dense']
  for name, numbers in impls.items():
    assert numbers['space_impl_run'] == [name]
    assert all(_positive(numbers[k]) for k in ('videos_per_s', 'step_ms', 'head_fwd_bwd_ms'))
  assert out['step_ms'] == impls['dense']['step_ms']
  assert out['dense_over_segment']['videos_per_s'] == pytest.approx(
      impls['dense']['videos_per_s'] / impls['segment']['videos_per_s'], rel=0.01)


def test_backbone_benchmark_json():
  """Both kernel-gradient methods timed at both batch shapes, the speed-up their ratio,
  and the default named for this backend."""
  out = _bench('backbone', '--repeats=1', '--config.batch_size=2', '--config.backbone.width=4',
               '--config.backbone.pretrain.batch_size=3')
  assert out['benchmark'] == 'backbone' and out['width'] == 4
  assert out['video_batch']['frames'] == 20 and out['pretrain_batch']['frames'] == 3
  for batch in ('video_batch', 'pretrain_batch'):
    row = out[batch]
    for k in ('matmul', 'xla'):
      assert all(_positive(row[k][f]) for f in ('fwd_ms', 'grad_ms', 'grad_over_fwd')), row
    assert row['matmul_speedup'] == pytest.approx(
        row['xla']['grad_ms'] / row['matmul']['grad_ms'], rel=0.02, abs=0.01)
  assert out['kernel_grad_auto'] == ('matmul' if out['backend'] == 'cpu' else 'xla')


@pytest.mark.slow
def test_ssv1_benchmark_json():
  out = _bench('ssv1', '--batch=1', '--frames=4', '--size=32', '--repeats=1', timeout=1200)
  assert out['benchmark'] == 'ssv1' and out['clip_shape'] == [1, 4, 32, 32, 3]
  for model in ('i3d_rstg_res3_4', 'i3d_backbone_only'):
    assert _positive(out[model]['forward_s']) and _positive(out[model]['train_step_s'])
  assert out['graph_share_forward'] + out['backbone_share_forward'] == pytest.approx(1.0)


@pytest.mark.parametrize('impl', ['segment', 'dense'])
@pytest.mark.parametrize('adjacency', ['sparse', 'full'])
def test_model_flops_are_the_traced_matmuls_within_4_percent(adjacency, impl):
  """`model_flops` (the GFLOP/s numerator) counts the work of the traced model: at least
  all of its matmul FLOPs, and at most 4% more (the elementwise per-edge sums and
  attention products it also counts make 2-3.3% here), for each adjacency and each
  space-stage implementation. Catches a count made on the wrong graph (the sparse
  graph's 90 messages for the full graph's 182: the count falls 20% below the
  matmuls), a dense count without the masked pairs, or an LSTM matmul left out."""
  graph = build_graph((1, 2, 3), 6, adjacency=adjacency)
  model = RSTG(graph, dim=32, num_iters=3, schedule='all_temp', impl=impl)
  x = jnp.zeros((2, 10, graph.num_nodes, 32))
  variables = model.init(jax.random.key(0), x)
  traced = jax.make_jaxpr(model.apply)(variables, x)
  claimed = graph_bench.model_flops(graph, 32, 3, frames=2 * 10, impl=impl)
  matmuls = jaxpr_flops.count(traced, matmuls_only=True)
  assert matmuls <= claimed <= 1.04 * matmuls, claimed / matmuls
