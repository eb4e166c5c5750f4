"""Command-line helpers shared by the entry points (flags, one-line errors) and the progress
bars."""

import os
import re
import sys
from typing import Optional

from absl import flags
from absl import logging

HELP_FLAGS = ('-h', '-help', '--help', '-helpshort', '--helpshort', '-helpfull', '--helpfull',
              '-?')


def parse_flags(argv):
  """absl flag parsing for `app.run` that reports bad input in one line, without a traceback.

  - `--help` (and -h, --helpshort, --helpfull) prints the usage and exits 0 (absl exits 1);
  - a `--config` file that does not exist is named as missing;
  - a misspelt config field, which ml_collections raises as an AttributeError or KeyError
    with a Python repr inside: `Unknown field 'batchsize'; did you mean 'batch_size'?`;
  - a ValueError of a config file's `get_config` (e.g. an unknown preset after `:`), which
    absl wraps in a flag error holding the whole traceback: only its last line;
  - any other flag error: `ERROR: <absl's message>` and where to find the help.
  """
  args = list(argv[1:])
  if '--' in args:
    args = args[:args.index('--')]
  wanted = [a for a in args if a in HELP_FLAGS]
  if wanted:
    from absl import app  # pylint: disable=g-import-not-at-top
    app.usage(shorthelp=wanted[0] not in ('-helpfull', '--helpfull'), writeto_stdout=True,
              exitcode=0)
  missing = missing_config_file(args)
  if missing:
    sys.exit(f'ERROR: {missing}')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'ERROR: {config_file_error(e) or f"{e} (see --help)"}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(f'ERROR: {bad_override_message(e, args)}')


def config_file_error(e: Exception) -> Optional[str]:
  """The message of a ValueError that a config file's `get_config` raised (e.g. an
  unknown preset after `:`), which absl wraps, whole traceback included, in a flag error;
  None for any other error."""
  text = str(e).rstrip()
  last = text.splitlines()[-1] if text else ''
  if 'Error whilst parsing config file' in text and last.startswith('ValueError: '):
    return last.removeprefix('ValueError: ')
  return None


def missing_config_file(args) -> str:
  """'config file ... does not exist' if the last `--config=PATH` names no file, else ''."""
  paths = [a.split('=', 1)[1] for a in args if a.startswith('--config=')]
  paths += [b for a, b in zip(args, args[1:]) if a == '--config']
  if not paths:
    return ''
  path = paths[-1].split(':', 1)[0]  # `file.py:arg` passes `arg` to get_config
  if os.path.isfile(path):
    return ''
  return (f'config file {path!r} does not exist (--config; e.g. '
          '--config=configs/syncmnist_quick.py).')


def bad_override_message(e: BaseException, args) -> str:
  """One line for an error ml_collections raised while applying `--config.<field>=...`."""
  while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...))
    e = e.args[0]
  text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  m = re.match(r"""\s*['"]([^'"\n]+)['"]""", text)
  if not isinstance(e, (AttributeError, KeyError)) or not m:
    return f'bad config override: {" ".join(text.split())}'
  key = m.group(1)
  field, arg = key, None
  for a in args:  # the override that names the key: its full dotted path
    path = a.split('=', 1)[0][len('--config.'):] if a.startswith('--config.') else ''
    parts = path.split('.')
    if key in parts:
      field, arg = '.'.join(parts[:parts.index(key) + 1]), a
      break
  hint = re.search(r'Did you mean "([^"]+)" instead of', text)
  if hint:
    return f'Unknown field {field!r}; did you mean {field[:-len(key)] + hint.group(1)!r}?'
  return (f'Unknown field {field!r}' + (f' ({arg})' if arg else '')
          + '; see the config file for the fields.')


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


def subcommand(prog: str, commands: dict[str, str], argv) -> str:
  """The subcommand `argv[0]` of a command with several (`figures show`, `bench graph`).

  `--help` (or -h) before any subcommand lists them and exits 0; a missing or unknown
  subcommand is a usage error (status 2) that lists them too.
  """
  listing = '\n'.join(f'  {name:<12} {what}' for name, what in commands.items())
  usage = (f'usage: {prog} {{{",".join(commands)}}} [flags]\n\nsubcommands:\n{listing}\n\n'
           f'`{prog} SUBCOMMAND --help` lists its flags.')
  if not argv or argv[0] in HELP_FLAGS:
    if argv:
      print(usage)
      sys.exit(0)
    usage_error(prog, f'give a subcommand: {", ".join(commands)} (see --help)')
  if argv[0] not in commands:
    usage_error(prog, f'unknown subcommand {argv[0]!r}; valid: {", ".join(commands)} '
                '(see --help)')
  return argv[0]


def output_path_error(flag: str, path: str, *, folder: bool = False) -> Optional[str]:
  """One line if an output path cannot be written (checked before any work), else None.

  Args:
    flag: the flag that names it, e.g. '--out'.
    path: a file to write (its folder must exist and be writable, and it must not be a
      folder), or with `folder` a folder to write into (it must exist and be writable).
  """
  if folder:
    where = path
    if not os.path.isdir(path):
      return f'{flag}={path!r}: no such folder.'
  else:
    if os.path.isdir(path):
      return f'{flag}={path!r} is a folder; give a file name.'
    where = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where):
      return f'{flag}={path!r}: the folder {where!r} does not exist; create it first.'
  if not os.access(where, os.W_OK | os.X_OK):
    return f'{flag}={path!r}: the folder {where!r} is not writable.'
  return None


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
