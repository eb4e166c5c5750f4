"""Orbax's and asyncio's noise around checkpoint reads, kept off the user's terminal.

The errors themselves are not hidden: a read that fails raises, and the callers in
`rstg_jax.train.checkpoints` report it in one line (or fall back past it). What is dropped
is what orbax and asyncio print besides: warnings that are expected by design, and the
tracebacks of the reads that fail after the first one.
"""

import contextlib
import gc
import logging as logging_std
import sys

from absl import logging


class _DropOrbaxNoise(logging_std.Filter):
  """Orbax warnings that say nothing to the user: periodic saves between evaluations
  have no metrics by design, and every read-only manager (the evaluate command) says
  that its directory is read only."""

  _NOISE = ('did not provide metrics', 'Given directory is read only',
            'Metadata file does not exist', 'Failed to get item metadata')

  def filter(self, record):
    return not any(n in str(record.msg) for n in self._NOISE)


_ORBAX_NOISE = _DropOrbaxNoise()


class _DropAsyncioAftermath(logging_std.Filter):
  """asyncio's reports of a failed read's sibling tasks. When one array of a checkpoint
  cannot be read, orbax's read fails with that error (which we report, or fall back
  from), and the reads still in flight fail too, after it: asyncio then logs each of
  them at ERROR with a traceback ('unhandled exception during asyncio.run() shutdown',
  or 'Task exception was never retrieved' when collected), depending on timing."""

  _AFTERMATH = ('unhandled exception during asyncio.run() shutdown',
                'Task exception was never retrieved')

  def filter(self, record):
    return not str(record.msg).startswith(self._AFTERMATH)


_ASYNCIO_AFTERMATH = _DropAsyncioAftermath()


@contextlib.contextmanager
def reading():
  """Around an orbax read: a failure surfaces once, as its exception, without asyncio's
  tracebacks of the sibling reads (`_DropAsyncioAftermath`) or of the callbacks that
  fire after the read's event loop closed (`drop_closed_loop_noise`)."""
  drop_closed_loop_noise()
  log = logging_std.getLogger('asyncio')
  log.addFilter(_ASYNCIO_AFTERMATH)
  try:
    yield
  except Exception:
    gc.collect()  # sibling tasks orphaned by the failure report now, inside the filter
    raise
  finally:
    log.removeFilter(_ASYNCIO_AFTERMATH)


def drop_orbax_noise() -> None:
  """Installs `_DropOrbaxNoise` on absl's logger (idempotent)."""
  logging.get_absl_logger().addFilter(_ORBAX_NOISE)


def drop_closed_loop_noise() -> None:
  """Orbax's metadata read of a broken checkpoint leaves callbacks that fire after its
  event loop has closed; Python prints each as a 'RuntimeError: Event loop is closed'
  traceback (an unraisable exception). The read's own error is reported: drop those."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop', False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook
