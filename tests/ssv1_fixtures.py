"""A tiny fake Something-Something-v1 tree for tests: real JPEGs, label files, bad cases.

`make_fake_ssv1(root)` writes the official layout (see `rstg_jax.ssv1.reader`) with frames
whose pixels say what they are, so a test can read back which frame, which class and which
crop a pipeline produced:

  red   = frame code: 8 + 16 * t for the frame's 0-based index t (decode: `frame_index`);
  green = class code: one flat level per class (`class_level`);
  blue  = the x coordinate: 0 at the left edge of the frame, 255 at the right edge.

Frames are saved at quality 95 without chroma subsampling, so flat levels survive JPEG
within a few units.

Besides `videos_per_split` good videos per split, the tree holds one of each bad case that
the converter must handle (their ids are in the returned `FakeSSv1.bad`):
  'missing_folder'      train id listed without a frame folder       -> skipped
  'empty_folder'        train id whose folder has no frame           -> skipped
  'corrupt_frame'       train video whose frame 00003.jpg is truncated -> replaced by 00002
  'grayscale_frame'     train video whose frame 00005.jpg is grayscale -> made RGB
  'short_video'         train video with only 2 frames                -> frames repeated
  'no_decodable_frame'  validation video whose frames are all garbage -> skipped
With `more_bad=True`, also:
  'cmyk_frame'          train video whose frame 00003.jpg is a CMYK JPEG -> made RGB
  'wrong_size_frame'    train video whose frame 00004.jpg is twice the size -> resized
With `hostile=True`, train videos whose frames attack the reader (each frame is replaced
by its neighbour and reported; the folder is skipped and reported):
  'fifo_frame'          00003.jpg is a FIFO (an open() for reading waits for a writer)
  'dev_zero_frame'      00004.jpg is a symlink to /dev/zero (a read() never ends)
  'huge_frame'          00002.jpg is a sparse 64 MiB file (over reader.MAX_FRAME_BYTES)
  'unreadable_frame'    00005.jpg is chmod 000
  'unreadable_folder'   the video's folder is chmod 000
`FakeSSv1.unreadable` lists the two chmod-000 paths and `FakeSSv1.chmod_denies` says
whether this process is really refused them (root is not: see `deny_unreadable`).
"""

import builtins
import contextlib
import dataclasses
import errno
import io
import os

import numpy as np
from PIL import Image

# Not in alphabetical order, so a test can tell file order from sorted order.
_CLASS_NAMES = (
    'Pushing something from right to left',
    'Moving something up',
    'Putting something, something and something on the table',
    'Pushing something from left to right',
)

LABELS_FILE = 'something-something-v1-labels.csv'
FRAMES_DIR = '20bn-something-something-v1'


@dataclasses.dataclass
class FakeSSv1:
  """What `make_fake_ssv1` wrote.

  Attributes:
    root: the data set root.
    class_names: in labels-file order.
    splits: split -> list of (video id, class index or -1) as listed in its csv file,
      bad cases included.
    num_frames: video id -> number of frame files written.
    bad: bad case name -> video id (see the module docstring).
    frame_size: (height, width).
  """
  root: str
  class_names: tuple
  splits: dict
  num_frames: dict
  bad: dict
  frame_size: tuple
  unreadable: tuple = ()
  chmod_denies: bool = True

  def usable(self, split):
    """Ids of the split that the converter should keep, in csv order."""
    skipped = {self.bad[k] for k in ('missing_folder', 'empty_folder', 'no_decodable_frame',
                                     'unreadable_folder') if k in self.bad}
    return [v for v, _ in self.splits[split] if v not in skipped]


@contextlib.contextmanager
def deny_unreadable(fake: FakeSSv1):
  """Makes the chmod-000 paths of `fake` unreadable for this process for the block.

  As root, chmod 000 does not stop a read; then `open`, `os.open` and `os.listdir`
  raise PermissionError for exactly those paths, as they would for another user.
  Elsewhere the files' own permissions do it and nothing is patched.
  """
  if fake.chmod_denies:
    yield
    return
  denied = {os.path.realpath(p) for p in fake.unreadable}

  def guard(real):
    def wrapper(path, *args, **kwargs):
      if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(path) in denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
      return real(path, *args, **kwargs)
    return wrapper

  saved = builtins.open, os.open, os.listdir
  builtins.open, os.open, os.listdir = (guard(f) for f in saved)
  try:
    yield
  finally:
    builtins.open, os.open, os.listdir = saved


def frame_code(t: int) -> int:
  return min(8 + 16 * t, 255)


def frame_index(red) -> np.ndarray:
  """Inverse of `frame_code` for (JPEG-approximate) red values."""
  return np.round((np.asarray(red, np.float64) - 8) / 16).astype(np.int64)


def class_level(label: int, num_classes: int) -> int:
  return int(round(40 + label * 175 / max(num_classes - 1, 1)))


def _frame(t, label, num_classes, size):
  h, w = size
  img = np.empty((h, w, 3), np.uint8)
  img[..., 0] = frame_code(t)
  img[..., 1] = class_level(label, num_classes)
  img[..., 2] = np.round(np.arange(w) * 255 / (w - 1)).astype(np.uint8)[None, :]
  return img


def _jpeg(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='JPEG', quality=95, subsampling=0)
  return buf.getvalue()


def make_fake_ssv1(root, num_classes: int = 3, videos_per_split=None,
                   frame_size=(32, 48), num_frames: int = 8,
                   more_bad: bool = False, hostile: bool = False) -> FakeSSv1:
  """Writes a fake SSv1 tree under `root` (created if needed).

  Args:
    root: directory to write into.
    num_classes: 1..4 classes (names from a fixed list of real-looking SSv1 names).
    videos_per_split: split -> number of good videos; default train 6, validation 3, test 2.
    frame_size: (height, width) of every frame.
    num_frames: frames per good video (at most 16: the red frame code saturates after).
    more_bad: add the 'cmyk_frame' and 'wrong_size_frame' train videos.
    hostile: add the FIFO, /dev/zero, huge and chmod-000 cases (module docstring).

  Returns:
    A `FakeSSv1` describing the tree.
  """
  if not 1 <= num_classes <= len(_CLASS_NAMES):
    raise ValueError(f'num_classes must be in 1..{len(_CLASS_NAMES)}')
  if not 5 <= num_frames <= 16:
    raise ValueError('num_frames must be in 5..16 (frame 00005 is the grayscale case)')
  videos_per_split = dict(videos_per_split or {'train': 6, 'validation': 3, 'test': 2})
  root = os.fspath(root)
  frames_root = os.path.join(root, FRAMES_DIR)
  os.makedirs(frames_root, exist_ok=True)
  class_names = _CLASS_NAMES[:num_classes]
  with open(os.path.join(root, LABELS_FILE), 'w') as f:
    f.write(''.join(c + '\n' for c in class_names))

  next_id = iter(range(1, 1_000_000))
  splits = {s: [] for s in ('train', 'validation', 'test')}
  counts = {}

  def add_video(split, label, n):
    video_id = str(next(next_id))
    splits[split].append((video_id, label if split != 'test' else -1))
    if n is not None:
      d = os.path.join(frames_root, video_id)
      os.makedirs(d, exist_ok=True)
      for t in range(n):
        with open(os.path.join(d, f'{t + 1:05d}.jpg'), 'wb') as f:
          f.write(_jpeg(_frame(t, max(label, 0), num_classes, frame_size)))
      counts[video_id] = n
    return video_id

  for split in ('train', 'validation', 'test'):
    for k in range(videos_per_split.get(split, 0)):
      add_video(split, k % num_classes, num_frames)

  bad = {}
  bad['missing_folder'] = add_video('train', 0, None)
  bad['empty_folder'] = add_video('train', 1 % num_classes, 0)
  bad['corrupt_frame'] = v = add_video('train', 0, num_frames)
  path = os.path.join(frames_root, v, '00003.jpg')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])  # Truncated: the header reads, the scan does not.
  bad['grayscale_frame'] = v = add_video('train', 2 % num_classes, num_frames)
  gray = np.full(frame_size, frame_code(4), np.uint8)
  Image.fromarray(gray).save(os.path.join(frames_root, v, '00005.jpg'),
                                       format='JPEG', quality=95)
  bad['short_video'] = add_video('train', 1 % num_classes, 2)
  bad['no_decodable_frame'] = v = add_video('validation', 0, 3)
  for t in range(3):
    with open(os.path.join(frames_root, v, f'{t + 1:05d}.jpg'), 'wb') as f:
      f.write(b'not a jpeg at all')

  if more_bad:
    bad['cmyk_frame'] = v = add_video('train', 0, num_frames)
    Image.fromarray(_frame(2, 0, num_classes, frame_size)).convert('CMYK').save(
        os.path.join(frames_root, v, '00003.jpg'), format='JPEG', quality=95)
    bad['wrong_size_frame'] = v = add_video('train', 1 % num_classes, num_frames)
    big = (2 * frame_size[0], 2 * frame_size[1])
    with open(os.path.join(frames_root, v, '00004.jpg'), 'wb') as f:
      f.write(_jpeg(_frame(3, 1 % num_classes, num_classes, big)))

  unreadable, chmod_denies = (), True
  if hostile:
    unreadable, chmod_denies = _add_hostile(bad, add_video, frames_root)

  for split, rows in splits.items():
    with open(os.path.join(root, f'something-something-v1-{split}.csv'), 'w') as f:
      for video_id, label in rows:
        f.write(f'{video_id}\n' if split == 'test' else
                f'{video_id};{class_names[label]}\n')
  return FakeSSv1(root=root, class_names=class_names, splits=splits, num_frames=counts,
                  bad=bad, frame_size=tuple(frame_size), unreadable=unreadable,
                  chmod_denies=chmod_denies)


def _add_hostile(bad, add_video, frames_root):
  """The `hostile=True` videos; returns (chmod-000 paths, whether chmod denies us)."""
  def frame(case, name):
    bad[case] = v = add_video('train', 0, 6)
    path = os.path.join(frames_root, v, name)
    os.remove(path)
    return path

  os.mkfifo(frame('fifo_frame', '00003.jpg'))
  os.symlink('/dev/zero', frame('dev_zero_frame', '00004.jpg'))
  with open(frame('huge_frame', '00002.jpg'), 'wb') as f:
    f.truncate(64 << 20)  # sparse: no disk space
  unreadable_file = os.path.join(frames_root, add_video('train', 0, 6), '00005.jpg')
  bad['unreadable_frame'] = os.path.basename(os.path.dirname(unreadable_file))
  bad['unreadable_folder'] = v = add_video('train', 0, 6)
  unreadable_dir = os.path.join(frames_root, v)
  os.chmod(unreadable_file, 0)
  os.chmod(unreadable_dir, 0)
  return (unreadable_file, unreadable_dir), not os.access(unreadable_file, os.R_OK)
