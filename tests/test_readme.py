"""The README's commands and notebook example stay true."""

import pathlib
import re

import test_configs

from rstg_jax import tasks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def _blocks(lang):
  return re.findall(rf'```{lang}\n(.*?)```', README, flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
  commands = _blocks('bash')
  assert len(commands) >= 2, 'the README must open with the two commands'
  test_command = commands[1].strip()
  assert 'pytest' in test_command
  assert test_command in (ROOT / '.ci' / 'run').read_text()
  assert 'rstg_jax.main' in commands[0]


def test_notebook_example_runs(capsys):
  code = _blocks('python')[0]
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)
  assert namespace['out'].shape == (2, 10, 14, 64)
  assert namespace['video_vector'].shape == (2, 64)
  # The example claims online == offline; hold it to that.
  diff = abs(namespace['frame_states'] - namespace['states'][:, -1]).max()
  assert float(diff) < 1e-4
  assert 'RSTGGraph(scales=(1, 2, 3)' in capsys.readouterr().out


def _readme_result_commands():
  """(config name, overrides) of every row of the README's SyncMNIST results table.

  A row gives either the whole command or "the same `OVERRIDES`" after the row above.
  """
  table = README.split('### Results', 1)[1].split('\n\n', 2)[1]
  rows, base = [], None
  for line in table.splitlines()[2:]:
    command = line.split('|')[2].strip()
    if command.startswith('`python -m rstg_jax.main'):
      words = command.strip('`').split()
      base = words[3].removeprefix('--config=configs/').removesuffix('.py')
      rows.append((base, [w for w in words[4:] if not w.startswith('--workdir')]))
    elif command.startswith('the same `'):
      rows.append((base, command.removeprefix('the same `').rstrip('`').split()))
  return rows


def test_readme_results_table_commands_are_valid_configs():
  """Each row's command must still select a config the checks accept: e.g. a row that
  turns the digit_motion target off must also turn off the scene stage built on it."""
  rows = _readme_result_commands()
  assert len(rows) >= 7 and {name for name, _ in rows} >= {'syncmnist_quick', 'syncmnist_cpu'}
  for name, overrides in rows:
    config = test_configs._parse(overrides, name)  # pylint: disable=protected-access
    tasks.for_config(config, check_data=False)
  quick = test_configs._parse([], 'syncmnist_quick')  # pylint: disable=protected-access
  assert quick.backbone.pretrain_scene_steps > 0  # the rows without it say so
