"""Something-Something-v1's side of `python -m rstg_jax.explain`: clips by index and the
pictures of what the RSTG blocks did.

`SSv1Explainer` is what `SSv1Task.explainer` returns (the contract is in
`rstg_jax.explain`). A clip is the evaluation's centre view (T frames, one centre crop).
Per clip it writes:

  video_N.gif  one frame per clip frame: the frame with each RSTG block's graph on it
               (every node's cell outlined in its scale's colour, a square at the node
               shaded by how much its state changed since the previous time step, arrows
               for the heaviest incoming attention edges of each node) and the model's
               top-3 classes. The backbone sees the whole clip at once, so there is no
               online prediction; a block whose backbone stage pooled time shows each of
               its time steps on the frames it covers.
  video_N.png  the same frames side by side, one row per block.

TensorFlow is imported only through the data set (`view_batches`).
"""

from __future__ import annotations

import numpy as np

from rstg_jax import errors
from rstg_jax import graph_view
from rstg_jax.graph import build_graph

GIF_FPS = 2.0


class SSv1Explainer:
  """Centre-crop clips of a split by index, and their figures.

  Attributes:
    default_split: the config's `eval.split`.
    graph: the topology of the run's graphs (every block has the same scales).
    class_names: the data set's class names.
  """

  def __init__(self, config, dataset):
    self.dataset = dataset
    self.default_split = config.eval.split
    self.class_names = tuple(dataset.class_names)
    scales = tuple(int(s) for s in config.rstg.scales)
    self.graph = build_graph(scales, max(scales), adjacency=config.rstg.adjacency)

  def check(self, split: str, indices) -> None:
    """ConfigError for an unknown split or an index past its videos."""
    try:
      size = self.dataset.num_videos(split)
    except (KeyError, ValueError):
      raise errors.ConfigError(f'--split={split!r} is not a split of the prepared '
                               'Something-Something-v1 (train, validation)') from None
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
      raise errors.ConfigError(f'--index {bad[0]} is not a video of the {split} split '
                               f'(0..{size - 1})')

  def load(self, split: str, indices) -> dict[str, np.ndarray]:
    """'video' uint8 [B, T, crop, crop, 3] (centre views) and 'label', in the order of
    `indices`; reads the split in order up to the last index wanted."""
    wanted, found = set(int(i) for i in indices), {}
    for batch in self.dataset.view_batches('center', split=split):
      for r in np.flatnonzero(batch['mask'] > 0):
        i = int(batch['video_index'][r])
        if i in wanted:
          found[i] = (batch['video'][r], int(batch['label'][r]))
      if len(found) == len(wanted):
        break
    return {'video': np.stack([found[int(i)][0] for i in indices]),
            'label': np.asarray([found[int(i)][1] for i in indices], np.int32)}

  def apply(self, model, variables, video) -> dict:
    """The model on the whole clip (offline), with its records on."""
    logits, tree = model.apply(variables, video, train=False, mutable=['intermediates'])
    return {'logits': logits, 'frame_logits': None,
            'intermediates': tree.get('intermediates', {}), 'per_step': False}

  def draw(self, item: dict, stem: str, top_k: int = 1) -> list[str]:
    """Writes stem.gif and stem.png for one clip; returns their paths."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    paths = [stem + '.gif', stem + '.png']
    _write_gif(item, self.graph, self.class_names, paths[0], top_k)
    _write_strip(item, self.graph, self.class_names, paths[1], top_k)
    return paths


def _block(name: str) -> str:
  """'res3_graph/map/rstg' -> 'res3'."""
  return name.split('/')[0].removesuffix('_graph')


def _title(item: dict, class_names) -> str:
  return (f"video {item['index']}: true '{class_names[int(item['label'])]}', predicted "
          f"'{class_names[int(item['pred'])]}' ({float(np.max(item['probs'])):.2f})")


def _write_gif(item: dict, graph, class_names, path: str, top_k: int) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import animation  # pylint: disable=g-import-not-at-top
  frames, blocks = item['video'].shape[0], list(item['graphs'])
  fig, axes = plt.subplots(1, len(blocks) + 1, figsize=(3.3 * (len(blocks) + 1), 3.6),
                           squeeze=False)
  axes = axes[0]

  def update(t):
    for ax in axes:
      ax.clear()
    for ax, name in zip(axes, blocks):
      g = item['graphs'][name]
      graph_view.draw_graph(ax, graph, item['video'][t], g['attention'][t], g['change'][t],
                            top_k)
      ax.set_title(f'{_block(name)} graph, frame {t + 1}/{frames}', fontsize=8)
    graph_view.draw_top_classes(axes[-1], item['probs'], class_names, int(item['label']),
                                'prediction (whole clip)')
    fig.suptitle(_title(item, class_names), fontsize=9)
    return []

  bottom = graph_view.add_legend(fig, top_k, fontsize=7)
  fig.subplots_adjust(left=0.02, right=0.97, bottom=bottom, top=0.84, wspace=0.15)
  anim = animation.FuncAnimation(fig, update, frames=frames, blit=False)
  with graph_view.atomic_path(path) as tmp:
    anim.save(tmp, writer=animation.PillowWriter(fps=GIF_FPS))
  plt.close(fig)


def _write_strip(item: dict, graph, class_names, path: str, top_k: int) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  frames, blocks = item['video'].shape[0], list(item['graphs'])
  fig, axes = plt.subplots(len(blocks), frames, figsize=(1.9 * frames, 2.1 * len(blocks) + 0.8),
                           squeeze=False)
  for row, name in enumerate(blocks):
    g = item['graphs'][name]
    for t in range(frames):
      graph_view.draw_graph(axes[row, t], graph, item['video'][t], g['attention'][t],
                            g['change'][t], top_k)
      axes[row, t].set_title(f'{_block(name)}, t={t + 1}', fontsize=8)
  fig.suptitle(_title(item, class_names), fontsize=9)
  bottom = graph_view.add_legend(fig, top_k, fontsize=8)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=bottom, top=0.85, wspace=0.08)
  with graph_view.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)
