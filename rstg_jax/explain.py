r"""`python -m rstg_jax.explain`: what a trained RSTG graph did, video by video.

  python -m rstg_jax.explain --workdir=runs/quick [--checkpoint=best|latest|STEP] \
      [--split=test] [--index=0 --index=10-19] [--out=DIR] [--figures=8] [--top_k=1]

The model of a workdir's checkpoint runs on the videos of --index (numbers and inclusive
ranges A-B, repeatable or comma-separated) with its records on (`RSTG` applied with
`mutable=['intermediates']`): every space stage's attention weights and node states,
online frame by frame where the task's model can (SyncMNIST: the logits after every
frame come from `RSTG.step`). For the first --figures videos the task draws video_N.gif
(one frame per video frame) and video_N.png (the frames side by side) into --out
(default WORKDIR/explain_STEP); see `rstg_jax.syncmnist.explain_figures` and
`rstg_jax.ssv1.explain_figures`. It prints, for each drawn video and over all of
--index (with a progress bar):
  - the node pairs that exchanged the most attention (both directions, mean per frame,
    mean over the K iterations);
  - the frame from which the online prediction stays right;
  - where the task knows the objects (SyncMNIST's digits): the mean attention weight on
    edges between the nodes covering the synchronous pair's two digits, against the same
    for the other digit pairs, and both under uniform attention (what the digits'
    positions alone give);
and writes it all to summary.json. A baseline or a model without attention (the
time_only schedule, gather='sum') gets a one-line error (`rstg_jax.errors`), as do a bad
workdir, index or split and an --out that cannot be written (checked before any work).
`latest` and `best` fall back past a checkpoint that cannot be read, as in
`rstg_jax.evaluate`.

The task supplies an explainer (`Task.explainer(config, dataset)`) with: `default_split`;
`graph` (an `RSTGGraph` of the run's scales and adjacency); `class_names`;
`check(split, indices)` (`ConfigError` on a bad one); `load(split, indices)` -> a batch dict
('video' as the data set gives it, 'label', optionally 'points' [B, T, M, 2] and 'pair'
[B, 2] for the pair statistic, anything its figures need); `apply(model, variables,
video)` -> {'logits', 'frame_logits' or None, 'intermediates', 'per_step'}; and
`draw(item, stem, top_k)` -> the paths it wrote.
"""

import json
import os
import sys
from typing import Optional, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from rstg_jax import cli
from rstg_jax import errors
from rstg_jax import evaluate
from rstg_jax import graph_view
from rstg_jax import runtime
from rstg_jax import tasks
from rstg_jax.train import checkpoints
from rstg_jax.train import setup as setup_lib
from rstg_jax.train import state as state_lib
from rstg_jax.train import steps
from rstg_jax.train import workdir_lock

PROG = 'python -m rstg_jax.explain'


def parse_indices(values: Sequence[str]) -> list[int]:
  """'3', '0-999', '1,5,7-9' (and several of them) -> indices in order, each once."""
  out = []
  for part in (p.strip() for v in values for p in str(v).split(',')):
    lo, sep, hi = part.partition('-')
    try:
      span = range(int(lo), int(hi) + 1) if sep else [int(part)]
    except ValueError:
      raise errors.ConfigError(f'--index takes numbers and ranges A-B, got {part!r}'
                               ) from None
    if sep and int(hi) < int(lo):
      raise errors.ConfigError(f'--index range {part!r} is empty: write it low-high')
    out.extend(span)
  if not out:
    raise errors.ConfigError('--index is empty: give video numbers, e.g. --index=0-9')
  return list(dict.fromkeys(out))


def _restore(workdir: str, checkpoint: str):
  """(config, setup, state, step) of a workdir's checkpoint (that `run` checked);
  CheckpointError when none restores."""
  config = evaluate.config_from_checkpoint(workdir, checkpoint)
  task = tasks.for_config(config)
  setup = setup_lib.make_setup(config, task)
  with (workdir_lock.reading(workdir),  # no run starts or prunes while we read
        checkpoints.manager(workdir, read_only=True) as mngr):
    state, _, step = checkpoints.restore_for_eval(mngr, str(checkpoint),
                                                  setup.abstract_state, None, print)
  return config, setup, state, int(step)


def out_error(out: Optional[str], workdir: str) -> Optional[str]:
  """One line if the output folder (--out, or WORKDIR/explain_STEP) cannot be made and
  written, else None."""
  if out is None:
    problem = cli.output_path_error('--workdir', workdir, folder=True)
    return problem and f'{problem} (the figures go to WORKDIR/explain_STEP; or give --out)'
  if os.path.exists(out) and not os.path.isdir(out):
    return f'--out={out!r} is a file; give a folder.'
  return cli.output_path_error('--out', out, folder=os.path.isdir(out))


def _check_graph(setup, variables) -> None:
  """ConfigError unless the model has a graph with attention (traced, not run)."""
  video = jnp.zeros((1, *setup.dataset.input_shape), jnp.float32)
  _, tree = jax.eval_shape(
      lambda v, x: setup.model.apply(v, x, train=False, mutable=['intermediates']),
      variables, video)
  records = graph_view.find_records(tree.get('intermediates', {}))
  what = setup.task.describe_model(setup.config, variables['params'])
  if not records:
    raise errors.ConfigError(f'{what}: this model has no RSTG graph that sends messages (a '
                     'baseline, or the time_only schedule); nothing to explain')
  if not all('attention' in r for r in records.values()):
    raise errors.ConfigError(f"{what}: the graph gathers messages by sum (rstg.gather='sum'), "
                     'so it has no attention weights to show')


def _forward(setup, explainer):
  """Jitted: variables, uint8 video -> probabilities and, per graph, the attention
  [B, T, E'] (mean over iterations) and node changes [B, T, N] of the last iteration."""
  preprocess = getattr(setup.dataset, 'preprocess', None) or steps.scale_pixels

  def forward(variables, video):
    res = explainer.apply(setup.model, variables, preprocess(video))
    frames = video.shape[1] if res['per_step'] else None
    graphs = {}
    for name, rec in graph_view.find_records(res['intermediates']).items():
      nodes = graph_view.stack_records(rec['nodes'], frames)[:, :, -1]
      graphs[name] = {
          'attention': graph_view.stack_records(rec['attention'], frames).mean(2),
          'change': graph_view.node_change(nodes)}
    frame_logits = res['frame_logits']
    return {'probs': jax.nn.softmax(res['logits']), 'graphs': graphs,
            'frame_probs': None if frame_logits is None else jax.nn.softmax(frame_logits)}

  return jax.jit(forward)


def _analyse(item: dict, graph) -> dict:
  """One video's numbers (and `item` completed for drawing: per-frame arrays)."""
  frames = item['video'].shape[0]
  label = int(item['label'])
  item['pred'] = int(np.argmax(item['probs']))
  row = {'index': int(item['index']), 'label': label, 'pred': item['pred'],
         'correct': item['pred'] == label, 'graphs': {}}
  if item.get('frame_probs') is not None:
    row['settle_frame'] = graph_view.settle_frame(item['frame_probs'], label)
  for name, g in item['graphs'].items():
    at = graph_view.frame_steps(frames, g['attention'].shape[0])
    g['attention'] = g['attention'][at]
    g['change'] = graph_view.normalised(g['change'])[at]
    out = {'exchanged': graph_view.exchanged(g['attention'], graph)}
    if 'points' in item and int(item['pair'][0]) >= 0:
      out.update(graph_view.pair_attention(g['attention'], graph, item['points'],
                                           item['pair']))
    row['graphs'][name] = out
  return row


def _summary(rows: list[dict], graph) -> dict:
  """Over all videos: top-1, when the prediction settles, the strongest pairs, and the
  pair statistic."""
  out = {'videos': len(rows), 'top1': float(np.mean([r['correct'] for r in rows]))}
  settled = [r['settle_frame'] for r in rows if r.get('settle_frame') is not None]
  if settled:
    out['settle_frame_mean'] = float(np.mean(settled)) + 1  # frames counted from 1
    out['settle_frame_median'] = float(np.median(settled)) + 1
    out['right_from_the_first_frame'] = int(np.sum(np.asarray(settled) == 0))
  names = graph_view.node_names(graph)
  out['graphs'] = {}
  for name in rows[0]['graphs']:
    per = [r['graphs'][name] for r in rows]
    mass = np.mean([p['exchanged'] for p in per], axis=0)
    g = {'strongest_pairs': [(names[i], names[j], round(v, 4))
                             for i, j, v in graph_view.strongest_pairs(mass)]}
    paired = [p for p in per if np.isfinite(p.get('pair', np.nan))
              and np.isfinite(p.get('others', np.nan))]
    if paired:
      for key in ('pair', 'others', 'uniform_pair', 'uniform_others'):
        g[key] = float(np.mean([p[key] for p in paired]))
      g['pair_videos'] = len(paired)
      g['pair_above_others'] = float(np.mean([p['pair'] > p['others'] for p in paired]))
    out['graphs'][name] = g
  return out


def _pairs_text(pairs) -> str:
  return ', '.join(f'{a} <-> {b} {v:.3f}' for a, b, v in pairs)


def _video_line(row: dict, graph, class_names, frames: int) -> str:
  names = graph_view.node_names(graph)
  text = (f"video {row['index']}: true {class_names[row['label']]}, predicted "
          f"{class_names[row['pred']]}")
  if 'settle_frame' in row:
    s = row['settle_frame']
    text += ('; wrong at the end' if s is None else
             f'; right from frame {s + 1} of {frames} on')
  for name, g in row['graphs'].items():
    pairs = [(names[i], names[j], v)
             for i, j, v in graph_view.strongest_pairs(g['exchanged'])]
    text += f'; {name}: most attention {_pairs_text(pairs)}'
    if 'pair' in g:
      text += f"; pair digits {g['pair']:.3f} vs others {g['others']:.3f}"
  return text


def _summary_lines(summary: dict, frames: int) -> list[str]:
  n = summary['videos']
  lines = [f"Over {n} video{'s' * (n != 1)}: top-1 {summary['top1']:.3f}"]
  if 'settle_frame_mean' in summary:
    lines[0] += (f"; among the right ones, the online prediction stays right from frame "
                 f"{summary['settle_frame_mean']:.1f} of {frames} on average (median "
                 f"{summary['settle_frame_median']:.0f}; "
                 f"{summary['right_from_the_first_frame']} right from frame 1)")
  for name, g in summary['graphs'].items():
    lines.append(f'{name}: most attention exchanged (mean per frame, both directions): '
                 f"{_pairs_text(g['strongest_pairs'])}")
    if 'pair' in g:
      lines.append(
          f"{name}: on {g['pair_videos']} video(s) with a synchronous pair, edges between the "
          f"pair's digits' nodes carry a mean weight {g['pair']:.4f}, those between other "
          f"digits' nodes {g['others']:.4f} (uniform attention: {g['uniform_pair']:.4f} vs "
          f"{g['uniform_others']:.4f}); the pair gets more in "
          f"{100 * g['pair_above_others']:.0f}% of them")
  return lines


def _batches(indices: list[int], size: int):
  for start in range(0, len(indices), size):
    yield indices[start:start + size]


def _run_batches(setup, explainer, state, split, indices, batch_size, progress):
  """Yields one `item` per video: its batch row plus the forward pass's outputs."""
  import tqdm  # pylint: disable=g-import-not-at-top
  forward = _forward(setup, explainer)
  variables = state_lib.model_variables(state)
  size = min(batch_size, len(indices))
  bar = tqdm.tqdm(total=len(indices), desc='explain', unit='video', file=sys.stderr,
                  disable=not progress, mininterval=cli.progress_interval())
  with bar:
    for chunk in _batches(indices, size):
      batch = explainer.load(split, chunk)
      pad = size - len(chunk)  # one compiled shape: the last batch repeats its last row
      video = np.concatenate([batch['video']] + [batch['video'][-1:]] * pad)
      out = jax.device_get(forward(variables, video))
      for r, index in enumerate(chunk):
        item = {k: v[r] for k, v in batch.items()}
        item.update(index=index, probs=out['probs'][r],
                    frame_probs=None if out['frame_probs'] is None else out['frame_probs'][r],
                    graphs={n: {k: v[r] for k, v in g.items()}
                            for n, g in out['graphs'].items()})
        yield item
      bar.update(len(chunk))


def run(workdir: str, checkpoint: str = 'best', split: Optional[str] = None,
        indices: Sequence[int] = (0,), out: Optional[str] = None, figures: int = 8,
        top_k: int = 1, batch_size: int = 25, progress: bool = True) -> dict:
  """Explains videos `indices` of `split`; returns the summary (see the module doc).

  Raises:
    rstg_jax.errors.RSTGError: bad input (workdir, checkpoint, index, split, --out, a
      model without attention), one line, before anything is written.
  """
  if top_k < 1 or figures < 0 or batch_size < 1:
    raise errors.ConfigError('--top_k and --batch_size must be >= 1 and --figures >= 0')
  evaluate.check_workdir(workdir)
  problem = out_error(out, workdir)
  if problem:
    raise errors.ConfigError(problem)
  _, setup, state, step = _restore(workdir, checkpoint)
  variables = state_lib.model_variables(state)
  explainer = setup.task.explainer(setup.config, setup.dataset)
  _check_graph(setup, variables)
  split = split or explainer.default_split
  indices = list(indices)
  explainer.check(split, indices)
  out = out or os.path.join(workdir, f'explain_{step}')
  os.makedirs(out, exist_ok=True)
  graph, names = explainer.graph, list(explainer.class_names)
  print(f'Checkpoint step {step} of {workdir}: {len(indices)} {split} videos; figures '
        f'of the first {min(figures, len(indices))} in {out}', flush=True)
  rows, files, lines, frames = [], [], [], 0
  for item in _run_batches(setup, explainer, state, split, indices, batch_size, progress):
    rows.append(_analyse(item, graph))
    frames = item['video'].shape[0]
    if len(rows) <= figures:  # printed after the progress bar
      lines.append(_video_line(rows[-1], graph, names, frames))
      files += explainer.draw(item, os.path.join(out, f"video_{item['index']}"), top_k)
  summary = {'step': step, 'split': split, 'workdir': os.path.abspath(workdir),
             **_summary(rows, graph), 'files': files,
             'per_video': [_json_row(r, graph) for r in rows]}
  for line in lines + _summary_lines(summary, frames):
    print(line, flush=True)
  with graph_view.atomic_path(os.path.join(out, 'summary.json')) as tmp:
    with open(tmp, 'w') as f:
      json.dump(summary, f, indent=1)
  return summary


def _json_row(row: dict, graph) -> dict:
  names = graph_view.node_names(graph)
  out = {k: v for k, v in row.items() if k != 'graphs'}
  out['graphs'] = {
      n: {**{k: v for k, v in g.items() if k != 'exchanged'},
          'strongest_pairs': [(names[i], names[j], round(v, 4))
                              for i, j, v in graph_view.strongest_pairs(g['exchanged'])]}
      for n, g in row['graphs'].items()}
  return out


def _define(fv) -> None:
  flags.DEFINE_string('workdir', None, 'The training workdir.', flag_values=fv)
  flags.DEFINE_string('checkpoint', 'best', 'best, latest, or a step number.',
                      flag_values=fv)
  flags.DEFINE_string('split', None, "Split (default: the task's, SyncMNIST 'test').",
                      flag_values=fv)
  flags.DEFINE_multi_string('index', ['0'], 'Videos: numbers and ranges A-B, e.g. '
                            '--index=0-999 or --index=3,7 (repeatable).', flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder (default WORKDIR/explain_STEP).',
                      flag_values=fv)
  flags.DEFINE_integer('figures', 8, 'Draw the first this many videos of --index.',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('top_k', 1, 'Attention edges drawn into each node.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer('batch_size', 25, 'Videos per forward pass.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_bool('progress_bar', True, 'Show a progress bar on stderr.', flag_values=fv)
  flags.mark_flag_as_required('workdir', flag_values=fv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; bad input exits with status 1 and one line on stderr."""
  fv, rest = cli.parse_command(_define, list(sys.argv[1:] if argv is None else argv), PROG)
  if rest:
    cli.usage_error(PROG, f'unexpected arguments {rest}')
  try:
    run(fv.workdir, fv.checkpoint, fv.split, parse_indices(fv.index), fv.out, fv.figures,
        fv.top_k, fv.batch_size, fv.progress_bar)
  except (errors.RSTGError, OSError) as e:  # anything else is a bug: its traceback
    print(f'{PROG}: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  runtime.reuse_freed_memory()  # XLA:CPU intermediates: reuse, not fresh pages
  sys.exit(main())
