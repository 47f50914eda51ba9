"""logah_jax.checkpoint's predicted and grown inits (params only): round
trips, sharded restores, shape errors, overwriting, and the plain-orbax
snippet of its docstring."""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from logah_jax import checkpoint
from logah_jax.checkpoint import params as checkpoint_params
from logah_jax import parallel
from checkpoint_checks import assert_tree_equal
from checkpoint_checks import snapshot

needs_8 = pytest.mark.skipif(jax.device_count() < 8,
                             reason='needs 8 devices (set by conftest.py)')


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
  assert_tree_equal(
      checkpoint.restore_params(tmp_path / 'init', abstract_params=abstract),
      params)
  assert_tree_equal(checkpoint.restore_params(tmp_path / 'init'), params)


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
  assert_tree_equal(got, params)
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
  assert_tree_equal(one, params)


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


def test_a_target_of_another_dtype_gets_the_stored_values_cast(tmp_path):
  """Each leaf is read in its stored dtype, checked against its checksum,
  then cast. Before, orbax cast on read and the checksums of the stored
  values then called the files garbled (CorruptCheckpointError)."""
  values = np.linspace(-3, 3, 8, dtype=np.float32).reshape(4, 2)
  params = {'fc': {'kernel': jnp.asarray(values, jnp.bfloat16),
                   'bias': jnp.asarray(values[0])}}
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  target = {'fc': {'kernel': jax.ShapeDtypeStruct((4, 2), jnp.float32),
                   'bias': jax.ShapeDtypeStruct((2,), jnp.bfloat16)}}
  got = checkpoint.restore_params(tmp_path / 'init', abstract_params=target)
  assert got['fc']['kernel'].dtype == jnp.float32
  assert got['fc']['bias'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(  # bfloat16 -> float32 is exact
      got['fc']['kernel'], np.asarray(params['fc']['kernel'], np.float32))
  np.testing.assert_array_equal(np.asarray(got['fc']['bias'], np.float32),
                                np.asarray(params['fc']['bias'].astype(
                                    jnp.bfloat16), np.float32))


@needs_8
def test_a_sharding_that_cannot_split_a_leaf_names_it(tmp_path):
  params = {'wte': jnp.zeros((50257, 8)), 'b': jnp.zeros(8)}
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  split = NamedSharding(parallel.make_mesh(), P('data'))
  with pytest.raises(ValueError) as e:
    checkpoint.restore_params(tmp_path / 'init', shardings=split)
  assert not isinstance(e.value, checkpoint.CorruptCheckpointError)
  assert ("parameter 'wte' of shape (50257, 8) cannot be split as "
          "P('data',) on the mesh {'data': 8}") in str(e.value)


def test_overwrite(tmp_path, monkeypatch):
  path = tmp_path / 'init'
  old = {'w': jnp.zeros(3)}
  checkpoint.save_params(path, old, metadata={'v': 1})
  with pytest.raises(FileExistsError, match=str(path)):
    checkpoint.save_params(path, {'w': jnp.ones(3)}, metadata={'v': 2})
  before = snapshot(path)

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

  assert snapshot(path) == before
  # A failed orbax save may still be flushing into its tmp dir while we clean
  # up; such a leftover is never mistaken for the checkpoint and the next save
  # removes it.
  assert all(p.name == 'init' or p.name.startswith('init.logah-tmp')
             for p in tmp_path.iterdir())
  assert_tree_equal(checkpoint.restore_params(path), old)
  checkpoint.save_params(path, {'w': jnp.ones(3)}, metadata={'v': 2},
                         overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['init']
  assert checkpoint.read_metadata(path) == {'v': 2}
  assert_tree_equal(checkpoint.restore_params(path), {'w': jnp.ones(3)})


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
  assert_tree_equal(variables, {'params': params})
  np.testing.assert_allclose(logits, model.apply({'params': params}, x),
                             rtol=1e-6)

