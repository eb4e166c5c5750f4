"""The allocator setting of the entry points: freed large buffers are reused, not remapped."""

import ctypes
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a child process (the setting is process-wide): 64 MB buffers (above glibc's largest
# dynamic mmap threshold, 32 MB) are allocated, touched and freed five times; prints the
# page faults of rounds 2..5. Reused heap memory faults once; fresh mmaps fault every round.
_CHILD = r'''
import ctypes, resource, sys
from rstg_jax import runtime
applied = runtime.reuse_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(applied), sum(faults[1:]))
'''


def _run_child(**env) -> tuple[int, int]:
  out = subprocess.run([sys.executable, '-c', _CHILD], check=True, capture_output=True,
                       text=True, env={**os.environ, 'PYTHONPATH': _ROOT, **env})
  applied, faults = out.stdout.split()
  return int(applied), int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
def test_reuse_freed_memory_stops_page_faults_and_can_be_turned_off():
  try:
    ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    pytest.skip('not glibc')
  applied, faults_on = _run_child(RSTG_NO_MALLOPT='')
  off, faults_off = _run_child(RSTG_NO_MALLOPT='1')
  assert (applied, off) == (1, 0)
  pages = 4 * (64 << 20) // 4096  # 4 rounds of 64 MB in 4 KiB pages
  assert faults_off > pages // 2     # fresh mmap every round: a fault per page
  assert faults_on < faults_off // 10  # reused heap: the pages are already mapped
