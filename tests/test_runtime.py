"""The allocator setting of the entry points."""

import ctypes
import subprocess
import sys

import pytest

from rstg_jax import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_reuse_freed_memory_applies_and_can_be_turned_off(monkeypatch):
  try:
    ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):
    pytest.skip("not glibc")
  # In a child process: the setting is process-wide and must not leak into this one.
  code = "from rstg_jax import runtime; import sys; sys.exit(0 if runtime.reuse_freed_memory() else 3)"
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0
  monkeypatch.setenv("RSTG_NO_MALLOPT", "1")
  assert runtime.reuse_freed_memory() is False
