r"""Report of a sweep (or of any folder of runs): DIR/report.md and DIR/report.png.

  python -m rstg_jax.report runs/ablations

Every run under DIR (a folder with metrics.jsonl, config.json or sweep.json, at any
depth) becomes one row of report.md: its grid values (from sweep.json), status, steps,
videos seen, wall time, the val top-1 of the chosen checkpoint (the best by val top-1,
which the trainer keeps), the test top-1 / top-5, the paper's number where the run
reproduces a paper row (`rstg_jax.paper`), and the rank of the run among the runs of the
same paper table, beside the paper's rank. Runs that differ only in their seed make one
row of a second table (`rstg_jax.report_groups`: their mean and each seed's value), and
the ranks and Kendall tau are computed on those means; a paper table whose rows had
different budgets (training videos, val every, val and test videos) is flagged.
report.png plots val top-1 against videos seen, one curve per run. It reads files only,
never a checkpoint, so it runs while the runs go on (a line cut short by a kill is
skipped) and takes a second.

What it reads in a run folder:
- metrics.jsonl: rows with 'split' 'train' (loss, accuracy, lr, videos_per_sec), 'val'
  (top1, top5, loss, during training) and 'test' (evaluated at the end). Runs from before
  the val split have 'test' rows during training: their checkpoint was chosen on test,
  which the report marks.
- config.json (written by the trainer at start): {'config': ..., 'total_steps': ...}.
  Without it, the config is rebuilt from sweep.json (config file + overrides).
- sweep.json (written by launch/sweep.py): name, grid values, command, paper row.
- DONE (written by the trainer at the end), the run's lock (.lock: held by a live run,
  `rstg_jax.train.workdir_lock`) and sweep.json's 'slurm_job' (the SLURM executor;
  looked up in squeue): the run's status, read by `rstg_jax.run_status`.

The figure is drawn by `rstg_jax.report_figure`.
"""

import json
import math
import os
import sys
from typing import Optional

from rstg_jax import cli
from rstg_jax import paper as paper_lib
from rstg_jax import report_figure
from rstg_jax import report_groups
from rstg_jax import tasks
from rstg_jax.run_status import read_json, read_jsonl, run_status

RUN_MARKERS = ('metrics.jsonl', 'config.json', 'sweep.json')
SKIP_DIRS = ('checkpoints', '__pycache__', 'tensorboard')


# ------------------------------------------------------------------------------------
# Reading one run.
# ------------------------------------------------------------------------------------


def load_config(config_path: str, overrides: list[str], cwd: Optional[str] = None) -> dict:
  """A config file with --config.* overrides, parsed as `rstg_jax.main` parses them.

  Returns the flat config ({'data.name': ...}). Config files import `configs.syncmnist_base`,
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
      # Runs of one row over seeds share a group key; a table's rows share a budget.
      'seed': flat.get('seed'), 'group_key': report_groups.group_key(flat),
      'budget': report_groups.budget_of(flat, total, batch),
  }
  if info['status'] == 'done' and any(r.get('transcribed') for r in rows):
    info['status'] = 'done (transcribed)'  # a lost run's numbers, typed from its log
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
  info['protocol'] = protocol_of(flat)
  entry = (sweep or {}).get('paper')
  if entry is None and flat:
    entry = paper_lib.paper_entry(flat)
  info['paper'] = entry
  return info


# SyncMNIST protocols whose numbers are never set beside the paper's (they use a
# backbone or labels the paper's models do not have); ranks are still given.
OTHER_PROTOCOLS = ('motion_backbone', 'privileged')


def protocol_of(flat: dict) -> str:
  """The protocol of a run's (flat) config, computed by its task, so runs from before
  the trainer stored it get one too: '-' where the task defines none (SSv1), '?' where
  the config cannot say (a removed option), '' without a config."""
  if not flat:
    return ''
  try:
    task = tasks.get(flat.get('data.name'))
    found = task.protocol(task.upgrade_config(cli.unflatten(flat)))
  except (ValueError, KeyError):
    return '?'
  return found[0] if found else '-'


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


def rank_against_paper(runs: list[dict], groups: Optional[list[dict]] = None) -> list[dict]:
  """Ranks the rows of each paper table on their mean score against the paper's numbers.

  A row is the runs that differ only in seed (`groups`, by default
  `report_groups.group_runs(runs, our_score)`). Sets group['rank'] and each member's
  info['rank'] = (ours, paper); returns one summary per paper table, whose 'budgets' is
  a line naming the budgets when its rows (ranked or not) had different ones.
  """
  if groups is None:
    groups = report_groups.group_runs(runs, our_score)
  tables, ranked = {}, {}
  for g in groups:
    entry = g.get('paper')
    if entry:
      tables.setdefault(entry['table'], []).append(g)
      if entry.get('top1') is not None and g['score'] is not None:
        ranked.setdefault(entry['table'], []).append(g)
  summaries = []
  for table, rows in sorted(ranked.items()):
    ours = [g['score'] for g in rows]
    theirs = [g['paper']['top1'] for g in rows]
    for g, r_ours, r_paper in zip(rows, _ranks(ours), _ranks(theirs)):
      g['rank'] = (r_ours, r_paper)
      for m in g['members']:
        m['rank'] = g['rank']
    order = lambda scores: ' > '.join(  # pylint: disable=g-long-lambda
        g['name'] for _, g in sorted(zip(scores, rows), key=lambda t: -t[0]))
    tau = kendall_tau(ours, theirs)
    summaries.append({'table': table, 'n': len(rows),
                      'runs': sum(len(g['members']) for g in rows), 'tau': tau,
                      'same_order': _ranks(ours) == _ranks(theirs),
                      'ours': order(ours), 'paper': order(theirs),
                      'budgets': report_groups.budget_problem(tables[table])})
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


def markdown(root: str, runs: list[dict], summaries: list[dict],
             groups: Optional[list[dict]] = None) -> str:
  grid_keys = []
  for info in runs:
    for k in info['grid']:
      if k not in grid_keys:
        grid_keys.append(k)
  header = (['run'] + grid_keys + ['protocol', 'status', 'steps', 'videos seen', 'wall time',
                                   'val top-1 (step)', 'test top-1', 'test top-5',
                                   'paper top-1', 'paper row', 'rank ours / paper'])
  lines = [f'# Report: {os.path.abspath(root)}', '',
           f'{len(runs)} run(s); accuracies in %. "val top-1 (step)": the checkpoint chosen '
           'by val top-1. Ranks are within each paper table, 1 = best; the paper column is '
           'the paper\'s number for the row the run reproduces. Protocol: SyncMNIST\'s '
           '(rstg_jax.syncmnist.protocols), from the run\'s config.', '',
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
    if entry and info['protocol'] in OTHER_PROTOCOLS:
      # Never beside a number reached with supervision the paper does not use.
      paper_top1 = f'- (paper protocol only; this run: {info["protocol"]})'
    rank = info.get('rank')
    cells = ([info['name']] + [info['grid'].get(k, '') for k in grid_keys] + [
        info['protocol'], info['status'], steps,
        f'{info["videos"]:,}' if info['videos'] else '',
        _duration(info['wall_seconds'], info['wall_estimated']), val,
        _pct(info['test_top1']), _pct(info['test_top5']), paper_top1,
        entry.get('row', ''), f'{rank[0]} / {rank[1]}' if rank else ''])
    lines.append('| ' + ' | '.join(_md(c) for c in cells) + ' |')
  if any(info['selected_on'] == 'test' for info in runs):
    lines += ['', '\\* run from before the val split: its checkpoint was chosen on test rows.']
  if any(info['status'] == 'done (transcribed)' for info in runs):
    lines += ['', 'done (transcribed): the run folder was lost; its rows were transcribed '
              'from the numbers its log printed (rows marked "transcribed").']
  if any(info['wall_estimated'] and info['wall_seconds'] for info in runs):
    lines += ['', '~ wall time estimated from the logged throughput and evaluation seconds '
              '(training and evaluation only).']
  lines += [''] + report_groups.seeds_markdown(groups or [])
  if summaries:
    lines += ['## Rank order against the paper', '']
    for s in summaries:
      tau = 'n/a' if s['tau'] is None else f'{s["tau"]:.2f}'
      size = (f'{s["n"]} runs' if s['n'] == s['runs'] else
              f'{s["n"]} rows, mean over {s["runs"]} runs')
      lines.append(f'- {s["table"]} ({size}): '
                   f'{"same order as the paper" if s["same_order"] else "order differs"}'
                   f' (Kendall tau {tau}). Ours: {s["ours"]}. Paper: {s["paper"]}.')
      if s['budgets']:
        lines.append(f'  - **Budgets differ** between this table\'s rows, so its ranks '
                     f'compare unequal training: {s["budgets"]}.')
    lines.append('')
  lines += ['Curves: report.png (val top-1 against videos seen and against minutes).', '']
  return '\n'.join(lines)


def write_report(root: str) -> tuple[str, str, list[dict]]:
  """Writes root/report.md and root/report.png; returns their paths and the runs."""
  runs = [summarize(d, root) for d in find_runs(root)]
  groups = report_groups.group_runs(runs, our_score)
  summaries = rank_against_paper(runs, groups)
  md_path, png_path = os.path.join(root, 'report.md'), os.path.join(root, 'report.png')
  text = markdown(root, runs, summaries, groups)
  with open(md_path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(md_path + '.tmp', md_path)
  report_figure.plot(runs, png_path, groups)
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
