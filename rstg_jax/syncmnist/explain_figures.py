"""SyncMNIST's side of `python -m rstg_jax.explain`: videos by index, the online pass,
and the pictures of what the graph did.

`SyncMNISTExplainer` is what `SyncMNISTTask.explainer` returns (the contract is in
`rstg_jax.explain`). Per video it writes:

  video_N.gif  one frame per video frame: the frame with the graph on it (every node's
               cell outlined in its scale's colour, a square at the node shaded by how
               much its state changed since the previous frame, arrows for the
               heaviest incoming attention edges of each node, the synchronous pair
               boxed in green), every digit's track (the pair's in green, a dot where
               each digit is now), and the online prediction: the top-3 classes after
               this frame, from `RSTG.step`.
  video_N.png  the same frames side by side with the online top-1 above each (green
               when right), and the tracks.
"""

from __future__ import annotations

import numpy as np

from rstg_jax import errors
from rstg_jax import graph_view
from rstg_jax.graph import build_graph
from rstg_jax.syncmnist import figures
from rstg_jax.syncmnist import generator
from rstg_jax.syncmnist.rstg_classifier import RSTGClassifier

GIF_FPS = 2.0


class SyncMNISTExplainer:
  """Videos of a SyncMNIST run's data set by index, and their figures.

  Attributes:
    default_split: 'test'.
    graph: the topology of the run's graph (scales, adjacency; no feature size needed).
    class_names: the 46 class names.
  """

  default_split = 'test'

  def __init__(self, config, dataset):
    self.dataset = dataset
    self.class_names = tuple(dataset.class_names)
    scales = tuple(int(s) for s in config.rstg.scales)
    self.graph = build_graph(scales, max(scales), adjacency=config.rstg.adjacency)

  def check(self, split: str, indices) -> None:
    """ConfigError, saying the valid range, for an unknown split or index."""
    if split not in generator.SPLIT_SIZES:
      raise errors.ConfigError(
          f'--split must be one of {", ".join(generator.SPLIT_SIZES)}, got {split!r}')
    size = generator.SPLIT_SIZES[split]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
      raise errors.ConfigError(f'--index {bad[0]} is not a video of the {split} split '
                               f'(0..{size - 1})')

  def load(self, split: str, indices) -> dict[str, np.ndarray]:
    """Videos by index: 'video' uint8 [B, T, 64, 64, 1], 'label', 'points' (each digit's
    centre, (row, col) in [0, 1)) [B, T, K, 2], 'pair' [B, 2] (the synchronous digits,
    -1 without a pair), and the generator's 'canvas_positions' and 'digits'."""
    d = self.dataset
    out = generator.generate(split, np.asarray(indices), num_digits=d.num_digits,
                             seed=d.data_seed, mnist_path=d.mnist_path, motion=d.motion,
                             no_pair_prob=d.no_pair_prob)
    centre = out['canvas_positions'] * generator.SCALE + generator.DIGIT_IN_FRAME / 2
    paired = out['label'] != generator.NO_PAIR_LABEL
    return {'video': out['video'], 'label': out['label'],
            'points': centre / generator.FRAME,
            'pair': np.where(paired[:, None], np.array([0, 1]), -1),
            'canvas_positions': out['canvas_positions'], 'digits': out['digits']}

  def apply(self, model, variables, video) -> dict:
    """The model on `video` with its records on: online (one frame at a time, logits
    after every frame) for the RSTG classifier, offline for any other model."""
    if isinstance(model, RSTGClassifier):
      frame_logits, tree = model.apply(variables, video, train=False, online=True,
                                       mutable=['intermediates'])
      return {'logits': frame_logits[:, -1], 'frame_logits': frame_logits,
              'intermediates': tree.get('intermediates', {}), 'per_step': True}
    logits, tree = model.apply(variables, video, train=False, mutable=['intermediates'])
    return {'logits': logits, 'frame_logits': None,
            'intermediates': tree.get('intermediates', {}), 'per_step': False}

  def draw(self, item: dict, stem: str, top_k: int = 1) -> list[str]:
    """Writes stem.gif and stem.png for one video (`rstg_jax.explain` fills `item`);
    returns their paths."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    paths = [stem + '.gif', stem + '.png']
    _write_gif(item, self.graph, self.class_names, paths[0], top_k)
    _write_strip(item, self.graph, self.class_names, paths[1], top_k)
    return paths


def _row(item: dict) -> dict:
  """The one-video batch that `figures`' helpers draw from."""
  return {'video': item['video'][None], 'label': np.asarray([item['label']]),
          'canvas_positions': item['canvas_positions'][None]}


def _graph_of(item: dict) -> dict:
  return next(iter(item['graphs'].values()))  # a SyncMNIST model has one graph


def _name(class_names, c: int) -> str:
  return 'no pair' if c == generator.NO_PAIR_LABEL else class_names[c]


def _frame(ax, item: dict, graph, t: int, top_k: int) -> None:
  g = _graph_of(item)
  graph_view.draw_graph(ax, graph, item['video'][t, :, :, 0], g['attention'][t],
                        g['change'][t], top_k)
  figures._boxes(ax, _row(item), 0, t)  # pylint: disable=protected-access


def _tracks(ax, item: dict, t: int) -> None:
  """Every digit's track (the pair's green), with a dot at its place in frame t."""
  figures._tracks(ax, _row(item), 0)  # pylint: disable=protected-access
  centre = item['points'][t] * generator.FRAME - 0.5
  ax.plot(centre[:, 1], centre[:, 0], 'o', color='white', markersize=4,
          markeredgecolor='black')
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title('tracks', fontsize=8)


_PAIR_LEGEND = '; green: the synchronous pair'


def _title(item: dict, class_names) -> str:
  return (f"video {item['index']}: true {_name(class_names, int(item['label']))}, "
          f"predicted {_name(class_names, int(item['pred']))} "
          f"({float(np.max(item['probs'])):.2f})")


def _write_gif(item: dict, graph, class_names, path: str, top_k: int) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import animation  # pylint: disable=g-import-not-at-top
  frames = item['video'].shape[0]
  fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.5),
                           gridspec_kw={'width_ratios': [1, 1, 0.9]})
  online = item.get('frame_probs')

  def update(t):
    for ax in axes:
      ax.clear()
    _frame(axes[0], item, graph, t, top_k)
    axes[0].set_title(f'frame {t + 1}/{frames}: nodes and top-{top_k} attention',
                      fontsize=8)
    _tracks(axes[1], item, t)
    probs = item['probs'] if online is None else online[t]
    graph_view.draw_top_classes(
        axes[2], probs, [_name(class_names, c) for c in range(len(class_names))],
        int(item['label']),
        'prediction' if online is None else f'online, after frame {t + 1}')
    fig.suptitle(_title(item, class_names), fontsize=9)
    return []

  bottom = graph_view.add_legend(fig, top_k, _PAIR_LEGEND, fontsize=7)
  fig.subplots_adjust(left=0.02, right=0.97, bottom=bottom, top=0.84, wspace=0.15)
  anim = animation.FuncAnimation(fig, update, frames=frames, blit=False)
  with graph_view.atomic_path(path) as tmp:
    anim.save(tmp, writer=animation.PillowWriter(fps=GIF_FPS))
  plt.close(fig)


def _write_strip(item: dict, graph, class_names, path: str, top_k: int) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  frames = item['video'].shape[0]
  fig, axes = plt.subplots(1, frames + 1, figsize=(1.9 * (frames + 1), 2.5))
  online = item.get('frame_probs')
  for t in range(frames):
    _frame(axes[t], item, graph, t, top_k)
    if online is None:
      axes[t].set_title(f't={t + 1}', fontsize=8)
      continue
    c = int(np.argmax(online[t]))
    axes[t].set_title(f't={t + 1}: {_name(class_names, c)} {online[t][c]:.2f}', fontsize=8,
                      color='#2e7d32' if c == int(item['label']) else '#c62828')
  _tracks(axes[frames], item, frames - 1)
  fig.suptitle(_title(item, class_names)
               + ('; above each frame: the online top-1 after it' if online is not None
                  else ''), fontsize=9)
  bottom = graph_view.add_legend(fig, top_k, _PAIR_LEGEND, fontsize=8)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=bottom, top=0.8, wspace=0.08)
  with graph_view.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)
