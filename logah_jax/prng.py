"""Threefry keys whose random bits compile to one fused elementwise loop.

jax.random's default generator, Threefry-2x32 (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC 2011), lowers on CPUs to a five-trip
while loop over the whole output: every trip reads and writes the array, and
its body is compiled on its own. Drawing the 770M normals of a widened
GPT-2-Large prediction, or initialising a large target, spent most of its
time there.

`fused_threefry(key)` returns the same key on an implementation whose bits
are the 20 Threefry rounds written out as one elementwise expression, which
XLA fuses into a single pass. Its split and fold-in are threefry's own and
its bits equal jax's partitionable threefry bits (`jax_threefry_partitionable`,
the default), so every jax.random draw from it (normal, uniform, truncated
normal, ...) is bit-identical to the same draw from `key` (tests); only the
compiled program differs (docs/performance.md).

`counter_normal(seed, stream, shape)` is for noise that needs no jax.random
key at all: standard normals that are a function of the element's index,
drawn by a cheap integer hash and an inverse CDF built from multiply-adds.
One noisy widen-fill leaf compiled in about half the time and ran in about
60% of the time of Threefry normals that way (docs/performance.md).
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np

_BASE = jex_random.threefry_prng_impl
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # Threefry's key-schedule constant
_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}


def _rotate_left(x, d: int):
  return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32 with 20 rounds, unrolled: (x0, x1) -> two uint32 words."""
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, r)
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def _flat_index(shape) -> jax.Array:
  """Row-major element index as uint32, from per-axis iotas (an expression
  the SPMD partitioner can split like any elementwise one)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(
        jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  return index


def _random_bits(key, bit_width: int, shape):
  """jax's partitionable threefry bits: hash of the 64-bit element index."""
  shape = tuple(shape)
  if (bit_width not in _UINT or math.prod(shape) >= 2**32
      or not getattr(jax.config, 'jax_threefry_partitionable', True)):
    return _BASE.random_bits(key, bit_width, shape)
  hi, lo = threefry2x32(key[0], key[1], jnp.zeros(shape, jnp.uint32),
                        _flat_index(shape))
  return (hi ^ lo).astype(_UINT[bit_width])


FUSED_THREEFRY = jex_random.define_prng_impl(
    key_shape=_BASE.key_shape, seed=_BASE.seed, split=_BASE.split,
    random_bits=_random_bits, fold_in=_BASE.fold_in,
    name='threefry2x32_fused', tag='fry_fused')


def fused_threefry(key: jax.Array) -> jax.Array:
  """`key` (a typed threefry key) on the fused implementation; other keys
  (other implementations, raw uint32 keys) are returned unchanged."""
  if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
          and str(jax.random.key_impl(key)) == _BASE.name):
    return key
  return jax.random.wrap_key_data(jax.random.key_data(key),
                                  impl=FUSED_THREEFRY)


# ------------------------------------------------------- counter normals
_GOLDEN = np.uint32(0x9E3779B9)  # 2^32 / golden ratio: spreads stream ids
# log1p(t) = t * Q(t) on [0, 1): least-squares fit, |error| < 5e-7.
_LOG1P = (0.9999995231628418, -0.49996355175971985, 0.33265239000320435,
          -0.2445332109928131, 0.1765972524881363, -0.10679779201745987,
          0.04365847259759903, -0.008466244675219059)
# Giles, "Approximating the erfinv function" (GPU Computing Gems, 2011),
# single precision: a polynomial in w - 2.5 for w = -log(1 - x^2) < 5, and
# in sqrt(w) - 3 beyond (the outer 0.34% of draws, |z| > 2.9).
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06,
                   -4.39150654e-06, 0.00021858087, -0.00125372503,
                   -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322,
                -0.00367342844, 0.00573950773, -0.0076224613,
                0.00943887047, 1.00167406, 2.83297682)


def _mix32(x):
  """A bijective 32-bit hash with full avalanche (xorshift-multiply, the
  constants of C. Wellons' "lowbias32")."""
  x = (x ^ (x >> np.uint32(16))) * np.uint32(0x7FEB352D)
  x = (x ^ (x >> np.uint32(15))) * np.uint32(0x846CA68B)
  return x ^ (x >> np.uint32(16))


def _horner(coeffs, x):
  out = np.float32(coeffs[0])
  for c in coeffs[1:]:
    out = np.float32(c) + out * x
  return out


def _log(y):
  """Natural log of float32 y > 0 (normal numbers): exponent plus a
  polynomial of the mantissa, multiply-adds only; XLA's CPU log costs
  several times more in a fused loop."""
  bits = jax.lax.bitcast_convert_type(y, jnp.uint32)
  exponent = (bits >> np.uint32(23)).astype(jnp.int32) - 127
  t = jax.lax.bitcast_convert_type(
      (bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000), jnp.float32) - 1.0
  return (exponent.astype(jnp.float32) * np.float32(math.log(2))
          + t * _horner(_LOG1P[::-1], t))


def erfinv(x):
  """erfinv of float32 x in (-1, 1), relative error below 1e-6 (tests)."""
  w = -_log((1.0 - x) * (1.0 + x))
  central = _horner(_ERFINV_CENTRAL, w - 2.5)
  tail = _horner(_ERFINV_TAIL, jnp.sqrt(w) - 3.0)
  return jnp.where(w < 5.0, central, tail) * x


def counter_normal(seed: int, stream, shape, dtype=jnp.float32):
  """Standard normals indexed by (seed, stream, row-major element index).

  Each element hashes its own index, so the draw is the same under any
  sharding or layout (a transposed leaf transposes its noise), and costs
  two integer hashes and an inverse CDF: no key splitting, no Threefry
  rounds, no library log. `stream` may be traced (a node's index). The
  uniforms are the 2^23 midpoints of (-1, 1); the largest |z| is 5.4.
  """
  x = counter_uniform(seed, stream, shape)
  return (np.float32(math.sqrt(2.0)) * erfinv(x)).astype(dtype)


def counter_uniform(seed: int, stream, shape):
  """`counter_normal`'s uniforms: float32 on the 2^23 midpoints of (-1, 1),
  from two hashes of each element's index."""
  shape = tuple(shape)
  if math.prod(shape) >= 2**32:
    raise ValueError(f'counter_normal: {shape} has 2^32 or more elements.')
  key = _mix32(jnp.asarray(stream).astype(jnp.uint32) * _GOLDEN
               + np.uint32(seed))
  bits = _mix32(_mix32(_flat_index(shape) + key) ^ key)
  # (2k + 1) / 2^23 - 1 for the top 23 bits k: exact in float32, never +-1.
  k = (bits >> np.uint32(9)).astype(jnp.float32)
  return (k * 2.0 + 1.0) * np.float32(2.0**-23) - 1.0
