"""Benchmarks: `python -m rstg_jax.bench graph|syncmnist|ssv1` prints one JSON object."""
