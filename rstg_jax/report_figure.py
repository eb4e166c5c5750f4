"""The report's figure: val top-1 of every run against videos seen and against minutes.

`rstg_jax.report` writes it as DIR/report.png beside the table in DIR/report.md, from the
runs it summarised (`report.summarize`: each run's 'curve' and 'curve_minutes').
"""

import os
from typing import Optional


STYLES = ('-', '--', ':', '-.')


def styles(runs: list[dict], groups: Optional[list[dict]] = None) -> dict[int, tuple]:
  """{id(run): (colour index, line style)}: the seeds of one row (`report_groups`) share
  a colour and differ in line style; without rows of several seeds, one colour per run."""
  if not groups or all(len(g['members']) < 2 for g in groups):
    return {id(info): (i, '-') for i, info in enumerate(runs)}
  out = {}
  for i, g in enumerate(groups):
    for j, info in enumerate(g['members']):
      out[id(info)] = (i, STYLES[j % len(STYLES)])
  return out


def plot(runs: list[dict], path: str, groups: Optional[list[dict]] = None):
  """Val top-1 (old runs: test top-1) against videos seen (left) and against minutes of
  training (right: wall time since training started, evaluations included, backbone
  pre-training excluded), one curve per run; the seeds of a row (`groups`) share a
  colour, one line style per seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  by_videos = all(info['batch_size'] for info in runs if info['curve'])
  fig, (ax, ax_min) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
  style = styles(runs, groups)
  colours = plt.get_cmap('tab10' if len({c for c, _ in style.values()}) <= 10 else 'tab20')
  for info in runs:
    if not info['curve']:
      continue
    scale = info['batch_size'] if by_videos else 1
    xs = [s * scale for s, _ in info['curve']]
    ys = [100 * v for _, v in info['curve']]
    label = info['name'] + (' (test)' if info['selected_on'] == 'test' else '')
    colour, dash = style.get(id(info), (0, '-'))
    kw = dict(marker='o', ms=3, ls=dash, color=colours(colour % colours.N))
    ax.plot(xs, ys, label=label, **kw)
    if info.get('curve_minutes'):
      ax_min.plot([m for m, _ in info['curve_minutes']],
                  [100 * v for _, v in info['curve_minutes']], **kw)
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
