"""The fused threefry keys (jax.random's values, without the CPU while loop)
and the counter-based normals of the widen fill's noise."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

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


def _numpy_counter_normal(seed, stream, size):
  """`prng.counter_normal` in NumPy uint32 / float64 arithmetic."""
  def mix(x):
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)
  key = mix((stream * 0x9E3779B9 + seed) & 0xFFFFFFFF)
  bits = mix(mix((np.arange(size, dtype=np.uint64) + key) & 0xFFFFFFFF) ^ key)
  x = (2.0 * (bits >> 9).astype(np.float64) + 1.0) / 2.0**23 - 1.0
  return np.sqrt(2.0) * scipy.special.erfinv(x)


def test_counter_normal_equals_its_numpy_reference():
  got = jax.jit(lambda s: prng.counter_normal(7, s, (300, 700)))(
      np.int32(12))
  want = _numpy_counter_normal(7, 12, 300 * 700).reshape(300, 700)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # a traced stream under vmap: one draw per stream
  batched = jax.vmap(lambda s: prng.counter_normal(7, s, (5, 4)))(
      jnp.arange(3))
  for s in range(3):
    np.testing.assert_allclose(batched[s], _numpy_counter_normal(
        7, s, 20).reshape(5, 4), rtol=1e-6, atol=1e-7)
  assert prng.counter_normal(7, 1, (2, 3), jnp.bfloat16).dtype == jnp.bfloat16


def test_erfinv_is_accurate_on_every_uniform_the_draws_use():
  k = np.arange(0, 2**23, 3, dtype=np.float64)
  x = (2.0 * k + 1.0) / 2.0**23 - 1.0  # the draws' uniforms, a third of them
  got = np.asarray(jax.jit(prng.erfinv)(x.astype(np.float32)))
  want = scipy.special.erfinv(x.astype(np.float32).astype(np.float64))
  assert np.max(np.abs(got - want) / np.abs(want)) < 1e-6
  y = np.geomspace(1.2e-38, 1.0, 200_001).astype(np.float32)
  np.testing.assert_allclose(jax.jit(prng._log)(y),  # pylint: disable=protected-access
                             np.log(y.astype(np.float64)), rtol=1e-7, atol=1e-6)


def test_counter_normals_look_standard_normal_and_independent():
  z = np.asarray(jax.jit(lambda: prng.counter_normal(1, 3, (1000, 1000)))())
  flat = z.ravel()
  assert abs(flat.mean()) < 5e-3 and abs(flat.std() - 1.0) < 5e-3
  assert scipy.stats.kstest(flat, 'norm').pvalue > 1e-3
  assert abs(scipy.stats.kurtosis(flat)) < 0.02
  assert np.abs(flat).max() < 5.5
  other = np.asarray(prng.counter_normal(1, 4, (1000, 1000))).ravel()
  assert abs(np.corrcoef(flat, other)[0, 1]) < 5e-3  # streams
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5e-3  # neighbours
  assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 5e-3  # rows
  # position decides the value: the same draw under another shape
  np.testing.assert_array_equal(jax.jit(lambda: prng.counter_normal(
      1, 3, (1000 * 1000,)))().reshape(1000, 1000), z)
  with pytest.raises(ValueError, match='2\\^32'):
    prng.counter_normal(1, 3, (2**16, 2**16))


def test_widen_noise_is_counter_normal_on_the_repeats_only():
  x = jax.random.normal(jax.random.key(1), (6, 8))
  slot = graph.Slot(path=('w',), role='w', ref_shape=(6, 8))
  # rows: decoded 3 of 6; columns: two chunks of 4, each decoded 2 of 4
  sp = plan.SlotPlan(slot=slot, kind='matrix', widen=((3, 1), (4, 2)),
                     noise=0.1)
  got = jax.jit(lambda x: writeback._add_noise(x, sp, 4))(x)  # pylint: disable=protected-access
  noise = 0.1 * jnp.std(x) * _numpy_counter_normal(
      writeback.FILL_NOISE_KEY, 4, 48).reshape(6, 8)
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
  sp = plan.SlotPlan(slot=slot, kind='matrix', widen=((3, 1), (4, 2)),
                     noise=0.1)
  got = jax.jit(lambda a, b: writeback._lowrank_matrix(a, b, sp, 5))(a, b)  # pylint: disable=protected-access
  # Reference: the same leaf in the reference layout (its noise is checked
  # against NumPy above), transposed with NumPy.
  plain = dataclasses.replace(sp, slot=dataclasses.replace(slot, to_flax=None))
  want = np.asarray(jax.jit(lambda a, b: writeback._lowrank_matrix(  # pylint: disable=protected-access
      a, b, plain, 5))(a, b)).T
  quiet = np.asarray(writeback._lowrank_matrix(  # pylint: disable=protected-access
      a, b, dataclasses.replace(plain, noise=0.0), 5)).T
  repeated = (np.arange(6) >= 3)[:, None] | (np.arange(8) % 4 >= 2)[None, :]
  assert got.shape == (8, 6)
  assert np.array_equal(want != quiet, repeated.T)  # noise on repeats only
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
