"""Nothing a user hands in is unpickled or evaluated.

Config files are Python that the user chose to run (like any script); every
other input (checkpoints, saved inits, metadata, metrics, data caches) is read
through orbax, JSON or NumPy without pickle.
"""

import ast
import json
import os

import numpy as np

from configs_for_tests import ROOT
from logah_jax.data import storage

_UNSAFE_MODULES = {'pickle', 'cPickle', 'marshal', 'shelve', 'dill',
                   'cloudpickle', 'joblib'}
_UNSAFE_CALLS = {'eval', 'exec', '__import__', 'compile'}


def _python_files():
  for top in ('logah_jax', 'benchmarks', 'launch'):
    for root, _, names in os.walk(os.path.join(ROOT, top)):
      for name in names:
        if name.endswith('.py'):
          yield os.path.join(root, name)


def _findings(path):
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name.split('.')[0] for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [(node.module or '').split('.')[0]]
    else:
      names = []
    for name in names:
      if name in _UNSAFE_MODULES:
        yield f'{path}:{node.lineno} imports {name}'
    if isinstance(node, ast.Call):
      func = node.func
      name = func.id if isinstance(func, ast.Name) else getattr(
          func, 'attr', None)
      if isinstance(func, ast.Name) and name in _UNSAFE_CALLS:
        yield f'{path}:{node.lineno} calls {name}()'
      for kw in node.keywords:
        if kw.arg == 'allow_pickle' and not (
            isinstance(kw.value, ast.Constant) and kw.value.value is False):
          yield f'{path}:{node.lineno} passes allow_pickle={ast.unparse(kw.value)}'


def test_no_pickle_eval_or_exec_in_the_package():
  files = list(_python_files())
  assert len(files) > 40
  findings = [f for path in files for f in _findings(path)]
  assert not findings, findings


def test_the_scan_sees_what_it_forbids(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('import pickle\nimport numpy as np\n'
                 "x = eval('1')\nnp.load('a.npy', allow_pickle=True)\n")
  found = list(_findings(str(bad)))
  assert len(found) == 3, found


def test_a_pickled_data_cache_is_rebuilt_not_loaded(tmp_path):
  path = tmp_path / 'cache.npy'
  fingerprint = {'what': 'test'}
  np.save(path, np.array([{'payload': 1}], dtype=object), allow_pickle=True)
  path.with_suffix('.json').write_text(json.dumps(
      {'cache_format': storage.CACHE_FORMAT, **fingerprint}))
  built = storage.cached_array(path, fingerprint, lambda: np.arange(3))
  np.testing.assert_array_equal(built, np.arange(3))
  assert np.load(path).dtype == np.int64  # replaced by a plain array
