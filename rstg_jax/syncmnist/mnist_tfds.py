"""The tensorflow_datasets source of MNIST: an export to ``.npz`` in a subprocess.

Source (b) of :mod:`rstg_jax.syncmnist.mnist`. TensorFlow never enters the training
process: ``python -m rstg_jax.syncmnist.mnist export-tfds --out FILE`` (the command of
:func:`main`) loads tfds "mnist" in a subprocess and writes an ``.npz`` atomically into
the cache directory (``$RSTG_CACHE_DIR``, default ``~/.cache/rstg_jax``), which the
loader then reads like a local copy. This module holds that command, the subprocess that
runs it (with a timeout that ends its whole process group) and the cheap checks that
decide whether it is worth starting: a prepared tfds copy, or a 3-second TCP probe of the
download host.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Environment variable naming the cache directory of the tfds export.
CACHE_ENV_VAR = 'RSTG_CACHE_DIR'

#: File name of the tfds export inside the cache directory.
TFDS_CACHE_NAME = 'mnist_tfds.npz'

#: Seconds the tfds export subprocess may run (it downloads MNIST on first use).
TFDS_EXPORT_TIMEOUT_S = 300.0


def cache_dir() -> Path:
  """Cache directory of this package: ``$RSTG_CACHE_DIR``, else ``~/.cache/rstg_jax``."""
  return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / '.cache' / 'rstg_jax').expanduser()


def tfds_cache_path() -> Path:
  """Where the tfds export is written and looked for: ``cache_dir() / mnist_tfds.npz``."""
  return cache_dir() / TFDS_CACHE_NAME


def export_tfds_npz(out: str | os.PathLike) -> Path:
  """Load tfds "mnist" and write it to ``out`` as an ``.npz``, atomically.

  This imports ``tensorflow_datasets`` (hence TensorFlow), so it is meant to run in
  its own process: ``python -m rstg_jax.syncmnist.mnist export-tfds --out FILE``, which
  the loader (``rstg_jax.syncmnist.mnist``) spawns. The arrays are written to a
  temporary file in the same directory and moved into place with ``os.replace``, so
  readers never see a partial file, even with several exports racing.

  Args:
    out: destination ``.npz`` path; its directory is created if needed.

  Returns:
    The destination path.
  """
  import tensorflow_datasets as tfds  # noqa: PLC0415 - only in the export subprocess
  # The loader's splits and checks; imported here because the loader imports this module.
  from rstg_jax.syncmnist.mnist import SPLITS, validate  # noqa: PLC0415

  arrays = {}
  for split in SPLITS:
    ds = tfds.as_numpy(tfds.load('mnist', split=split, batch_size=-1))
    images, labels = validate(ds['image'], ds['label'], f'tfds mnist ({split})')
    arrays[f'x_{split}'], arrays[f'y_{split}'] = images, labels
  out = Path(out).expanduser()
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, out)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return out


_EXPORT_ERROR_PREFIX = 'rstg_jax export-tfds failed:'


def _failure_reason(stderr: str, returncode: int) -> str:
  """One-line reason from the export subprocess's stderr (its own error line if any)."""
  lines = [line.strip() for line in (stderr or '').splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith(_EXPORT_ERROR_PREFIX):
      return line[len(_EXPORT_ERROR_PREFIX):].strip()
  return lines[-1] if lines else f'exit status {returncode}'


def run_tfds_export(out: Path) -> str | None:
  """Run the export subprocess; None on success, else a one-line reason."""
  env = dict(os.environ)
  # Make this package importable in the child even when it is not installed, and
  # keep TensorFlow there off the GPUs and quiet.
  package_root = str(Path(__file__).resolve().parents[2])
  env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
  env['CUDA_VISIBLE_DEVICES'] = '-1'
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  cmd = [sys.executable, '-m', 'rstg_jax.syncmnist.mnist', 'export-tfds', '--out', str(out)]
  try:
    # Own session, so a timeout ends the whole group (download helpers included).
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
  except OSError as err:
    return f'could not start {sys.executable}: {err}'
  try:
    _, stderr = proc.communicate(timeout=TFDS_EXPORT_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
      proc.kill()
    proc.communicate()
    return f'timed out after {TFDS_EXPORT_TIMEOUT_S:g} s'
  if proc.returncode != 0:
    logger.debug('tfds export subprocess stderr:\n%s', stderr)
    return _failure_reason(stderr, proc.returncode)
  if not out.is_file():
    return f'exited 0 but wrote no {out}'
  return None


#: Where tfds downloads MNIST from; probed before spawning the export.
TFDS_MNIST_HOST = ('storage.googleapis.com', 443)


def tfds_unreachable_reason() -> str | None:
  """Why a tfds MNIST export cannot work here, or None if it may.

  Offline, tfds retries its download with back-off for minutes before failing, and
  importing TensorFlow alone takes seconds: a prepared tfds copy or a 3-second TCP
  probe of the download host decides first.
  """
  data_dir = Path(os.environ.get('TFDS_DATA_DIR', Path.home() / 'tensorflow_datasets'))
  # A prepared tfds dataset has <version>/dataset_info.json; a bare folder may be
  # the leftover of a download that failed.
  if any((data_dir / 'mnist').glob('*/dataset_info.json')):
    return None
  try:
    socket.create_connection(TFDS_MNIST_HOST, timeout=3).close()
  except OSError as err:
    return (f'no prepared copy in {data_dir} and {TFDS_MNIST_HOST[0]} is unreachable '
            f'({err.__class__.__name__})')
  return None


def main(argv: list[str] | None = None) -> int:
  """``python -m rstg_jax.syncmnist.mnist export-tfds [--out FILE]``: write the tfds export.

  This is the command the loader spawns; it can also be run by hand (with network
  access) to fill the cache before training.
  """
  from rstg_jax import cli  # noqa: PLC0415

  def define(fv):
    from absl import flags  # noqa: PLC0415
    flags.DEFINE_string('out', None, f'output .npz (default $RSTG_CACHE_DIR/'
                        f'{TFDS_CACHE_NAME}, i.e. {tfds_cache_path()})', flag_values=fv)

  prog = 'python -m rstg_jax.syncmnist.mnist'
  argv = list(sys.argv[1:] if argv is None else argv)
  cli.subcommand(prog, {'export-tfds': 'write the MNIST digits of tensorflow-datasets '
                                       'as an .npz (the loader runs this)'}, argv)
  args, rest = cli.parse_command(define, argv[1:], prog)
  if rest:
    cli.usage_error(prog, f'unexpected arguments {rest}')
  out = Path(args.out) if args.out else tfds_cache_path()
  try:
    export_tfds_npz(out)
  except Exception as err:  # one line the parent can log; the traceback is not needed
    msg = ' '.join(f'{type(err).__name__}: {err}'.split())
    print(f'{_EXPORT_ERROR_PREFIX} {msg}', file=sys.stderr)
    return 1
  print(out)
  return 0

