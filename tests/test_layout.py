"""The code layout's rules, checked on the source (README: "How the code is laid out").

Layers from the ground up: core <- shared helpers <- training library <- task packages
<- the registry and the entry points. A module imports only from its own layer or below;
only the registry branches on the data set's name; every command line is on absl.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'rstg_jax'
LAYERS = {  # module prefix -> layer
    'rstg_jax.graph': 0, 'rstg_jax.stages': 0, 'rstg_jax.model': 0,
    'rstg_jax.safe_pickle': 1, 'rstg_jax.runtime': 1, 'rstg_jax.cli': 1, 'rstg_jax.errors': 1,
    'rstg_jax.distributed': 1, 'rstg_jax.paper': 1,
    'rstg_jax.train': 2,
    'rstg_jax.syncmnist': 3, 'rstg_jax.ssv1': 3,
    'rstg_jax.tasks': 4, 'rstg_jax.main': 4, 'rstg_jax.evaluate': 4,
    'rstg_jax.convert': 4, 'rstg_jax.bench': 4, 'rstg_jax.report': 4,
}


def _modules():
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    name = '.'.join(p for p in parts if p != '__init__')
    yield name, path


def _layer(name):
  for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
    if name == prefix or name.startswith(prefix + '.'):
      return layer
  return None


def _imports(path):
  """Every rstg_jax module a file imports, at the top or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith('rstg_jax')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        'rstg_jax'):
      for a in node.names:  # `from rstg_jax import x` names the module rstg_jax.x
        sub = f'{node.module}.{a.name}'
        out.add(sub if _layer(sub) is not None and node.module == 'rstg_jax' else
                node.module)
  return out


@pytest.mark.parametrize('name,path', list(_modules()))
def test_no_module_imports_one_above_it(name, path):
  layer = _layer(name)
  if layer is None:  # the package's __init__
    return
  above = sorted(m for m in _imports(path) if (_layer(m) or 0) > layer)
  assert not above, f'{name} (layer {layer}) imports {above}'


def test_only_the_registry_branches_on_the_data_set_name():
  for name, path in _modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Compare) and 'data.name' in ast.unparse(node.left):
        assert name == 'rstg_jax.tasks', f'{name}: {ast.unparse(node)}'


def test_every_command_line_is_on_absl():
  for name, path in _modules():
    assert 'argparse' not in _imports(path) and 'import argparse' not in path.read_text(), name
