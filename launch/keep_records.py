#!/usr/bin/env python3
r"""launch/keep_records.py: keep the small text record of finished runs, for git.

  python launch/keep_records.py runs/table1_fair_tl1 docs/records/table1_fair

A run folder holds checkpoints (megabytes) beside a few kilobytes that say what the run
was and what it measured. A machine that is reset loses both; this copies the second
part of every finished run under SRC (a folder with the trainer's DONE marker) to
DEST/<run>/, so that `python -m rstg_jax.report DEST` rebuilds the table, its ranks
and its figure from files a commit can hold:

- sweep.json, config.json and DONE as they are;
- metrics.jsonl with every val and test row and one train row per --train_every steps
  (default 500; the train rows are logged every few steps and the report reads only the
  last one's loss and the rows' elapsed time);
- log.txt without the progress bars (the command, data, protocol, backbone, parameter
  counts, the test result and the digit oracle's breakdown stay).

Runs that are not finished are listed and left out; a run already in DEST is rewritten
(a record is a copy, never edited by hand). Nothing under SRC changes.
"""

import json
import os
import re
import shutil
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from rstg_jax import cli  # pylint: disable=g-import-not-at-top
from rstg_jax import report  # pylint: disable=g-import-not-at-top
from rstg_jax.run_status import read_jsonl  # pylint: disable=g-import-not-at-top

TRAIN_EVERY = flags.DEFINE_integer('train_every', 500, 'keep one train row per this many '
                                   'steps (val and test rows are all kept)', lower_bound=1)
COPIED = ('sweep.json', 'config.json', 'DONE')
# A tqdm bar as the trainer's log holds it: 'label:  47%|####   | 467/1000 [01:00<...]'.
_BAR = re.compile(r'(?:[^\r\n|%]*?:\s*)?\d+%\|[^|\r\n]*\|[^\]\r\n]*\]')


def thin_metrics(rows: list[dict], train_every: int) -> list[dict]:
  """Every row but the train rows between multiples of train_every (the last train row
  is kept too, so the record ends where the run did)."""
  train = [r for r in rows if r.get('split') == 'train']
  last = train[-1] if train else None
  return [r for r in rows if r.get('split') != 'train' or r is last
          or r.get('step', 0) % train_every == 0]


def strip_bars(text: str) -> str:
  """The log without its progress bars (and the blank lines they leave)."""
  lines = []
  for line in _BAR.sub('', text).replace('\r', '\n').split('\n'):
    if line.strip():
      lines.append(line.rstrip())
  return '\n'.join(lines) + '\n'


def keep(src: str, dest: str, train_every: int = 500) -> tuple[list[str], list[str]]:
  """Copies the records of the finished runs under src to dest; returns (kept, skipped)
  run names (paths relative to src)."""
  kept, skipped = [], []
  for rundir in report.find_runs(src):
    name = os.path.relpath(rundir, src)
    if not os.path.exists(os.path.join(rundir, 'DONE')):
      skipped.append(name)
      continue
    out = os.path.join(dest, name)
    os.makedirs(out, exist_ok=True)
    for f in COPIED:
      if os.path.exists(os.path.join(rundir, f)):
        shutil.copyfile(os.path.join(rundir, f), os.path.join(out, f))
    rows = thin_metrics(read_jsonl(os.path.join(rundir, 'metrics.jsonl')), train_every)
    with open(os.path.join(out, 'metrics.jsonl'), 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
    log = os.path.join(rundir, 'log.txt')
    if os.path.exists(log):
      with open(log, errors='replace') as f:
        text = strip_bars(f.read())
      with open(os.path.join(out, 'log.txt'), 'w') as f:
        f.write(text)
    kept.append(name)
  return kept, skipped


def main(argv):
  if len(argv) != 3:
    raise SystemExit('usage: python launch/keep_records.py SRC DEST [--train_every=500]')
  src, dest = argv[1:]
  if not os.path.isdir(src):
    raise SystemExit(f'ERROR: SRC {src!r} is not a folder of runs.')
  # Before copying anything: DEST is written into, or created in a writable folder.
  problem = cli.output_path_error('DEST', dest, folder=os.path.isdir(dest))
  if problem:
    raise SystemExit(f'ERROR: {problem}')
  kept, skipped = keep(src, dest, TRAIN_EVERY.value)
  for name in kept:
    print(f'kept     {name}')
  for name in skipped:
    print(f'not done {name} (left out)')
  print(f'{len(kept)} run(s) recorded in {dest}; {len(skipped)} not finished')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
