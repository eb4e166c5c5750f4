"""`python -m rstg_jax.convert`: the Caffe2 checkpoint converter's command line.

The converter itself is `rstg_jax.ssv1.convert` (Something-Something's ResNets); this
entry point keeps the command users know.
"""

from rstg_jax.ssv1 import convert

if __name__ == '__main__':
  convert.run_cli()
