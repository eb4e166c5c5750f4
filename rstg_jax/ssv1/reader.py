"""Something-Something-v1 on disk: the official layout, its label files, and frame checks.

This module reads the data set as 20BN distributed it and decides what is usable; it needs only
numpy and Pillow (which matplotlib brings), not TensorFlow, so the trainer can read the class list
(for checkpoint metadata) without importing TF. The TFDS builder (`rstg_jax.ssv1.tfds_builder`)
calls the functions here once, at conversion time, so that training never sees a bad video.

Layout under ROOT (`config.data.root`):

  ROOT/20bn-something-something-v1/<video id>/00001.jpg, 00002.jpg, ...
  ROOT/something-something-v1-labels.csv       one class name per line, no header
  ROOT/something-something-v1-train.csv        `<id>;<class name>`
  ROOT/something-something-v1-validation.csv   `<id>;<class name>`
  ROOT/something-something-v1-test.csv         `<id>` (unlabelled; optional)

Class index = line order in the labels file (as the RSTG authors and MMAction2 do; TSM
sorts the names instead, which gives other indices). `read_class_names` returns that list;
store it with a checkpoint so its logits can be read back with the right names.

What happens to bad input (all decided here, at conversion time):
  - missing ROOT, frame folder or labels/train/validation file: `SSv1DataError` naming the
    path, where to get the data and which config field to set;
  - a class name in a split file that the labels file lacks, a malformed line, or a video
    id that is not a plain folder name (`..`, an absolute path, a separator: the reader
    never opens frames outside ROOT): `SSv1DataError` naming the file and line number;
  - a label file that is not UTF-8: `SSv1DataError` naming the file, line and byte;
  - a train or validation split left with no video after the skips: `SSv1DataError`
    at conversion (`ssv1_tfds`), listing the skip reasons;
  - an id without a frame folder, with a folder holding no frame, or with a folder that
    cannot be listed (permissions): video skipped and reported;
  - a frame that does not decode, is not a regular file (a FIFO would block the reader
    forever, a link to /dev/zero never ends), is larger than `MAX_FRAME_BYTES`, declares
    more than `MAX_FRAME_PIXELS` pixels, or cannot be read (permissions): replaced by its
    nearest usable neighbour (the earlier one on a tie), reported with the problem; a
    video with no usable frame is skipped and reported;
  - a grayscale (or CMYK, palette, PNG-in-disguise) frame: re-encoded as an RGB JPEG,
    reported; a frame of another size than the video's first frame: resized to it, reported;
  - a video shorter than the number of frames a clip samples is kept: the samplers in
    `ssv1_tfds` repeat frames.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
import stat
from typing import Optional

import numpy as np

from rstg_jax import errors

FRAMES_DIR = '20bn-something-something-v1'
LABELS_FILE = 'something-something-v1-labels.csv'
SPLIT_FILES = {
    'train': 'something-something-v1-train.csv',
    'validation': 'something-something-v1-validation.csv',
    'test': 'something-something-v1-test.csv',
}
# Written beside the shards at conversion: skipped videos, repairs and the source copy.
REPORT_FILE = 'ssv1_report.json'
# The test split has no labels and is not needed to train or validate: its file may be absent.
REQUIRED_SPLITS = ('train', 'validation')
UNLABELLED = -1

DOWNLOAD_HINT = (
    'Something-Something-v1 is a manual download: register and download it from the '
    'Qualcomm AI datasets page (formerly 20bn.com, "20BN-SOMETHING-SOMETHING"), join and '
    'extract the 20bn-something-something-v1 archive parts, and put the four '
    'something-something-v1-*.csv label files beside the extracted folder. Then set '
    'config.data.root to the directory that holds both (e.g. '
    '--config.data.root=/data/ssv1).')

#: Largest frame file read, bytes (SSv1's frames are JPEGs of a few kB).
MAX_FRAME_BYTES = 16 << 20
#: Most pixels a frame may declare (Pillow allocates them before it decodes).
MAX_FRAME_PIXELS = 4096 * 4096

_FRAME_RE = re.compile(r'^(\d+)\.jpe?g$', re.IGNORECASE)
# Re-encoded frames: high quality, so that a repaired frame looks like its neighbours.
_REENCODE_QUALITY = 95


class SSv1DataError(errors.DataError):
  """The data on disk cannot be used as it is; the message says what to do.

  A `rstg_jax.errors.DataError`, so the entry points print it as a one-line error.
  """


@dataclasses.dataclass
class Video:
  """One video as it will be stored.

  Attributes:
    video_id: the folder name (a number in SSv1, kept as a string).
    label: class index, or -1 (UNLABELLED) in the test split.
    frames: JPEG bytes of each frame, in time order, all RGB and of one size; empty if
      the video is skipped.
    height, width: frame size in pixels.
    skip_reason: None if the video is usable, else 'missing_folder', 'empty_folder',
      'unreadable_folder' or 'no_decodable_frame'.
    repairs: one dict per repaired frame: {'frame': file name, 'problem': ..., 'action': ...}.
  """
  video_id: str
  label: int
  frames: list = dataclasses.field(default_factory=list)
  height: int = 0
  width: int = 0
  skip_reason: Optional[str] = None
  repairs: list = dataclasses.field(default_factory=list)


def check_root(root) -> str:
  """Returns ROOT as a string path after checking that it and its frame folder exist.

  Raises:
    SSv1DataError: ROOT or ROOT/20bn-something-something-v1 is missing (or root unset).
  """
  if not root:
    raise SSv1DataError(f'No Something-Something-v1 root given. {DOWNLOAD_HINT}')
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise SSv1DataError(
        f'Something-Something-v1 root {root!r} does not exist. {DOWNLOAD_HINT}')
  frames = os.path.join(root, FRAMES_DIR)
  if not os.path.isdir(frames):
    raise SSv1DataError(
        f'Frame folder {frames!r} does not exist: expected ROOT/{FRAMES_DIR}/<video id>/'
        f'00001.jpg ... under config.data.root={root!r}. {DOWNLOAD_HINT}')
  return root


def _label_file(root: str, name: str) -> str:
  path = os.path.join(root, name)
  if not os.path.isfile(path):
    raise SSv1DataError(
        f'Label file {path!r} is missing (expected {name} in config.data.root={root!r}; '
        f'it comes with the data set\'s label archive). {DOWNLOAD_HINT}')
  return path


def _read_lines(path: str):
  """Yields (line number, stripped line) for the non-blank lines of a text file.

  Raises:
    SSv1DataError: the file is not UTF-8 text (names the file, line and byte).
  """
  with open(path, 'rb') as f:
    data = f.read()
  try:
    # utf-8-sig: a byte-order mark left by a spreadsheet editor is not part of a class name.
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    offset = e.start + (3 if data.startswith(b'\xef\xbb\xbf') else 0)
    line = data[:offset].count(b'\n') + 1
    raise SSv1DataError(
        f'{path}, line {line}: not UTF-8 text (byte {data[offset:offset + 1]!r} at offset '
        f'{offset}); the label files of the data set are UTF-8: re-save this one as UTF-8.'
    ) from None
  for number, line in enumerate(text.split('\n'), start=1):
    line = line.strip()
    if line:
      yield number, line


def check_video_id(video_id: str, where: str = '') -> str:
  """Returns the id if it names one folder inside the frame folder, else raises.

  An id is a folder name: not empty, not '.' or '..', no '/' or '\\', no NUL, not an
  absolute path. So a label file cannot make the reader open frames outside ROOT.

  Raises:
    SSv1DataError: naming `where` (file and line) and the id.
  """
  bad = (not video_id or video_id in ('.', '..') or os.path.isabs(video_id)
         or any(c in video_id for c in ('/', '\\', '\0'))
         or (os.altsep is not None and os.altsep in video_id))
  if bad:
    raise SSv1DataError(f'{where + ": " if where else ""}video id {video_id!r} is not a '
                        f'folder name inside {FRAMES_DIR}/ (ids may not contain path '
                        'separators or be "." or ".."); fix that line of the label file.')
  return video_id


def read_class_names(root) -> tuple[str, ...]:
  """The class names in the labels file's line order; index i = class i.

  Raises:
    SSv1DataError: the labels file is missing, empty or names a class twice.
  """
  path = _label_file(os.fspath(root), LABELS_FILE)
  names, seen = [], {}
  for number, name in _read_lines(path):
    if name in seen:
      raise SSv1DataError(f'{path}, line {number}: class {name!r} already named on line '
                          f'{seen[name]}.')
    seen[name] = number
    names.append(name)
  if not names:
    raise SSv1DataError(f'Label file {path!r} names no class.')
  return tuple(names)


def read_split(root, split: str, class_names) -> list[tuple[str, int]]:
  """(video id, class index) for each line of a split file, in file order.

  Args:
    root: the data set root.
    split: 'train', 'validation' or 'test'.
    class_names: from `read_class_names`; the test split ignores it (labels are -1).

  Returns:
    A list of (id, label); an empty list for an absent test file.

  Raises:
    SSv1DataError: a required split file is missing, or a line names an unknown class,
      has no id, or repeats an id.
  """
  if split not in SPLIT_FILES:
    raise SSv1DataError(f'Unknown split {split!r}; known: {", ".join(SPLIT_FILES)}.')
  root = os.fspath(root)
  name = SPLIT_FILES[split]
  if split not in REQUIRED_SPLITS and not os.path.isfile(os.path.join(root, name)):
    return []
  path = _label_file(root, name)
  index = {c: i for i, c in enumerate(class_names)}
  out, seen = [], {}
  for number, line in _read_lines(path):
    if split == 'test':
      video_id, label = line.split(';', 1)[0].strip(), UNLABELLED
    else:
      if ';' not in line:
        raise SSv1DataError(f'{path}, line {number}: expected "<id>;<class name>", got '
                            f'{line!r}.')
      video_id, name_ = (s.strip() for s in line.split(';', 1))
      if name_ not in index:
        raise SSv1DataError(f'{path}, line {number}: class {name_!r} is not in '
                            f'{LABELS_FILE}.')
      label = index[name_]
    if not video_id:
      raise SSv1DataError(f'{path}, line {number}: no video id in {line!r}.')
    check_video_id(video_id, f'{path}, line {number}')
    if video_id in seen:
      raise SSv1DataError(f'{path}, line {number}: video {video_id} already listed on '
                          f'line {seen[video_id]}.')
    seen[video_id] = number
    out.append((video_id, label))
  return out


def source_record(root) -> dict:
  """What identifies a raw copy; recorded beside its shards at conversion and compared
  on every later run (`shards_source_problem`).

  Returns:
    {'root': the real path of ROOT, 'label_files': sha256 over the four label files'
    names and bytes (an absent test file counts as empty), 'frame_folders': the number of
    folders in the frame folder}. Reads the label files and lists one folder: seconds.
  """
  root = os.fspath(root)
  digest = hashlib.sha256()
  for name in (LABELS_FILE, *SPLIT_FILES.values()):
    path = os.path.join(root, name)
    digest.update(name.encode() + b'\0')
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digest.update(hashlib.sha256(f.read()).digest())
  with os.scandir(os.path.join(root, FRAMES_DIR)) as entries:
    folders = sum(1 for e in entries if e.is_dir())
  return {'root': os.path.realpath(root), 'label_files': digest.hexdigest(),
          'frame_folders': folders}


def _recorded_source(shards_dir: str) -> Optional[dict]:
  """The `source_record` in the conversion report of `shards_dir`; for shards converted
  before sources were recorded, {'root': ...} when the report names an absolute ROOT."""
  try:
    with open(os.path.join(shards_dir, REPORT_FILE)) as f:
      report = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(report, dict):
    return None
  if isinstance(report.get('source'), dict):
    return report['source']
  root = report.get('root')
  return {'root': os.path.realpath(root)} if isinstance(root, str) and os.path.isabs(
      root) else None


def shards_source_problem(shards_dir: str, root) -> str:
  """'' if the shards in `shards_dir` (a prepared version folder) were converted from
  `root` as it is now, else one line naming both copies and the flags that choose.

  The conversion report records the source (`source_record`); shards converted before
  that are compared by ROOT's path only, and shards with no report are accepted.
  """
  recorded = _recorded_source(shards_dir)
  if recorded is None:
    return ''
  now = source_record(root)
  what = f'The Something-Something-v1 shards in {shards_dir} were converted from'
  choose = ('set --config.data.tfds_dir to another folder for this copy (its shards go '
            'there), or --config.data.rebuild=True to replace these shards with a '
            f'conversion of {now["root"]}.')
  if recorded.get('root') != now['root']:
    return (f'{what} {recorded.get("root")}, not from config.data.root='
            f'{os.fspath(root)!r} ({now["root"]}): {choose}')
  changed = [('the label files' if k == 'label_files' else
              f'the frame folders: {recorded[k]} -> {now[k]}')
             for k in ('label_files', 'frame_folders')
             if k in recorded and recorded[k] != now[k]]
  if changed:
    return f'{what} {now["root"]} before it changed ({", ".join(changed)}): {choose}'
  return ''


def list_frames(video_dir: str) -> list[str]:
  """Frame file names in a video folder, sorted by frame number (other files ignored)."""
  numbered = []
  for name in os.listdir(video_dir):
    m = _FRAME_RE.match(name)
    if m:
      numbered.append((int(m.group(1)), name))
  return [name for _, name in sorted(numbered)]


_FILE_KINDS = ((stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
               (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'),
               (stat.S_ISDIR, 'a directory'))


def _read_frame(path: str) -> tuple[Optional[bytes], str]:
  """The bytes of a frame file, or None and the problem: not a regular file, larger than
  `MAX_FRAME_BYTES`, or unreadable. Never blocks on a FIFO, never reads a device."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO: no wait for a writer
  except OSError as e:
    return None, f'unreadable ({e.strerror or type(e).__name__})'
  with open(fd, 'rb', closefd=True) as f:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), 'special')
      return None, f'not a regular file ({kind})'
    if st.st_size > MAX_FRAME_BYTES:
      return None, f'larger than {MAX_FRAME_BYTES:,} bytes ({st.st_size:,})'
    try:
      data = f.read(MAX_FRAME_BYTES + 1)
    except OSError as e:
      return None, f'unreadable ({e.strerror or type(e).__name__})'
  if len(data) > MAX_FRAME_BYTES:  # it grew after the check
    return None, f'larger than {MAX_FRAME_BYTES:,} bytes'
  return data, ''


def _open_frame(data: bytes):
  """(the decoded PIL image, '') or (None, the problem)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    img = Image.open(io.BytesIO(data))
    if img.width * img.height > MAX_FRAME_PIXELS:  # before anything is decoded
      return None, (f'declares {img.width}x{img.height} pixels, over the limit of '
                    f'{MAX_FRAME_PIXELS:,}')
    img.load()  # Image.open only reads the header; truncation shows up here.
    return img, ''
  except Exception:  # pylint: disable=broad-except  # PIL raises many types for bad data.
    return None, 'does not decode'


def _encode_jpeg(img) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=_REENCODE_QUALITY)
  return buf.getvalue()


def load_video(root, video_id: str, label: int) -> Video:
  """Reads and checks one video's frames; see the module docstring for the repairs.

  Every frame is decoded once (Pillow), so a corrupt or non-RGB frame is found here and
  not in the training loop.
  """
  video = Video(video_id=video_id, label=label)
  video_dir = os.path.join(os.fspath(root), FRAMES_DIR, check_video_id(video_id))
  if not os.path.isdir(video_dir):
    video.skip_reason = 'missing_folder'
    return video
  try:
    names = list_frames(video_dir)
  except OSError:
    video.skip_reason = 'unreadable_folder'
    return video
  if not names:
    video.skip_reason = 'empty_folder'
    return video

  frames: list[Optional[bytes]] = []
  size = None  # (width, height) of the first decodable frame: the video's size.
  for name in names:
    data, problem = _read_frame(os.path.join(video_dir, name))
    img, problem = (None, problem) if data is None else _open_frame(data)
    if img is None:
      frames.append(None)
      video.repairs.append({'frame': name, 'problem': problem})
      continue
    fixes = []
    if img.format != 'JPEG':
      fixes.append(f'{img.format} data, not JPEG')
    if img.mode != 'RGB':
      fixes.append(f'{"grayscale" if img.mode in ("L", "LA", "I", "I;16") else img.mode} '
                   'image')
      img = img.convert('RGB')
    if size is None:
      size = img.size
    elif img.size != size:
      fixes.append(f'size {img.size[0]}x{img.size[1]}, not {size[0]}x{size[1]}')
      img = img.convert('RGB').resize(size)
    if fixes:
      data = _encode_jpeg(img)
      video.repairs.append({'frame': name, 'problem': '; '.join(fixes),
                            'action': 're-encoded as an RGB JPEG'})
    frames.append(data)

  good = np.array([i for i, d in enumerate(frames) if d is not None])
  if good.size == 0:
    video.skip_reason = 'no_decodable_frame'
    video.repairs = []  # The skip says it all.
    return video
  for repair in video.repairs:
    if 'action' in repair:
      continue
    i = names.index(repair['frame'])
    # Nearest decodable frame; argmin takes the earlier one on a tie.
    j = int(good[np.argmin(np.abs(good - i))])
    frames[i] = frames[j]
    repair['action'] = f'replaced by {names[j]}'
  video.frames = frames
  video.width, video.height = size
  return video


# The authors' input normalisation for the Kinetics ResNets (Caffe2 convention).
MEAN, STD = 114.75, 57.375


def normalize(video):
  """uint8 pixels -> (x - 114.75) / 57.375 (jnp, np or tf arrays)."""
  return (video.astype('float32') - MEAN) / STD
