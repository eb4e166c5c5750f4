"""Table 1 at CPU scale made fair (issue 28): the `sync3_table1_fair` preset's runs, as
launch/sweep.py plans them, have matched capacity, one input normalisation, one budget
and two seeds; `python -m rstg_jax.capacity` counts and checks the heads.

Parameter counts come from `jax.eval_shape` of each model's init: nothing is trained.
"""

import os
import sys

import pytest

from rstg_jax import capacity
from rstg_jax import paper
from rstg_jax import report
from rstg_jax.syncmnist import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'launch'))
import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

PRESET = 'sync3_table1_fair'


@pytest.fixture(name='planned')
def _planned(tmp_path, monkeypatch):
  """The fair preset's runs as the sweep plans them, each with its parsed config."""
  monkeypatch.chdir(REPO)  # config files import configs.*
  # The documented command's protocol: docs/table1_cpu.md runs the preset on :paper.
  runs = sweep.plan_runs(sweep.parse_args([
      f'--preset={PRESET}', '--config=configs/syncmnist_quick.py:paper',
      f'--workdir={tmp_path}']))
  for run in runs:
    run['cfg'] = report.parse_config(
        run['config'], [a for a in run['main_args'] if a.startswith('--config.')])
  return runs


def test_fair_preset_matches_capacity_normalisation_budget_and_seeds(planned):
  """Every baseline's trainable head is within 0.5x-2x of RSTG all-temp's (of the same
  seed); every row has input_norm 'batchnorm', the same steps, batch, val schedule and
  sizes, and runs with seeds 0 and 1. Catches a width that drifts out of the window, a
  row that normalises differently, a row with its own budget, a single seed."""
  assert len(planned) == 20
  assert {r['cfg'].seed for r in planned} == {0, 1}
  heads = {(r['grid']['row'], r['cfg'].seed): models.head_param_count(r['cfg'])
           for r in planned if r['cfg'].seed == 0}
  reference = heads[('sync3_all_temp', 0)]
  budgets = set()
  for run in planned:
    cfg = run['cfg']
    assert cfg.input_norm == 'batchnorm', run['name']
    assert cfg.rstg.frame_diff is False, run['name']  # on :paper too, which sets it
    budgets.add((cfg.num_train_steps, cfg.batch_size, cfg.eval.every, cfg.data.val_size,
                 cfg.eval.size, cfg.optim.learning_rate, cfg.backbone.freeze))
    if cfg.model != 'rstg' and cfg.seed == 0:
      ratio = heads[(run['grid']['row'], 0)] / reference
      assert 0.5 <= ratio <= 2.0, (run['name'], ratio)
      assert 0.9 <= ratio <= 1.1, (run['name'], ratio)  # the widths chosen: near 1x
  assert len(budgets) == 1, budgets  # one budget, selection rule and recipe for all rows
  # A head is all but the shared backbone, fine-tuned or not (the `:paper` protocol may
  # fine-tune it): the same count.
  first = planned[0]
  first['cfg'].backbone.freeze = False
  assert models.head_param_count(first['cfg']) == heads[(first['grid']['row'], 0)]


def test_capacity_command_flags_a_planted_width(tmp_path, monkeypatch, capsys):
  """`python -m rstg_jax.capacity` prints the counts and exits 0 on the fair preset;
  with a wrong width planted (after `--`, or the paper's widths: the unfair preset's
  rows on the same config) it exits 1 and names the rows outside the window."""
  monkeypatch.chdir(REPO)
  assert capacity.main([f'--preset={PRESET}']) == 0
  out = capsys.readouterr().out
  assert '| sync3_mean_lstm | mean_lstm | baseline.lstm_dim=140 | 103,430 | 0.99 |' in out
  assert '| sync3_all_temp | rstg |  | 104,558 | 1.00 |' in out
  assert capacity.main([f'--preset={PRESET}', '--', '--config.baseline.lstm_dim=30']) == 1
  err = capsys.readouterr().err
  assert 'outside 0.5x-2.0x of sync3_all_temp: sync3_mean_lstm (0.09x)' in err
  # The paper's widths on the quick config (the table): every baseline is out.
  unfair = dict(paper.PRESETS['sync3_table1'], config='configs/syncmnist_quick.py',
                capacity=paper.FAIR_CAPACITY)
  monkeypatch.setitem(paper.PRESETS, 'planted', unfair)
  rows = capacity.head_counts('planted')
  bad = {r['name']: round(r['ratio'], 2) for r in capacity.outside_window('planted', rows)}
  assert bad == {'sync3_mean_lstm': 0.27, 'sync3_conv_lstm': 3.27, 'sync3_i3d': 0.21,
                 'sync3_nonlocal': 0.23}


def test_committed_records_give_the_fair_table_the_docs_state(tmp_path):
  """The report over docs/records/table1_fair (20 records, 2 seeds a row, one budget,
  protocol 'paper') gives the means, ranks and Kendall tau that docs/table1_cpu.md and
  the README state. Catches a number in the docs that the committed records do not give,
  a row with one seed, or rows whose budgets differ."""
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'records'
  shutil.copytree(os.path.join(REPO, 'docs', 'records', 'table1_fair'), root)
  md_path, _, runs = report.write_report(str(root))
  assert len(runs) == 20 and {r['protocol'] for r in runs} == {'paper'}
  assert {r['status'] for r in runs} == {'done', 'done (transcribed)'}
  assert {r['seed'] for r in runs if r['status'] == 'done (transcribed)'} == {0}
  text = open(md_path).read()
  assert 'Budgets differ' not in text
  assert 'SyncMNIST Table 1, 3SyncMNIST (7 rows, mean over 14 runs)' in text
  assert '(Kendall tau 0.33)' in text
  groups = {g['name']: g for g in report.report_groups.group_runs(runs, report.our_score)}
  means = {name[len('sync3_'):]: round(100 * g['score'], 1) for name, g in groups.items()}
  assert all(len(g['members']) == 2 for g in groups.values())
  docs = open(os.path.join(REPO, 'docs', 'table1_cpu.md')).read()
  readme = open(os.path.join(REPO, 'README.md')).read()
  for name, row, *_ in paper.SYNCMNIST_ROWS:
    seeds = sorted(groups[f'sync3_{name}']['scores'])
    line = (f'| {row} | {100 * seeds[0][1]:.1f} | {100 * seeds[1][1]:.1f} | ')
    assert line in docs, line
  for name, words in (('all_temp', 'all-temp'), ('positional', 'positional'),
                      ('i3d', 'I3D'), ('time_only', 'Time-Only'), ('nonlocal', 'Non-Local'),
                      ('mean_lstm', 'Mean + LSTM')):
    assert f'{words} {means[name]}' in ' '.join(readme.split()), (name, means[name])
