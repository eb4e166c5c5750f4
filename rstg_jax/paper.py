"""The paper's result tables as data: the sweep presets and the report's "paper" column.

Each row names the config overrides that reproduce it on top of a base config, so
`launch/sweep.py --preset=NAME` runs the rows and `rstg_jax.report` finds a run's row
from its resolved config (`paper_entry`), whether or not a preset started it.

- SyncMNIST (paper Table 1; poster Table 2): top-1 % on 3SyncMNIST and 5SyncMNIST, six
  RSTG variants and four baselines; '-' in the paper is None here.
- Something-Something-v1 (paper Table 2, and Table 3 for where the graph sits): top-1 /
  top-5 % on the validation set, dense evaluation (11 crops x 2 clips).

`sync3_table1_fair` is Table 1 at CPU scale with the models made comparable
(docs/table1_cpu.md): on configs/syncmnist_quick.py's sizes (backbone width 32,
rstg.dim 64, K = 1, frozen backbone) every baseline gets the widths in `FAIR_WIDTHS`,
which put its trainable head within `FAIR_CAPACITY`'s window of RSTG all-temp's
(`python -m rstg_jax.capacity` prints the counts), every row the same input
normalisation (`input_norm='batchnorm'`) and nodes without frame differences
(`rstg.frame_diff=False`, which the baselines have no counterpart of), and the sweep runs
each row with `seeds` seeds.
"""

from typing import Optional

# name, paper row, overrides (config fields), 3Sync top-1, 5Sync top-1.
SYNCMNIST_ROWS = (
    ('mean_lstm', 'Mean + LSTM', {'model': 'mean_lstm'}, 77.0, None),
    ('conv_lstm', 'Conv + LSTM', {'model': 'conv_lstm'}, 95.0, 39.7),
    ('i3d', 'I3D', {'model': 'i3d'}, None, 90.6),
    ('nonlocal', 'Non-Local', {'model': 'nonlocal'}, None, 93.5),
    ('space_only', 'RSTG: Space-Only', {'model': 'rstg', 'ablation': 'space_only'}, 61.3, None),
    ('time_only', 'RSTG: Time-Only', {'model': 'rstg', 'ablation': 'time_only'}, 89.7, None),
    ('homogeneous', 'RSTG: Homogenous', {'model': 'rstg', 'ablation': 'homogeneous'},
     95.7, 58.3),
    ('one_temp', 'RSTG: 1-temp-stage', {'model': 'rstg', 'ablation': 'one_temp'}, 97.0, 74.1),
    ('all_temp', 'RSTG: All-temp-stages', {'model': 'rstg', 'ablation': 'all_temp'},
     98.9, 94.5),
    ('positional', 'RSTG: Positional All-temp', {'model': 'rstg', 'ablation': 'positional'},
     None, 97.2),
)


def _ssv1(arch: str, placement: str, nonlocal_blocks: bool = False) -> dict:
  """Overrides on configs/ssv1_i3d.py for one Something-Something row."""
  return {'backbone.arch': arch, 'backbone.nonlocal_blocks': nonlocal_blocks,
          'rstg.placement': placement}


# name, paper row, table, overrides on configs/ssv1_i3d.py, val top-1, top-5.
SSV1_ROWS = (
    ('c2d', 'C2D', 'Table 2', _ssv1('c2d', 'none'), 31.7, 64.7),
    ('c2d_rstg', 'ours C2D + RSTG', 'Table 2', _ssv1('c2d', 'vec'), 42.8, 73.6),
    ('i3d', 'I3D', 'Table 2', _ssv1('i3d', 'none'), 41.6, 72.2),
    ('nl_i3d', 'NL I3D', 'Table 2', _ssv1('i3d', 'none', nonlocal_blocks=True), 44.4, 76.0),
    ('i3d_rstg', 'ours I3D + RSTG', 'Table 2', _ssv1('i3d', 'res3_4'), 49.2, 78.8),
    ('vec', 'RSTG-to-vec', 'Table 3', _ssv1('i3d', 'vec'), 47.7, 77.9),
    ('res2', 'RSTG-to-map res2', 'Table 3', _ssv1('i3d', 'res2'), 46.9, 76.8),
    ('res3', 'RSTG-to-map res3', 'Table 3', _ssv1('i3d', 'res3'), 47.7, 77.8),
    ('res4', 'RSTG-to-map res4', 'Table 3', _ssv1('i3d', 'res4'), 48.4, 78.1),
    ('res3_4', 'RSTG-to-map res3-4', 'Table 3', _ssv1('i3d', 'res3_4'), 49.2, 78.8),
)


# The baselines' widths that bring each trainable head within FAIR_CAPACITY's window of
# RSTG all-temp's (104,558 parameters) at configs/syncmnist_quick.py's sizes; the counts
# with input_norm='batchnorm': mean_lstm 103,430 (0.99x), conv_lstm 96,926 (0.93x), i3d
# 98,084 (0.94x), nonlocal 108,776 (1.04x). tests/test_table1.py recomputes them.
FAIR_WIDTHS = {
    'mean_lstm': {'baseline.lstm_dim': 140},
    'conv_lstm': {'baseline.conv_width': 8, 'baseline.conv_lstm_dim': 64},
    'i3d': {'baseline.i3d_planes': (9, 18, 36)},
    'nonlocal': {'baseline.i3d_planes': (9, 18, 36)},
}
# Every baseline row's head (all but the shared backbone: what trains when it is frozen)
# over the reference row's must lie in [low, high].
FAIR_CAPACITY = {'reference': 'sync3_all_temp', 'low': 0.5, 'high': 2.0}


def _sync_preset(digits: int, fair: bool = False) -> dict:
  points = []
  for name, row, overrides, top1_3, top1_5 in SYNCMNIST_ROWS:
    if fair:  # the same input normalisation for all, the baselines' matched widths;
      # RSTG's nodes as the paper's (the :paper preset's frame differences are RSTG's only)
      overrides = {**overrides, 'input_norm': 'batchnorm', 'rstg.frame_diff': False,
                   **FAIR_WIDTHS.get(overrides['model'], {})}
    points.append({
        'name': f'sync{digits}_{name}',
        'overrides': {'data.num_digits': digits, **overrides},
        'paper': {'table': f'SyncMNIST Table 1, {digits}SyncMNIST', 'row': row,
                  'top1': top1_3 if digits == 3 else top1_5, 'top5': None},
    })
  if fair:
    return {'config': 'configs/syncmnist_quick.py', 'points': points, 'seeds': 2,
            'capacity': dict(FAIR_CAPACITY),
            'doc': f'Table 1, {digits}SyncMNIST, at CPU scale with matched capacity: '
                   'baseline heads 0.5x-2x of RSTG all-temp, BatchNorm on every '
                   "model's input, 2 seeds per row"}
  return {'config': 'configs/syncmnist.py', 'points': points,
          'doc': f'paper Table 1, {digits}SyncMNIST column: 6 RSTG variants, 4 baselines'}


def _ssv1_preset(table: str) -> dict:
  points = [{
      'name': f'ssv1_{name}', 'overrides': dict(overrides),
      'paper': {'table': f'Something-Something-v1 {tab}', 'row': row, 'top1': top1,
                'top5': top5},
  } for name, row, tab, overrides, top1, top5 in SSV1_ROWS if tab == table]
  return {'config': 'configs/ssv1_i3d.py', 'points': points,
          'doc': f'paper {table}, Something-Something-v1 (pass --config.data.root and '
                 '--config.init_from.path after --)'}


PRESETS = {
    'sync3_table1': _sync_preset(3),
    'sync3_table1_fair': _sync_preset(3, fair=True),
    'sync5_table1': _sync_preset(5),
    'ssv1_table2': _ssv1_preset('Table 2'),
    'ssv1_table3': _ssv1_preset('Table 3'),
}


def _entries() -> list[tuple[dict, dict]]:
  """(config fields a run must have, the paper row) for every cell of the tables."""
  out = []
  for digits in (3, 5):
    for _, row, overrides, top1_3, top1_5 in SYNCMNIST_ROWS:
      # The baselines ignore `ablation`; an RSTG row is one ablation.
      match = {'data.name': 'syncmnist', 'data.num_digits': digits, **overrides}
      out.append((match, {'table': f'SyncMNIST Table 1, {digits}SyncMNIST', 'row': row,
                          'top1': top1_3 if digits == 3 else top1_5, 'top5': None}))
  # res3_4 is both Table 2's "ours I3D + RSTG" and Table 3's last row: Table 2 comes first.
  for _, row, table, overrides, top1, top5 in SSV1_ROWS:
    out.append(({'data.name': 'ssv1', **overrides},
                {'table': f'Something-Something-v1 {table}', 'row': row, 'top1': top1,
                 'top5': top5}))
  return out


ENTRIES = _entries()


def paper_entry(flat_config: dict) -> Optional[dict]:
  """The paper row a resolved (flat: 'data.name', ...) config reproduces, or None.

  Returns {'table', 'row', 'top1', 'top5'} (a copy); top1 is None where the paper has '-'.
  """
  for match, entry in ENTRIES:
    if all(flat_config.get(k) == v for k, v in match.items()):
      return dict(entry)
  return None
