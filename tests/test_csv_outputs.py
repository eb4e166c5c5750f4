"""The evaluation CSVs survive class names with commas and quotes (SSv1 has many:
"Putting something, something and something on the table")."""

import csv

import numpy as np

from rstg_jax.train import metrics

NAMES = ('Putting something, something and something on the table',
         'Pretending to put "something" behind something',
         'Moving something up')


def _read(path):
  with open(path, newline='') as f:
    return list(csv.reader(f))


def test_confusion_matrix_csv_round_trips_names(tmp_path):
  cm = np.array([[3, 1, 0], [0, 2, 5], [1, 0, 7]])
  path = tmp_path / 'confusion_matrix.csv'
  metrics.write_confusion_csv(cm, NAMES, str(path))
  rows = _read(path)
  assert rows[0] == ['true\\pred', *NAMES]
  assert [r[0] for r in rows[1:]] == list(NAMES)
  np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], int), cm)


def test_per_class_csv_round_trips_names(tmp_path):
  cm = np.diag([2, 0, 1])
  metrics.write_per_class(cm, NAMES, str(tmp_path))
  with open(tmp_path / 'per_class_accuracy.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['class_name'] for r in rows] == list(NAMES)
  assert [r['count'] for r in rows] == ['2', '0', '1']


def test_predictions_csv_round_trips_names(tmp_path):
  from rstg_jax.train import evaluators as evaluate  # pylint: disable=g-import-not-at-top
  logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0]])
  path = tmp_path / 'predictions.csv'
  evaluate.write_predictions(str(path), ['17', '42'], logits, np.array([1, -1]), NAMES)
  rows = _read(path)
  assert rows[0] == ['video_id', 'pred', 'pred_name', 'top5', 'label', 'label_name']
  assert rows[1] == ['17', '1', NAMES[1], '1 0 2', '1', NAMES[1]]
  assert rows[2] == ['42', '0', NAMES[0], '0 2 1', '-1', '']
