"""Softmax attention whose backward pass recomputes the probabilities.

Autodiff of `softmax(q k^T) v` keeps each head's T x T probabilities (or,
under a remat policy that keeps matmul outputs, the T x T logits) for the
backward pass: in a scan over blocks that is a stacked T x T buffer per
block, zeroed and written every step, and on a CPU the transposes of those
matrices that the gradient's matmuls ask for. Here the forward pass keeps
only each query's log-sum-exp and the output, and the backward pass forms
the probabilities again from q, k and the log-sum-exp, in the way of
memory-efficient ("flash") attention:

    P = exp(q k^T / sqrt(d) - lse),  D = rowsum(dO * O),
    dV = P^T dO,  dS = P * (dO v^T - D),  dQ = dS k / sqrt(d),
    dK = dS^T q / sqrt(d).

The values equal `jax.nn.dot_product_attention`'s up to float rounding
(tests); logits and softmax are float32 whatever the input dtype. Inside,
q, k and v are laid out heads-first, (B, N, T, H), so every product is a
batch of plain (T x H) or (T x T) matrices: XLA's CPU backend then copies
no T x T matrix to transpose it, and q is scaled instead of the logits
(docs/performance.md).
"""

from __future__ import annotations

import functools
import math

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

# The residuals the forward pass names for a remat policy: with the blocks'
# projections (`REMAT_POLICY`) they are all the backward pass needs.
SAVED_NAMES = ('attention_out', 'attention_lse')

# Keep the matmuls without batch dimensions (the blocks' projections) and
# the named residuals above; recompute the rest, the attention's own
# batched products included.
REMAT_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES))

# The masked logits' value: finite, so that exp(masked - lse) is exactly 0
# without producing inf - inf.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                   causal: bool) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v for (B, T, N, H) q, k, v; (B, T, N, H) out.

  `causal`: each query sees the keys up to its own position.
  """
  heads_first = lambda a: jnp.swapaxes(a, 1, 2)
  out = _attention(heads_first(q), heads_first(k), heads_first(v), causal)
  return heads_first(out)


def _scaled(q: jax.Array) -> jax.Array:
  """q / sqrt(H): scaling q, not the T x T logits, saves a pass over them."""
  return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def _logits(scaled_q, k, causal: bool) -> jax.Array:
  """Float32 logits (B, N, T, S) of the scaled q, masked where causal."""
  s = jnp.einsum('bnth,bnsh->bnts', scaled_q, k,
                 preferred_element_type=jnp.float32)
  if causal:
    t, u = s.shape[-2:]
    s = jnp.where(jnp.arange(t)[:, None] >= jnp.arange(u)[None, :], s,
                  _MASKED)
  return s


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, causal: bool):
  return _forward(q, k, v, causal)[0]


def _forward(q, k, v, causal: bool):
  s = _logits(_scaled(q), k, causal)
  top = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - top)
  total = jnp.sum(e, axis=-1, keepdims=True)
  p = (e / total).astype(v.dtype)
  out = jnp.einsum('bnts,bnsh->bnth', p, v,
                   preferred_element_type=jnp.float32).astype(q.dtype)
  lse = (top + jnp.log(total))[..., 0]
  out = checkpoint_name(out, SAVED_NAMES[0])
  lse = checkpoint_name(lse, SAVED_NAMES[1])
  return out, (q, k, v, out, lse)


def _backward(causal: bool, residuals, d_out):
  q, k, v, out, lse = residuals
  scaled_q = _scaled(q)
  p = jnp.exp(_logits(scaled_q, k, causal) - lse[..., None])
  dv = jnp.einsum('bnts,bnth->bnsh', p.astype(d_out.dtype), d_out,
                  preferred_element_type=jnp.float32)
  dp = jnp.einsum('bnth,bnsh->bnts', d_out, v,
                  preferred_element_type=jnp.float32)
  # rowsum(P * dP) = rowsum(dO * O): one pass over (T, H), not (T, T).
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  ds = (p * (dp - row[..., None])).astype(q.dtype)  # d logits
  dq = jnp.einsum('bnts,bnsh->bnth', ds, k,
                  preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  dk = jnp.einsum('bnts,bnth->bnsh', ds, scaled_q,
                  preferred_element_type=jnp.float32)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_forward, _backward)
