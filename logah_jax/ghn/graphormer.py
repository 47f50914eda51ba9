"""The GHN body: node embeddings and a Graphormer over dense padded graphs.

Axis letters: B graphs, N nodes (padded to a bucket), D = hid, H heads,
S = D / H. Exact port of GHN-3's body (docs/algorithm.md §2-§3): op + shape
embeddings; layer 0 adds degree and input-distance embeddings and computes
one per-head edge bias from the forward/backward distances, which every later
layer re-uses; padded nodes are masked out of attention; a final LayerNorm.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from logah_jax.arch.graph import OP_TYPES
from logah_jax.ghn.config import MAX_CUTOFF
from logah_jax.models import layers

MASK_VALUE = -2.0**15  # the original's fp16-safe mask constant
EDGE_VOCAB = MAX_CUTOFF + 3  # distances 0..MAX_CUTOFF, shifted by 2


def torch_linear_init(fan_in: int):
  """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def embed_init(width: int):
  """GHN-3 re-initialises every embedding table (`_init_embed`):
  trunc-normal (cut at +-2), std width^-1/2 for the table's own width."""
  std = width ** -0.5
  return lambda key, shape, dtype=jnp.float32: std * jax.random.truncated_normal(
      key, -2.0 / std, 2.0 / std, shape, dtype)


def matmul_rows(x, kernel):
  """x (..., d_in) @ kernel as one (rows, d_in) matrix: the kernel's
  gradient then contracts one dimension (`layers.rows_apply`)."""
  return layers.rows_apply(lambda rows: rows @ kernel, x)


class TorchDense(nn.Module):
  """A linear layer with PyTorch's default init for kernel and bias."""

  features: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = torch_linear_init(x.shape[-1])
    kernel = self.param('kernel', init, (x.shape[-1], self.features))
    y = matmul_rows(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', init, (self.features,)).astype(self.dtype)
    return y


class GraphormerLayer(nn.Module):
  """Pre-LN Transformer block with an additive attention bias."""

  hid: int
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BND, bias_BHNN, pair_mask_BNN):
    b, n, d = x_BND.shape
    s = d // self.heads
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    h = ln('ln1')(x_BND)
    qkv = TorchDense(3 * d, use_bias=False, dtype=self.dtype, name='qkv')(h)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.heads, s), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    # float32 logits even in bfloat16 (docs/algorithm.md §3)
    logits = jnp.einsum('bqhs,bkhs->bhqk', q, k,
                        preferred_element_type=jnp.float32) * s**-0.5
    logits = logits + bias_BHNN.astype(jnp.float32)
    logits = jnp.where(pair_mask_BNN[:, None], logits, MASK_VALUE)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhs->bqhs', attn, v).reshape(b, n, d)
    x_BND = x_BND + TorchDense(d, dtype=self.dtype, name='proj')(out)
    h = ln('ln2')(x_BND)
    h = TorchDense(4 * d, dtype=self.dtype, name='fc1')(h)
    h = TorchDense(d, dtype=self.dtype, name='fc2')(nn.gelu(h, approximate=False))
    return x_BND + h


class EdgeBias(nn.Module):
  """Per-head attention bias from forward and backward distances (layer 0).

  Equal to Lin(D->H)(ReLU(Lin(2D->D)(concat(E[fwd], E[bwd])))), computed by
  projecting the 257-row table first, so no [B,N,N,2D] tensor is built.
  """

  hid: int
  heads: int

  @nn.compact
  def __call__(self, dist_BNN):
    table = self.param('edge_embed', embed_init(self.hid),
                       (EDGE_VOCAB, self.hid))
    init = torch_linear_init(2 * self.hid)
    w1 = self.param('fc1_kernel', init, (2 * self.hid, self.hid))
    b1 = self.param('fc1_bias', init, (self.hid,))
    fwd_table = table @ w1[:self.hid]
    bwd_table = table @ w1[self.hid:]
    fwd = jnp.minimum(dist_BNN, EDGE_VOCAB - 3) + 2
    bwd = jnp.swapaxes(fwd, 1, 2)
    h = jax.nn.relu(fwd_table[fwd] + bwd_table[bwd] + b1)
    bias = TorchDense(self.heads, name='fc2')(h)  # [B,N,N,H]
    return jnp.transpose(bias, (0, 3, 1, 2))


class GHNBody(nn.Module):
  """Node embeddings of a batch of graphs: [B,N] graph arrays -> [B,N,D]."""

  hid: int
  layers: int
  heads: int
  n_channels: int  # rows of the channel table, the dummy row included
  n_spatial: int
  max_degree: int = 100
  max_input_dist: int = 1000
  final_ln: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, g):
    """g: a GHNInputs batch (op ids, shape rows, distances, degrees, mask)."""
    d = self.hid
    emb = lambda rows, name, width=d: nn.Embed(
        rows, width, embedding_init=embed_init(width), name=name)
    x = emb(len(OP_TYPES), 'op_embed')(g.op_ids)
    # Shape encoder: c_out, c_in from the channel table, h, w from the spatial
    # table, each d/4 wide, concatenated and added to the op embedding.
    ch = emb(self.n_channels, 'channel_embed', d // 4)(g.shape_idx[..., :2])
    sp = emb(self.n_spatial, 'spatial_embed', d // 4)(g.shape_idx[..., 2:])
    x = x + jnp.concatenate([ch, sp], axis=-2).reshape(*x.shape[:-1], d)
    mask = g.node_mask
    deg_in = jnp.clip(g.in_degree, 0, self.max_degree)
    deg_out = jnp.clip(g.out_degree, 0, self.max_degree)
    dist_in = jnp.clip(g.input_dist, 0, self.max_input_dist)
    x = x + emb(self.max_degree + 1, 'centrality_in')(deg_in)
    x = x + emb(self.max_degree + 1, 'centrality_out')(deg_out)
    x = x + emb(self.max_input_dist + 1, 'input_dist')(dist_in)
    x = (x * mask[..., None]).astype(self.dtype)
    bias = EdgeBias(d, self.heads, name='edge_bias')(g.dist)
    pair_mask = mask[:, :, None] & mask[:, None, :]
    for i in range(self.layers):
      x = GraphormerLayer(d, self.heads, self.dtype, name=f'layer_{i}')(
          x, bias, pair_mask)
    x = x.astype(jnp.float32)
    if self.final_ln:
      x = nn.LayerNorm(epsilon=1e-5, name='ln')(x)
    return x
