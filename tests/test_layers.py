"""Imports run one way: main -> train -> inits -> ghn -> models -> arch, with
checkpoint, data, parallel and the error/compile/random helpers below them."""

import ast
import os

from configs_for_tests import ROOT

# Higher imports lower, never the reverse; equal ranks do not import each
# other. A new top-level module or package must be placed here.
RANKS = {
    'validation': 0, 'compiles': 0, 'prng': 0, 'host_memory': 0,
    'files': 1,
    'tree_compare': 2, 'runtime': 2, 'data': 2, 'parallel': 2, 'checksums': 2,
    'checkpoint': 3,
    'arch': 4,
    'models': 5,
    'ghn': 6, 'export': 6, 'growth': 6,
    'inits': 7, 'config_base': 7,
    'train': 8,
    'main': 9,
}


def _imports():
  """(importing top-level unit, imported unit, file) for every import."""
  package = os.path.join(ROOT, 'logah_jax')
  for root, _, files in os.walk(package):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, package)
      unit = rel.split(os.sep)[0].removesuffix('.py')
      if unit == '__init__':
        continue
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
          modules = [node.module] + [f'{node.module}.{a.name}'
                                     for a in node.names]
        elif isinstance(node, ast.Import):
          modules = [a.name for a in node.names]
        else:
          continue
        for module in modules:
          parts = module.split('.')
          if parts[0] == 'logah_jax' and len(parts) > 1 and parts[1] != unit:
            yield unit, parts[1], rel


def test_every_import_points_down():
  seen = list(_imports())
  assert len(seen) > 50  # the walk really read the package
  units = {u for u, _, _ in seen} | {t for _, t, _ in seen}
  assert units <= set(RANKS), f'place {units - set(RANKS)} in RANKS'
  upward = [(rel, target) for unit, target, rel in seen
            if RANKS[target] >= RANKS[unit]]
  assert not upward, f'imports that do not point down: {upward}'


def test_init_methods_do_not_import_training():
  assert not [rel for unit, target, rel in _imports()
              if unit == 'inits' and target == 'train']
