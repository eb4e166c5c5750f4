r"""Something-Something-v1 baseline: Non-local I3D ResNet-50, no graph (Table 2, "NL I3D").

Command (the Kinetics NL-I3D checkpoint holds the 5 non-local blocks; with a plain I3D
checkpoint add --config.init_from.dont_load='("(params|batch_stats)/nonlocal_.*",)' so they
start at their identity init):

  python -m rstg_jax.convert --src i3d_nonlocal_8x8_IN_pretrain_400k.pkl \
      --dst kinetics_nl_i3d_r50.npz --arch i3d_r50
  python -m rstg_jax.main --config=configs/ssv1_i3d_nl.py --workdir=runs/ssv1_i3d_nl \
      --config.data.root=PATH --config.init_from.path=kinetics_nl_i3d_r50.npz
  python -m rstg_jax.evaluate --workdir=runs/ssv1_i3d_nl --checkpoint=best

NL-I3D: I3D-R50 plus 5 embedded-Gaussian non-local blocks, after blocks 1 and 3 of res3
and 1, 3 and 5 of res4 (Wang et al. 2018).

Paper (Table 2, quoting Wang and Gupta 2018): 44.4 top-1, 76.0 top-5.
Recipe: as configs/ssv1_i3d.py (our training of the baseline, not the one quoted).
Stem: 'caffe2' (pool1 unpadded, as the Caffe2 Kinetics pickle was trained; Table 4's
56x56 res2 is the padded 'pyslowfast' stem), see configs/ssv1_i3d.py.

Expected runtime: not measured yet.
Expected result: not measured yet; the paper quotes 44.4 / 76.0.
"""

from configs import ssv1_i3d


def get_config():
  config = ssv1_i3d.get_config()
  config.backbone.arch = 'i3d'
  config.backbone.nonlocal_blocks = True
  config.rstg.placement = 'none'
  return config
