r"""Trainable-head sizes of a sweep preset's rows: are the models of a table comparable?

  python -m rstg_jax.capacity --preset=sync3_table1_fair
  python -m rstg_jax.capacity --preset=sync3_table1_fair \
      --config=configs/syncmnist_quick.py -- --config.rstg.dim=96

Takes the flags `launch/sweep.py` takes for the same preset: every row of the preset
(`rstg_jax.paper.PRESETS`) on its config file (the preset's own unless --config), with
the row's overrides and the flags after `--`. For each row it counts the parameters of
the model's head (`rstg_jax.syncmnist.models.head_param_count`: all but the backbone the
models share, i.e. all it trains when the backbone is frozen) from the model's shapes
alone (`jax.eval_shape`: no data, no training), and
prints a Markdown table: row, the row's width overrides, head parameters, and their
ratio to the preset's reference row. A preset with a 'capacity' window
(sync3_table1_fair: every baseline within 0.5x-2x of RSTG all-temp) exits with status 1
and names the rows outside it: the baselines' widths need retuning for that config
(`rstg_jax.paper.FAIR_WIDTHS`). SyncMNIST presets only.
"""

import sys

from absl import flags

from rstg_jax import cli
from rstg_jax import paper as paper_lib
from rstg_jax import report


def head_counts(preset_name: str, config_path=None, extra=()) -> list[dict]:
  """[{'name', 'model', 'widths', 'params', 'ratio'}] for the preset's rows; 'ratio' is
  over the reference row's count (the preset's 'capacity' reference, else the first row).

  Raises:
    KeyError: no such preset. ValueError: a row's config is not a SyncMNIST model.
  """
  from rstg_jax.syncmnist import models  # pylint: disable=g-import-not-at-top
  preset = paper_lib.PRESETS[preset_name]
  rows = []
  for point in preset['points']:
    overrides = [f'--config.{k}={v}' for k, v in point['overrides'].items()]
    config = report.parse_config(config_path or preset['config'], overrides + list(extra))
    if config.get('model') not in models.MODEL_NAMES:
      raise ValueError(f'{preset_name}: row {point["name"]} is not a SyncMNIST model; '
                       'capacity counts the SyncMNIST presets only.')
    # The values in force (a flag after `--` wins over the preset's).
    widths = {k: config.baseline[k.split('.', 1)[1]] for k in point['overrides']
              if k.startswith('baseline.')}
    rows.append({'name': point['name'], 'model': config.model, 'widths': widths,
                 'params': models.head_param_count(config)})
  reference = (preset.get('capacity') or {}).get('reference', rows[0]['name'])
  base = next(r['params'] for r in rows if r['name'] == reference)
  for r in rows:
    r['ratio'] = r['params'] / base
  return rows


def outside_window(preset_name: str, rows: list[dict]) -> list[dict]:
  """The baseline rows (not RSTG) whose ratio is outside the preset's capacity window
  (none when the preset has no window)."""
  window = paper_lib.PRESETS[preset_name].get('capacity')
  if not window:
    return []
  return [r for r in rows if r['model'] != 'rstg'
          and not window['low'] <= r['ratio'] <= window['high']]


def markdown(rows: list[dict], reference: str) -> str:
  lines = [f'| row | model | widths | head parameters | x {reference} |',
           '| --- | --- | --- | --- | --- |']
  for r in rows:
    widths = ', '.join(f'{k}={v}' for k, v in r['widths'].items())
    lines.append(f'| {r["name"]} | {r["model"]} | {widths} | {r["params"]:,} | '
                 f'{r["ratio"]:.2f} |')
  return '\n'.join(lines)


def _define(fv):
  flags.DEFINE_enum('preset', None, sorted(paper_lib.PRESETS), 'the sweep preset',
                    flag_values=fv)
  flags.DEFINE_string('config', None, "config file of every row (default: the preset's)",
                      flag_values=fv)


def main(argv) -> int:
  """argv: the arguments after the program name; flags after `--` go to every row."""
  prog = 'python -m rstg_jax.capacity'
  argv, extra = list(argv), []
  if '--' in argv:
    argv, extra = argv[:argv.index('--')], argv[argv.index('--') + 1:]
  fv, rest = cli.parse_command(_define, argv, prog)
  if rest or not fv.preset:
    cli.usage_error(prog, '--preset=NAME is required; flags for the rows go after --'
                    if not rest else f'unexpected arguments {rest}')
  try:
    rows = head_counts(fv.preset, fv.config, extra)
  except flags.Error as e:  # a bad value, or an unknown preset of the config file
    print(f'ERROR: {cli.config_file_error(e) or " ".join(str(e).split())}', file=sys.stderr)
    return 2
  except (AttributeError, KeyError) as e:  # a misspelt field
    print(f'ERROR: {cli.bad_override_message(e, extra)}', file=sys.stderr)
    return 2
  except ValueError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 2
  preset = paper_lib.PRESETS[fv.preset]
  reference = (preset.get('capacity') or {}).get('reference', rows[0]['name'])
  print(markdown(rows, reference))
  bad = outside_window(fv.preset, rows)
  if bad:
    window = preset['capacity']
    print(f'ERROR: outside {window["low"]}x-{window["high"]}x of {reference}: '
          + ', '.join(f'{r["name"]} ({r["ratio"]:.2f}x)' for r in bad)
          + '. Retune their baseline.* widths for this config (rstg_jax.paper.FAIR_WIDTHS).',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
