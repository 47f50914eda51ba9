"""Tests for logah_jax.checkpoint's training checkpoints (params, optimizer
state and extras); the params-only inits are in test_checkpoint_params.py."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from logah_jax import checkpoint
from checkpoint_checks import assert_tree_equal
from checkpoint_checks import snapshot

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


def test_round_trip_params_opt_state_and_ints(tmp_path):
  state = _state()
  with checkpoint.CheckpointManager(tmp_path, async_save=False) as mngr:
    assert mngr.save(1, state, extra={'epoch': 2})
    restored, extra = mngr.restore(1, abstract_state=_abstract(state))
  assert_tree_equal(restored, state)
  assert isinstance(restored['opt_state'][1][0], optax.ScaleByAdamState)
  assert restored['count'].shape == () and restored['count'] == 7
  assert extra == {'epoch': 2}
  # The state itself (concrete arrays) also works as the target.
  with checkpoint.CheckpointManager(tmp_path) as mngr:
    assert_tree_equal(mngr.restore(1, abstract_state=state)[0], state)


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
  assert_tree_equal(checkpoint.restore_params(tmp_path / 'init'), zeros)


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


def test_a_target_of_another_dtype_is_refused_and_the_step_kept(tmp_path):
  """orbax would cast to the target's dtype, and the checksums of the stored
  values would then call the sound step garbled and move it aside."""
  with checkpoint.CheckpointManager(tmp_path, async_save=False) as m:
    m.save(1, {'w': jnp.arange(4.0)})
  with checkpoint.CheckpointManager(tmp_path) as m:
    with pytest.raises(ValueError, match=r"'w' is stored as float32 but the "
                       'target expects bfloat16'):
      m.restore(abstract_state={'w': jax.ShapeDtypeStruct((4,), jnp.bfloat16)},
                repair=True)
  assert sorted(os.listdir(tmp_path)) == ['1']


def test_a_read_that_fails_for_memory_or_network_keeps_every_step(
    tmp_path, monkeypatch):
  """Out of memory or a network time-out is raised as it is; only damage
  to the files moves a step aside."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with checkpoint.CheckpointManager(tmp_path, async_save=False) as m:
    for step in (1, 2):
      m.save(step, {'w': jnp.arange(4.0)}, force=True)
  target = {'w': jax.ShapeDtypeStruct((4,), jnp.float32)}
  for error in (RuntimeError('RESOURCE_EXHAUSTED: Out of memory while '
                             'trying to allocate 3.1GiB'),
                ValueError('DEADLINE_EXCEEDED: reading gs://b/1/state'),
                MemoryError()):
    def fail(*args, error=error, **kwargs):
      raise error
    monkeypatch.setattr(ocp.CheckpointManager, 'restore', fail)
    with checkpoint.CheckpointManager(tmp_path) as m:
      with pytest.raises(type(error)):
        m.restore(abstract_state=target, repair=True)
    assert sorted(os.listdir(tmp_path)) == ['1', '2']
  monkeypatch.undo()
  with checkpoint.CheckpointManager(tmp_path) as m:
    state, _ = m.restore(abstract_state=target)
  np.testing.assert_array_equal(state['w'], np.arange(4.0))


def test_config_mismatch_names_key_and_touches_nothing(tmp_path):
  config = {'model': {'width': 64, 'depth': 2}, 'lr': 1e-3, 'workdir': 'a'}
  with checkpoint.CheckpointManager(tmp_path, config=config) as mngr:
    mngr.save(1, {'w': jnp.zeros(2)})
  assert json.loads((tmp_path / 'config.json').read_text()) == config
  before = snapshot(tmp_path)
  changed = {**config, 'model': {'width': 128, 'depth': 2}}
  with pytest.raises(ValueError) as e:
    checkpoint.CheckpointManager(tmp_path, config=changed)
  assert str(tmp_path) in str(e.value)
  assert "'model.width'" in str(e.value) and '64' in str(e.value)
  assert '128' in str(e.value)
  assert snapshot(tmp_path) == before
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


def test_config_without_checkpoints_is_replaced(tmp_path):
  """An attempt that stopped before its first save (a NaN at step 2, say)
  binds nothing: the corrected config starts there; one save binds it."""
  with checkpoint.CheckpointManager(tmp_path, config={'lr': 1e30}):
    pass
  (tmp_path / 'corrupt' / '2').mkdir(parents=True)  # a step moved aside
  with checkpoint.CheckpointManager(tmp_path, config={'lr': 1e-3},
                                    async_save=False) as mngr:
    assert mngr.latest_step() is None
    mngr.save(1, {'w': jnp.zeros(3)})
  assert json.loads((tmp_path / 'config.json').read_text()) == {'lr': 1e-3}
  with pytest.raises(ValueError, match="'lr' is 0.001 there but 1e\\+30 now"):
    checkpoint.CheckpointManager(tmp_path, config={'lr': 1e30})
  assert json.loads((tmp_path / 'config.json').read_text()) == {'lr': 1e-3}


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


