r"""Report of a sweep (or of any folder of runs): DIR/report.md and DIR/report.png.

  python -m rstg_jax.report runs/ablations

Every run under DIR (a folder with metrics.jsonl, config.json or sweep.json, at any
depth) becomes one row of report.md: its grid values (from sweep.json), status, steps,
videos seen, wall time, the val top-1 of the chosen checkpoint (the best by val top-1,
which the trainer keeps), the test top-1 / top-5, the paper's number where the run
reproduces a paper row (`rstg_jax.paper`), and the rank of the run among the runs of the
same paper table, beside the paper's rank. report.png plots val top-1 against videos seen,
one curve per run. It reads files only, never a checkpoint, so it runs while the runs go
on (a line cut short by a kill is skipped) and takes a second.

What it reads in a run folder:
- metrics.jsonl: rows with 'split' 'train' (loss, accuracy, lr, videos_per_sec), 'val'
  (top1, top5, loss, during training) and 'test' (evaluated at the end). Runs from before
  the val split have 'test' rows during training: their checkpoint was chosen on test,
  which the report marks.
- config.json (written by the trainer at start): {'config': ..., 'total_steps': ...}.
  Without it, the config is rebuilt from sweep.json (config file + overrides).
- sweep.json (written by launch/sweep.py): name, grid values, command, paper row.
- DONE (written by the trainer at the end), RUNNING (by the local sweep executor) and
  sweep.json's 'slurm_job' (the SLURM executor; looked up in squeue).
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from typing import Any, Optional

from rstg_jax import cli
from rstg_jax import paper as paper_lib

RUN_MARKERS = ('metrics.jsonl', 'config.json', 'sweep.json')
SKIP_DIRS = ('checkpoints', '__pycache__', 'tensorboard')


# ------------------------------------------------------------------------------------
# Reading one run.
# ------------------------------------------------------------------------------------


def read_json(path: str) -> Optional[Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_jsonl(path: str) -> list[dict]:
  rows = []
  try:
    with open(path) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          row = json.loads(line)
        except ValueError:
          continue  # a line cut short by a kill, or being written right now
        if isinstance(row, dict):
          rows.append(row)
  except OSError:
    pass
  return rows


def load_config(config_path: str, overrides: list[str], cwd: Optional[str] = None) -> dict:
  """A config file with --config.* overrides, parsed as `rstg_jax.main` parses them.

  Returns the flat config ({'data.name': ...}). Config files import `configs.default`,
  so `cwd` (the repository root the sweep ran from) goes on sys.path meanwhile.
  """
  config = parse_config(config_path, overrides, cwd)
  return cli.flatten(json.loads(config.to_json_best_effort()))


def parse_config(config_path: str, overrides: list[str], cwd: Optional[str] = None):
  """The ConfigDict of `load_config` (ml_collections' errors propagate: a misspelt field
  raises AttributeError or KeyError, a bad value `absl.flags.Error`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  cwd = cwd or os.getcwd()
  path = config_path if os.path.isabs(config_path) else os.path.join(cwd, config_path)
  argv = ['report', f'--config={path}', *overrides]
  values = flags.FlagValues()
  # sys_argv: ml_collections finds the overrides to define in it (default: sys.argv).
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  sys.path.insert(0, cwd)
  try:
    values(argv)
  finally:
    sys.path.remove(cwd)
  return values.config


def sweep_overrides(sweep: dict) -> list[str]:
  """The --config.* flags of a sweep run (grid overrides and the extra flags)."""
  args = [f'--config.{k}={v}' for k, v in (sweep.get('overrides') or {}).items()]
  return args + [a for a in sweep.get('extra_args') or () if a.startswith('--config.')]


def _first(flat: dict, *keys, default=None):
  for k in keys:
    if flat.get(k) is not None:
      return flat[k]
  return default


def total_steps_of(flat: dict) -> Optional[int]:
  """Training steps of a config (the trainer's `num_train_steps`), None if unknown."""
  steps = _first(flat, 'num_train_steps', 'optim.num_train_steps', 'train.num_train_steps')
  if steps is not None and steps > 0:
    return int(steps)
  epochs = _first(flat, 'num_epochs', 'optim.num_epochs', 'train.num_epochs')
  size, batch = flat.get('data.train_size'), batch_size_of(flat)
  if epochs and size and batch:
    return int(math.ceil(epochs * size / batch))
  return None


def batch_size_of(flat: dict) -> Optional[int]:
  value = _first(flat, 'batch_size', 'data.batch_size', 'optim.batch_size',
                 'train.batch_size')
  return int(value) if value else None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def running_marker(rundir: str) -> Optional[dict]:
  """The RUNNING marker of a run started by a local sweep, if its process is alive.

  A marker from another host cannot be checked and is taken as stale.
  """
  marker = read_json(os.path.join(rundir, 'RUNNING'))
  if not isinstance(marker, dict):
    return None
  if marker.get('host') != socket.gethostname() or not _pid_alive(int(marker.get('pid', 0))):
    return None
  return marker


def slurm_state(rundir: str) -> Optional[str]:
  """'running' or 'queued' while the SLURM array task a sweep submitted for the run
  is in `squeue`; None otherwise (or without squeue)."""
  job = (read_json(os.path.join(rundir, 'sweep.json')) or {}).get('slurm_job')
  if not job or not shutil.which('squeue'):
    return None
  try:
    out = subprocess.run(['squeue', '-h', '-j', str(job), '-o', '%T'], capture_output=True,
                         text=True, timeout=30).stdout.split()
  except (OSError, subprocess.SubprocessError):
    return None
  if not out:
    return None
  return 'queued' if out[0] in ('PENDING', 'CONFIGURING', 'REQUEUED') else 'running'


def run_status(rundir: str, rows: Optional[list] = None,
               total: Optional[int] = None) -> str:
  """'done', 'running', 'queued', 'failed (EXIT CODE)', 'partial' (started, unfinished,
  idle) or 'new'.

  Finished: the trainer wrote DONE at the end, or metrics.jsonl has a test row at the
  last training step (runs from before DONE existed).
  """
  if os.path.exists(os.path.join(rundir, 'DONE')):
    return 'done'
  if rows is None:
    rows = read_jsonl(os.path.join(rundir, 'metrics.jsonl'))
  if total is not None and any(r.get('split') == 'test' and r.get('step', -1) >= total
                               for r in rows):
    return 'done'
  if running_marker(rundir):
    return 'running'
  state = slurm_state(rundir)
  if state:
    return state
  exit_code = (read_json(os.path.join(rundir, 'sweep.json')) or {}).get('exit_code')
  if exit_code:  # the local sweep's last attempt failed (see its log.txt)
    return f'failed ({exit_code})'
  if rows or os.path.isdir(os.path.join(rundir, 'checkpoints')):
    return 'partial'
  return 'new'


def resolve_config(rundir: str, sweep: Optional[dict]) -> tuple[dict, Optional[int], str]:
  """(flat config, total steps, where the config came from) of a run."""
  saved = read_json(os.path.join(rundir, 'config.json'))
  if isinstance(saved, dict) and isinstance(saved.get('config'), dict):
    flat = cli.flatten(saved['config'])
    total = saved.get('total_steps') or total_steps_of(flat)
    return flat, total, 'config.json'
  if sweep and sweep.get('config'):
    try:
      flat = load_config(sweep['config'], sweep_overrides(sweep), sweep.get('cwd'))
      return flat, total_steps_of(flat), 'sweep.json'
    except Exception as e:  # pylint: disable=broad-except
      return {}, None, f'sweep.json (config not loadable: {e})'
  return {}, None, 'none'


def _best(rows: list[dict], key: str = 'top1') -> Optional[dict]:
  best = None
  for r in rows:
    value = r.get(key)
    if isinstance(value, (int, float)) and not math.isnan(value):
      if best is None or value > best[key]:
        best = r
  return best


def wall_seconds(rows: list[dict], batch: Optional[int]) -> tuple[Optional[float], bool]:
  """(seconds, estimated): the trainer's 'elapsed' if it logs it, else the sum of the
  train windows (steps x batch / videos_per_sec) and of the evaluations' seconds."""
  elapsed = [r['elapsed'] for r in rows if isinstance(r.get('elapsed'), (int, float))]
  if elapsed:
    return float(max(elapsed)), False
  if not batch:
    return None, True
  total, prev = 0.0, 0
  for r in rows:
    if r.get('split') == 'train' and r.get('videos_per_sec'):
      total += max(0, r['step'] - prev) * batch / r['videos_per_sec']
      prev = r['step']
    total += r.get('eval_seconds', 0.0) or 0.0
  return (total if total else None), True


def summarize(rundir: str, root: str) -> dict:
  """Everything the report shows about one run."""
  sweep = read_json(os.path.join(rundir, 'sweep.json'))
  sweep = sweep if isinstance(sweep, dict) else None
  flat, total, config_source = resolve_config(rundir, sweep)
  rows = read_jsonl(os.path.join(rundir, 'metrics.jsonl'))
  batch = batch_size_of(flat)
  val = [r for r in rows if r.get('split') == 'val']
  test = [r for r in rows if r.get('split') == 'test']
  train = [r for r in rows if r.get('split') == 'train']
  step = max((r.get('step', 0) for r in rows), default=0)
  info = {
      'dir': rundir,
      # A report on one run folder names the run by its folder, not '.'.
      'name': (sweep or {}).get('name') or (os.path.relpath(rundir, root) if
                                            os.path.abspath(rundir) != os.path.abspath(root)
                                            else os.path.basename(os.path.abspath(rundir))),
      'grid': dict((sweep or {}).get('grid') or {}),
      'status': run_status(rundir, rows, total),
      'step': step, 'total_steps': total, 'batch_size': batch,
      'videos': step * batch if batch else None,
      'config_source': config_source,
      'selected_on': None, 'chosen_step': None, 'val_top1': None,
      'test_top1': None, 'test_top5': None, 'test_step': None,
      'train_loss': train[-1].get('loss') if train else None,
  }
  info['wall_seconds'], info['wall_estimated'] = wall_seconds(rows, batch)
  if val:
    # The trainer keeps the best checkpoint by val top-1; test runs once at the end, on
    # it, and its row names that checkpoint's step (which decides ties between equal
    # val top-1s the way the trainer did).
    tested = next((r.get('step') for r in reversed(test) if r.get('chosen_on') == 'val'),
                  None)
    chosen = next((r for r in val if r.get('step') == tested), None) or _best(val)
    info['selected_on'] = 'val'
    if chosen:
      info['chosen_step'], info['val_top1'] = chosen['step'], chosen['top1']
    if test:
      t = test[-1]
      info['test_top1'], info['test_top5'] = t.get('top1'), t.get('top5')
      info['test_step'] = t.get('checkpoint_step', t.get('step'))
  elif test:
    # Before the val split: test rows during training, the best chosen on them.
    chosen = _best(test)
    info['selected_on'] = 'test'
    if chosen:
      info['chosen_step'] = info['test_step'] = chosen['step']
      info['test_top1'], info['test_top5'] = chosen.get('top1'), chosen.get('top5')
  # Curve: val top-1 (or the old runs' test top-1) against videos seen.
  curve_rows = val or test
  info['curve'] = [(r['step'], r['top1']) for r in curve_rows
                   if isinstance(r.get('top1'), (int, float))]
  # The same points against minutes of training (the rows' 'elapsed', when written).
  info['curve_minutes'] = [(r['elapsed'] / 60, r['top1']) for r in curve_rows
                           if isinstance(r.get('top1'), (int, float))
                           and isinstance(r.get('elapsed'), (int, float))]
  entry = (sweep or {}).get('paper')
  if entry is None and flat:
    entry = paper_lib.paper_entry(flat)
  info['paper'] = entry
  return info


def find_runs(root: str) -> list[str]:
  """Run folders under root (root itself when it is one), sorted."""
  runs = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith('.'))
    if any(m in filenames for m in RUN_MARKERS):
      runs.append(dirpath)
      dirnames[:] = []  # a run's subfolders are its own (eval_<step>/, ...)
  return sorted(runs)


# ------------------------------------------------------------------------------------
# Ranks against the paper.
# ------------------------------------------------------------------------------------


def our_score(info: dict) -> Optional[float]:
  """The number compared with the paper: test top-1, else the chosen val top-1."""
  for key in ('test_top1', 'val_top1'):
    if isinstance(info.get(key), (int, float)) and not math.isnan(info[key]):
      return float(info[key])
  return None


def _ranks(values: list[float]) -> list[int]:
  """1 = best (highest); ties share the better rank."""
  return [1 + sum(v > x for v in values) for x in values]


def kendall_tau(a: list[float], b: list[float]) -> Optional[float]:
  """Kendall's tau-a of two score lists (None with fewer than 2 items)."""
  n = len(a)
  if n < 2:
    return None
  s = 0
  for i in range(n):
    for j in range(i + 1, n):
      s += _sign(a[i] - a[j]) * _sign(b[i] - b[j])
  return s / (n * (n - 1) / 2)


def _sign(x: float) -> int:
  return (x > 0) - (x < 0)


def rank_against_paper(runs: list[dict]) -> list[dict]:
  """Sets info['rank'] = (ours, paper) per run; returns one summary per paper table."""
  groups = {}
  for info in runs:
    entry = info.get('paper')
    if entry and entry.get('top1') is not None and our_score(info) is not None:
      groups.setdefault(entry['table'], []).append(info)
  summaries = []
  for table, members in sorted(groups.items()):
    ours = [our_score(m) for m in members]
    theirs = [m['paper']['top1'] for m in members]
    for m, r_ours, r_paper in zip(members, _ranks(ours), _ranks(theirs)):
      m['rank'] = (r_ours, r_paper)
    order = lambda scores: ' > '.join(  # pylint: disable=g-long-lambda
        m['name'] for _, m in sorted(zip(scores, members), key=lambda t: -t[0]))
    tau = kendall_tau(ours, theirs)
    summaries.append({'table': table, 'n': len(members), 'tau': tau,
                      'same_order': _ranks(ours) == _ranks(theirs),
                      'ours': order(ours), 'paper': order(theirs)})
  return summaries


# ------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------


def _pct(x) -> str:
  return '' if not isinstance(x, (int, float)) or math.isnan(x) else f'{100 * x:.1f}'


def _duration(seconds: Optional[float], estimated: bool) -> str:
  if seconds is None:
    return ''
  s = int(round(seconds))
  text = f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
  return ('~' if estimated else '') + text


def _md(value) -> str:
  return str(value).replace('|', '\\|')


def markdown(root: str, runs: list[dict], summaries: list[dict]) -> str:
  grid_keys = []
  for info in runs:
    for k in info['grid']:
      if k not in grid_keys:
        grid_keys.append(k)
  header = (['run'] + grid_keys + ['status', 'steps', 'videos seen', 'wall time',
                                   'val top-1 (step)', 'test top-1', 'test top-5',
                                   'paper top-1', 'paper row', 'rank ours / paper'])
  lines = [f'# Report: {os.path.abspath(root)}', '',
           f'{len(runs)} run(s); accuracies in %. "val top-1 (step)": the checkpoint chosen '
           'by val top-1. Ranks are within each paper table, 1 = best; the paper column is '
           'the paper\'s number for the row the run reproduces.', '',
           '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  for info in runs:
    steps = f'{info["step"]:,}' + (f' / {info["total_steps"]:,}' if info['total_steps'] else '')
    val = ''
    if info['selected_on'] == 'val' and info['val_top1'] is not None:
      val = f'{_pct(info["val_top1"])} ({info["chosen_step"]:,})'
    elif info['selected_on'] == 'test':
      val = f'n/a (chosen on test, step {info["chosen_step"]:,})*'
    entry = info.get('paper') or {}
    paper_top1 = '' if not entry else ('-' if entry.get('top1') is None else
                                       f'{entry["top1"]:.1f}')
    if entry and entry.get('top5') is not None:
      paper_top1 += f' / {entry["top5"]:.1f} (top-5)'
    rank = info.get('rank')
    cells = ([info['name']] + [info['grid'].get(k, '') for k in grid_keys] + [
        info['status'], steps, f'{info["videos"]:,}' if info['videos'] else '',
        _duration(info['wall_seconds'], info['wall_estimated']), val,
        _pct(info['test_top1']), _pct(info['test_top5']), paper_top1,
        entry.get('row', ''), f'{rank[0]} / {rank[1]}' if rank else ''])
    lines.append('| ' + ' | '.join(_md(c) for c in cells) + ' |')
  if any(info['selected_on'] == 'test' for info in runs):
    lines += ['', '\\* run from before the val split: its checkpoint was chosen on test rows.']
  if any(info['wall_estimated'] and info['wall_seconds'] for info in runs):
    lines += ['', '~ wall time estimated from the logged throughput and evaluation seconds '
              '(training and evaluation only).']
  if summaries:
    lines += ['', '## Rank order against the paper', '']
    for s in summaries:
      tau = 'n/a' if s['tau'] is None else f'{s["tau"]:.2f}'
      lines.append(f'- {s["table"]} ({s["n"]} runs): '
                   f'{"same order as the paper" if s["same_order"] else "order differs"}'
                   f' (Kendall tau {tau}). Ours: {s["ours"]}. Paper: {s["paper"]}.')
  lines += ['', 'Curves: report.png (val top-1 against videos seen and against minutes).', '']
  return '\n'.join(lines)


def plot(runs: list[dict], path: str):
  """Val top-1 (old runs: test top-1) against videos seen (left) and against minutes of
  training (right: wall time since training started, evaluations included, backbone
  pre-training excluded), one curve per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  by_videos = all(info['batch_size'] for info in runs if info['curve'])
  fig, (ax, ax_min) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
  for info in runs:
    if not info['curve']:
      continue
    scale = info['batch_size'] if by_videos else 1
    xs = [s * scale for s, _ in info['curve']]
    ys = [100 * v for _, v in info['curve']]
    label = info['name'] + (' (test)' if info['selected_on'] == 'test' else '')
    line, = ax.plot(xs, ys, 'o-', ms=3, label=label)
    if info.get('curve_minutes'):
      ax_min.plot([m for m, _ in info['curve_minutes']],
                  [100 * v for _, v in info['curve_minutes']], 'o-', ms=3,
                  color=line.get_color())
  ax.set(xlabel='videos seen' if by_videos else 'step', ylabel='val top-1 (%)',
         title='val top-1 against ' + ('videos seen' if by_videos else 'steps'))
  ax_min.set(xlabel='minutes since training started (backbone pre-training excluded)',
             title='val top-1 against minutes')
  for a in (ax, ax_min):
    a.grid(alpha=0.3)
  if any(info['curve'] for info in runs):
    ax_min.legend(*ax.get_legend_handles_labels(), fontsize=8, loc='center left',
                  bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def write_report(root: str) -> tuple[str, str, list[dict]]:
  """Writes root/report.md and root/report.png; returns their paths and the runs."""
  runs = [summarize(d, root) for d in find_runs(root)]
  summaries = rank_against_paper(runs)
  md_path, png_path = os.path.join(root, 'report.md'), os.path.join(root, 'report.png')
  text = markdown(root, runs, summaries)
  with open(md_path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(md_path + '.tmp', md_path)
  plot(runs, png_path)
  return md_path, png_path, runs


def main(argv):
  if len(argv) != 2:
    raise SystemExit('usage: python -m rstg_jax.report DIR   (writes DIR/report.md and '
                     'DIR/report.png from the runs under DIR)')
  root = argv[1]
  problem = cli.output_path_error('DIR', root, folder=True)  # before reading any run
  if problem:
    raise SystemExit(f'ERROR: {problem}')
  md_path, png_path, runs = write_report(root)
  with open(md_path) as f:
    print(f.read())
  print(f'{len(runs)} run(s): wrote {md_path} and {png_path}')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli.parse_flags)  # --help exits 0
