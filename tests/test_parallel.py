"""Tests for logah_jax.parallel on 8 fake CPU devices (see conftest.py)."""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from logah_jax import parallel
from logah_jax.parallel import distributed
from logah_jax.validation import ConfigError

needs_8 = pytest.mark.skipif(jax.device_count() < 8,
                             reason='needs 8 devices (set by conftest.py)')


@needs_8
def test_default_mesh_is_one_auto_data_axis():
  mesh = parallel.make_mesh()
  assert dict(mesh.shape) == {'data': 8}
  assert mesh.axis_types == (AxisType.Auto,)


@needs_8
@pytest.mark.parametrize('axes, shape', [
    ({'data': -1, 'model': 2}, {'data': 4, 'model': 2}),
    ({'data': 2, 'model': -1}, {'data': 2, 'model': 4}),
    ({'data': 8}, {'data': 8}),
])
def test_mesh_rest_axis(axes, shape):
  assert dict(parallel.make_mesh(axes).shape) == shape


@needs_8
@pytest.mark.parametrize('axes', [
    {'data': 3}, {'data': 4, 'model': 4}, {'data': -1, 'model': 3},
    {'data': -1, 'model': -1}, {'data': 0, 'model': -1},
])
def test_mesh_validation_names_axes_and_devices(axes):
  with pytest.raises(ValueError, match='mesh axes') as e:
    parallel.make_mesh(axes)
  assert '8' in str(e.value)


def test_mesh_over_given_devices():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  assert dict(mesh.shape) == {'data': 1}


@needs_8
def test_shard_batch_places_leading_axis_over_data():
  mesh = parallel.make_mesh({'data': 4, 'model': 2})
  batch = {'images': np.ones((8, 3, 3), np.float32),
           'labels': np.arange(8)}
  out = parallel.shard_batch(mesh, batch)
  for x in jax.tree.leaves(out):
    assert x.sharding == NamedSharding(mesh, P('data'))
    assert len({s.index[0].start for s in x.addressable_shards}) == 4
  np.testing.assert_array_equal(out['labels'], np.arange(8))


@needs_8
def test_shard_batch_divisibility_error_names_leaf():
  mesh = parallel.make_mesh()
  batch = {'images': np.ones((16, 2)), 'labels': np.ones((6,))}
  with pytest.raises(ValueError, match="'labels' of shape \\(6,\\).*8"):
    parallel.shard_batch(mesh, batch)


@needs_8
def test_fsdp_shards_big_leaves_on_largest_divisible_dim():
  mesh = parallel.make_mesh()
  abstract = {
      'big': jax.ShapeDtypeStruct((12, 4096), jnp.float32),  # 192 KiB
      'tall': jax.ShapeDtypeStruct((4096, 12), jnp.float32),
      'odd': jax.ShapeDtypeStruct((4097, 13), jnp.float32),  # nothing divides
      'small': jax.ShapeDtypeStruct((16, 16), jnp.float32),
  }
  sh = parallel.param_shardings(mesh, abstract, rule='fsdp', min_size_mb=0.1)
  assert sh['big'].spec == P(None, 'data')
  assert sh['tall'].spec == P('data')
  assert sh['odd'].spec == P()
  assert sh['small'].spec == P()
  rep = parallel.param_shardings(mesh, abstract)
  assert all(s.spec == P() for s in jax.tree.leaves(rep))
  with pytest.raises(ValueError, match="'zero'"):
    parallel.param_shardings(mesh, abstract, rule='zero')


@needs_8
def test_with_shardings_builds_restore_targets():
  mesh = parallel.make_mesh()
  abstract = {'w': jax.ShapeDtypeStruct((8, 2), jnp.float32)}
  one = parallel.with_shardings(abstract, parallel.replicated(mesh))
  assert one['w'].sharding == parallel.replicated(mesh)
  tree = parallel.with_shardings(abstract, {'w': parallel.data_sharded(mesh)})
  assert tree['w'].sharding.spec == P('data')
  assert parallel.data_sharded(mesh, 1).spec == P(None, 'data')


@needs_8
def test_jit_with_shardings_matches_one_device():
  def step(w, x):
    h = jnp.tanh(x @ w)
    return h @ w.T, jnp.mean(h ** 2)

  rng = np.random.default_rng(0)
  w = rng.normal(size=(16, 32)).astype(np.float32)
  x = rng.normal(size=(24, 16)).astype(np.float32)
  want = jax.jit(step)(w, x)

  mesh = parallel.make_mesh()
  w_sh = parallel.param_shardings(
      mesh, jax.ShapeDtypeStruct(w.shape, w.dtype), rule='fsdp', min_size_mb=0)
  x_sh = parallel.data_sharded(mesh)
  sharded = jax.jit(step, in_shardings=(w_sh, x_sh),
                    out_shardings=(x_sh, parallel.replicated(mesh)))
  got = sharded(jax.device_put(w, w_sh), parallel.shard_batch(mesh, x))
  assert got[0].sharding.spec == P('data')
  assert len(got[0].sharding.device_set) == 8
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


def test_maybe_initialize_gated_by_env(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  assert not distributed.maybe_initialize({})
  assert not distributed.maybe_initialize({'LOGAH_JAX_DISTRIBUTED': '0'})
  assert calls == []
  assert distributed.maybe_initialize({'LOGAH_JAX_DISTRIBUTED': '1'})
  assert calls == [{}]
  env = {'LOGAH_JAX_DISTRIBUTED': '1', 'LOGAH_COORDINATOR': 'h0:1234',
         'LOGAH_NUM_PROCESSES': '4', 'LOGAH_PROCESS_ID': '2'}
  assert distributed.maybe_initialize(env)
  assert calls[-1] == {'coordinator_address': 'h0:1234', 'num_processes': 4,
                       'process_id': 2}
  # a ConfigError: main prints one line, not a traceback
  with pytest.raises(ConfigError, match="^LOGAH_PROCESS_ID='two' is not an "
                     'integer$'):
    distributed.maybe_initialize({**env, 'LOGAH_PROCESS_ID': 'two'})
  assert distributed.is_main_process()


def test_maybe_initialize_skips_when_already_initialized(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: True)
  assert distributed.maybe_initialize({'LOGAH_JAX_DISTRIBUTED': '1'})
  assert calls == []
