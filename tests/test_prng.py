"""The fused threefry keys: jax.random's values, without the CPU while loop."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logah_jax import arch, ghn, models, prng
from logah_jax.arch import graph
from logah_jax.ghn import api as ghn_api
from logah_jax.ghn import plan, writeback
from logah_jax.inits import orthogonal

DRAWS = {
    'normal': lambda k, s: jax.random.normal(k, s),
    'normal_bf16': lambda k, s: jax.random.normal(k, s, jnp.bfloat16),
    'uniform': lambda k, s: jax.random.uniform(k, s, minval=-2.0, maxval=3.0),
    'truncated_normal': lambda k, s: jax.random.truncated_normal(k, -2.0, 2.0,
                                                                 s),
    'bits8': lambda k, s: jax.random.bits(k, s, jnp.uint8),
    'bits16': lambda k, s: jax.random.bits(k, s, jnp.uint16),
    'bits32': lambda k, s: jax.random.bits(k, s, jnp.uint32),
}


@pytest.mark.parametrize('draw', sorted(DRAWS))
@pytest.mark.parametrize('shape', [(), (0, 3), (5, 1, 9), (64, 130)])
def test_every_draw_is_bit_identical_to_jax_random(draw, shape):
  key = jax.random.fold_in(jax.random.key(42), 7)
  want = jax.jit(lambda k: DRAWS[draw](k, shape))(key)
  got = jax.jit(lambda k: DRAWS[draw](prng.fused_threefry(k), shape))(key)
  assert got.dtype == want.dtype and got.shape == want.shape
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_non_partitionable_threefry_falls_back_to_jax():
  key = jax.random.key(1)
  with jax.threefry_partitionable(False):
    want = jax.random.normal(key, (5, 7))
    got = jax.random.normal(prng.fused_threefry(key), (5, 7))
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(want, jax.random.normal(key, (5, 7)))


def test_split_fold_in_and_vmap_keep_the_values():
  key = jax.random.key(3)
  fused = prng.fused_threefry(key)
  for a, b in zip(jax.random.split(key, 3), jax.random.split(fused, 3)):
    np.testing.assert_array_equal(jax.random.normal(a, (4, 6)),
                                  jax.random.normal(b, (4, 6)))
  draw = lambda k, i: jax.random.normal(jax.random.fold_in(k, i), (3, 11))
  ids = jnp.arange(5)
  np.testing.assert_array_equal(
      jax.jit(jax.vmap(lambda i: draw(key, i)))(ids),
      jax.jit(jax.vmap(lambda i: draw(fused, i)))(ids))


def test_threefry_rounds_match_jax_on_raw_counters():
  """The hash itself, on arbitrary words (not only element indices)."""
  rng = np.random.default_rng(0)
  k0, k1 = (jnp.uint32(v) for v in rng.integers(0, 2**32, 2, dtype=np.uint64))
  x0, x1 = (jnp.asarray(rng.integers(0, 2**32, 1000, dtype=np.uint64),
                        jnp.uint32) for _ in range(2))
  want = jax.extend.random.threefry_2x32(jnp.stack([k0, k1]),
                                         jnp.concatenate([x0, x1]))
  got = jax.jit(prng.threefry2x32)(k0, k1, x0, x1)
  np.testing.assert_array_equal(np.concatenate(got), want)


def test_the_cpu_program_has_no_while_loop():
  """What makes it faster: jax's threefry is a rolled loop on CPUs."""
  key = jax.random.key(0)
  loops = lambda f: re.findall(r'\bwhile\(',
                               jax.jit(f).lower(key).compile().as_text())
  assert loops(lambda k: jax.random.normal(k, (64, 64)))
  assert not loops(
      lambda k: jax.random.normal(prng.fused_threefry(k), (64, 64)))


def test_other_keys_pass_through_unchanged():
  rbg = jax.random.key(0, impl='rbg')
  assert prng.fused_threefry(rbg) is rbg
  raw = jax.random.PRNGKey(0)
  assert prng.fused_threefry(raw) is raw


def test_model_and_ghn_inits_keep_the_plain_keys_values(monkeypatch):
  cfg = arch.GPT2Config(depth=2, width=32, heads=2, vocab_size=50,
                        n_positions=16, tie_embeddings=False)
  key = jax.random.key(5)
  model, x = models.build(cfg), models.dummy_input(cfg)
  want = jax.jit(lambda k: model.init(k, x)['params'])(key)
  jax.tree.map(np.testing.assert_array_equal,
               models.init_params(cfg, key), want)
  gcfg = dataclasses.replace(ghn.named('logah-tiny'), hid=16, layers=1,
                             heads=2, rank=4)  # every kind of leaf, small
  got = ghn.init(gcfg, 'gpt2', seed=3)
  orth = orthogonal.OrthogonalInit().params(cfg, 4)
  monkeypatch.setattr(prng, 'fused_threefry', lambda k: k)  # plain keys
  want = ghn_api._init_fn.__wrapped__(gcfg, 'gpt2')(jax.random.key(3))  # pylint: disable=protected-access
  jax.tree.map(np.testing.assert_array_equal, got, want)
  jax.tree.map(np.testing.assert_array_equal, orth,
               orthogonal.OrthogonalInit().params(cfg, 4))


def test_widen_noise_is_jax_random_normal_on_the_repeats_only():
  x = jax.random.normal(jax.random.key(1), (6, 8))
  slot = graph.Slot(path=('w',), role='w', ref_shape=(6, 8))
  # rows: decoded 3 of 6; columns: two chunks of 4, each decoded 2 of 4
  sp = plan.SlotPlan(slot=slot, kind='matrix', period=(6, 8),
                     widen=((3, 1), (4, 2)), noise=0.1)
  got = jax.jit(lambda x: writeback._add_noise(x, sp, 4))(x)  # pylint: disable=protected-access
  noise = 0.1 * jnp.std(x) * jax.random.normal(
      jax.random.fold_in(jax.random.key(writeback.FILL_NOISE_KEY), 4), (6, 8))
  repeated = (np.arange(6) >= 3)[:, None] | (np.arange(8) % 4 >= 2)[None, :]
  np.testing.assert_allclose(got, np.where(repeated, x + noise, x),
                             rtol=1e-6, atol=1e-7)
  assert np.array_equal(np.asarray(got) == np.asarray(x), ~repeated)


def test_transposed_lowrank_leaf_gets_the_reference_layout_noise():
  """A low-rank leaf stored transposed (an untied GPT-2 output layer) is
  written in the Flax layout directly; its noise is still the one drawn for
  the reference layout, transposed."""
  a = jax.random.normal(jax.random.key(2), (6, 3))
  b = jax.random.normal(jax.random.key(3), (3, 8))
  slot = graph.Slot(path=('w',), role='w', ref_shape=(6, 8), to_flax=(1, 0))
  sp = plan.SlotPlan(slot=slot, kind='matrix', period=(6, 8),
                     widen=((3, 1), (4, 2)), noise=0.1)
  got = jax.jit(lambda a, b: writeback._lowrank_matrix(a, b, sp, 5))(a, b)  # pylint: disable=protected-access
  # Reference: the same leaf in the reference layout (its noise is checked
  # against jax.random above), transposed with NumPy.
  plain = dataclasses.replace(sp, slot=dataclasses.replace(slot, to_flax=None))
  want = np.asarray(jax.jit(lambda a, b: writeback._lowrank_matrix(  # pylint: disable=protected-access
      a, b, plain, 5))(a, b)).T
  quiet = np.asarray(writeback._lowrank_matrix(  # pylint: disable=protected-access
      a, b, dataclasses.replace(plain, noise=0.0), 5)).T
  repeated = (np.arange(6) >= 3)[:, None] | (np.arange(8) % 4 >= 2)[None, :]
  assert got.shape == (8, 6)
  assert np.array_equal(want != quiet, repeated.T)  # noise on repeats only
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
