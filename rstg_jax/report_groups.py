"""The report's rows of a table: runs that differ only in their seed, and their budgets.

`rstg_jax.report` summarises every run; this module makes one row of each set of runs
whose resolved configs are equal but for `seed` (and the fields that do not change what
a run computes, `NOT_THE_EXPERIMENT`), with the mean of their scores and each seed's
value (`group_runs`, `seeds_markdown`): ranks and Kendall tau against the paper are
computed on those means. A run whose config is unknown is a row of its own.

It also says what a run's budget is (`budget_of`: training videos, how often and on how
many val videos the checkpoint is chosen, test videos) and which rows of a paper table
have a budget other than the rest (`budget_problem`): a table ranks its rows fairly only
when every row had the same budget and selection rule.
"""

import json
import math
import re
from typing import Callable, Optional

# Fields that may differ between the seeds of one row: the seed itself, and bookkeeping
# that changes neither the model, the data nor the training (logging, checkpoints,
# progress, where a shared backbone is cached, the evaluation batch).
NOT_THE_EXPERIMENT = ('seed', 'progress_bar', 'resume_changes_ok', 'log_every',
                      'checkpoint_every', 'keep_checkpoints', 'data.prefetch',
                      'backbone.pretrain.cache_path', 'eval.batch_size')

_SEED_TOKEN = re.compile(r'(^|[_,])seed=[^,_]*')


def group_key(flat: dict) -> Optional[str]:
  """What runs of one row share: the flat config without NOT_THE_EXPERIMENT (None if
  the config is unknown)."""
  if not flat:
    return None
  kept = {k: v for k, v in flat.items() if k not in NOT_THE_EXPERIMENT}
  return json.dumps(kept, sort_keys=True, default=str)


def budget_of(flat: dict, total_steps: Optional[int], batch: Optional[int]) -> Optional[tuple]:
  """(training videos, val every N videos, val videos, test videos) of a run, None when
  its steps or batch size are unknown."""
  if not total_steps or not batch:
    return None
  every = flat.get('eval.every')
  return (total_steps * batch, every * batch if isinstance(every, int) else None,
          flat.get('data.val_size'), flat.get('eval.size'))


def describe_budget(budget: Optional[tuple]) -> str:
  if budget is None:
    return 'unknown'
  videos, every, val, test = budget
  text = f'{videos:,} videos'
  if every:
    text += f', val every {every:,} videos'
  if val:
    text += f' on {val:,}'
  if test:
    text += f', test on {test:,}'
  return text


def _group_name(members: list[dict]) -> str:
  names = [m['name'] for m in members]
  stripped = {_SEED_TOKEN.sub('', n).strip('_,') for n in names}
  if len(members) > 1 and len(stripped) == 1 and '' not in stripped:
    return stripped.pop()
  return ' + '.join(names)


def group_runs(runs: list[dict], score: Callable[[dict], Optional[float]]) -> list[dict]:
  """One row per set of runs that differ only in seed, in the order of first appearance.

  Each run needs 'name', 'seed', 'group_key', 'paper'. A row has 'name' (the runs' name
  without its 'seed=N' part), 'members', 'paper', 'scores' ([(seed, score)] of the
  members with a score) and 'score' (their mean, None without any).
  """
  groups, by_key = [], {}
  for info in runs:
    key = info.get('group_key')
    if key is not None and key in by_key:
      by_key[key]['members'].append(info)
      continue
    group = {'members': [info], 'paper': info.get('paper')}
    groups.append(group)
    if key is not None:
      by_key[key] = group
  for g in groups:
    g['name'] = _group_name(g['members'])
    g['scores'] = [(m.get('seed'), score(m)) for m in g['members'] if score(m) is not None]
    values = [s for _, s in g['scores']]
    g['score'] = sum(values) / len(values) if values else None
  return groups


def budget_problem(groups: list[dict]) -> Optional[str]:
  """None if every row (`group_runs`) has the same budget, else one line naming each
  budget and the rows that had it (an unknown budget counts as one of its own). The seeds
  of a row share its budget: their configs differ in nothing that sets it."""
  budgets = {}
  for g in groups:
    budgets.setdefault(g['members'][0].get('budget'), []).append(g['name'])
  if len(budgets) < 2:
    return None
  return '; '.join(f'{describe_budget(b)}: {", ".join(names)}'
                   for b, names in budgets.items())


def _pct(x) -> str:
  return '' if not isinstance(x, (int, float)) or math.isnan(x) else f'{100 * x:.1f}'


def seeds_markdown(groups: list[dict]) -> list[str]:
  """The grouped table (empty when no row has more than one run): each row's mean, each
  seed's value and their spread, beside the paper's number and the ranks of the means."""
  if not any(len(g['members']) > 1 for g in groups):
    return []
  header = ['row', 'runs', 'mean', 'each seed', 'spread', 'paper top-1', 'paper row',
            'rank ours / paper']
  lines = ['## Rows over seeds', '',
           'Runs whose configs differ only in their seed, as one row: the mean of their '
           'test top-1 (val top-1 for a run without a test yet) and each seed\'s value '
           '(seed: value), in %; spread = highest - lowest. Ranks and Kendall tau are '
           'computed on the means.', '',
           '| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  for g in groups:
    values = [s for _, s in g['scores']]
    entry = g.get('paper') or {}
    paper = '' if not entry else ('-' if entry.get('top1') is None else
                                  f'{entry["top1"]:.1f}')
    rank = g.get('rank')
    cells = [g['name'], str(len(g['members'])), _pct(g['score']),
             ', '.join(f'{seed}: {_pct(s)}' for seed, s in g['scores']),
             _pct(max(values) - min(values)) if len(values) > 1 else '', paper,
             entry.get('row', ''), f'{rank[0]} / {rank[1]}' if rank else '']
    lines.append('| ' + ' | '.join(str(c).replace('|', '\\|') for c in cells) + ' |')
  return lines + ['']
