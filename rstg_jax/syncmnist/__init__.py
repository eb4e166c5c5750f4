"""The SyncMNIST task: MNIST sources, the video generator, models, pre-training, figures.

`protocol(config)` names the protocol a SyncMNIST config follows ('paper',
'motion_backbone' or 'privileged'; `rstg_jax.syncmnist.protocols`).
"""

from rstg_jax.syncmnist.protocols import PROTOCOLS, explain, protocol  # noqa: F401
