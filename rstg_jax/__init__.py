"""rstg_jax: Recurrent Space-time Graph neural networks (Nicolicioiu, Duta, Leordeanu,
NeurIPS 2019) in JAX and Flax.

The core is small and functional:
  - `rstg_jax.graph`: the static multi-scale grid graph (`build_graph`).
  - `rstg_jax.stages`: the space stage as jitted segment-sum message passing.
  - `rstg_jax.model`: the time stage, schedules, readouts and the online mode.
"""

__version__ = '0.1.0'
