"""The project's error types: problems a user can fix, each reported as one line.

Every error the project raises for bad input (a config value, the data, a checkpoint)
derives from `RSTGError`. The entry points (`rstg_jax.main`, `rstg_jax.evaluate`) catch
`RSTGError` and print `ERROR: <message>` with no traceback; any other exception is a bug
and keeps its traceback. A task raises these (or subclasses of them, such as the SSv1
reader's `SSv1DataError`), so the entry points name no task.

  ConfigError      a config value that means nothing or that the model or data set
                   would reject later (checked before the workdir is created)
  DataError        the data set is missing, unreadable or refused (MNIST not found, a
                   hostile pickle, SSv1 label files, prepared shards of another copy)
  CheckpointError  a checkpoint that cannot be read, resumed, or does not fit the model
  DivergedError    the loss became NaN or inf (training or backbone pre-training)

The first three are ValueErrors and `DivergedError` a FloatingPointError, so code that
caught those before still catches them. Messages are one line that says what to fix.
"""


class RSTGError(Exception):
  """Bad input that the user can fix; the message is one line saying how."""


class ConfigError(RSTGError, ValueError):
  """A config value that parses but means nothing, or that the model or data rejects."""


class DataError(RSTGError, ValueError):
  """The data set is missing, unreadable or refused."""


class CheckpointError(RSTGError, ValueError):
  """A checkpoint that cannot be read or resumed, or that does not fit the model."""


class DivergedError(RSTGError, FloatingPointError):
  """The loss (or the gradients) became NaN or inf."""

