"""GPT-2 as Hugging Face's `GPT2LMHeadModel` builds it (no dropout).

Parameter names follow HF (`wte`, `wpe`, `h_i/attn/c_attn`, ...); HF's Conv1D
stores weights as (in, out), which is also Flax's kernel layout. Counts match
HF (GPT-2 small, tied: 124,439,808). The default init is HF's
`_init_weights`, because it is the RandInit baseline: N(0, 0.02) for
embeddings and kernels, N(0, 0.02 / sqrt(2 * depth)) for the two residual
projections (`c_proj`), zero biases, unit LayerNorms.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from logah_jax.arch.configs import GPT2Config
from logah_jax.models import layers

_LN_EPS = 1e-5
_STD = 0.02
_zeros = nn.initializers.zeros


class Attention(nn.Module):
  """Causal multi-head self-attention with a fused c_attn."""

  width: int
  heads: int
  proj_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.width
    qkv = layers.dense(3 * d, layers.normal(_STD), _zeros, dtype=self.dtype,
                       name='c_attn')(x)
    out = layers.fused_self_attention(qkv, self.heads, causal=True)
    return layers.dense(d, layers.normal(self.proj_std), _zeros,
                        dtype=self.dtype, name='c_proj')(out)


class MLP(nn.Module):
  """c_fc -> GELU (tanh approximation, HF "gelu_new") -> c_proj."""

  width: int
  proj_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.width
    x = layers.dense(4 * d, layers.normal(_STD), _zeros, dtype=self.dtype,
                     name='c_fc')(x)
    x = nn.gelu(x, approximate=True)
    return layers.dense(d, layers.normal(self.proj_std), _zeros,
                        dtype=self.dtype, name='c_proj')(x)


class Block(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  cfg: GPT2Config
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    proj_std = _STD / math.sqrt(2 * cfg.depth)
    h = layers.layer_norm(_LN_EPS, dtype=self.dtype, name='ln_1')(x)
    x = x + Attention(cfg.width, cfg.heads, proj_std, self.dtype,
                      name='attn')(h)
    h = layers.layer_norm(_LN_EPS, dtype=self.dtype, name='ln_2')(x)
    return x + MLP(cfg.width, proj_std, self.dtype, name='mlp')(h)


class GPT2(nn.Module):
  """Tokens (B, T) int -> next-token logits (B, T, vocab_size), float32.

  `dtype` is the compute dtype; params are always float32. Logits come back
  in float32 so that losses are computed at full precision. `remat`
  recomputes each block's activations in the backward pass; `scan` runs the
  blocks as one scan over stacked params (`models.stack_blocks`), of which
  a traced `depth` runs only the first `depth` (`layers.run_blocks`).
  """

  cfg: GPT2Config
  dtype: jnp.dtype = jnp.float32
  remat: bool | str = False  # or layers.REMAT_DOTS
  scan: bool = False

  @nn.compact
  def __call__(self, tokens, depth=None, hidden=False, embedding_period=0):
    """Logits; with `hidden`, the final LayerNorm's output (B, T, width) in
    the compute dtype instead, for a caller that applies the output layer
    itself (`objective.task_loss` with a periodic vocabulary).

    `embedding_period`: the embedding's rows repeat with this period (a
    GHN's tiled prediction, `ghn.tiled_periods`) and the params' `wte`
    holds the first period only; token i reads its row i mod period.
    """
    cfg = self.cfg
    if tokens.ndim != 2:
      raise ValueError(f'GPT2 input must be (batch, seq_len) token ids, got '
                       f'shape {tuple(tokens.shape)}.')
    t = tokens.shape[1]
    if t > cfg.n_positions:
      raise ValueError(f'GPT2 sequence length {t} exceeds n_positions='
                       f'{cfg.n_positions} of {cfg.name}.')
    if embedding_period and cfg.tie_embeddings and not hidden:
      raise ValueError('GPT2: a tied embedding of one period gives the logits '
                       'of one period; ask for hidden=True')
    wte = nn.Embed(embedding_period or cfg.vocab_size, cfg.width,
                   embedding_init=layers.normal(_STD), dtype=self.dtype,
                   param_dtype=jnp.float32, name='wte')
    wpe = nn.Embed(cfg.n_positions, cfg.width,
                   embedding_init=layers.normal(_STD), dtype=self.dtype,
                   param_dtype=jnp.float32, name='wpe')
    x = wte(tokens % embedding_period if embedding_period else tokens)
    x = x + wpe(jnp.arange(t))[None]
    x = layers.run_blocks(Block, cfg, x, dtype=self.dtype, remat=self.remat,
                          scan=self.scan, prefix='h_', depth=depth)
    x = layers.layer_norm(_LN_EPS, dtype=self.dtype, name='ln_f')(x)
    if hidden:
      return x
    if cfg.tie_embeddings:
      logits = layers.rows_apply(wte.attend, x)  # h @ wte.embedding.T
    else:
      logits = layers.dense(cfg.vocab_size, layers.normal(_STD), None,
                            dtype=self.dtype, name='lm_head')(x)
    return logits.astype(jnp.float32)
