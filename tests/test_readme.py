"""The README's commands and notebook example stay true."""

import pathlib
import re

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
