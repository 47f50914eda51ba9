"""Per-leaf checksums of a pytree, computed on the devices where it lives.

orbax reads a checkpoint whose array files were garbled without complaint
(zstd-compressed chunks can still decode), so every checkpoint and saved init
carries one checksum per leaf, in the same atomic commit as the arrays, and
every restore recomputes them. The checksum is a position-weighted sum of the
leaf's bit patterns in uint32 arithmetic: integer addition wraps exactly, so
the value does not depend on how the leaf is sharded or in which order XLA
reduces, and a one-process run and an eight-process run agree. It guards
against damage, not against tampering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MUL = np.uint32(0x9E3779B1)  # odd: every position gets a distinct weight
_ADD = np.uint32(0x7F4A7C15)


def _bits(x) -> jax.Array:
  """The leaf's bit patterns as uint32 (16- and 8-bit types widened)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  if size == 8:  # two words; only with jax_enable_x64
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return words[..., 0] ^ (words[..., 1] * _MUL)
  raise TypeError(f'no checksum for dtype {x.dtype}')


def _leaf_sum(x) -> jax.Array:
  bits = _bits(jnp.asarray(x)).reshape(-1)
  weights = jax.lax.iota(jnp.uint32, bits.size) * _MUL + _ADD
  return jnp.sum(bits * weights, dtype=jnp.uint32) ^ np.uint32(bits.size)


@jax.jit
def _sums(leaves):
  return [_leaf_sum(x) for x in leaves]


def _path(keypath) -> str:
  return jax.tree_util.keystr(keypath, simple=True, separator='/')


def tree_checksums(tree) -> dict[str, int]:
  """{leaf path: checksum} of the array leaves of `tree` (one device call).

  Non-array leaves (python scalars, strings) are skipped. Waits for the
  values, so call it where the host waits anyway (before a save).
  """
  flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if isinstance(x, (jax.Array, np.ndarray, np.generic))]
  if not flat:
    return {}
  sums = jax.device_get(_sums([x for _, x in flat]))
  return {_path(p): int(s) for (p, _), s in zip(flat, sums)}


def mismatches(expected: dict, tree) -> list[str]:
  """Paths of `expected` whose leaf in `tree` differs or is missing.

  Leaves without an expected checksum (python scalars at save time) are not
  checked: they may come back as arrays.
  """
  actual = tree_checksums(tree)
  return [p for p in expected if actual.get(p) != expected[p]]


@jax.jit
def _finite(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point leaves that hold a NaN or an Inf."""
  flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not flat:
    return []
  ok = jax.device_get(_finite([x for _, x in flat]))
  return [_path(p) for (p, _), good in zip(flat, ok) if not good]
