"""The report's figure: val top-1 of every run against videos seen and against minutes.

`rstg_jax.report` writes it as DIR/report.png beside the table in DIR/report.md, from the
runs it summarised (`report.summarize`: each run's 'curve' and 'curve_minutes').
"""

import os


def plot(runs: list[dict], path: str):
  """Val top-1 (old runs: test top-1) against videos seen (left) and against minutes of
  training (right: wall time since training started, evaluations included, backbone
  pre-training excluded), one curve per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  by_videos = all(info['batch_size'] for info in runs if info['curve'])
  fig, (ax, ax_min) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
  for info in runs:
    if not info['curve']:
      continue
    scale = info['batch_size'] if by_videos else 1
    xs = [s * scale for s, _ in info['curve']]
    ys = [100 * v for _, v in info['curve']]
    label = info['name'] + (' (test)' if info['selected_on'] == 'test' else '')
    line, = ax.plot(xs, ys, 'o-', ms=3, label=label)
    if info.get('curve_minutes'):
      ax_min.plot([m for m, _ in info['curve_minutes']],
                  [100 * v for _, v in info['curve_minutes']], 'o-', ms=3,
                  color=line.get_color())
  ax.set(xlabel='videos seen' if by_videos else 'step', ylabel='val top-1 (%)',
         title='val top-1 against ' + ('videos seen' if by_videos else 'steps'))
  ax_min.set(xlabel='minutes since training started (backbone pre-training excluded)',
             title='val top-1 against minutes')
  for a in (ax, ax_min):
    a.grid(alpha=0.3)
  if any(info['curve'] for info in runs):
    ax_min.legend(*ax.get_legend_handles_labels(), fontsize=8, loc='center left',
                  bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
