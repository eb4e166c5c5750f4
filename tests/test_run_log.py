"""Tests of `rstg_jax.train.run_log`: metrics rows with wall time across resumptions,
TensorBoard scalars written without TensorFlow, config.json and DONE."""

import json
import os
import sys

import pytest

from rstg_jax.train import run_log
import tiny_run


def test_rows_events_and_resume(tmp_path, monkeypatch, no_tensorflow):
  pytest.importorskip('tensorboardX')
  clock = [1000.0]
  monkeypatch.setattr(run_log.time, 'time', lambda: clock[0])
  log = run_log.RunLog(str(tmp_path), resume_step=0)
  for step in (1, 2, 3):
    clock[0] += 10.0
    log.write({'step': step, 'split': 'train', 'loss': 1.0 / step, 'lr': 0.1,
               'videos_per_sec': 50.0})
  log.write({'step': 3, 'split': 'val', 'top1': 0.5, 'top5': 0.75})
  log.close()
  # Killed after step 3, resumed from the step-2 checkpoint, 100 s later.
  clock[0] += 100.0
  log = run_log.RunLog(str(tmp_path), resume_step=2)
  clock[0] += 5.0
  log.write({'step': 3, 'split': 'train', 'loss': 0.25})
  log.write({'step': 3, 'split': 'test', 'top1': 0.6, 'top5': 0.8, 'flag': True})
  log.close()

  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [(r['step'], r['split'], r['elapsed']) for r in rows] == [
      (1, 'train', 10.0), (2, 'train', 20.0), (3, 'train', 25.0), (3, 'test', 25.0)]
  scalars = tiny_run.tensorboard_scalars(str(tmp_path))
  assert scalars['train/loss'][:2] == [(1, 1.0), (2, 0.5)]
  assert scalars['train/videos_per_sec'][0] == (1, 50.0)
  assert scalars['val/top1'] == [(3, 0.5)]  # purged on resume by TensorBoard, kept on disk
  assert scalars['test/top5'] == [(3, pytest.approx(0.8))]
  assert 'test/flag' not in scalars  # booleans are not scalars
  assert 'tensorflow' not in sys.modules


def test_disabled_log_writes_nothing(tmp_path):
  log = run_log.RunLog(str(tmp_path), resume_step=0, enabled=False)
  log.write({'step': 1, 'split': 'train', 'loss': 1.0})
  log.close()
  assert os.listdir(tmp_path) == []


def test_config_json_and_done(tmp_path):
  run_log.write_config_json(str(tmp_path), {'batch_size': 8}, 100, num_processes=2)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['config'] == {'batch_size': 8} and saved['total_steps'] == 100
  assert saved['num_processes'] == 2
  run_log.write_done(str(tmp_path), step=100)
  assert json.loads((tmp_path / 'DONE').read_text())['step'] == 100
  run_log.clear_done(str(tmp_path))
  run_log.clear_done(str(tmp_path))  # idempotent
  assert not (tmp_path / 'DONE').exists()
