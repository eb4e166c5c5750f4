"""Command-line helpers shared by `rstg_jax.main`, `rstg_jax.evaluate` and the progress bars."""

import sys

from absl import flags
from absl import logging


def parse_flags(argv):
  """absl flag parsing that reports a bad `--config.<field>` without a traceback.

  ml_collections raises a misspelt config field as an AttributeError (with "Did you mean")
  from inside flag parsing, where absl's app.run would print a long traceback; a
  ValueError of a config file's `get_config` (e.g. an unknown preset after `:`) comes as
  a flag error holding the whole traceback, of which only its last line is printed.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    last = str(e).rstrip().splitlines()[-1]
    if 'Error whilst parsing config file' in str(e) and last.startswith('ValueError: '):
      sys.exit(f'ERROR: {last.removeprefix("ValueError: ")}')
    sys.exit(f'FATAL Flags parsing error: {e}\n'
             'Pass --helpshort or --helpfull to see help on flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    msg = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    sys.exit(f'ERROR: bad config override: {msg}')


def quiet_logging():
  """WARNING and above, unless --verbosity was given: orbax logs every file it renames at
  INFO, which would bury the progress bar and our own summary lines (printed to stdout)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def progress_interval() -> float:
  """Seconds between progress-bar redraws: twice a second on a terminal, twice a minute
  when stderr is redirected to a file, which a livelier bar fills with carriage returns."""
  return 0.5 if sys.stderr.isatty() else 30.0


def parse_command(define, argv, prog: str):
  """absl flags for a command that is also called as a function (`main(argv)`).

  Args:
    define: define(flag_values) defines the command's flags on a fresh FlagValues, so
      that a second call (a test, the `bench` dispatcher) parses from scratch.
    argv: the arguments after the program name.
    prog: the command as a user types it, for messages.

  Returns:
    (flag_values, positional arguments). A bad or missing flag exits with status 2 and
    one line on stderr, without a traceback.
  """
  flag_values = flags.FlagValues()
  define(flag_values)
  if any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv):
    print(f'usage: {prog} [flags]\n{flag_values.get_help()}')
    sys.exit(0)
  try:
    rest = flag_values([prog, *argv])
  except flags.Error as e:
    usage_error(prog, str(e))
  return flag_values, rest[1:]


def usage_error(prog: str, message: str):
  """Exits with status 2 and `prog: error: message` on stderr."""
  print(f'{prog}: error: {message}', file=sys.stderr)
  sys.exit(2)


def flatten(d: dict, prefix: str = '') -> dict:
  """A nested (config) dict as {dotted name: value}, the names `--config.` takes."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def unflatten(flat: dict) -> dict:
  """The inverse of `flatten`: {dotted name: value} as a nested dict."""
  out = {}
  for name, value in flat.items():
    *parents, leaf = name.split('.')
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out
