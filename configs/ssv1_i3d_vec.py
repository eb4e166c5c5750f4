r"""Something-Something-v1: I3D ResNet-50 + RSTG-to-vec on res5 (paper Table 3).

Command:

  python -m rstg_jax.main --config=configs/ssv1_i3d_vec.py --workdir=runs/ssv1_i3d_vec \
      --config.data.root=PATH --config.init_from.path=kinetics_i3d_r50.npz
  python -m rstg_jax.evaluate --workdir=runs/ssv1_i3d_vec --checkpoint=best

The graph reads res5 (16x14x14x2048 for a 32x224x224 clip, res5 stride 1): nodes are
area-pooled, projected 2048 -> 512, processed by RSTG, read out with RSTG-to-vec (mean
over time, sum over nodes), projected back 512 -> 2048 and added to the backbone's
globally pooled features before dropout and the classifier, through a LayerNorm and a
residual scale initialised to 0 (so training starts from the plain backbone).

Paper (Table 3, sparse graph, Table 5): 47.7 top-1, 77.9 top-5, dense evaluation.
Recipe: as configs/ssv1_i3d.py (the same data, optimiser and schedule).

Expected runtime: not measured yet (the paper's Fig. 4: about 2x faster than res3-4).
Expected result: not measured yet; the paper reports 47.7 / 77.9.
"""

from configs import ssv1_i3d


def get_config():
  config = ssv1_i3d.get_config()
  config.rstg.placement = 'vec'
  return config
