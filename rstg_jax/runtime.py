"""Process-level settings that make XLA:CPU fast on large intermediates.

XLA:CPU allocates the intermediates of a jitted call afresh on every call. glibc serves
allocations above its mmap threshold (at most 32 MB by default) with a fresh mmap and
unmaps them on free, so every call touches new pages and pays a page fault per 4 KiB:
an edge gather producing a [2E, B, D] tensor (72 MB at Something-Something shapes) ran
8x slower than the same copy into reused memory. `reuse_freed_memory` raises the mmap
and trim thresholds so freed buffers stay in the heap and are reused; the price is that
the process keeps its peak memory instead of returning it to the OS, which is what a
training or benchmark process wants anyway.

The command-line entry points (`rstg_jax.main`, `rstg_jax.evaluate`, `rstg_jax.bench`)
call it at start; call it yourself in a notebook. `RSTG_NO_MALLOPT=1` turns it off.
"""

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory() -> bool:
  """Keeps freed buffers in the heap for reuse (glibc only). Returns True if applied."""
  if os.environ.get('RSTG_NO_MALLOPT') or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
      mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
