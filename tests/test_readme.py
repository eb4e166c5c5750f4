"""The README's and the docs pages' commands, numbers' labels, links and sizes stay true.

The README's results table runs on today's code; the experiment log's rows
(`docs/syncmnist_cpu.md`) are commands for the code of the commit each row names, so they
are checked against that commit's code, read from the git history.
"""

import ast
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from rstg_jax import tasks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()
HISTORY = ROOT / 'docs' / 'syncmnist_cpu.md'
PROTOCOLS = ('paper', 'motion_backbone', 'privileged')
MAX_README_LINES = 400
MAX_DOCSTRING_LINES = 30
# The pages the README must link (issue 25; explain and scaling_out hold the detail of
# the README's "Look inside the model" and "Scaling out").
DOCS_PAGES = ('syncmnist_cpu.md', 'table1_cpu.md', 'benchmarks.md', 'failure_modes.md',
              'tests.md', 'departures.md', 'explain.md', 'scaling_out.md')


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


def test_look_inside_example_runs():
  """The README's second notebook block ("Look inside the model") runs as printed and its
  comments hold: the weights sum to 1 into each node, and the records hold one entry per
  iteration, of the shapes it names (records of the last iteration only would fail)."""
  code = _blocks('python')[1]
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)
  graph, alpha = namespace['graph'], namespace['alpha']
  assert alpha.shape == (4, graph.num_edges) == (4, 90)
  into = np.zeros((4, graph.num_nodes))
  np.add.at(into.T, namespace['receivers'], np.asarray(alpha).T)
  np.testing.assert_allclose(into, 1.0, rtol=1e-5)
  attention, nodes = namespace['attention'], namespace['node_states']
  assert len(attention) == len(nodes) == 3
  assert all(a.shape == (2, 10, 90) for a in attention)
  assert all(n.shape == (2, 10, 14, 64) for n in nodes)


def _table(text, after):
  """The rows (lists of stripped cells) of the first Markdown table after `after`, with
  its header row first."""
  lines = text.split(after, 1)[1].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('|'))
  rows = []
  for line in lines[start:]:
    if not line.startswith('|'):
      break
    rows.append([cell.strip() for cell in line.strip().strip('|').split('|')])
  return [rows[0]] + rows[2:]  # drop the --- row


def _commands(rows, column):
  """(config argument, overrides) of each row's command cell.

  A cell holds either a whole `python -m rstg_jax.main --config=...` command or "the same
  `OVERRIDES`", which apply to the nearest whole command above it.
  """
  out, base = [], None
  for row in rows:
    cell = row[column]
    if cell.startswith('`python -m rstg_jax.main'):
      words = shlex.split(cell.strip('`'))
      base = next(w for w in words if w.startswith('--config=')).removeprefix('--config=')
      overrides = [w for w in words[3:] if not w.startswith(('--config=', '--workdir'))]
    else:
      assert cell.startswith('the same `') and base, f'a command must open the table: {row}'
      overrides = shlex.split(cell.removeprefix('the same `').rstrip('`'))
    out.append((base, overrides))
  return out


def _parse(config_arg, overrides):
  """Parses `--config=CONFIG_ARG OVERRIDES` the way rstg_jax.main does."""
  argv = ['prog', f'--config={ROOT / config_arg}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_readme_results_table_rows_are_valid_configs_of_their_protocol():
  """Every row's command must select a config the checks accept, of the protocol the row
  names; a row that is not 'paper' must not stand beside the paper's number (issue 25)."""
  from rstg_jax.syncmnist import protocol  # pylint: disable=import-outside-toplevel
  header, *rows = _table(README, '### Results')
  assert header == ['config', 'protocol', 'command', 'time (2 CPU cores)', 'test top-1',
                    'paper']
  assert 1 <= len(rows) <= 6
  commands = _commands(rows, header.index('command'))
  for row, (config_arg, overrides) in zip(rows, commands, strict=True):
    config = _parse(config_arg, overrides)
    tasks.for_config(config, check_data=False)
    assert row[1] == protocol(config), row[0]
    if row[1] != 'paper':
      assert row[-1] == '-', f'a {row[1]} result beside the paper: {row[0]}'
  plain = {arg for arg, overrides in commands if not overrides}
  assert plain >= {'configs/syncmnist_quick.py', 'configs/syncmnist_cpu.py'}


# Run inside a checkout of an older commit: parses each command with that commit's configs,
# runs its config checks, and names the protocol from its (flat) backbone fields.
_AT_COMMIT = r'''
import json, sys
from absl import flags
from ml_collections import config_flags
from rstg_jax import tasks

def protocol(config):
  try:  # commits from issue 25 on compute it
    from rstg_jax.syncmnist.protocols import protocol as computed
  except ImportError:  # before: the flat backbone.pretrain_* fields
    b = config.backbone
    motion = b.pretrain_steps > 0 and b.pretrain_target == 'digit_motion'
    if motion and b.pretrain_scene_steps > 0:
      return 'privileged'
    return 'motion_backbone' if motion or b.frames == 2 else 'paper'
  return computed(config)

out = []
for config_arg, overrides in json.load(sys.stdin):
  argv = ['prog', '--config=' + config_arg, *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  tasks.for_config(flag_values.config, check_data=False)
  out.append(protocol(flag_values.config))
print(json.dumps(out))
'''


def _checkout(commit, dest):
  """Writes configs/ and rstg_jax/ of `commit` under `dest`; skips without the history."""
  if shutil.which('git') is None:
    pytest.skip('git is not installed: the log rows are checked against their commit')
  archive = subprocess.run(['git', '-C', str(ROOT), 'archive', '--format=tar', commit,
                            'configs', 'rstg_jax'], capture_output=True, check=False)
  if archive.returncode:
    pytest.skip(f'commit {commit} is not in this checkout (a shallow clone or no git '
                f'history): {archive.stderr.decode().strip()}')
  with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
    tar.extractall(dest, filter='data')


def test_experiment_log_rows_run_on_their_commit_with_the_protocol_they_name(tmp_path):
  """Each row of the log's results table is a command for the code of its commit: it
  must select a config that commit's checks accept, and its protocol label must be what
  that config's backbone fields say (e.g. a scene-stage run labelled 'motion_backbone'
  fails)."""
  header, *rows = _table(HISTORY.read_text(), '## Every measured run')
  assert header[:5] == ['run', 'protocol', 'measured at', 'code', 'command']
  assert len(rows) >= 10
  commands = _commands(rows, header.index('command'))
  by_commit = {}
  for row, (config_arg, overrides) in zip(rows, commands, strict=True):
    assert row[1] in PROTOCOLS, row[0]
    by_commit.setdefault(row[3], []).append((row, config_arg, overrides))
  for commit, items in by_commit.items():
    dest = tmp_path / commit
    _checkout(commit, dest)
    result = subprocess.run(
        [sys.executable, '-c', _AT_COMMIT], cwd=dest, capture_output=True, text=True,
        input=json.dumps([[arg, overrides] for _, arg, overrides in items]),
        env=dict(os.environ, PYTHONPATH=str(dest), JAX_PLATFORMS='cpu'),
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    labels = json.loads(result.stdout.splitlines()[-1])
    assert [row[1] for row, _, _ in items] == labels, [row[0] for row, _, _ in items]


def _docstring_lines(path):
  doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ''
  return len(doc.strip('\n').splitlines())


def test_readme_and_config_docstrings_stay_short():
  """The README is a front page and a config's docstring says what the recipe is, its
  command, time and result; experiment logs belong in docs/ (issue 25)."""
  assert len(README.splitlines()) <= MAX_README_LINES
  long = {p.name: n for p in sorted((ROOT / 'configs').glob('*.py'))
          if (n := _docstring_lines(p)) > MAX_DOCSTRING_LINES}
  assert not long, f'config docstrings over {MAX_DOCSTRING_LINES} lines: {long}'


def _anchors(text):
  """GitHub's anchors of a Markdown page's headings."""
  headings = re.findall(r'^#+ (.+)$', text, flags=re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_every_link_of_the_readme_and_the_docs_pages_resolves():
  """A relative link (and its #anchor) in README.md or docs/*.md names a file that exists
  (and a heading in it); the README links every page issue 25 moved content to."""
  pages = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
  broken = []
  for page in pages:
    text = page.read_text()
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
      if re.match(r'[a-z]+://', target):
        continue
      path, _, anchor = target.partition('#')
      file = (page.parent / path).resolve() if path else page
      if not file.is_file():
        broken.append(f'{page.name}: {target}')
      elif anchor and file.suffix == '.md' and anchor not in _anchors(file.read_text()):
        broken.append(f'{page.name}: {target} (no such heading)')
  assert not broken, broken
  linked = set(re.findall(r'\]\(docs/([\w.]+\.md)', README))
  assert linked >= set(DOCS_PAGES), set(DOCS_PAGES) - linked


def test_every_test_named_in_docs_tests_exists():
  """docs/tests.md maps claims to tests: a renamed or removed test must take its row along
  (e.g. a row naming `test_models::test_gone` fails)."""
  named = re.findall(r'`(test_\w+)::(test_\w+)`', (ROOT / 'docs' / 'tests.md').read_text())
  assert len(named) >= 40
  missing = [f'{module}::{name}' for module, name in named
             if not re.search(rf'^def {name}\(', (ROOT / 'tests' / f'{module}.py').read_text(),
                              flags=re.M)]
  assert not missing, missing
