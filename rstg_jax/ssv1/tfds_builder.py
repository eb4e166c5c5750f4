"""Something-Something-v1 as a TFDS data set: the builder that converts the raw download.

This module and `rstg_jax.ssv1.pipeline` are the only ones that import TensorFlow: nothing
imports them at import time (the SSv1 task imports them when it builds the data set), so
`import rstg_jax` and the SyncMNIST path stay free of TF. Install `tensorflow-cpu`, not
`tensorflow`: the CPU build never reserves GPU memory that JAX needs.

Two steps:

1. Convert once (`prepare`, or `python -m rstg_jax.ssv1.tfds_builder --root=ROOT
   --data_dir=DIR`): the builder `something_something_v1` reads ROOT (see
   `rstg_jax.ssv1.reader` for the layout and the checks), and writes TFRecord shards under
   DIR/something_something_v1/1.0.0/ with, per video: 'frames' (the JPEG bytes of every
   frame, not decoded pixels), 'label' (ClassLabel in labels-file order; -1 in test),
   'video_id', 'num_frames', 'height', 'width'. Skipped videos and repaired frames are
   listed in DIR/something_something_v1/1.0.0/ssv1_report.json (format in
   `_new_report`) and summarised in one log line.

2. Read (`rstg_jax.ssv1.pipeline.make_dataset`): decode only the sampled frames, resize
   the short side, crop, normalise, batch.
"""

import collections
import concurrent.futures
import datetime
import json
import os
import shutil
import sys
from typing import Optional

from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from rstg_jax import cli
from rstg_jax.ssv1 import quiet
from rstg_jax.ssv1 import reader as ssv1

NAME = 'something_something_v1'
REPORT_FILE = ssv1.REPORT_FILE

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Something-Something-v1 cannot be downloaded automatically. Register and download it from
the Qualcomm AI datasets page (it was 20bn.com until 2021; look for
"20BN-SOMETHING-SOMETHING" v1), join and extract the archive parts, and arrange ROOT as:

  ROOT/{ssv1.FRAMES_DIR}/<video id>/00001.jpg ...
  ROOT/{ssv1.LABELS_FILE}
  ROOT/{ssv1.SPLIT_FILES['train']}
  ROOT/{ssv1.SPLIT_FILES['validation']}
  ROOT/{ssv1.SPLIT_FILES['test']}   (optional)

Then set config.data.root=ROOT (it becomes the TFDS manual_dir), or run
  python -m rstg_jax.ssv1.tfds_builder --root=ROOT --data_dir=DIR
"""

_CITATION = """\
@inproceedings{goyal2017something,
  title={The "something something" video database for learning and evaluating visual
         common sense},
  author={Goyal, Raghav and others},
  booktitle={ICCV},
  year={2017}
}"""


def _new_report(root: str) -> dict:
  """The skip report written beside the shards.

  Keys:
    root: the ROOT converted; created: UTC time.
    source: `ssv1.source_record(root)` (real path, label-file hash, frame folders): every
      later run with a config.data.root compares it (`ssv1.shards_source_problem`).
    splits: split -> {'listed': ids in the csv, 'written': videos stored,
      'skipped': videos dropped, 'repaired_frames': frames fixed,
      'frames_per_video': {'min', 'max', 'mean'} over the stored videos}.
    skipped: [{'split', 'id', 'reason'}], reason in 'missing_folder', 'empty_folder',
      'unreadable_folder', 'no_decodable_frame'.
    repaired_frames: [{'split', 'id', 'frame', 'problem', 'action'}].
  """
  return {'root': root, 'source': ssv1.source_record(root),
          'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
          'splits': {}, 'skipped': [], 'repaired_frames': []}


def empty_split_error(split: str, rows, skipped) -> ssv1.SSv1DataError:
  """The error for a required split left with no video once the bad ones are skipped."""
  reasons = collections.Counter(r['reason'] for r in skipped if r['split'] == split)
  return ssv1.SSv1DataError(
      f'No usable video in the {split} split: all {len(rows)} videos listed in '
      f'{ssv1.SPLIT_FILES[split]} were skipped ('
      + ', '.join(f'{n} {reason}' for reason, n in sorted(reasons.items()))
      + f'). Check that {ssv1.FRAMES_DIR}/<video id>/ holds the JPEG frames of the '
      f'listed ids under config.data.root.')


class SomethingSomethingV1(tfds.core.GeneratorBasedBuilder):
  """Something-Something-v1, frames stored as JPEG bytes, checked at conversion."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Frames as JPEG bytes; bad videos skipped, bad frames repaired.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, num_workers: int = 8, **kwargs):
    """Args: num_workers: threads that read and check videos during conversion (the
    work is file reads and Pillow decodes, which release the GIL); kwargs: TFDS's."""
    self._num_workers = max(1, num_workers)
    self._report = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Something-Something-v1: 108k short videos of 174 hand-object '
                     'actions, as JPEG frames (about 100 px high, 12 fps).'),
        features=tfds.features.FeaturesDict({
            'video_id': tfds.features.Text(),
            # Names come from the labels file at conversion time (file order), and are
            # restored from the prepared directory when reading.
            'label': tfds.features.ClassLabel(),
            'num_frames': np.int32,
            'height': np.int32,
            'width': np.int32,
            'frames': tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')),
        }),
        # The original page; the data set has since moved (see MANUAL_DOWNLOAD_INSTRUCTIONS).
        homepage='https://20bn.com/datasets/something-something/v1',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:
      # TFDS says "does not exist or is empty"; ours also names the config field.
      manual_dir = dl_manager._manual_dir  # pylint: disable=protected-access
    root = ssv1.check_root(manual_dir)
    class_names = ssv1.read_class_names(root)
    self.info.features['label'].names = list(class_names)
    # Every split file is parsed (class names checked) before any video is converted, so
    # a typo in a csv fails in a second, not after hours of conversion.
    rows = {split: ssv1.read_split(root, split, class_names) for split in ssv1.SPLIT_FILES}
    if not rows['test']:
      logging.warning('SSv1: no %s in %s; preparing train and validation only.',
                      ssv1.SPLIT_FILES['test'], root)
    self._report = _new_report(root)
    return {split: self._generate_examples(root, split, r)
            for split, r in rows.items() if r}

  def _generate_examples(self, root, split, rows):
    stats = {'listed': len(rows), 'written': 0, 'skipped': 0, 'repaired_frames': 0}
    lengths = []
    window = 4 * self._num_workers  # Bounds the videos held in memory at once.
    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      pending = collections.deque()
      rows_iter = iter(rows)

      def fill():
        for video_id, label in rows_iter:
          pending.append(pool.submit(ssv1.load_video, root, video_id, label))
          if len(pending) >= window:
            return

      fill()
      while pending:
        video = pending.popleft().result()
        fill()
        if video.skip_reason:
          stats['skipped'] += 1
          self._report['skipped'].append(
              {'split': split, 'id': video.video_id, 'reason': video.skip_reason})
          continue
        for repair in video.repairs:
          self._report['repaired_frames'].append(
              {'split': split, 'id': video.video_id, **repair})
        stats['repaired_frames'] += len(video.repairs)
        stats['written'] += 1
        lengths.append(len(video.frames))
        yield video.video_id, {
            'video_id': video.video_id, 'label': video.label,
            'num_frames': len(video.frames), 'height': video.height,
            'width': video.width, 'frames': video.frames}
    if lengths:
      stats['frames_per_video'] = {'min': int(min(lengths)), 'max': int(max(lengths)),
                                   'mean': float(np.mean(lengths))}
    self._report['splits'][split] = stats
    if not stats['written'] and split in ssv1.REQUIRED_SPLITS:
      raise empty_split_error(split, rows, self._report['skipped'])

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is still TFDS's temporary directory here, renamed when all is written,
    # so the report appears only beside a complete data set.
    with open(os.path.join(self.data_dir, REPORT_FILE), 'w') as f:
      json.dump(self._report, f, indent=1)

  def _log_download_bytes(self):  # TFDS's banner ("Unknown size"): ours says what happens
    logging.warning('SSv1: converting the raw copy into TFDS shards in %s (once; later runs '
                    'read them).', self.data_dir)

  def _log_download_done(self):  # the summary below says it
    pass

  def download_and_prepare(self, *args, **kwargs):
    super().download_and_prepare(*args, **kwargs)
    report = read_report(self)
    if report is not None:
      logging.warning(
          'SSv1 prepared in %s: %s; %d videos skipped, %d frames repaired (list: %s).',
          self.data_dir,
          ', '.join(f'{s} {v["written"]}' for s, v in report['splits'].items()),
          len(report['skipped']), len(report['repaired_frames']),
          os.path.join(self.data_dir, REPORT_FILE))


def read_report(builder_or_dir) -> Optional[dict]:
  """The conversion report (see `_new_report`) of a prepared data set, or None.

  Args:
    builder_or_dir: a `SomethingSomethingV1`, or its versioned directory.
  """
  d = getattr(builder_or_dir, 'data_dir', builder_or_dir)
  path = os.path.join(os.fspath(d), REPORT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _default_data_dir(data_dir):
  return os.path.expanduser(data_dir) if data_dir else None  # None: TFDS's default.


def prepare(root, data_dir=None, *, num_workers: int = 8) -> SomethingSomethingV1:
  """Converts ROOT into TFDS shards under data_dir (once; later calls reuse them).

  Args:
    root: the SSv1 root (`config.data.root`).
    data_dir: where TFDS data sets live; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
    num_workers: reader threads.

  Returns:
    The prepared builder (`builder.info.features['label'].names` = class list).

  Raises:
    ssv1.SSv1DataError: ROOT, a label file or a class name is wrong (message says which).
  """
  quiet.quiet_tensorflow()
  root = ssv1.check_root(root)
  ssv1.read_class_names(root)  # Fail before TFDS creates any directory.
  builder = SomethingSomethingV1(data_dir=_default_data_dir(data_dir),
                                 num_workers=num_workers)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=root,
      # The data set is on no public bucket; asking would only cost a network timeout.
      try_download_gcs=False))
  return builder


def load_builder(data_dir=None, root=None, rebuild: bool = False,
                 **prepare_kwargs) -> SomethingSomethingV1:
  """The prepared builder in data_dir; converts `root` first if it is not prepared yet.

  Prepared shards belong to the copy they were converted from: with a `root`, they are
  used only if converted from it as it is now (`ssv1.shards_source_problem`); else `rebuild`
  replaces them with a conversion of `root`, and without it this stops. Without a root,
  the shards are used as they are (their source is logged).

  Raises:
    ssv1.SSv1DataError: not prepared and no root given (the message gives the command),
      or shards of another copy (or of a changed one) without `rebuild`.
  """
  quiet.quiet_tensorflow()
  builder = SomethingSomethingV1(data_dir=_default_data_dir(data_dir))
  if builder.is_prepared():
    if root is None:
      source = (read_report(builder) or {}).get('root', 'an unrecorded source')
      logging.warning('SSv1: using the shards in %s, converted from %s (no '
                      'config.data.root to compare them with).', builder.data_dir, source)
      return builder
    problem = ssv1.shards_source_problem(os.fspath(builder.data_dir), root)
    if not problem:
      return builder
    if not rebuild:
      raise ssv1.SSv1DataError(problem)
    logging.warning('SSv1: replacing the shards in %s, converted from another copy or an '
                    'older state of it, with a conversion of %s (config.data.rebuild).',
                    builder.data_dir, root)
    shutil.rmtree(builder.data_dir)
    builder = SomethingSomethingV1(data_dir=_default_data_dir(data_dir))
  if root is None:
    raise ssv1.SSv1DataError(
        f'No prepared Something-Something-v1 in {builder.data_dir}. Set config.data.root '
        f'to the raw data, or convert it first: python -m rstg_jax.ssv1.tfds_builder '
        f'--root=ROOT --data_dir={builder.data_dir_root}')
  return prepare(root, data_dir, **prepare_kwargs)


def class_names(builder) -> tuple[str, ...]:
  """Class names in index order (labels-file order), for checkpoint metadata."""
  return tuple(builder.info.features['label'].names)


def main(argv=None) -> int:
  """`python -m rstg_jax.ssv1.tfds_builder --root=ROOT [--data_dir=DIR]`: convert once."""
  def define(fv):
    flags.DEFINE_string('root', None, 'SSv1 root (config.data.root).', flag_values=fv)
    flags.DEFINE_string('data_dir', None, 'TFDS data dir (default $TFDS_DATA_DIR or '
                        '~/tensorflow_datasets).', flag_values=fv)
    flags.DEFINE_integer('num_workers', 8, 'reader threads', flag_values=fv)
    flags.mark_flag_as_required('root', flag_values=fv)

  args, _ = cli.parse_command(define, list(sys.argv[1:] if argv is None else argv),
                              'python -m rstg_jax.ssv1.tfds_builder')
  logging.set_verbosity(logging.WARNING)
  try:
    builder = prepare(args.root, args.data_dir, num_workers=args.num_workers)
  except ssv1.SSv1DataError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  report = read_report(builder) or {'splits': {}, 'skipped': [], 'repaired_frames': []}
  print(f'{NAME} in {builder.data_dir}: ' +
        ', '.join(f'{s} {v["written"]} videos' for s, v in report['splits'].items()) +
        f'; {len(report["skipped"])} skipped, {len(report["repaired_frames"])} frames '
        f'repaired (see {os.path.join(builder.data_dir, REPORT_FILE)}).')
  return 0


if __name__ == '__main__':
  sys.exit(main())
