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
