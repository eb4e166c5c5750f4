"""Keeps TensorFlow's and TFDS's own log noise out of the Something-Something path's output.

TensorFlow prints C++ notices (oneDNN, CPU features) and Python deprecation lines
("Instructions for updating"), and TFDS prints its preparation banner, progress bars and
deprecation warnings (`TensorInfo.dtype`). None of them says anything a user of this
project can act on, and they bury its own lines. `quiet_tensorflow()` silences them:

- `TF_CPP_MIN_LOG_LEVEL=2` (C++: errors only) and `TF_ENABLE_ONEDNN_OPTS=0`,
  unless the user set them: TensorFlow 2.19+ logs its oneDNN notice whatever the log
  level, and only when those kernels are on; the pipeline runs no op they accelerate
  (JPEG decoding, resizing, cropping, casts), so its output does not change. TensorFlow
  reads both when it is imported: call this before (the SSv1 task does);
- the `tensorflow` Python logger at ERROR;
- absl log records below ERROR that come from TensorFlow's or TFDS's own files (the
  project's warnings, e.g. the conversion summary, stay);
- Python warnings raised in TensorFlow's, TFDS's and Keras's modules;
- TFDS's progress bars.

Errors still show. Imports nothing heavy itself: TensorFlow is configured only if loaded.
"""

import logging
import os
import sys
import warnings

_TF_MODULES = r'(tensorflow|tensorflow_datasets|keras|tf_keras)(\..*)?$'
_TF_PATHS = (f'{os.sep}tensorflow{os.sep}', f'{os.sep}tensorflow_datasets{os.sep}',
             f'{os.sep}keras{os.sep}')


class _DropTensorFlowRecords(logging.Filter):
  """Drops log records below ERROR that TensorFlow's or TFDS's own code emitted."""

  def filter(self, record):
    return record.levelno >= logging.ERROR or not any(
        p in (record.pathname or '') for p in _TF_PATHS)


_FILTER = _DropTensorFlowRecords()


def quiet_tensorflow() -> None:
  """Silences TensorFlow and TFDS (see the module docstring); idempotent."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  logging.getLogger('tensorflow').setLevel(logging.ERROR)
  for name in ('absl', ''):  # absl's logger, and the root logger it may propagate to
    if _FILTER not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_FILTER)
  warnings.filterwarnings('ignore', module=_TF_MODULES)
  tfds = sys.modules.get('tensorflow_datasets')
  if tfds is not None:
    tfds.disable_progress_bar()
