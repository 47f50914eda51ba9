"""Pieces shared by the ViT and GPT-2 targets: initialisers and attention.

The initialisers reproduce the PyTorch reference inits exactly (they become
the RandInit baseline), so they are written against torch's definitions
rather than Flax's near-equivalents.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from logah_jax.models import attention

Array = jax.Array


def normal(std: float):
  """N(0, std^2), as torch `normal_(std=...)`."""
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)
  return init


def uniform(bound: float):
  """U(-bound, bound), the family of torch xavier/kaiming uniform inits."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def xavier_uniform(fan_in: int, fan_out: int):
  """torch `xavier_uniform_`: bound sqrt(6 / (fan_in + fan_out))."""
  return uniform(math.sqrt(6.0 / (fan_in + fan_out)))


def torch_linear_default(fan_in: int):
  """torch nn.Linear default weight (kaiming a=sqrt 5): U(+-1/sqrt(fan_in))."""
  return uniform(1.0 / math.sqrt(fan_in))


def trunc_normal_abs(std: float, limit: float = 2.0):
  """torch `trunc_normal_(std=std)`: N(0, std^2) cut at ABSOLUTE +-limit.

  torch's a/b bounds are in value units, not in standard deviations, so for a
  small std the truncation is practically inactive.
  """
  def init(key, shape, dtype=jnp.float32):
    z = jax.random.truncated_normal(key, -limit / std, limit / std, shape,
                                    jnp.float32)
    return (std * z).astype(dtype)
  return init


def fused_self_attention(qkv: Array, heads: int, causal: bool) -> Array:
  """Multi-head attention from a fused [q | k | v] projection.

  Args:
    qkv: (B, T, 3C) in the compute dtype; each of q, k, v is split into heads
      head-major (head h owns channels h*hd .. (h+1)*hd), like torch MHA and
      HF GPT-2.
    heads: number of heads.
    causal: mask out keys after the query position.

  Returns:
    (B, T, C) concatenated head outputs, before the output projection.

  The attention itself is `jax.nn.dot_product_attention` or, on CPUs,
  `attention.self_attention`, as `attention_implementation` picks; either
  way the logits and the softmax are computed in float32, and the scale is
  1/sqrt(head dim).
  """
  b, t, three_c = qkv.shape
  c = three_c // 3
  q, k, v = (a.reshape(b, t, heads, c // heads)
             for a in jnp.split(qkv, 3, axis=-1))
  implementation = attention_implementation(qkv.dtype, c // heads, t)
  if implementation == 'recompute':
    return attention.self_attention(q, k, v, causal).reshape(b, t, c)
  if implementation == 'cudnn':
    try:
      out = jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                         implementation='cudnn')
      return out.reshape(b, t, c)
    except NotImplementedError:  # a shape this cuDNN version refuses
      pass
  out = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
  return out.reshape(b, t, c)


_assumed_backend = None  # set by `attention_as_on`


def attention_implementation(dtype, head_dim: int,
                             seq_len: int) -> str | None:
  """'cudnn' where cuDNN's fused kernel applies, 'recompute' on CPUs, else
  None (`jax.nn.dot_product_attention`'s XLA implementation).

  The fused kernel runs on NVIDIA GPUs for 16-bit inputs with a head
  dimension that is a multiple of 8 up to 128 (GPT-2 and ViT-B/L use 64)
  and, for training, an even sequence length (a ViT's 197 tokens are not);
  it refuses float32. On CPUs, `attention.self_attention` keeps no T x T
  matrix for the backward pass and lays its products out for XLA's CPU
  matmuls: GHN-training programs ran 18% faster with it
  (docs/performance.md). On TPUs, and on GPUs for other shapes, XLA
  computes the attention from its matmuls.
  """
  backend = _assumed_backend or jax.default_backend()
  if backend == 'cpu':
    return 'recompute'
  if (backend == 'gpu'
      and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
      and head_dim % 8 == 0 and head_dim <= 128 and seq_len % 2 == 0):
    return 'cudnn'
  return None


@contextlib.contextmanager
def attention_as_on(backend: str):
  """Programs traced inside pick their attention as on `backend` ('cpu',
  'gpu', 'tpu'), not as on the backend they are compiled for: an analysis
  compiled on CPUs of a program meant for accelerators (benchmarks/memory.py)
  then sees the accelerators' attention."""
  global _assumed_backend  # pylint: disable=global-statement
  before, _assumed_backend = _assumed_backend, backend
  try:
    yield
  finally:
    _assumed_backend = before


STACKED = 'blocks'  # the params key of scanned blocks, stacked on axis 0


REMAT_DOTS = 'dots'  # `remat` value: keep matmul outputs, recompute the rest
# What `REMAT_DOTS` becomes with `attention.self_attention`: the blocks'
# projections and the attention's output and log-sum-exp are kept.
REMAT_PROJECTIONS = 'projections'


def block_class(block: type[nn.Module], remat) -> type[nn.Module]:
  """`block`, or its rematerialised version (same params, same values).

  `remat` True: everything inside a block is recomputed in the backward
  pass (memory per block drops to its input). `REMAT_DOTS`: the matmul
  outputs are kept and only the elementwise work (softmax, GELU, LayerNorm)
  is recomputed. A scan stores every residual its body's derivative asks
  for, softmax and GELU intermediates included, where XLA fuses them away in
  unrolled blocks; keeping only the matmuls brings a scanned GPT-2-L below
  the unrolled one's memory (docs/performance.md). False: no remat.
  `block_remat` turns `REMAT_DOTS` off where attention runs in cuDNN's
  kernel: its outputs are no matmuls, so the policy would run that kernel's
  forward again in the backward pass, and it stores no T x T matrices. With
  `attention.self_attention` it becomes `REMAT_PROJECTIONS`: that
  attention's own products have batch dimensions and are recomputed, and
  the residuals its backward pass reads are kept by name.
  """
  if remat == REMAT_PROJECTIONS:
    return nn.remat(block, policy=attention.REMAT_POLICY, prevent_cse=False)
  if remat == REMAT_DOTS:
    return nn.remat(block, policy=jax.checkpoint_policies.dots_saveable,
                    prevent_cse=False)
  return nn.remat(block) if remat else block


def scanned_remat(remat: bool):
  """The `remat` of a training step's scanned blocks: everything recomputed
  where asked (True), else `REMAT_DOTS`, so that a scan stores no more than
  unrolled blocks would (`block_class`). Training steps use it; forward-only
  programs need no remat."""
  return True if remat else REMAT_DOTS


def block_remat(remat, dtype, head_dim: int, seq_len: int):
  """`remat` as the blocks apply it: `REMAT_DOTS` becomes False where
  attention runs in cuDNN's kernel and `REMAT_PROJECTIONS` where it runs in
  `attention.self_attention` (`block_class` says why)."""
  if remat == REMAT_DOTS:
    return {'cudnn': False, 'recompute': REMAT_PROJECTIONS}.get(
        attention_implementation(dtype, head_dim, seq_len), remat)
  return remat


def _carried(block: type[nn.Module]) -> type[nn.Module]:
  """`block` with the (carry, input) -> (carry, output) signature of scan."""
  class Carried(block):
    def __call__(self, x, _):  # pylint: disable=arguments-differ
      return super().__call__(x), None
  Carried.__name__ = block.__name__
  return Carried


def _skippable(block: type[nn.Module]) -> type[nn.Module]:
  """`block` for a scan that runs only the first `depth` of its blocks.

  Block `index` runs when index < depth and is the identity otherwise; the
  choice is a conditional, so a skipped block costs no compute, and its
  params get zero gradients.
  """
  class Skippable(block):
    def __call__(self, x, index, depth):  # pylint: disable=arguments-differ
      run = lambda module, h: block.__call__(module, h)
      skip = lambda module, h: h
      return nn.cond(index < depth, run, skip, self, x), None
  Skippable.__name__ = block.__name__
  return Skippable


def run_blocks(block: type[nn.Module], cfg, x, *, dtype, remat: bool | str,
               scan: bool, prefix: str, depth=None):
  """The residual blocks of a model, inside its compact `__call__`.

  Unrolled, block i's params are `{prefix}{i}` (the reference layout that
  checkpoints, the graph and the GHN use). With `scan`, one block is traced
  and run `cfg.depth` times by `nn.scan` over params stacked under
  `STACKED` (see `models.stack_blocks`): the program no longer grows with
  depth, which is what GHN training compiles once per architecture.

  `depth` (scan only; a traced int32 scalar): run only the first `depth`
  blocks, the rest being the identity. One program then serves every depth
  up to `cfg.depth` (GHN training shares programs across depths this way).
  `remat`: see `block_class`.
  """
  remat = block_remat(remat, dtype, cfg.width // cfg.heads, x.shape[1])
  if scan:
    if depth is None:
      blocks = nn.scan(block_class(_carried(block), remat),
                       variable_axes={'params': 0},
                       split_rngs={'params': True}, length=cfg.depth)
      x, _ = blocks(cfg, dtype, name=STACKED)(x, None)
      return x
    blocks = nn.scan(block_class(_skippable(block), remat),
                     variable_axes={'params': 0},
                     split_rngs={'params': True}, length=cfg.depth,
                     in_axes=(0, nn.broadcast))
    x, _ = blocks(cfg, dtype, name=STACKED)(x, jnp.arange(cfg.depth), depth)
    return x
  if depth is not None:
    raise ValueError('run_blocks: a traced depth needs scan=True.')
  cls = block_class(block, remat)
  for i in range(cfg.depth):
    x = cls(cfg, dtype, name=f'{prefix}{i}')(x)
  return x


def dense(features: int, kernel_init, bias_init=None, *, dtype,
          name: str) -> Callable[[jax.Array], jax.Array]:
  """A Dense with float32 params; `bias_init=None` means no bias (lm_head).

  An input (..., d_in) is multiplied as one (rows, d_in) matrix: the
  kernel's gradient then contracts a single dimension, where over (batch,
  tokens) XLA's CPU backend first copies the output's gradient transposed
  (docs/performance.md). Same params, same values.
  """
  if bias_init is None:
    module = nn.Dense(features, use_bias=False, kernel_init=kernel_init,
                      dtype=dtype, param_dtype=jnp.float32, name=name)
  else:
    module = nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init,
                      dtype=dtype, param_dtype=jnp.float32, name=name)
  return lambda x: rows_apply(module, x)


def rows_apply(fn, x: jax.Array) -> jax.Array:
  """`fn` of a (rows, d) matrix applied to x (..., d) as one matrix."""
  y = fn(x.reshape(-1, x.shape[-1]))
  return y.reshape(*x.shape[:-1], y.shape[-1])


def layer_norm(eps: float, *, dtype, name: str) -> nn.LayerNorm:
  """LayerNorm with unit scale and zero bias, statistics in float32."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                      name=name)
