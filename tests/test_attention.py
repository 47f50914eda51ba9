"""The recomputing attention of CPUs against references computed otherwise."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logah_jax import arch as arch_lib
from logah_jax import models
from logah_jax.models import attention
from logah_jax.models import layers
from logah_jax.train import objective


def _reference(q, k, v, d_out, causal):
  """Output and (dq, dk, dv) in float64, head by head and row by row, the
  softmax's gradient through its Jacobian diag(p) - p p^T."""
  q, k, v, d_out = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
  b, t, n, h = q.shape
  out, dq, dk, dv = (np.zeros_like(q) for _ in range(4))
  for i in range(b):
    for j in range(n):
      for r in range(t):
        keys = r + 1 if causal else t
        s = k[i, :keys, j] @ q[i, r, j] / np.sqrt(h)
        p = np.exp(s - s.max())
        p /= p.sum()
        out[i, r, j] = p @ v[i, :keys, j]
        dv[i, :keys, j] += np.outer(p, d_out[i, r, j])
        dp = v[i, :keys, j] @ d_out[i, r, j]
        ds = (np.diag(p) - np.outer(p, p)) @ dp / np.sqrt(h)
        dq[i, r, j] = ds @ k[i, :keys, j]
        dk[i, :keys, j] += np.outer(ds, q[i, r, j])
  return out, (dq, dk, dv)


def _inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) for _ in range(4)]


@pytest.mark.parametrize('causal', [False, True])
def test_values_and_gradients_equal_a_float64_reference(causal):
  q, k, v, d_out = _inputs((2, 9, 3, 5))
  want, want_grads = _reference(q, k, v, d_out, causal)
  got, vjp = jax.vjp(lambda *a: attention.self_attention(*a, causal), q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for g, w in zip(vjp(jnp.asarray(d_out)), want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  # and jax's own attention, differentiated by autodiff, agrees
  ref = lambda *a: jax.nn.dot_product_attention(*a, is_causal=causal)
  np.testing.assert_allclose(got, ref(q, k, v), rtol=1e-5, atol=1e-6)
  for g, w in zip(vjp(jnp.asarray(d_out)),
                  jax.vjp(ref, q, k, v)[1](jnp.asarray(d_out))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs_stay_close_and_keep_their_dtype():
  q, k, v, d_out = _inputs((2, 16, 2, 8), seed=1)
  want, want_grads = _reference(q, k, v, d_out, True)
  low = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v, d_out)]
  got, vjp = jax.vjp(lambda *a: attention.self_attention(*a, True), *low[:3])
  grads = vjp(low[3])
  assert {a.dtype for a in (got, *grads)} == {jnp.dtype(jnp.bfloat16)}
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=0.1)


GPT = arch_lib.GPT2Config(depth=3, width=48, heads=4, vocab_size=61,
                          n_positions=32, tie_embeddings=False)
VIT = arch_lib.ViTConfig(depth=3, width=32, heads=2, mlp_dim=64, patch=4,
                         image_size=20, channels=3, num_classes=5)


def _batch(arch):
  rng = np.random.default_rng(0)
  if isinstance(arch, arch_lib.ViTConfig):
    return {'image': rng.normal(size=(3, 20, 20, 3)).astype(np.float32),
            'label': rng.integers(0, 5, 3).astype(np.int32)}
  return {'tokens': rng.integers(0, 61, (3, 27)).astype(np.int32)}


def _saved_shapes(loss, params) -> list[tuple[int, ...]]:
  """The shapes of the residuals `loss`'s gradient keeps, as jax prints
  them (its public view of them)."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    jax.ad_checkpoint.print_saved_residuals(loss, params)
  shapes = [tuple(int(d) for d in dims.split(',') if d) for dims in
            re.findall(r'^\w+\[([\d,]*)\]', printed.getvalue(), re.M)]
  assert len(shapes) > 10, printed.getvalue()
  return shapes


@pytest.mark.parametrize('arch', [GPT, VIT], ids=['gpt2', 'vit'])
def test_scanned_blocks_keep_no_t_by_t_residual_and_equal_jax_attention(
    arch):
  """The training programs' blocks (scanned, `layers.scanned_remat`) with
  this attention keep per block the projections, the attention's output and
  its log-sum-exp, and no T x T matrix; loss and gradients equal unrolled
  blocks running `jax.nn.dot_product_attention` without remat."""
  assert layers.attention_implementation(jnp.float32, 12, 26) == 'recompute'
  params = models.init_params(arch, jax.random.key(0))
  batch = _batch(arch)
  stacked = models.stack_blocks(arch, params)
  loss = lambda p: objective.task_loss(
      arch, p, batch, scan=True, remat=layers.scanned_remat(False))[0]
  t = 26  # GPT-2: 27 tokens, 26 inputs; ViT: 25 patches and the class token
  t_by_t = lambda shapes: [s for s in shapes if s.count(t) >= 2]
  shapes = _saved_shapes(loss, stacked)
  assert not t_by_t(shapes), shapes
  with layers.attention_as_on('gpu'):  # XLA's attention keeps its logits
    assert t_by_t(_saved_shapes(loss, stacked))
  heads, width = arch.heads, arch.width
  # stacked over the 3 blocks: the output (B, N, T, H) and the lse (B, N, T)
  assert (arch.depth, 3, heads, t, width // heads) in shapes, shapes
  assert (arch.depth, 3, heads, t) in shapes, shapes
  value, grads = jax.jit(jax.value_and_grad(loss))(stacked)

  with layers.attention_as_on('tpu'):  # jax.nn.dot_product_attention's XLA
    ref_value, ref_grads = jax.jit(jax.value_and_grad(
        lambda p: objective.task_loss(arch, p, batch)[0]))(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  ref_grads = models.stack_blocks(arch, ref_grads)
  assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
