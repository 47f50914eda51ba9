"""The optimizer recipe and the guarded update: clipping against optax."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from logah_jax.train import optim
from logah_jax.train import state as state_lib

import configs_for_tests as cft


def _tree(scale):
  rng = np.random.default_rng(0)
  return {'a': jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
          'b': {'c': jnp.asarray(scale * rng.normal(size=(5,)), jnp.float32)}}


def _opt(clip_norm):
  return ml_collections.ConfigDict(dict(
      name='adamw', lr=1e-2, schedule='constant', warmup_steps=0,
      warmup_init=0.0, end_lr=0.0, weight_decay=1e-2, clip_norm=clip_norm,
      b1=0.9, b2=0.999, eps=1e-8, momentum=0.9))


@pytest.mark.parametrize('scale', [0.01, 10.0], ids=['below', 'above'])
@pytest.mark.parametrize('given', [False, True], ids=['measured', 'given'])
def test_clip_equals_numpy_rescaling(scale, given):
  grads = _tree(scale)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
  norm = np.sqrt(sum((x ** 2).sum() for x in leaves))
  tx = optim.clip_by_global_norm(1.0)
  extra = {'grad_norm': optax.tree.norm(grads)} if given else {}
  got, state = tx.update(grads, tx.init(grads), **extra)
  factor = min(1.0, 1.0 / norm)
  for g, w in zip(jax.tree.leaves(got), leaves):
    np.testing.assert_allclose(np.asarray(g), w * factor, rtol=1e-6)
  # the same (empty) state as optax's, so checkpoints keep their tree
  want_state = optax.clip_by_global_norm(1.0).init(grads)
  assert jax.tree.structure(state) == jax.tree.structure(want_state)


def test_guarded_update_equals_optax_chain_and_measures_the_norm_once():
  params, grads = _tree(1.0), _tree(10.0)  # norm ~ 40: clipping is active
  tx, _ = optim.make_optimizer(_opt(clip_norm=1.0), 10)
  state = state_lib.fresh(tx, params)

  def update(state, grads):
    return state_lib.guarded_update(state, grads, jnp.float32(1.0), tx)

  new, metrics = jax.jit(update)(state, grads)
  ref = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(1e-2, weight_decay=1e-2))
  updates, _ = ref.update(grads, ref.init(params), params)
  want = optax.apply_updates(params, updates)
  for g, w in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)
  np.testing.assert_allclose(float(metrics['grad_norm']),
                             float(optax.tree.norm(grads)), rtol=1e-6)
  # one sum of squares per leaf: the clip reuses the guard's norm
  jaxpr = jax.make_jaxpr(update)(state, grads)
  text = str(jaxpr)
  assert text.count('reduce_sum') == len(jax.tree.leaves(grads)), text


def test_guarded_update_keeps_the_state_on_a_non_finite_norm():
  params = _tree(1.0)
  grads = jax.tree.map(lambda x: x.at[0].set(jnp.inf), _tree(1.0))
  tx, _ = optim.make_optimizer(_opt(clip_norm=1.0), 10)
  state = state_lib.fresh(tx, params)
  new, metrics = jax.jit(
      lambda s, g: state_lib.guarded_update(s, g, jnp.float32(1.0), tx))(
          state, grads)
  assert not bool(metrics['finite']) and int(new.step) == 0
  for g, w in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_sgd_momentum_outside_its_range_is_refused():
  opt = _opt(0.0)
  opt.name = 'sgd'
  for bad in (-0.5, 1.0):
    opt.momentum = bad
    with pytest.raises(ValueError, match=rf'optim\.momentum={bad} must be in'):
      optim.make_optimizer(opt, 10)
  opt.momentum = 0.0  # plain SGD
  optim.make_optimizer(opt, 10)


def test_schedule_warms_up_then_decays_and_checks_fields():
  sched = optim.schedule(lr=3e-4, num_steps=100, warmup_steps=10,
                         warmup_init=1e-5)
  np.testing.assert_allclose(float(sched(0)), 1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(sched(10)), 3e-4, rtol=1e-5)
  np.testing.assert_allclose(float(sched(55)), 1.5e-4, rtol=1e-2)
  assert float(sched(100)) < 1e-8
  # every step against the closed form, with a floor: linear warm-up, then
  # end + (lr - end) (1 + cos(pi (s - w) / (N - w))) / 2
  sched = optim.schedule(lr=3e-4, num_steps=100, warmup_steps=10,
                         warmup_init=1e-5, end_lr=2e-5)
  s = np.arange(101)
  want = np.where(
      s < 10, 1e-5 + (3e-4 - 1e-5) * s / 10,
      2e-5 + (3e-4 - 2e-5) * 0.5 * (1 + np.cos(np.pi * (s - 10) / 90)))
  np.testing.assert_allclose([float(sched(i)) for i in s], want, rtol=1e-5)
  with pytest.raises(ValueError, match='optim.schedule'):
    optim.schedule(lr=1.0, num_steps=10, kind='linear')
  bad = cft.optim_section()
  bad.name = 'lamb'
  with pytest.raises(ValueError, match='optim.name'):
    optim.make_optimizer(bad, 10)
