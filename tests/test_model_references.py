"""Flax targets against plain-NumPy references (float64) of the reference
architectures.

The references run on torch-layout weights named like the torchvision and
Hugging Face state dicts, so that the Flax modules are checked against an
independent reading of those architectures rather than against themselves.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_for_tests import (SMALL_GPT, SMALL_GPT_UNTIED, SMALL_VIT,
                               random_params)
from logah_jax import models
from logah_jax.export import hf_gpt2
from logah_jax.models import layers


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _ln(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def _gelu_exact(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                  * (x + 0.044715 * x**3)))


def _softmax(s):
  e = np.exp(s - s.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _mha(x, w_in, b_in, w_out, b_out, heads, causal):
  """torch-style MHA on (B, T, C) with Linear weights (out, in)."""
  t, c = x.shape[1:]
  hd = c // heads
  qkv = x @ w_in.T + b_in
  q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
  outs = []
  for h in range(heads):
    sl = slice(h * hd, (h + 1) * hd)
    s = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / math.sqrt(hd)
    if causal:
      s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    outs.append(_softmax(s) @ v[..., sl])
  return np.concatenate(outs, -1) @ w_out.T + b_out


def _torchvision_state_dict(p, cfg):
  """Flax ViT params -> torchvision VisionTransformer state_dict layout."""
  sd = {'conv_proj.weight': p['conv_proj']['kernel'].transpose(3, 2, 0, 1),
        'conv_proj.bias': p['conv_proj']['bias'],
        'class_token': p['class_token'],
        'encoder.pos_embedding': p['pos_embedding'],
        'encoder.ln.weight': p['ln']['scale'],
        'encoder.ln.bias': p['ln']['bias'],
        'heads.head.weight': p['head']['kernel'].T,
        'heads.head.bias': p['head']['bias']}
  for i in range(cfg.depth):
    q, pre = p[f'encoder_layer_{i}'], f'encoder.layers.encoder_layer_{i}.'
    att = q['self_attention']
    sd.update({
        pre + 'ln_1.weight': q['ln_1']['scale'],
        pre + 'ln_1.bias': q['ln_1']['bias'],
        pre + 'self_attention.in_proj_weight': att['in_proj']['kernel'].T,
        pre + 'self_attention.in_proj_bias': att['in_proj']['bias'],
        pre + 'self_attention.out_proj.weight': att['out_proj']['kernel'].T,
        pre + 'self_attention.out_proj.bias': att['out_proj']['bias'],
        pre + 'ln_2.weight': q['ln_2']['scale'],
        pre + 'ln_2.bias': q['ln_2']['bias'],
        pre + 'mlp.0.weight': q['mlp']['fc1']['kernel'].T,
        pre + 'mlp.0.bias': q['mlp']['fc1']['bias'],
        pre + 'mlp.3.weight': q['mlp']['fc2']['kernel'].T,
        pre + 'mlp.3.bias': q['mlp']['fc2']['bias']})
  return sd


def _vit_reference(sd, images, cfg):
  """torchvision ViT forward on NCHW images, float64."""
  b, p, g = images.shape[0], cfg.patch, cfg.image_size // cfg.patch
  tokens = []
  for i in range(g):  # conv with stride = kernel = patch, row-major patches
    for j in range(g):
      patch = images[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
      tokens.append(np.einsum('bcuv,ocuv->bo', patch, sd['conv_proj.weight'])
                    + sd['conv_proj.bias'])
  cls = np.broadcast_to(sd['class_token'], (b, 1, cfg.width))
  x = np.concatenate([cls, np.stack(tokens, 1)], 1)
  x = x + sd['encoder.pos_embedding']
  for i in range(cfg.depth):
    pre = f'encoder.layers.encoder_layer_{i}.'
    w = lambda n, pre=pre: sd[pre + n]
    h = _ln(x, w('ln_1.weight'), w('ln_1.bias'), 1e-6)
    x = x + _mha(h, w('self_attention.in_proj_weight'),
                 w('self_attention.in_proj_bias'),
                 w('self_attention.out_proj.weight'),
                 w('self_attention.out_proj.bias'), cfg.heads, causal=False)
    h = _ln(x, w('ln_2.weight'), w('ln_2.bias'), 1e-6)
    h = _gelu_exact(h @ w('mlp.0.weight').T + w('mlp.0.bias'))
    x = x + h @ w('mlp.3.weight').T + w('mlp.3.bias')
  x = _ln(x, sd['encoder.ln.weight'], sd['encoder.ln.bias'], 1e-6)
  return x[:, 0] @ sd['heads.head.weight'].T + sd['heads.head.bias']


def _gpt2_reference(sd, tokens, cfg):
  """HF GPT-2 (eager attention, gelu_new) forward, float64."""
  t = tokens.shape[1]
  x = sd['transformer.wte.weight'][tokens] + sd['transformer.wpe.weight'][:t]
  for i in range(cfg.depth):
    w = lambda n, i=i: sd[f'transformer.h.{i}.{n}']
    h = _ln(x, w('ln_1.weight'), w('ln_1.bias'), 1e-5)
    x = x + _mha(h, w('attn.c_attn.weight').T, w('attn.c_attn.bias'),
                 w('attn.c_proj.weight').T, w('attn.c_proj.bias'), cfg.heads,
                 causal=True)
    h = _ln(x, w('ln_2.weight'), w('ln_2.bias'), 1e-5)
    h = _gelu_tanh(h @ w('mlp.c_fc.weight') + w('mlp.c_fc.bias'))
    x = x + h @ w('mlp.c_proj.weight') + w('mlp.c_proj.bias')
  x = _ln(x, sd['transformer.ln_f.weight'], sd['transformer.ln_f.bias'], 1e-5)
  # Tied: HF has no lm_head.weight in the checkpoint and reuses wte.
  return x @ sd.get('lm_head.weight', sd['transformer.wte.weight']).T


def _assert_close(got, want):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape
  assert np.abs(want).max() > 0.5  # non-trivial head: the test can fail
  # float32 lands within ~3e-7 of the float64 reference; 1e-4 would let the
  # tanh GELU pass for the exact one (1.3e-4) and eps 1e-5 for 1e-6 (1.1e-5).
  np.testing.assert_allclose(got, want, rtol=1e-5,
                             atol=5e-6 * np.abs(want).max())


def test_vit_matches_numpy_reference():
  params = random_params(SMALL_VIT, seed=1)
  images = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  got = models.build(SMALL_VIT).apply({'params': params}, images)
  want = _vit_reference(_torchvision_state_dict(_np(params), SMALL_VIT),
                        np.asarray(images, np.float64).transpose(0, 3, 1, 2),
                        SMALL_VIT)
  _assert_close(got, want)
  # The class token feeds the head (a constant shift would be removed by the
  # LayerNorms, so perturb it randomly).
  params['class_token'] = params['class_token'] + jax.random.normal(
      jax.random.key(3), params['class_token'].shape)
  assert not np.allclose(models.build(SMALL_VIT).apply({'params': params},
                                                       images), got)


@pytest.mark.parametrize('cfg', [SMALL_GPT, SMALL_GPT_UNTIED])
def test_gpt2_matches_numpy_reference(cfg):
  params = random_params(cfg, seed=3)
  tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, cfg.vocab_size)
  got = models.build(cfg).apply({'params': params}, tokens)
  want = _gpt2_reference(_np(hf_gpt2.state_dict(params, cfg)),
                         np.asarray(tokens), cfg)
  _assert_close(got, want)


@pytest.mark.parametrize('causal', [False, True])
def test_fused_attention_matches_per_head_numpy(causal):
  """`jax.nn.dot_product_attention` on head-major q|k|v = the per-head loop."""
  rng = np.random.default_rng(0)
  b, t, c, heads = 2, 7, 24, 3
  x = rng.normal(size=(b, t, c)).astype(np.float32)
  w_in = rng.normal(size=(3 * c, c)).astype(np.float32) / math.sqrt(c)
  b_in = rng.normal(size=(3 * c,)).astype(np.float32)
  qkv = x @ w_in.T + b_in
  want = _mha(x, w_in, b_in, np.eye(c, dtype=np.float32),
              np.zeros(c, np.float32), heads, causal)
  got = layers.fused_self_attention(jnp.asarray(qkv), heads, causal)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  low = layers.fused_self_attention(jnp.asarray(qkv, jnp.bfloat16), heads,
                                    causal)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), want, atol=0.05)
