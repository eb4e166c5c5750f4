"""Evaluators: the test-set passes that the loop and the evaluate command run.

- `SingleView`: one clip per video (the data set's `eval_batches()`, or the batches it
  is given, e.g. a held-out `test_batches()`), metrics on the device as (sum, count)
  pairs; what every evaluation during training uses.
- `MultiView`: several views (crops, temporal samplings) per video; the logits of a
  video's views are averaged on the host (Something-Something's dense 22-view protocol).
Both return an `EvalResult`; `write_reports` turns one into the files of `eval_<step>/`:
summary.json, per-class accuracy (JSON and CSV), the confusion matrix (CSV and PNG) and,
when video ids are known, predictions.csv.
"""

import csv
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from rstg_jax import cli
from rstg_jax.train import metrics as metrics_lib


@dataclasses.dataclass
class EvalResult:
  metrics: dict  # top1, top5, loss, count (+ anything the evaluator adds)
  labels: np.ndarray  # [num_videos]
  preds: np.ndarray  # [num_videos] top-1 class
  logits: Optional[np.ndarray] = None  # [num_videos, C] (multi-view only)
  video_ids: Optional[Sequence[str]] = None
  lines: Sequence[str] = ()  # more to print (a task's diagnostic), one line each


def with_progress(batches: Iterable[dict], progress: bool) -> Iterable[dict]:
  """`batches`, drawn as a progress bar on stderr when `progress` (with an ETA when the
  batches know their number, `len(batches)`)."""
  if not progress:
    return batches
  total = len(batches) if hasattr(batches, '__len__') else None
  return tqdm.tqdm(batches, total=total, desc='eval', unit='batch', dynamic_ncols=True,
                   file=sys.stderr, mininterval=cli.progress_interval())


def evaluate(setup, state, collect: bool = False, batches: Optional[Iterable[dict]] = None,
             progress: bool = False):
  """(sum, count) totals over `batches` (default: the data set's `eval_batches()`, the
  split training selects on); with `collect`, also labels and predictions; with
  `progress`, a progress bar on stderr."""
  totals, labels, preds = None, [], []
  batches = setup.dataset.eval_batches() if batches is None else batches
  for batch in with_progress(batches, progress):
    m, pred = setup.eval_step(state, setup.to_device(batch))
    totals = metrics_lib.add(totals, m)
    if collect:
      # `pred` is replicated (the whole global batch); labels and mask are this process's
      # rows, so other processes' rows are gathered (identity with one process).
      label, mask = batch['label'], batch['mask']
      if jax.process_count() > 1:
        label, mask = multihost_utils.process_allgather((label, mask), tiled=True)
      keep = np.asarray(mask) > 0
      labels.append(np.asarray(label)[keep])
      preds.append(np.asarray(pred)[keep])
  totals = jax.device_get(totals)
  if collect:
    return totals, np.concatenate(labels), np.concatenate(preds)
  return totals


def evaluate_views(setup, state, batches: Iterable[dict], num_videos: int,
                   progress: bool = False) -> dict:
  """Multi-view evaluation: the logits of each video's views are averaged.

  Args:
    setup: the run's `rstg_jax.train.setup.Setup`.
    state: the train state.
    batches: this process's part of fixed-size batches with 'video', 'label', 'mask' and
      'video_index' (a video's position in the split, the same on every process); rows
      with mask 0 are padding.
    num_videos: videos in the split (video_index < num_videos).
    progress: a progress bar on stderr.

  Returns:
    {'logits': [num_videos, C] mean logits, 'labels': [num_videos], 'views': [num_videos]
    number of views seen per video}.
  """
  sums, views, labels = None, np.zeros(num_videos, np.int64), np.full(num_videos, -1)
  for batch in with_progress(batches, progress):
    logits = setup.logits_step(state, setup.to_device({'video': batch['video']})['video'])
    host = {k: np.asarray(batch[k]) for k in ('video_index', 'label', 'mask')}
    if jax.process_count() > 1:
      # The logits are the whole global batch; gather the other processes' row info.
      host = multihost_utils.process_allgather(host, tiled=True)
    logits = np.asarray(jax.device_get(logits), np.float64)
    if sums is None:
      sums = np.zeros((num_videos, logits.shape[-1]), np.float64)
    keep = host['mask'] > 0
    idx = host['video_index'][keep]
    np.add.at(sums, idx, logits[keep])
    np.add.at(views, idx, 1)
    labels[idx] = host['label'][keep]
  if sums is None or not views.all():
    raise ValueError(f'Multi-view evaluation saw {int((views > 0).sum())} of {num_videos} '
                     'videos.')
  return {'logits': sums / views[:, None], 'labels': labels, 'views': views}


def video_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """top-1, top-5 and the mean cross-entropy of per-video (averaged) logits."""
  topk = metrics_lib.top_k(logits, 5)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return {'top1': float(np.mean(topk[:, 0] == labels)),
          'top5': float(np.mean(np.any(topk == labels[:, None], -1))),
          'loss': float(-np.mean(log_probs[np.arange(len(labels)), labels])),
          'count': int(len(labels))}


@dataclasses.dataclass
class SingleView:
  """One clip per video.

  Attributes:
    batches: () -> iterator of batches with a 'mask' (default: the data set's
      `eval_batches()`).
    split: the split's name, put in the metrics as 'split' (None: left out).
    progress: a progress bar on stderr (the evaluate command).
  """
  batches: Optional[Callable[[], Iterable[dict]]] = None
  split: Optional[str] = None
  progress: bool = False

  def __call__(self, setup, state) -> EvalResult:
    totals, labels, preds = evaluate(setup, state, collect=True,
                                     batches=self.batches() if self.batches else None,
                                     progress=self.progress)
    metrics = {**metrics_lib.compute(totals), 'count': int(totals['top1'][1])}
    if self.split is not None:
      metrics['split'] = self.split
    return EvalResult(metrics, labels, preds)


@dataclasses.dataclass
class MultiView:
  """Several views per video, logits averaged.

  Attributes:
    batches: () -> iterator of batches as `evaluate_views` takes them.
    num_videos: videos in the evaluated split.
    video_ids: () -> the split's video ids in `video_index` order (for predictions.csv).
    info: extra fields for the summary (e.g. the view mode and the split).
    progress: a progress bar on stderr (the evaluate command).
  """
  batches: Callable[[], Iterable[dict]]
  num_videos: int
  video_ids: Optional[Callable[[], Sequence[str]]] = None
  info: dict = dataclasses.field(default_factory=dict)
  progress: bool = False

  def __call__(self, setup, state) -> EvalResult:
    out = evaluate_views(setup, state, self.batches(), self.num_videos, self.progress)
    logits, labels = out['logits'], out['labels']
    metrics = {**video_metrics(logits, labels), **self.info,
               'views_per_video': float(out['views'].mean())}
    return EvalResult(metrics, labels, np.argmax(logits, -1), logits,
                      self.video_ids() if self.video_ids else None)


def write_predictions(path: str, video_ids, logits, labels, class_names) -> None:
  """predictions.csv: one row per video, in evaluation order."""
  topk = metrics_lib.top_k(logits, 5)
  with metrics_lib.atomic_open(path, newline='') as f:
    w = csv.writer(f)  # class names hold commas: csv quotes them
    w.writerow(['video_id', 'pred', 'pred_name', 'top5', 'label', 'label_name'])
    for vid, top, label in zip(video_ids, topk, labels):
      w.writerow([vid, int(top[0]), class_names[top[0]], ' '.join(str(int(c)) for c in top),
                  int(label), class_names[label] if label >= 0 else ''])


def write_reports(out_dir: str, result: EvalResult, class_names: Sequence[str],
                  summary: dict[str, Any]) -> None:
  """The files of an evaluation directory (see the module docstring)."""
  os.makedirs(out_dir, exist_ok=True)
  class_names = list(class_names)
  if result.video_ids is not None and result.logits is not None:
    write_predictions(os.path.join(out_dir, 'predictions.csv'), result.video_ids,
                      result.logits, result.labels, class_names)
  cm = metrics_lib.confusion_matrix(result.labels, result.preds, len(class_names))
  metrics_lib.write_per_class(cm, class_names, out_dir)
  metrics_lib.write_confusion_csv(cm, class_names,
                                  os.path.join(out_dir, 'confusion_matrix.csv'))
  metrics_lib.plot_confusion(
      cm, class_names, os.path.join(out_dir, 'confusion.png'),
      title=f'step {summary["step"]}: top-1 {summary["top1"]:.3f} on '
            f'{summary["count"]} videos')
  with metrics_lib.atomic_open(os.path.join(out_dir, 'summary.json')) as f:
    json.dump(summary, f, indent=1)
