#!/usr/bin/env python3
r"""launch/sweep.py: one `rstg_jax.main` run per point of a grid, then a report.

  python launch/sweep.py --config=configs/syncmnist.py --workdir=runs/ablations \
      --grid='ablation=all_temp,one_temp,space_only' [--grid='seed=0,1'] \
      [--executor=local|slurm] [--parallel=K] [--processes=N] [--only=PATTERNS] \
      [--dry_run] \
      [-- EXTRA_MAIN_FLAGS]
  python launch/sweep.py --preset=sync3_table1 --workdir=runs/table1   # the paper's rows
  python launch/sweep.py --preset=sync3_table1_fair --seeds=2 --workdir=runs/table1_fair
  python launch/sweep.py --list_presets
  python -m rstg_jax.report runs/ablations        # report.md and report.png

Each grid point is the ordinary main command with `--config.KEY=VALUE` overrides and its
own workdir DIR/<name>/ (name: 'ablation=one_temp,seed=1', or the preset row's name), so
each run resumes on its own. Several --grid flags multiply; values are split on commas
outside brackets ('rstg.scales=(1,2),(1,2,3)' is two values). Flags after `--` go to every
run (e.g. `-- --config.num_train_steps=100 --config.data.root=/data/ssv1`).

--seeds=N runs every point with `config.seed` = 0..N-1 (run names end in '_seed=S' or
',seed=S'), all of seed 0 first, then seed 1, ...: a half-finished sweep is a whole table,
and runs sharing a backbone cache (`backbone.pretrain.cache_path`, whose pre-training depends on
the seed) pre-train once per seed. A preset may set its own default (sync3_table1_fair:
2); `python -m rstg_jax.report` shows the rows that differ only in seed as one row, with
their mean and each seed's value.

Rerunning the same sweep skips finished runs (the trainer's DONE marker, or a test row at
the last step), skips runs still running (a process holds the run folder's lock,
`rstg_jax.train.workdir_lock`), and resumes the others from their latest checkpoint. The
local executor takes a run's lock before it writes into the run's folder and hands it to
the run it starts, so two sweeps over one folder never start the same run twice.
DIR/<name>/sweep.json records the command, the grid values and the paper row, for
`rstg_jax.report`.

Executors:
- local (default): K runs at a time (--parallel=K) on this machine, each with
  --processes=N processes (N > 1: through launch/local.sh); a run's output goes to
  DIR/<name>/log.txt. With K > 1 the runs share the machine's GPU
  (XLA_PYTHON_CLIENT_PREALLOCATE=false unless a JAX memory variable is set): eight
  SyncMNIST runs of the quick config side by side on one H200 took 7 minutes. The
  sweep waits for its runs; Ctrl-C stops them (rerun to resume).
- slurm: one `sbatch --array` of launch/slurm.sbatch (its #SBATCH lines say the nodes
  and GPUs of each run), at most K array tasks at a time (--parallel=K; default no limit);
  the flags of array task i are line i+1 of DIR/sweep_args.txt. The array's task ids go
  into each run's sweep.json, and a rerun skips the runs `squeue` still lists.

--only=PATTERNS runs only the runs whose names match one of the comma-separated
shell patterns (e.g. `--only='sync3_all_temp_*'`: a budget check on one row before the
whole table); the others are left as they are, and a later sweep without --only runs
them. --dry_run prints what would run, and writes nothing.
"""

import datetime
import fnmatch
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from rstg_jax import paper as paper_lib
from rstg_jax import report as report_lib
from rstg_jax import run_status as status_lib
from rstg_jax.train import workdir_lock
# pylint: enable=g-import-not-at-top,wrong-import-position


def split_values(text: str) -> list[str]:
  """'a,b,(1,2)' -> ['a', 'b', '(1,2)']: commas inside brackets or quotes do not split."""
  values, depth, quote, current = [], 0, None, ''
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      values.append(current)
      current = ''
      continue
    current += ch
  values.append(current)
  return [v.strip() for v in values]


def parse_grid(specs: list[str]) -> list[dict]:
  """['ablation=a,b', 'seed=0,1'] -> the cartesian product as ordered dicts."""
  axes = []
  for spec in specs:
    key, sep, values = spec.partition('=')
    key = key.strip()
    if key.startswith('config.'):
      key = key[len('config.'):]
    if not sep or not key or not re.fullmatch(r'[A-Za-z_][\w.]*', key):
      raise ValueError(f'--grid={spec!r}: expected KEY=V1,V2,... with KEY a config field.')
    vals = split_values(values)
    if not all(vals):
      raise ValueError(f'--grid={spec!r}: an empty value.')
    if key in (k for k, _ in axes):
      raise ValueError(f'--grid: {key} appears twice.')
    axes.append((key, vals))
  if not axes:
    return [{}]
  return [dict(zip([k for k, _ in axes], combo))
          for combo in itertools.product(*[v for _, v in axes])]


_NAME_DROP = re.compile(r"""[][(){}'" ]""")


def run_name(values: dict) -> str:
  # 'rstg.scales=(1,2,3)' -> 'rstg.scales=1-2-3': no brackets or quotes in folder names.
  name = ','.join(f'{k}={_NAME_DROP.sub("", str(v)).replace(",", "-")}'
                  for k, v in values.items())
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', name) or 'run'


def seed_values(args, preset: dict) -> list[str]:
  """The seeds of --seeds=N, else of the preset's 'seeds' unless a --grid names seed."""
  gridded = any(parse_grid([spec])[0].keys() == {'seed'} for spec in args.grid)
  count = getattr(args, 'seeds', None)
  if count is not None:
    if count < 1:
      raise ValueError(f'--seeds={count}: give 1 or more.')
    if gridded:
      raise ValueError('--seeds and a --grid over seed both set the seeds: give one.')
  elif gridded:
    return []
  count = count or preset.get('seeds')
  return [str(s) for s in range(count)] if count else []


def plan_runs(args) -> list[dict]:
  """The runs of the sweep: name, workdir, config, overrides, grid values, paper row."""
  grid = parse_grid(args.grid)
  preset = paper_lib.PRESETS[args.preset] if args.preset else {}
  if args.preset:
    config = args.config or preset['config']
    bases = [(p['name'], dict(p['overrides']), p['paper'], {'row': p['name']})
             for p in preset['points']]
  else:
    config = args.config
    bases = [('', {}, None, {})]
  pairs = list(itertools.product(bases, grid))
  # Seed-major: every point of seed 0, then of seed 1, ...
  pairs = [(base, {**point, 'seed': s}) for s in seed_values(args, preset)
           for base, point in pairs] or pairs
  runs, names = [], set()
  for (base_name, base_overrides, entry, base_grid), point in pairs:
    name = '_'.join(n for n in (base_name, run_name(point) if point else '') if n) or 'run'
    if name in names:
      raise ValueError(f'Two grid points share the run name {name!r}.')
    names.add(name)
    overrides = {**base_overrides, **point}
    workdir = os.path.join(args.workdir, name)
    main_args = ([f'--config={config}', f'--workdir={workdir}']
                 + [f'--config.{k}={v}' for k, v in overrides.items()] + list(args.extra))
    runs.append({'name': name, 'workdir': workdir, 'config': config,
                 'overrides': {k: str(v) for k, v in overrides.items()},
                 'grid': {**base_grid, **point}, 'paper': entry, 'main_args': main_args,
                 'extra': list(args.extra)})
  return runs


def select_runs(runs: list[dict], only: str | None) -> list[dict]:
  """The runs whose names match one of `only`'s comma-separated shell patterns (all when
  `only` is empty); ValueError naming the sweep's runs when a pattern matches none."""
  if not only:
    return runs
  patterns = split_values(only)
  unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(r['name'], p) for r in runs)]
  if unmatched or not patterns:
    raise ValueError(f'--only={only!r}: {", ".join(map(repr, unmatched)) or "no pattern"} '
                     f'matches none of the sweep\'s runs: {", ".join(r["name"] for r in runs)}.')
  return [r for r in runs if any(fnmatch.fnmatchcase(r['name'], p) for p in patterns)]


def config_problem(run: dict) -> str:
  """'' if the run's config parses and passes main's checks, else one line saying why:
  a misspelt field or a bad value of the grid or of the flags after `--` (checked before
  the sweep starts or prints anything; the data set is checked by each run)."""
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from rstg_jax import cli  # pylint: disable=g-import-not-at-top
  from rstg_jax import errors  # pylint: disable=g-import-not-at-top
  from rstg_jax import tasks  # pylint: disable=g-import-not-at-top
  overrides = [a for a in run['main_args'] if a.startswith('--config.')]
  missing = cli.missing_config_file([f'--config={run["config"]}'])
  if missing:
    return missing
  try:
    config = report_lib.parse_config(run['config'], overrides)
  except absl_flags.Error as e:
    return cli.config_file_error(e) or ' '.join(str(e).split())
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    return cli.bad_override_message(e, overrides)
  try:
    tasks.for_config(config, check_data=False)
  except errors.RSTGError as e:
    return ' '.join(str(e).split())
  return ''


def run_command(run: dict, processes: int) -> list[str]:
  if processes > 1:
    return ['bash', os.path.join(ROOT, 'launch', 'local.sh'), str(processes)] + run['main_args']
  return [sys.executable, '-m', 'rstg_jax.main'] + run['main_args']


def write_json_atomic(path: str, obj):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def write_sweep_json(run: dict, command: list[str], args):
  path = os.path.join(run['workdir'], 'sweep.json')
  old = status_lib.read_json(path) or {}
  write_json_atomic(path, {
      'name': run['name'], 'config': run['config'], 'overrides': run['overrides'],
      'grid': run['grid'], 'paper': run['paper'], 'extra_args': list(args.extra),
      'command': command, 'cwd': os.getcwd(), 'preset': args.preset,
      'executor': args.executor,
      'exit_code': None,
      'created': old.get('created') or datetime.datetime.now().isoformat(timespec='seconds'),
  })


def status_of(run: dict) -> str:
  if os.path.isdir(run['workdir']):
    sweep = {'config': run['config'], 'overrides': run['overrides'],
             'extra_args': run['extra'], 'cwd': os.getcwd()}
    _, total, _ = report_lib.resolve_config(run['workdir'], sweep)
  else:
    return 'new'
  return status_lib.run_status(run['workdir'], total=total)


# JAX's settings of its GPU memory pool; one of them set by the user wins over ours.
MEMORY_SETTINGS = ('XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_PYTHON_CLIENT_MEM_FRACTION',
                   'XLA_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_ALLOCATOR')


def child_env(parallel: int, fd: int, environ=None) -> dict:
  """The environment of a run the local executor starts: the repository on the path
  (the sweep may be started from another folder), the run's lock, and with K > 1 runs
  at a time JAX's preallocation off, so that the runs share one GPU (each would take 75%
  of its memory at its first operation, and the second run would fail); on a CPU this
  changes nothing."""
  environ = os.environ if environ is None else environ
  env = dict(environ, PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, environ.get('PYTHONPATH')) if p))
  env[workdir_lock.ENV_FD] = str(fd)
  if parallel > 1 and not any(k in environ for k in MEMORY_SETTINGS):
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  return env


def run_local(todo: list[dict], args) -> int:
  """K runs at a time; returns the number of runs that failed."""
  pending, active, failed = list(todo), {}, 0

  def start(run):
    os.makedirs(run['workdir'], exist_ok=True)
    try:  # held from here until the run ends; `main` inherits it (RSTG_WORKDIR_LOCK_FD)
      fd = workdir_lock.acquire(run['workdir'], role='launch/sweep.py')
    except workdir_lock.WorkdirBusy as e:
      print(f'skip     {run["name"]}: running ({e})', flush=True)
      return
    command = run_command(run, args.processes)
    write_sweep_json(run, command, args)
    log = open(os.path.join(run['workdir'], 'log.txt'), 'a')
    log.write(f'\n=== {datetime.datetime.now().isoformat(timespec="seconds")} '
              f'{shlex.join(command)}\n')
    log.flush()
    env = child_env(args.parallel, fd)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, pass_fds=(fd,))
    active[proc.pid] = (proc, run, log, time.time())
    print(f'started  {run["name"]} (pid {proc.pid}; log {run["workdir"]}/log.txt)', flush=True)

  def finish(pid, rc):
    nonlocal failed
    proc, run, log, t0 = active.pop(pid)
    log.close()
    minutes = (time.time() - t0) / 60
    path = os.path.join(run['workdir'], 'sweep.json')  # the report shows failed runs
    write_json_atomic(path, dict(status_lib.read_json(path) or {}, exit_code=rc))
    if rc == 0:
      print(f'finished {run["name"]} in {minutes:.1f} min', flush=True)
    else:
      failed += 1
      print(f'FAILED   {run["name"]} (exit {rc}) after {minutes:.1f} min; see '
            f'{run["workdir"]}/log.txt', flush=True)
    workdir_lock.release(run['workdir'])  # after sweep.json has the exit code

  def stop_all(signum, frame):  # pylint: disable=unused-argument
    for proc, run, _, _ in list(active.values()):
      try:
        os.killpg(proc.pid, signal.SIGTERM)
      except OSError:
        pass
    for pid, (proc, _, _, _) in list(active.items()):
      finish(pid, proc.wait())
    raise SystemExit(f'Stopped; rerun the same sweep to resume ({len(pending)} not started).')

  old = signal.signal(signal.SIGINT, stop_all), signal.signal(signal.SIGTERM, stop_all)
  try:
    while pending or active:
      while pending and len(active) < max(1, args.parallel):
        start(pending.pop(0))
      done = [(pid, p.poll()) for pid, (p, _, _, _) in active.items() if p.poll() is not None]
      for pid, rc in done:
        finish(pid, rc)
      if not done:
        time.sleep(0.5)
  finally:
    signal.signal(signal.SIGINT, old[0])
    signal.signal(signal.SIGTERM, old[1])
  return failed


def slurm_submit(todo: list[dict], args) -> int:
  """One job array of launch/slurm.sbatch; returns sbatch's exit status."""
  args_file = os.path.abspath(os.path.join(args.workdir, 'sweep_args.txt'))
  limit = f'%{args.parallel}' if args.parallel > 0 else ''
  command = ['sbatch', '--parsable', f'--array=0-{len(todo) - 1}{limit}',
             '--job-name=rstg-sweep',
             f'--output={os.path.abspath(args.workdir)}/slurm-%A_%a.out',
             f'--export=ALL,RSTG_SWEEP_ARGS={args_file}',
             os.path.join(ROOT, 'launch', 'slurm.sbatch')]
  lines = [shlex.join(run['main_args']) for run in todo]
  if args.dry_run:
    print(f'would write {args_file}:')
    for i, line in enumerate(lines):
      print(f'  [{i}] {line}')
    print('would run: ' + shlex.join(command))
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  for run in todo:
    os.makedirs(run['workdir'], exist_ok=True)
    write_sweep_json(run, ['launch/slurm.sbatch'] + run['main_args'], args)
  with open(args_file, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('$ ' + shlex.join(command), flush=True)
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode:
    print(result.stdout + result.stderr, file=sys.stderr)
    return result.returncode
  job = result.stdout.strip().split(';')[0]
  print(f'submitted array job {job} ({len(todo)} runs)')
  # Rerunning the sweep asks squeue about these tasks instead of submitting them again.
  for i, run in enumerate(todo):
    path = os.path.join(run['workdir'], 'sweep.json')
    write_json_atomic(path, dict(status_lib.read_json(path) or {}, slurm_job=f'{job}_{i}'))
  return 0


def _define_flags() -> flags.FlagValues:
  """The sweep's flags, on their own FlagValues (the tests import this script beside
  rstg_jax.main, whose --config and --workdir are absl's global flags)."""
  fv = flags.FlagValues()
  flags.DEFINE_string('config', None, 'config file of every run (a preset has its own)',
                      flag_values=fv)
  flags.DEFINE_multi_string('grid', [], 'KEY=V1,V2,...: a config field and its values; '
                            'repeat to multiply', flag_values=fv)
  flags.DEFINE_enum('preset', None, sorted(paper_lib.PRESETS),
                    "the paper's rows (multiplied by any --grid): " + '; '.join(
                        f'{k}: {v["doc"]}' for k, v in paper_lib.PRESETS.items()),
                    flag_values=fv)
  flags.DEFINE_integer('seeds', None, 'run every point with seeds 0..N-1 (config.seed), '
                       "all of seed 0 first (default: the preset's own, else one run)",
                       flag_values=fv)
  flags.DEFINE_string('workdir', None, 'the sweep folder; run NAME goes to WORKDIR/NAME',
                      flag_values=fv)
  flags.DEFINE_enum('executor', 'local', ['local', 'slurm'], 'where the runs go',
                    flag_values=fv)
  flags.DEFINE_integer('parallel', None, 'runs at a time (default: local 1; slurm: array '
                       'tasks at a time, default 0 = no limit)', flag_values=fv)
  flags.DEFINE_integer('processes', 1, 'local: processes per run (launch/local.sh when > 1)',
                       flag_values=fv)
  flags.DEFINE_string('only', None, "run only the runs whose names match one of these "
                      "comma-separated shell patterns (e.g. 'sync3_all_temp_*')",
                      flag_values=fv)
  flags.DEFINE_bool('dry_run', False, 'print, run nothing', flag_values=fv)
  flags.DEFINE_bool('no_report', False, 'local: skip writing WORKDIR/report.md at the end',
                    flag_values=fv)
  flags.DEFINE_bool('list_presets', False, "print the paper's presets", flag_values=fv)
  return fv


def parse_args(argv):
  """Flags before `--`; everything after it goes to every run (EXTRA_MAIN_FLAGS)."""
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  else:
    extra = []
  fv = _define_flags()
  usage = 'usage: launch/sweep.py --config=CONFIG --grid=KEY=V1,V2 --workdir=DIR [...]'
  if any(a in ('-h', '--help', '--helpfull', '-help') for a in argv):
    print(__doc__ + '\nFlags:\n' + fv.get_help())
    raise SystemExit(0)
  try:
    rest = fv(['launch/sweep.py', *argv])
  except flags.Error as e:
    raise SystemExit(f'ERROR: {e}\n{usage} (--help for all flags)') from None
  if len(rest) > 1:
    raise SystemExit(f'ERROR: unexpected arguments {rest[1:]} (flags for the runs go '
                     f'after --)\n{usage}')
  args = types.SimpleNamespace(**{name: fv[name].value for name in fv})
  args.extra = extra
  if args.parallel is None:
    args.parallel = 1 if args.executor == 'local' else 0
  if args.list_presets:
    return args
  for missing, message in ((not args.workdir, '--workdir is required'),
                           (not args.config and not args.preset,
                            '--config is required (or a --preset)'),
                           (not args.grid and not args.preset,
                            'give at least one --grid (or a --preset)')):
    if missing:
      raise SystemExit(f'ERROR: {message}\n{usage}')
  return args


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.list_presets:
    for name, preset in paper_lib.PRESETS.items():
      seeds = f'; {preset["seeds"]} seeds' if preset.get('seeds') else ''
      print(f'{name}: {preset["doc"]}; config {preset["config"]}{seeds}')
      for p in preset['points']:
        top1 = p['paper']['top1']
        print(f'  {p["name"]:<20} {p["paper"]["row"]:<28} paper top-1 '
              f'{"-" if top1 is None else top1}  '
              + ' '.join(f'--config.{k}={v}' for k, v in p['overrides'].items()))
    return 0
  try:
    runs = select_runs(plan_runs(args), args.only)
  except (ValueError, KeyError) as e:
    raise SystemExit(f'ERROR: {e}') from None
  for run in runs:  # every grid key and value, before anything starts or is printed
    problem = config_problem(run)
    if problem:
      raise SystemExit(f'ERROR: run {run["name"]}: {problem}')
  todo = []
  for run in runs:
    status = status_of(run)
    if status in ('done', 'running', 'queued'):
      print(f'skip     {run["name"]}: {status}')
      continue
    what = {'partial': 'resume', 'new': 'new'}.get(status, 'retry')  # retry: failed
    todo.append(run)
    if args.dry_run and args.executor == 'local':
      print(f'{what:<8} {run["name"]}: {shlex.join(run_command(run, args.processes))}')
    elif args.dry_run:
      print(f'{what:<8} {run["name"]}')
  print(f'{len(runs)} run(s) in {args.workdir}: {len(todo)} to run, '
        f'{len(runs) - len(todo)} skipped', flush=True)
  if not todo:
    return 0
  if args.executor == 'slurm':
    return slurm_submit(todo, args)
  if args.dry_run:
    return 0
  failed = run_local(todo, args)
  if not args.no_report:
    md_path, _, _ = report_lib.write_report(args.workdir)
    print(f'report: {md_path}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
