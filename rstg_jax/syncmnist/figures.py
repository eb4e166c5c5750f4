"""Pictures of SyncMNIST videos for people: a PNG grid and an animated GIF.

  python -m rstg_jax.syncmnist.figures show --out samples.png --gif samples.gif \\
      [--split test --motion clean --num 8 --start 0 --num_digits 3 --seed 0 \\
       --mnist_path PATH]

One row per video (titled by its label), one column per frame and a last column with
every digit's trajectory; the synchronous pair is boxed (and its paths drawn) in green,
as in the paper's Figure 6.
"""

import sys
from typing import Optional, Sequence

from rstg_jax import cli
from rstg_jax.syncmnist.generator import (CLASS_NAMES, DIGIT_IN_FRAME, FRAME, MAX_DIGITS,
                                          MOTIONS, NO_PAIR_LABEL, NUM_FRAMES, SCALE,
                                          SPLIT_IDS, SPLIT_SIZES, generate)

PROG = 'python -m rstg_jax.syncmnist.figures'

_SYNC_COLOURS = ('#22dd22', '#22dd22')  # green, as in the paper's Figure 6


def _row_title(batch: dict, r: int, index: int) -> str:
  label = int(batch['label'][r])
  digits = ','.join(str(int(d)) for d in batch['digits'][r])
  name = 'no pair' if label == NO_PAIR_LABEL else f'pair {CLASS_NAMES[label]}'
  return f'video {index}: {name}   (digits {digits})'


def _boxes(ax, batch: dict, r: int, t: int):
  """Add boxes around the synchronous pair of video r, frame t; return the patches."""
  from matplotlib.patches import Rectangle

  patches = []
  if int(batch['label'][r]) == NO_PAIR_LABEL:
    return patches
  for d in (0, 1):
    row, col = batch['canvas_positions'][r, t, d] * SCALE
    # imshow puts pixel centres on integers, so pixel edges are at -0.5.
    rect = Rectangle(
      (col - 0.5, row - 0.5), DIGIT_IN_FRAME, DIGIT_IN_FRAME,
      fill=False, edgecolor=_SYNC_COLOURS[d], linewidth=1.2,
    )
    ax.add_patch(rect)
    patches.append(rect)
  return patches


# Trajectories of the other digits: red and its neighbours (the paper's Figure 6 draws
# the pair's paths green and the others' red).
_OTHER_COLOURS = ('#ff3030', '#ff9900', '#ff44cc', '#33bbff', '#ffee33', '#bb77ff',
                  '#aaaaaa', '#ffffff')


def _tracks(ax, batch: dict, r: int) -> None:
  """All frames of video r overlaid (max), with the path of every digit's centre: the
  synchronous pair in green, the other digits each in its own colour; a dot marks
  the first frame, an arrow head the last."""
  ax.imshow(batch['video'][r, :, :, :, 0].max(axis=0), cmap='gray', vmin=0, vmax=600)
  centre = batch['canvas_positions'][r] * SCALE + DIGIT_IN_FRAME / 2 - 0.5  # [T, K, 2]
  paired = int(batch['label'][r]) != NO_PAIR_LABEL
  for d in range(centre.shape[1]):
    other = d - 2 if paired else d
    colour = (_SYNC_COLOURS[d] if paired and d < 2 else
              _OTHER_COLOURS[other % len(_OTHER_COLOURS)])
    rows, cols = centre[:, d, 0], centre[:, d, 1]
    ax.plot(cols, rows, '-', color=colour, linewidth=1.2)
    ax.plot(cols[0], rows[0], 'o', color=colour, markersize=2.5)
    ax.annotate('', xy=(cols[-1], rows[-1]), xytext=(cols[-2], rows[-2]),
                arrowprops=dict(arrowstyle='-|>', color=colour, lw=1.2, mutation_scale=7))
  ax.set_xlim(-0.5, FRAME - 0.5)
  ax.set_ylim(FRAME - 0.5, -0.5)


def save_grid(batch: dict, indices: Sequence[int], out: str) -> None:
  """PNG grid: one row per video (titled by its label), one column per frame, and a
  last column with every digit's trajectory (the synchronous pair's in green).

  The synchronous pair is boxed in green in every frame; other digits are unmarked.
  """
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  n = len(indices)
  fig, axes = plt.subplots(
    n, NUM_FRAMES + 1, figsize=((NUM_FRAMES + 1) * 1.25, n * 1.55), squeeze=False
  )
  for r in range(n):
    _tracks(axes[r, NUM_FRAMES], batch, r)
    axes[r, NUM_FRAMES].set_xticks([])
    axes[r, NUM_FRAMES].set_yticks([])
    if r == n - 1:
      axes[r, NUM_FRAMES].set_xlabel('tracks', fontsize=8)
    for t in range(NUM_FRAMES):
      ax = axes[r, t]
      ax.imshow(batch['video'][r, t, :, :, 0], cmap='gray', vmin=0, vmax=255)
      _boxes(ax, batch, r, t)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == n - 1:
        ax.set_xlabel(f't={t}', fontsize=8)
    axes[r, 0].set_title(_row_title(batch, r, int(indices[r])), loc='left', fontsize=9)
  fig.suptitle("SyncMNIST (green: the synchronous pair; last column: every digit's path)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def save_gif(batch: dict, indices: Sequence[int], out: str, fps: float = 2.0) -> None:
  """Animated GIF of the videos side by side (needs pillow, which matplotlib ships with)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.animation import FuncAnimation, PillowWriter

  n = len(indices)
  cols = min(n, 4)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.4), squeeze=False)
  shown, patches = [], [[] for _ in range(n)]
  for r in range(rows * cols):
    ax = axes.flat[r]
    ax.set_xticks([])
    ax.set_yticks([])
    if r >= n:
      ax.axis('off')
      continue
    shown.append(ax.imshow(batch['video'][r, 0, :, :, 0], cmap='gray', vmin=0, vmax=255))
    label = int(batch['label'][r])
    ax.set_title(
      f'{indices[r]}: ' + ('no pair' if label == NO_PAIR_LABEL else CLASS_NAMES[label]),
      fontsize=9,
    )

  def update(t):
    for r in range(n):
      shown[r].set_data(batch['video'][r, t, :, :, 0])
      for p in patches[r]:
        p.remove()
      patches[r] = _boxes(axes.flat[r], batch, r, t)
    return shown

  anim = FuncAnimation(fig, update, frames=NUM_FRAMES, blit=False)
  anim.save(out, writer=PillowWriter(fps=fps))
  plt.close(fig)


def _define(fv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('out', None, 'PNG file to write.', flag_values=fv)
  flags.DEFINE_enum('split', 'test', list(SPLIT_IDS), 'Which split.', flag_values=fv)
  flags.DEFINE_enum('motion', 'clean', list(MOTIONS),
                    "clean (default) or authors (the authors' generator, has shortcuts).",
                    flag_values=fv)
  flags.DEFINE_integer('num', 8, 'Number of videos (rows).', lower_bound=1, upper_bound=64,
                       flag_values=fv)
  flags.DEFINE_integer('start', 0, 'First video index.', lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('num_digits', 3, 'Digits per video.', lower_bound=2,
                       upper_bound=MAX_DIGITS, flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Generator seed.', lower_bound=0, flag_values=fv)
  flags.DEFINE_string('gif', None, 'Also write an animated GIF here.', flag_values=fv)
  flags.DEFINE_float('fps', 2.0, 'GIF frames per second.', flag_values=fv)
  flags.DEFINE_string('mnist_path', None, 'Local MNIST copy (IDX dir, .npz, .pkl.gz).',
                      flag_values=fv)
  flags.mark_flag_as_required('out', flag_values=fv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`show`: writes the PNG (and the GIF); see the module docstring."""
  argv = list(sys.argv[1:] if argv is None else argv)
  cli.subcommand(PROG, {'show': 'a PNG grid (and an animated GIF) of generated videos'},
                 argv)
  fv, rest = cli.parse_command(_define, argv[1:], f'{PROG} show')
  if rest:
    cli.usage_error(PROG, f'unexpected arguments {rest}')
  for flag, path in (('--out', fv.out), ('--gif', fv.gif)):
    problem = path and cli.output_path_error(flag, path)
    if problem:
      cli.usage_error(PROG, problem)
  stop = fv.start + fv.num
  if stop > SPLIT_SIZES[fv.split]:
    cli.usage_error(PROG, f'--start + --num exceeds the {fv.split} size '
                    f'{SPLIT_SIZES[fv.split]}')
  indices = list(range(fv.start, stop))
  batch = generate(fv.split, indices, fv.num_digits, fv.seed, fv.mnist_path, fv.motion)
  save_grid(batch, indices, fv.out)
  print(f'wrote {fv.out}')
  if fv.gif:
    save_gif(batch, indices, fv.gif, fps=fv.fps)
    print(f'wrote {fv.gif}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
