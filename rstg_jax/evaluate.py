r"""Evaluates a checkpoint on the test set: top-1/top-5, per-class accuracy, confusion.

  python -m rstg_jax.evaluate --config=configs/syncmnist.py --workdir=runs/sync3 \
      [--checkpoint=latest|best|<step>]

Without --config, the config saved in the checkpoint's metadata is used. Writes into
workdir/eval_<step>/: summary.json (top1, top5, loss, count), per_class_accuracy.json and
.csv, confusion_matrix.csv (counts, rows = true class) and confusion.png.

SyncMNIST: the test split (`--checkpoint=best` is the checkpoint chosen on val), and the
digit-oracle diagnostic (`syncmnist.digit_oracle_report`), printed and in summary.json
under "oracle": the accuracy of an oracle that knows which digits are present but not
how they move, the model's accuracy on pair and no-pair videos, and how often it names a
pair of present digits that do not move together. Above the oracle, it uses motion.

Something-Something-v1 (`config.data.name == 'ssv1'`) is evaluated on the whole
`config.data.eval_split` with multi-view testing: `--eval_mode=dense` (the default,
`config.data.evaluate_mode`) runs 2 temporal samplings x 11 crops of 256x256 per video
(the paper's protocol) and averages each video's 22 logit vectors; `--eval_mode=center`
one centre 224 crop. It also writes predictions.csv: video_id, predicted class (index
and name), the top-5 indices, and the label (index and name).

  python -m rstg_jax.evaluate --workdir=runs/ssv1_i3d --checkpoint=best
"""

import csv
import json
import os
from typing import Optional

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from rstg_jax import cli
from rstg_jax import runtime
from rstg_jax.train import input as input_pipeline
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import loop as train


def _tuples(x):
  # JSON turns the config's tuples (e.g. rstg.scales) into lists; the model expects tuples.
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def config_from_checkpoint(workdir: str, checkpoint: str = 'latest'
                          ) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with (from its JSON metadata)."""
  placeholder = ml_collections.ConfigDict({'keep_checkpoints': 1})
  with train.checkpoint_manager(workdir, placeholder, read_only=True) as mngr:
    step = train.resolve_checkpoint_step(mngr, checkpoint)
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  return ml_collections.ConfigDict(_tuples(meta['config']))


def write_predictions(path: str, video_ids, logits, labels, class_names) -> None:
  """predictions.csv: one row per video, in evaluation order."""
  k = min(5, logits.shape[-1])
  topk = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)  # class names hold commas: csv quotes them
    w.writerow(['video_id', 'pred', 'pred_name', 'top5', 'label', 'label_name'])
    for vid, top, label in zip(video_ids, topk, labels):
      w.writerow([vid, int(top[0]), class_names[top[0]], ' '.join(str(int(c)) for c in top),
                  int(label), class_names[label] if label >= 0 else ''])


def _multiview(setup, state, eval_mode: str):
  """SSv1: per-video averaged logits over the views of `eval_mode` on the whole split."""
  data, split = setup.dataset, setup.config.data.eval_split
  n = data.num_videos(split)
  out = train.evaluate_views(setup, state, data.view_batches(eval_mode, split=split), n)
  return out, data.video_ids(split)


def run(config: Optional[ml_collections.ConfigDict], workdir: str,
        checkpoint: str = 'latest', *, model=None, dataset=None,
        eval_mode: Optional[str] = None) -> dict:
  """Evaluates one checkpoint of `workdir`; returns the summary dict.

  Args:
    config: the run's config; None: read it from the checkpoint.
    workdir: the training workdir (its checkpoints/ subdirectory is read).
    checkpoint: 'latest', 'best' (by eval top-1: val for SyncMNIST) or a step number.
    model, dataset: stand-ins for tests (default: built from the config).
    eval_mode: multi-view data sets only (SSv1): 'dense' or 'center'; default
      `config.data.evaluate_mode`.
  """
  if config is None:
    config = config_from_checkpoint(workdir, checkpoint)
  train.validate_config(config, check_model_names=model is None)
  input_pipeline.check_data(config)  # a missing data set fails before any compile
  setup = train.make_setup(config, model, dataset)
  params_shape = jax.eval_shape(
      lambda k: train.init_variables(setup.model, k, setup.dataset.input_shape),
      jax.random.key(0))['params']
  train.finish_setup(setup, params_shape)

  with train.checkpoint_manager(workdir, config, read_only=True) as mngr:
    step = train.resolve_checkpoint_step(mngr, str(checkpoint))
    state, meta = train.restore(mngr, step, setup.abstract_state)
  class_names = list(setup.dataset.class_names)
  if meta.get('class_names') not in (None, class_names):
    raise ValueError('The checkpoint was trained with another class order than the data '
                     'set gives now; its predictions would be mislabelled.')

  out_dir = os.path.join(workdir, f'eval_{step}')
  if hasattr(setup.dataset, 'view_batches'):
    eval_mode = eval_mode or config.data.evaluate_mode
    views, video_ids = _multiview(setup, state, eval_mode)
    labels, logits = views['labels'], views['logits']
    preds = np.argmax(logits, -1)
    summary = {'step': int(step), **train.video_metrics(logits, labels),
               'eval_mode': eval_mode, 'split': config.data.eval_split,
               'views_per_video': float(views['views'].mean()),
               'workdir': os.path.abspath(workdir)}
    os.makedirs(out_dir, exist_ok=True)
    write_predictions(os.path.join(out_dir, 'predictions.csv'), video_ids, logits, labels,
                      class_names)
  else:
    test = getattr(setup.dataset, 'test_batches', None)
    totals, labels, preds = train.evaluate(setup, state, collect=True,
                                           batches=test() if test else None)
    summary = {'step': int(step), **metrics_lib.compute(totals),
               'count': int(totals['top1'][1]), 'split': 'test' if test else
               train.eval_split_name(setup.dataset), 'workdir': os.path.abspath(workdir)}
    if hasattr(setup.dataset, 'digits'):
      summary['oracle'] = _oracle_diagnostic(setup.dataset, labels, preds)
    os.makedirs(out_dir, exist_ok=True)
  cm = metrics_lib.confusion_matrix(labels, preds, len(class_names))
  metrics_lib.write_per_class(cm, class_names, out_dir)
  with open(os.path.join(out_dir, 'confusion_matrix.csv'), 'w') as f:
    f.write('true\\pred,' + ','.join(class_names) + '\n')
    for name, row in zip(class_names, cm):
      f.write(name + ',' + ','.join(str(int(v)) for v in row) + '\n')
  metrics_lib.plot_confusion(
      cm, class_names, os.path.join(out_dir, 'confusion.png'),
      title=f'step {step}: top-1 {summary["top1"]:.3f} on {summary["count"]} videos')
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  print(f'Checkpoint step {step}: top-1 {summary["top1"]:.4f}, top-5 {summary["top5"]:.4f}, '
        f'loss {summary["loss"]:.4f} on {summary["count"]} test videos; outputs in {out_dir}',
        flush=True)
  return summary


def _oracle_diagnostic(dataset, labels, preds) -> dict:
  """SyncMNIST: the digit-oracle comparison on the test videos, printed and returned."""
  from rstg_jax.syncmnist import generator as syncmnist  # pylint: disable=g-import-not-at-top
  report = syncmnist.digit_oracle_report(labels, preds, dataset.digits('test'))
  print(f'Digit oracle (knows the digits, not their motion): top-1 '
        f'{report["oracle_top1"]:.4f}; model: top-1 {report["top1"]:.4f}, on pair videos '
        f'{report["pair_top1"]:.4f} ({report["pair_videos"]}), on no-pair videos '
        f'{report["no_pair_top1"]:.4f} ({report["no_pair_videos"]}); names a present but '
        f'asynchronous pair in {report["present_async_pair"]:.4f} of the videos, a pair '
        f'with an absent digit in {report["absent_digit_pair"]:.4f}', flush=True)
  return report


def _define_flags():
  # Defined only when run as a program, so `rstg_jax.main` can import this module.
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'The training workdir.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best, or a step number.')
  flags.DEFINE_enum('eval_mode', None, ['dense', 'center'],
                    'SSv1 only: views per video (default: config.data.evaluate_mode).')
  config_flags.DEFINE_config_file(
      'config', None, 'Config file (default: the one saved in the checkpoint).',
      lock_config=True)
  flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  runtime.reuse_freed_memory()  # XLA:CPU intermediates: reuse, not fresh pages
  flag_values = flags.FLAGS
  try:
    run(flag_values.config, flag_values.workdir, flag_values.checkpoint,
        eval_mode=flag_values.eval_mode)
  except ValueError as e:
    raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
