"""Metrics as (sum, count) pairs, the metrics.jsonl log, and the figures.

A step returns `{name: (sum, count)}`; pairs are added across steps and batches and
divided only when reported, so a padded last test batch or an uneven number of steps
per log window weigh every video exactly once.

No file here is rewritten in place: `atomic_open` writes a temporary file in the same
directory and renames it over the old one (`os.replace`), so a kill or a full disk
leaves the previous version whole. metrics.jsonl is only appended to; on resume, rows
after the resumed step are dropped the same way (a new file, then a rename). A process
killed (SIGKILL) during such a rewrite leaves its temporary file behind; the next run on
the workdir removes it when it opens metrics.jsonl (`JsonlWriter`: one run per workdir,
so no live writer owns it). Rows whose 'step' is not a whole number >= 0 cannot be
placed in the run: the rewrite drops them and says so in one line.
"""

import contextlib
import csv
import glob
import json
import os
import sys
import tempfile
from typing import Iterable, Iterator, Mapping, Optional, Sequence, TextIO

import numpy as np

Pairs = Mapping[str, tuple]


def add(total: Optional[dict], new: Pairs) -> dict:
  """Elementwise sum of two {name: (sum, count)} dicts (total may be None)."""
  if total is None:
    return {k: (v[0], v[1]) for k, v in new.items()}
  return {k: (total[k][0] + v[0], total[k][1] + v[1]) for k, v in new.items()}


def compute(pairs: Pairs) -> dict[str, float]:
  """{name: sum / count} as Python floats (NaN when the count is 0)."""
  out = {}
  for k, (s, n) in pairs.items():
    s, n = float(s), float(n)
    out[k] = s / n if n else float('nan')
  return out


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **kwargs) -> Iterator[TextIO]:
  """`open(path, mode)` whose result appears only whole: the file is written under a
  temporary name in the same directory, flushed to disk and renamed over `path`
  (`os.replace`, atomic on POSIX). On an error (a kill, a full disk) `path` keeps its
  previous content and the temporary file is removed."""
  directory, name = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=directory)
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make the file private
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def bad_step(row) -> bool:
  """True unless `row` is a dict whose 'step' is a whole number >= 0."""
  step = row.get('step') if isinstance(row, dict) else None
  return not (isinstance(step, int) and not isinstance(step, bool) and step >= 0)


def bad_step_line(path: str, bad: Sequence[tuple[int, object]], what: str) -> str:
  """The one line that reports rows with a bad 'step': (line number, row) pairs."""
  number, row = bad[0]
  value = repr(row.get('step', '<missing>') if isinstance(row, dict) else row)
  value = value if len(value) <= 40 else value[:37] + '...'
  return (f'WARNING: {path}: {what} {len(bad)} row(s) whose "step" is not a whole number '
          f'>= 0 (the first on line {number}: {value}).')


def remove_stale_tmp(path: str) -> list[str]:
  """Removes the temporary files `atomic_open` left beside `path` when its process was
  killed before the rename; call only where no other process writes `path`."""
  directory, name = os.path.split(os.path.abspath(path))
  stale = sorted(glob.glob(os.path.join(glob.escape(directory),
                                        f'.{glob.escape(name)}.*.tmp')))
  for tmp in stale:
    with contextlib.suppress(OSError):
      os.remove(tmp)
  return stale


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops the rows of `path` after `last_step`, rows with a bad 'step' (one line on
  stderr says how many) and a last line cut short by a kill, by writing the kept rows to
  a new file and renaming it over the old one; the file is never rewritten in place.
  Returns the number of rows dropped (0: file untouched)."""
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    data = f.read()
  lines = data.splitlines(keepends=True)
  keep, bad = [], []
  for number, line in enumerate(lines, start=1):
    try:
      row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
      continue  # a line cut short by a kill
    if not line.endswith(b'\n'):
      continue
    if bad_step(row):
      bad.append((number, row))
    elif row['step'] <= last_step:
      keep.append(line)
  if bad:
    print(bad_step_line(path, bad, 'dropped'), file=sys.stderr, flush=True)
  if len(keep) == len(lines):
    return 0
  with atomic_open(path, 'wb') as f:
    f.write(b''.join(keep))
  return len(lines) - len(keep)


class JsonlWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl.

  On resume from step S, rows after S (written by the interrupted run after its last
  checkpoint) are dropped first (`truncate_jsonl`: a new file renamed over the old one),
  so the file reads as one uninterrupted run.
  """

  def __init__(self, path: str, resume_step: int, enabled: bool = True):
    self.path = path
    self.enabled = enabled
    if not enabled:
      return
    remove_stale_tmp(path)  # a rewrite killed by SIGKILL: its copy, never renamed
    truncate_jsonl(path, resume_step)

  def write(self, row: dict):
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          pass  # a line cut short by a kill
  return rows


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # files only; no display on a training machine.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_curves(rows: Iterable[dict], path: str):
  """Training curves: loss and train/val/test accuracy against the step."""
  rows = list(rows)
  train = [r for r in rows if r.get('split') == 'train']
  plt = _pyplot()
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  if train:
    ax_loss.plot([r['step'] for r in train], [r['loss'] for r in train], label='train')
    ax_acc.plot([r['step'] for r in train], [r['accuracy'] for r in train],
                label='train top-1')
  for name in ('val', 'test'):  # val: evaluated during training; test: once, at the end
    evals = [r for r in rows if r.get('split') == name]
    if not evals:
      continue
    steps = [r['step'] for r in evals]
    ax_loss.plot(steps, [r['loss'] for r in evals], 'o-', label=name)
    ax_acc.plot(steps, [r['top1'] for r in evals], 'o-', label=f'{name} top-1')
    ax_acc.plot(steps, [r['top5'] for r in evals], 's--', label=f'{name} top-5')
  ax_loss.set(xlabel='step', ylabel='cross-entropy', title='loss')
  ax_acc.set(xlabel='step', ylabel='accuracy', title='accuracy', ylim=(0, 1))
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  with atomic_open(path, 'wb') as f:
    fig.savefig(f, dpi=100, format='png')
  plt.close(fig)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def write_per_class(cm: np.ndarray, class_names: Sequence[str], out_dir: str) -> list[dict]:
  """per_class_accuracy.json and .csv: for each class, its videos and top-1 accuracy."""
  rows = []
  for i, name in enumerate(class_names):
    n = int(cm[i].sum())
    rows.append({'class_index': i, 'class_name': name, 'count': n,
                 'correct': int(cm[i, i]),
                 'accuracy': float(cm[i, i] / n) if n else None})
  with atomic_open(os.path.join(out_dir, 'per_class_accuracy.json')) as f:
    json.dump(rows, f, indent=1)
  with atomic_open(os.path.join(out_dir, 'per_class_accuracy.csv'), newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return rows


def write_confusion_csv(cm: np.ndarray, class_names: Sequence[str], path: str) -> None:
  """confusion_matrix.csv: counts, one row per true class, one column per prediction.

  Written with the csv module: Something-Something class names hold commas (and may hold
  quotes), which csv quotes, so every row has exactly len(class_names) + 1 fields.
  """
  with atomic_open(path, newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true\\pred', *class_names])
    for name, row in zip(class_names, cm):
      writer.writerow([name, *(int(v) for v in row)])


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str, title: str = ''):
  """Row-normalised confusion matrix (rows: true class, columns: prediction)."""
  plt = _pyplot()
  rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  size = max(6.0, 0.22 * n + 2)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  ax.set_xticks(range(n))
  ax.set_yticks(range(n))
  fontsize = 6 if n > 20 else 9
  ax.set_xticklabels(class_names, rotation=90, fontsize=fontsize)
  ax.set_yticklabels(class_names, fontsize=fontsize)
  ax.set(xlabel='predicted', ylabel='true', title=title or 'confusion (row-normalised)')
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  with atomic_open(path, 'wb') as f:
    fig.savefig(f, dpi=100, format='png')
  plt.close(fig)


def top_k(logits: np.ndarray, k: int = 5) -> np.ndarray:
  """[N, min(k, C)] class indices by decreasing logit (stable: ties keep class order)."""
  return np.argsort(-np.asarray(logits), axis=-1, kind='stable')[:, :min(k, logits.shape[-1])]
