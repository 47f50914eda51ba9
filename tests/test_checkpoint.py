"""Tests for logah_jax.checkpoint: training checkpoints and predicted inits."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest

from logah_jax import checkpoint
from logah_jax.checkpoint import params as checkpoint_params
from logah_jax import parallel

needs_8 = pytest.mark.skipif(jax.device_count() < 8,
                             reason='needs 8 devices (set by conftest.py)')


def _state(seed=0):
  """A params + optax state pytree with namedtuples, tuples and ints."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {'encoder_layer_0': {'mlp': {
      'fc1': {'kernel': jax.random.normal(k1, (8, 16)), 'bias': jnp.zeros(16)},
      'fc2': {'kernel': jax.random.normal(k2, (16, 8)), 'bias': jnp.ones(8)}}}}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  opt_state = tx.init(params)
  _, opt_state = tx.update(params, opt_state, params)
  return {'params': params, 'opt_state': opt_state, 'step': 5, 'rng': k1,
          'count': np.int32(7), 'np_leaf': np.arange(3, dtype=np.int64)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      np.shape(x), x.dtype if hasattr(x, 'dtype') else np.result_type(x)), tree)


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(root):
  """{relative path: (size, mtime)} of everything under root."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      p = os.path.join(dirpath, name)
      st = os.stat(p)
      out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
  return out


# ------------------------------------------------------ training checkpoints


def test_round_trip_params_opt_state_and_ints(tmp_path):
  state = _state()
  with checkpoint.CheckpointManager(tmp_path, async_save=False) as mngr:
    assert mngr.save(1, state, extra={'epoch': 2})
    restored, extra = mngr.restore(1, abstract_state=_abstract(state))
  _assert_tree_equal(restored, state)
  assert isinstance(restored['opt_state'][1][0], optax.ScaleByAdamState)
  assert restored['count'].shape == () and restored['count'] == 7
  assert extra == {'epoch': 2}
  # The state itself (concrete arrays) also works as the target.
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    _assert_tree_equal(mngr.restore(1, abstract_state=state)[0], state)


def _bytes_under(path) -> int:
  return sum(f.stat().st_size for f in pathlib.Path(path).rglob('*')
             if f.is_file())


def test_arrays_are_written_uncompressed(tmp_path):
  """Weights barely compress and zstd cost most of a save's time, so both
  kinds of checkpoint store the raw bytes: 1M zeros take their 4 MB (zstd
  would store a few hundred bytes)."""
  zeros = {'w': jnp.zeros(1 << 20, jnp.float32)}
  with checkpoint.CheckpointManager(tmp_path / 'run', async_save=False) as m:
    m.save(1, zeros)
  checkpoint.save_params(tmp_path / 'init', zeros, metadata={})
  for where in (tmp_path / 'run', tmp_path / 'init'):
    assert _bytes_under(where) >= 4 * (1 << 20), where
  _assert_tree_equal(checkpoint.restore_params(tmp_path / 'init'), zeros)


def test_keep_last_k_async_and_interval(tmp_path):
  state = {'w': jnp.arange(4.0)}
  with checkpoint.CheckpointManager(tmp_path, max_to_keep=2,
                                    save_interval_steps=2) as mngr:
    saved = [mngr.save(s, {'w': state['w'] + s}) for s in range(7)]
    mngr.wait_until_finished()
    assert saved == [True, False, True, False, True, False, True]
    assert mngr.all_steps() == [4, 6]
    assert mngr.save(7, state, force=True)
    mngr.wait_until_finished()
    assert mngr.all_steps() == [6, 7]


def test_resume_picks_latest_with_extra(tmp_path):
  extra = {'loader': {'epoch': 3, 'position': np.int64(1234)},
           'rng': np.array([1, 2], np.uint32), 'sampler': [0.5, None, 'a']}
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    for s in (10, 20, 30):
      mngr.save(s, {'w': jnp.full(3, float(s))}, extra={**extra, 'step': s})
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    assert mngr.latest_step() == 30
    state, got = mngr.restore(abstract_state={'w': jax.ShapeDtypeStruct(
        (3,), jnp.float32)})
  np.testing.assert_array_equal(state['w'], [30.0] * 3)
  assert got == {'loader': {'epoch': 3, 'position': 1234}, 'rng': [1, 2],
                 'sampler': [0.5, None, 'a'], 'step': 30}


def test_restore_errors(tmp_path):
  with checkpoint.CheckpointManager(tmp_path / 'empty') as mngr:
    with pytest.raises(FileNotFoundError, match='empty'):
      mngr.restore(abstract_state={})
  with checkpoint.CheckpointManager(tmp_path / 'run', async_save=False) as m:
    m.save(1, {'w': jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match=r'no step 2 .* \[1\]'):
      m.restore(2, abstract_state={})
    with pytest.raises(ValueError, match=r"'w' .* has \(2, 3\), target "
                       r'expects \(3, 2\)'):
      m.restore(1, abstract_state={'w': jax.ShapeDtypeStruct((3, 2), 'f4')})


def test_config_mismatch_names_key_and_touches_nothing(tmp_path):
  config = {'model': {'width': 64, 'depth': 2}, 'lr': 1e-3, 'workdir': 'a'}
  with checkpoint.CheckpointManager(tmp_path, config=config) as mngr:
    mngr.save(1, {'w': jnp.zeros(2)})
  assert json.loads((tmp_path / 'config.json').read_text()) == config
  before = _snapshot(tmp_path)
  changed = {**config, 'model': {'width': 128, 'depth': 2}}
  with pytest.raises(ValueError) as e:
    checkpoint.CheckpointManager(tmp_path, config=changed)
  assert str(tmp_path) in str(e.value)
  assert "'model.width'" in str(e.value) and '64' in str(e.value)
  assert '128' in str(e.value)
  assert _snapshot(tmp_path) == before
  # Run-local keys may change; tuples compare equal to their JSON lists.
  with checkpoint.CheckpointManager(
      tmp_path, config={**config, 'workdir': 'b'}) as mngr:
    assert mngr.latest_step() == 1
  with pytest.raises(ValueError, match="'extra_key' is '<missing>'"):
    checkpoint.CheckpointManager(tmp_path, config={**config, 'extra_key': (1,)})
  # A key newer than the workdir compares as its default, top level or nested.
  newer = {**config, 'scan': False, 'model': {**config['model'], 'bias': 1}}
  later = {'scan': False, 'model.bias': 1}
  with checkpoint.CheckpointManager(tmp_path, config=newer,
                                    later_keys=later) as mngr:
    assert mngr.latest_step() == 1
  for changed in ({**newer, 'scan': True},
                  {**newer, 'model': {**newer['model'], 'bias': 2}}):
    with pytest.raises(ValueError, match=r"'(scan|model\.bias)' is (False|1) "
                       r'there but (True|2) now'):
      checkpoint.CheckpointManager(tmp_path, config=changed,
                                   later_keys=later)
  assert json.loads((tmp_path / 'config.json').read_text()) == config


def test_corrupt_training_checkpoint(tmp_path):
  with checkpoint.CheckpointManager(tmp_path, async_save=False) as mngr:
    mngr.save(1, {'w': jnp.arange(64.0)})
  for f in (tmp_path / '1' / 'state' / 'd').iterdir():
    f.write_bytes(f.read_bytes()[:5])
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    with pytest.raises(ValueError, match=f'{tmp_path}/1 is not a readable'):
      mngr.restore(1, abstract_state={'w': jax.ShapeDtypeStruct((64,), 'f4')})
    with pytest.raises(FileNotFoundError, match=r'no intact checkpoint .* '
                       r'steps \[1\] are damaged'):
      mngr.restore(abstract_state={'w': jax.ShapeDtypeStruct((64,), 'f4')})


_CRASH = """
import os, sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from logah_jax import checkpoint

async def crash(self):  # dies with step 2 fully written but not committed
  os._exit(3)

with checkpoint.CheckpointManager(sys.argv[1]) as mngr:
  mngr.save(1, {'w': jnp.full(3, 1.0)})
  mngr.wait_until_finished()
  atomicity.AtomicRenameTemporaryPath.finalize = crash
  mngr.save(2, {'w': jnp.full(3, 2.0)})
  mngr.wait_until_finished()
"""


def _orbax_commit_hook():
  """orbax's commit of a finished step, which the crash test replaces;
  None where this orbax version keeps it elsewhere."""
  try:
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  temporary_path = getattr(atomicity, 'AtomicRenameTemporaryPath', None)
  return getattr(temporary_path, 'finalize', None)


def test_crash_mid_save_keeps_previous_step(tmp_path):
  if _orbax_commit_hook() is None:
    pytest.skip('this orbax has no AtomicRenameTemporaryPath.finalize to '
                'crash in')
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, 'PYTHONPATH': str(repo), 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', _CRASH, str(tmp_path)],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert any('tmp' in p.name for p in tmp_path.iterdir())  # the torn step 2
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    assert mngr.all_steps() == [1]
    state, _ = mngr.restore(abstract_state={'w': jax.ShapeDtypeStruct(
        (3,), jnp.float32)})
    np.testing.assert_array_equal(state['w'], [1.0] * 3)
    assert mngr.save(2, {'w': jnp.full(3, 2.0)})  # the step can be redone
    mngr.wait_until_finished()
    assert mngr.all_steps() == [1, 2]


# ------------------------------------------------------------ predicted inits


class _Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16, name='fc1')(x)
    return nn.Dense(4, name='fc2')(nn.gelu(x))


_META = {'arch': {'family': 'vit', 'width': 16}, 'ghn': 'runs/ghn@1000',
         'version': '0.1.0'}


def test_save_restore_params_round_trip(tmp_path):
  params = _Mlp().init(jax.random.key(0), jnp.ones((1, 8)))['params']
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  assert checkpoint.read_metadata(tmp_path / 'init') == _META
  abstract = jax.eval_shape(_Mlp().init, jax.random.key(0),
                            jnp.ones((1, 8)))['params']
  _assert_tree_equal(
      checkpoint.restore_params(tmp_path / 'init', abstract_params=abstract),
      params)
  _assert_tree_equal(checkpoint.restore_params(tmp_path / 'init'), params)


@needs_8
def test_restore_params_into_sharded_target(tmp_path):
  params = {'fc': {'kernel': jnp.arange(64 * 32.0).reshape(64, 32),
                   'bias': jnp.arange(32.0)}}
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  mesh = parallel.make_mesh()
  abstract = jax.eval_shape(lambda: params)
  shardings = parallel.param_shardings(mesh, abstract, rule='fsdp',
                                       min_size_mb=0)
  got = checkpoint.restore_params(tmp_path / 'init', abstract_params=abstract,
                                  shardings=shardings)
  assert got['fc']['kernel'].sharding == NamedSharding(mesh, P('data'))
  assert got['fc']['bias'].sharding == NamedSharding(mesh, P('data'))
  _assert_tree_equal(got, params)
  # Shardings carried by the abstract tree, and one sharding for all leaves.
  got = checkpoint.restore_params(
      tmp_path / 'init',
      abstract_params=parallel.with_shardings(abstract, shardings))
  assert got['fc']['kernel'].sharding.spec == P('data')
  got = checkpoint.restore_params(tmp_path / 'init',
                                  shardings=parallel.replicated(mesh))
  assert got['fc']['kernel'].sharding == parallel.replicated(mesh)
  # A sharded save restores on one device (topology-agnostic).
  checkpoint.save_params(tmp_path / 'sharded', got, metadata=_META)
  one = checkpoint.restore_params(tmp_path / 'sharded')
  assert len(one['fc']['kernel'].sharding.device_set) == 1
  _assert_tree_equal(one, params)


def test_shape_mismatch_names_first_path_and_shapes(tmp_path):
  params = {'encoder_layer_0': {'mlp': {
      'fc1': {'kernel': jnp.zeros((64, 256)), 'bias': jnp.zeros(256)},
      'fc2': {'kernel': jnp.zeros((256, 64))}}}}
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  target = jax.eval_shape(lambda: params)
  fc1 = target['encoder_layer_0']['mlp']['fc1']
  fc1['kernel'] = jax.ShapeDtypeStruct((64, 512), jnp.float32)
  fc1['bias'] = jax.ShapeDtypeStruct((512,), jnp.float32)
  with pytest.raises(ValueError) as e:
    checkpoint.restore_params(tmp_path / 'init', abstract_params=target)
  # 'bias' sorts before 'kernel' but 'fc1/bias' is the first leaf that differs.
  assert ("'encoder_layer_0/mlp/fc1/bias' does not match: checkpoint has "
          '(256,), target expects (512,)') in str(e.value)
  del fc1['bias']
  with pytest.raises(ValueError, match=r"'encoder_layer_0/mlp/fc1/kernel' .* "
                     r'checkpoint has \(64, 256\), target expects \(64, 512\)'):
    checkpoint.restore_params(tmp_path / 'init', abstract_params=target)
  target = jax.eval_shape(lambda: params)
  del target['encoder_layer_0']['mlp']['fc1']['bias']
  with pytest.raises(ValueError, match="checkpoint has parameter "
                     "'encoder_layer_0/mlp/fc1/bias' of shape"):
    checkpoint.restore_params(tmp_path / 'init', abstract_params=target)
  target = jax.eval_shape(lambda: params)
  target['head'] = jax.ShapeDtypeStruct((3,), jnp.float32)
  with pytest.raises(ValueError, match="expects parameter 'head' of shape "
                     r'\(3,\) but the checkpoint has no such leaf'):
    checkpoint.restore_params(tmp_path / 'init', abstract_params=target)


def test_overwrite(tmp_path, monkeypatch):
  path = tmp_path / 'init'
  old = {'w': jnp.zeros(3)}
  checkpoint.save_params(path, old, metadata={'v': 1})
  with pytest.raises(FileExistsError, match=str(path)):
    checkpoint.save_params(path, {'w': jnp.ones(3)}, metadata={'v': 2})
  before = _snapshot(path)

  real_write = checkpoint_params._write_params

  def write_then_fail(directory, tree, metadata):
    real_write(directory, tree, metadata)  # complete, then die before swap
    raise OSError('disk full')

  def fail_inside_orbax(self, *args, **kwargs):
    raise OSError('disk full')

  for name, patch in [('_write_params', write_then_fail)]:
    monkeypatch.setattr(checkpoint_params, name, patch)
    with pytest.raises(OSError, match='disk full'):
      checkpoint.save_params(path, {'w': jnp.ones(3)}, metadata={'v': 2},
                             overwrite=True)
    monkeypatch.undo()
  import orbax.checkpoint as ocp  # failure in the middle of orbax's writes
  monkeypatch.setattr(ocp.JsonCheckpointHandler, 'async_save',
                      fail_inside_orbax)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, 'save', fail_inside_orbax)
  with pytest.raises(OSError, match='disk full'):
    checkpoint.save_params(path, {'w': jnp.ones(3)}, metadata={'v': 2},
                           overwrite=True)
  monkeypatch.undo()

  assert _snapshot(path) == before
  # A failed orbax save may still be flushing into its tmp dir while we clean
  # up; such a leftover is never mistaken for the checkpoint and the next save
  # removes it.
  assert all(p.name == 'init' or p.name.startswith('init.logah-tmp')
             for p in tmp_path.iterdir())
  _assert_tree_equal(checkpoint.restore_params(path), old)
  checkpoint.save_params(path, {'w': jnp.ones(3)}, metadata={'v': 2},
                         overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['init']
  assert checkpoint.read_metadata(path) == {'v': 2}
  _assert_tree_equal(checkpoint.restore_params(path), {'w': jnp.ones(3)})


def test_corrupt_or_foreign_directories(tmp_path):
  (tmp_path / 'random').mkdir()
  (tmp_path / 'random' / 'notes.txt').write_text('hello')
  for fn in (checkpoint.restore_params, checkpoint.read_metadata):
    with pytest.raises(ValueError, match=f'{tmp_path}/random is not a params'):
      fn(tmp_path / 'random')
  with pytest.raises(FileNotFoundError, match='missing'):
    checkpoint.restore_params(tmp_path / 'missing')

  params = {'w': jnp.arange(100.0)}
  checkpoint.save_params(tmp_path / 'a', params, metadata=_META)
  (tmp_path / 'a' / 'params' / 'manifest.ocdbt').unlink()
  with pytest.raises(ValueError, match=f'{tmp_path}/a is not a readable'):
    checkpoint.restore_params(tmp_path / 'a')
  checkpoint.save_params(tmp_path / 'b', params, metadata=_META)
  for f in (tmp_path / 'b' / 'params' / 'd').iterdir():
    f.write_bytes(f.read_bytes()[:5])
  with pytest.raises(ValueError, match=f'{tmp_path}/b is not a readable'):
    checkpoint.restore_params(tmp_path / 'b')
  checkpoint.save_params(tmp_path / 'c', params, metadata=_META)
  (tmp_path / 'c' / 'metadata' / 'metadata').write_text('{"arch": ')
  with pytest.raises(ValueError, match=f'{tmp_path}/c is not a readable'):
    checkpoint.read_metadata(tmp_path / 'c')


def _docstring_snippet() -> str:
  lines = checkpoint.__doc__.splitlines()
  start = next(i for i, l in enumerate(lines) if 'import json, jax, orbax' in l)
  end = next(i for i, l in enumerate(lines) if 'logits = model.apply' in l)
  return textwrap.dedent('\n'.join(lines[start:end + 1]))


def _plain_orbax_restore(path, model, x):
  """Runs the module docstring's snippet with orbax, jax and flax only."""
  namespace = {'path': str(path), 'model': model, 'x': x}
  exec(_docstring_snippet(), namespace)  # pylint: disable=exec-used
  return namespace['variables'], namespace['metadata'], namespace['logits']


def test_plain_orbax_snippet_restores_without_logah_jax(tmp_path):
  model, x = _Mlp(), jnp.ones((2, 8))
  params = model.init(jax.random.key(1), x)['params']
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  snippet = _docstring_snippet()
  assert 'logah_jax' not in snippet and 'ocp.StandardCheckpointer' in snippet
  variables, metadata, logits = _plain_orbax_restore(tmp_path / 'init', model,
                                                     x)
  assert set(metadata.pop('checksums')) == {
      'fc1/kernel', 'fc1/bias', 'fc2/kernel', 'fc2/bias'}
  assert metadata == _META
  _assert_tree_equal(variables, {'params': params})
  np.testing.assert_allclose(logits, model.apply({'params': params}, x),
                             rtol=1e-6)
