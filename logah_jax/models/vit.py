"""Vision Transformer as torchvision's `VisionTransformer` builds it.

Pre-LN encoder blocks, a learned class token, learned position embeddings and
a linear head on the class token. Parameter shapes and counts match
torchvision (ViT-B/16 at 224px, 1000 classes: 86,567,656), and so does the
default init, because it is the RandInit baseline the GHN is compared with:
truncated-normal patch embedding, N(0, 0.02) positions, zero class token,
xavier q/k/v, torch-default output projection, xavier MLP kernels with
N(0, 1e-6) biases, and a zero head.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from logah_jax.arch.configs import ViTConfig
from logah_jax.models import layers

_LN_EPS = 1e-6
_POS_STD = 0.02
_MLP_BIAS_STD = 1e-6
_zeros = nn.initializers.zeros


class SelfAttention(nn.Module):
  """torch nn.MultiheadAttention without a mask (no dropout)."""

  width: int
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.width
    # MHA._reset_parameters: xavier on the fused (3C, C) in_proj, zero biases;
    # out_proj.weight keeps nn.Linear's default.
    qkv = layers.dense(3 * c, layers.xavier_uniform(c, 3 * c), _zeros,
                       dtype=self.dtype, name='in_proj')(x)
    out = layers.fused_self_attention(qkv, self.heads, causal=False)
    return layers.dense(c, layers.torch_linear_default(c), _zeros,
                        dtype=self.dtype, name='out_proj')(out)


class MLP(nn.Module):
  """torchvision MLPBlock: fc1 -> exact GELU -> fc2."""

  width: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c, m = self.width, self.mlp_dim
    bias_init = layers.normal(_MLP_BIAS_STD)
    x = layers.dense(m, layers.xavier_uniform(c, m), bias_init,
                     dtype=self.dtype, name='fc1')(x)
    x = nn.gelu(x, approximate=False)
    return layers.dense(c, layers.xavier_uniform(m, c), bias_init,
                        dtype=self.dtype, name='fc2')(x)


class EncoderBlock(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  cfg: ViTConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    h = layers.layer_norm(_LN_EPS, dtype=self.dtype, name='ln_1')(x)
    x = x + SelfAttention(cfg.width, cfg.heads, self.dtype,
                          name='self_attention')(h)
    h = layers.layer_norm(_LN_EPS, dtype=self.dtype, name='ln_2')(x)
    return x + MLP(cfg.width, cfg.mlp_dim, self.dtype, name='mlp')(h)


class ViT(nn.Module):
  """Images (B, H, W, channels), NHWC float -> logits (B, num_classes), float32.

  `dtype` is the compute dtype; params are always float32. Logits come back
  in float32 so that losses are computed at full precision. `remat`
  recomputes each block's activations in the backward pass; `scan` runs the
  blocks as one scan over stacked params (`models.stack_blocks`), of which
  a traced `depth` runs only the first `depth` (`layers.run_blocks`).
  """

  cfg: ViTConfig
  dtype: jnp.dtype = jnp.float32
  remat: bool | str = False  # or layers.REMAT_DOTS
  scan: bool = False

  @nn.compact
  def __call__(self, images, depth=None):
    cfg = self.cfg
    want = (cfg.image_size, cfg.image_size, cfg.channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
      raise ValueError(f'ViT input shape {tuple(images.shape)} does not match '
                       f'(batch, {", ".join(map(str, want))}) of {cfg.name}.')
    p, c = cfg.patch, cfg.width
    fan_in = cfg.channels * p * p
    x = nn.Conv(c, (p, p), strides=(p, p), padding='VALID',
                kernel_init=layers.trunc_normal_abs(math.sqrt(1.0 / fan_in)),
                bias_init=_zeros, dtype=self.dtype, param_dtype=jnp.float32,
                name='conv_proj')(images)
    b = x.shape[0]
    x = x.reshape(b, cfg.num_patches, c)  # row-major over (h, w), like torch
    cls = self.param('class_token', _zeros, (1, 1, c), jnp.float32)
    pos = self.param('pos_embedding', layers.normal(_POS_STD),
                     (1, cfg.seq_len, c), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, c))
    x = jnp.concatenate([cls, x.astype(self.dtype)], axis=1)
    x = x + pos.astype(self.dtype)
    x = layers.run_blocks(EncoderBlock, cfg, x, dtype=self.dtype,
                          remat=self.remat, scan=self.scan,
                          prefix='encoder_layer_', depth=depth)
    x = layers.layer_norm(_LN_EPS, dtype=self.dtype, name='ln')(x)
    logits = layers.dense(cfg.num_classes, _zeros, _zeros, dtype=self.dtype,
                          name='head')(x[:, 0])
    return logits.astype(jnp.float32)
