"""Damaged checkpoints: detected on restore, moved aside, never deleted."""

import os
import shutil

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from logah_jax import checkpoint
from logah_jax import checksums
from logah_jax import parallel
from logah_jax.validation import ConfigError, InputNotFoundError

_ABSTRACT = {'w': jax.ShapeDtypeStruct((4096,), jnp.float32),
             'b': jax.ShapeDtypeStruct((3, 4), jnp.float32)}


def _tree(step):
  return {'w': jnp.arange(4096.0) * step, 'b': jnp.full((3, 4), float(step))}


def _largest(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def _garble(path):
  data = bytearray(open(path, 'rb').read())
  mid = len(data) // 2
  data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
  open(path, 'wb').write(bytes(data))


# Each damage leaves files a restore must refuse; orbax itself misses
# 'garble_array' (garbled array bytes still decode), the checksums catch it.
DAMAGE = {
    'garble_array': lambda step: _garble(_largest(step / 'state' / 'ocdbt.process_0' / 'd')),
    'truncate_array': lambda step: os.truncate(
        _largest(step / 'state' / 'ocdbt.process_0' / 'd'), 50),
    'missing_array': lambda step: os.remove(
        _largest(step / 'state' / 'ocdbt.process_0' / 'd')),
    'missing_tree_metadata': lambda step: os.remove(step / 'state' / '_METADATA'),
    'garble_extra': lambda step: (step / 'extra' / 'metadata').write_text('{"st'),
    'missing_state': lambda step: shutil.rmtree(step / 'state'),
}


def _two_steps(directory):
  with checkpoint.CheckpointManager(directory, async_save=False) as mngr:
    for step in (1, 2):
      mngr.save(step, _tree(step), extra={'step': step})


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_latest_step_is_moved_aside(tmp_path, damage, caplog):
  _two_steps(tmp_path)
  DAMAGE[damage](tmp_path / '2')
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    state, extra = mngr.restore(abstract_state=_ABSTRACT, repair=True)
    assert mngr.restored_step == 1 and extra == {'step': 1}
    np.testing.assert_array_equal(state['w'], np.arange(4096.0))
    assert mngr.all_steps() == [1]
  assert 'checkpoint step 2 is damaged, moved to' in caplog.text
  assert (tmp_path / 'corrupt' / '2' / 'state').exists() or (
      damage == 'missing_state' and (tmp_path / 'corrupt' / '2').exists())
  # the run goes on: step 2 can be written again beside the moved copy
  with checkpoint.CheckpointManager(tmp_path, async_save=False) as mngr:
    mngr.save(2, _tree(2), extra={'step': 2})
    _, extra = mngr.restore(abstract_state=_ABSTRACT, repair=True)
    assert extra == {'step': 2}


def test_reader_skips_without_moving_and_named_step_fails(tmp_path):
  _two_steps(tmp_path)
  DAMAGE['garble_array'](tmp_path / '2')
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    _, extra = mngr.restore(abstract_state=_ABSTRACT)  # repair=False
    assert extra == {'step': 1} and mngr.all_steps() == [1, 2]
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=f"{tmp_path}/2: the values of w do not match"):
      mngr.restore(2, abstract_state=_ABSTRACT)
  assert not (tmp_path / 'corrupt').exists()


def test_every_step_damaged(tmp_path):
  _two_steps(tmp_path)
  for step in ('1', '2'):
    DAMAGE['truncate_array'](tmp_path / step)
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    with pytest.raises(InputNotFoundError,
                       match=r'no intact checkpoint .* steps \[2, 1\]'):
      mngr.restore(abstract_state=_ABSTRACT, repair=True)
  assert sorted(os.listdir(tmp_path / 'corrupt')) == ['1', '2']


def test_same_step_damaged_twice_keeps_both_copies(tmp_path):
  for _ in range(2):
    _two_steps(tmp_path)
    DAMAGE['garble_array'](tmp_path / '2')
    with checkpoint.CheckpointManager(tmp_path) as mngr:
      mngr.restore(abstract_state=_ABSTRACT, repair=True)
  assert sorted(os.listdir(tmp_path / 'corrupt')) == ['2', '2.1']


# ------------------------------------------------------------ saved inits

_META = {'arch': 'test'}


@pytest.mark.parametrize('damage', ['garble', 'truncate', 'missing'])
def test_damaged_init_is_refused(tmp_path, damage):
  checkpoint.save_params(tmp_path / 'init', {'w': jnp.arange(4096.0)},
                         metadata=_META)
  data = _largest(tmp_path / 'init' / 'params' / 'ocdbt.process_0' / 'd')
  {'garble': _garble, 'truncate': lambda p: os.truncate(p, 50),
   'missing': os.remove}[damage](data)
  with pytest.raises(checkpoint.CorruptCheckpointError,
                     match=f'{tmp_path}/init'):
    checkpoint.restore_params(tmp_path / 'init')
  assert checkpoint.read_metadata(tmp_path / 'init') == _META


def test_nan_in_saved_init_names_the_parameter(tmp_path):
  params = {'dense': {'kernel': jnp.ones((4, 4)).at[1, 2].set(jnp.nan),
                      'bias': jnp.zeros(4)}}
  checkpoint.save_params(tmp_path / 'init', params, metadata=_META)
  with pytest.raises(ConfigError, match=r'init: parameter dense/kernel holds '
                     'NaN or Inf'):
    checkpoint.restore_params(tmp_path / 'init')


# -------------------------------------------------------------- checksums


def _numpy_checksum(x: np.ndarray) -> int:
  """The documented checksum, computed with Python integers."""
  bits = np.ascontiguousarray(x).reshape(-1).view(np.uint32).astype(object)
  total = 0
  for i, b in enumerate(bits):
    total += int(b) * ((i * 0x9E3779B1 + 0x7F4A7C15) % 2**32)
  return (total % 2**32) ^ len(bits)


def test_checksum_matches_numpy_and_ignores_sharding():
  x = np.random.default_rng(0).standard_normal((8, 24)).astype(np.float32)
  expected = _numpy_checksum(x)
  assert checksums.tree_checksums({'x': jnp.asarray(x)}) == {'x': expected}
  mesh = parallel.make_mesh({'data': -1})
  split = jax.device_put(x, NamedSharding(mesh, P(parallel.DATA)))
  assert checksums.tree_checksums({'x': split}) == {'x': expected}


def _mixed_tree():
  rng = np.random.default_rng(1)
  return {'f32': rng.standard_normal((300, 7)).astype(np.float32),
          'bf16': jnp.asarray(rng.standard_normal(1000), jnp.bfloat16),
          'i8': rng.integers(-128, 127, 999).astype(np.int8),
          'u16': rng.integers(0, 65535, 77).astype(np.uint16),
          'mask': rng.random(50) > 0.5, 'i32': jnp.arange(10),
          'key': jax.random.key(3), 'scalar': np.float32(2.5)}


def test_host_checksums_equal_the_device_program(monkeypatch):
  """CPU-held leaves are summed with NumPy in chunks; every dtype and a leaf
  spanning many chunks give the device program's value."""
  tree = _mixed_tree()
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  device = jax.device_get(checksums._sums([x for _, x in flat]))  # pylint: disable=protected-access
  want = {jax.tree_util.keystr(p, simple=True, separator='/'): int(s)
          for (p, _), s in zip(flat, device)}
  monkeypatch.setattr(checksums, '_HOST_CHUNK', 64)
  def no_device_call(leaves):
    raise AssertionError(f'{len(leaves)} CPU leaves sent to the device')
  monkeypatch.setattr(checksums, '_sums', no_device_call)
  assert checksums.tree_checksums(tree) == want
  assert want['f32'] == _numpy_checksum(tree['f32'])


def test_leaves_off_the_host_go_through_the_device_program(monkeypatch):
  """As on an accelerator: every leaf takes the device path, with the same
  checksums and the same non-finite paths as the host path."""
  tree = _mixed_tree()
  tree['f32'][5, 1] = np.inf
  want_sums = checksums.tree_checksums(tree)
  want_bad = checksums.nonfinite_leaves(tree)
  monkeypatch.setattr(checksums, '_host_array', lambda x: None)
  assert checksums.tree_checksums(tree) == want_sums
  assert checksums.nonfinite_leaves(tree) == want_bad == ['f32']


def test_nonfinite_leaves_found_in_any_chunk(monkeypatch):
  monkeypatch.setattr(checksums, '_HOST_CHUNK', 64)
  tree = _mixed_tree()
  assert not checksums.nonfinite_leaves(tree)
  tree['f32'][200, 3] = np.nan  # in the tenth chunk
  tree['bf16'] = tree['bf16'].at[999].set(jnp.inf)
  tree['ok'] = np.ones(130, np.float32)
  assert checksums.nonfinite_leaves(tree) == ['bf16', 'f32']


def test_checksum_sees_a_bit_flip_and_a_swap():
  x = np.arange(64, dtype=np.float32)
  base = checksums.tree_checksums([x])
  flipped = x.copy().view(np.uint32)
  flipped[10] ^= 1
  swapped = x.copy()
  swapped[[3, 4]] = swapped[[4, 3]]
  assert checksums.tree_checksums([flipped.view(np.float32)]) != base
  assert checksums.tree_checksums([swapped]) != base
  assert checksums.mismatches({'0': base['0']}, [swapped]) == ['0']
