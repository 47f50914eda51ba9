"""Flax targets: counts, params layout, numerics against NumPy, default inits.

The numerical references below are written in plain NumPy (float64) on
torch-layout weights named like the torchvision / Hugging Face state dicts, so
that the Flax modules are checked against an independent reading of the
reference architectures rather than against themselves.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_for_tests import random_params
from logah_jax import arch, models
from logah_jax.arch import GPT2Config, ViTConfig
from logah_jax.export import hf_gpt2
from logah_jax.models import layers

SMALL_VIT = ViTConfig(depth=2, width=24, heads=3, mlp_dim=48, patch=4,
                      image_size=8, channels=3, num_classes=5)
SMALL_GPT = GPT2Config(depth=2, width=16, heads=2, vocab_size=37,
                       n_positions=12, tie_embeddings=True)
SMALL_GPT_UNTIED = GPT2Config(depth=2, width=16, heads=2, vocab_size=37,
                              n_positions=12, tie_embeddings=False)


def _count(cfg):
  return sum(leaf.size for leaf in jax.tree.leaves(models.abstract_params(cfg)))


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


# ------------------------------------------------------------------ counts


def test_published_counts():
  published = {
      'gpt2-small': 124_439_808, 'gpt2-medium': 354_823_168,
      'gpt2-large': 774_030_080,
      'vit-s/16': 22_050_664, 'vit-b/16': 86_567_656, 'vit-l/16': 304_326_632,
  }
  for name, n in published.items():
    cfg = arch.named(name)
    assert _count(cfg) == n, name
    assert arch.num_params(cfg) == n, name
    if name.startswith('gpt2'):
      untied = arch.named(name + '-untied')
      assert _count(untied) == n + 50257 * cfg.width, name
  assert _count(arch.named('gpt2-small-untied')) == 163_037_184


def test_counts_match_closed_form_on_sampled_spaces():
  cfgs = (arch.sample('vits-1k', 25, 0) + arch.sample('gpts-1k', 25, 0)
          + arch.sample('vits-cpu', 5, 0) + arch.sample('gpts-cpu', 5, 0)
          + [arch.named(n) for n in arch.names()])
  for cfg in cfgs:
    assert _count(cfg) == arch.num_params(cfg), cfg.name


# ------------------------------------------------------------------ layout


def _norm(c):
  return {'scale': (c,), 'bias': (c,)}


def _dense(i, o):
  return {'kernel': (i, o), 'bias': (o,)}


def test_vit_tree():
  c, m, p = 24, 48, 4
  want = {'conv_proj': {'kernel': (p, p, 3, c), 'bias': (c,)},
          'class_token': (1, 1, c), 'pos_embedding': (1, 5, c),
          'ln': _norm(c), 'head': _dense(c, 5)}
  for i in range(2):
    want[f'encoder_layer_{i}'] = {
        'ln_1': _norm(c), 'ln_2': _norm(c),
        'self_attention': {'in_proj': _dense(c, 3 * c),
                           'out_proj': _dense(c, c)},
        'mlp': {'fc1': _dense(c, m), 'fc2': _dense(m, c)}}
  params = models.abstract_params(SMALL_VIT)
  assert _shapes(params) == want
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}


@pytest.mark.parametrize('cfg', [SMALL_GPT, SMALL_GPT_UNTIED])
def test_gpt2_tree(cfg):
  d, v = 16, 37
  want = {'wte': {'embedding': (v, d)}, 'wpe': {'embedding': (12, d)},
          'ln_f': _norm(d)}
  if not cfg.tie_embeddings:
    want['lm_head'] = {'kernel': (d, v)}
  for i in range(2):
    want[f'h_{i}'] = {
        'ln_1': _norm(d), 'ln_2': _norm(d),
        'attn': {'c_attn': _dense(d, 3 * d), 'c_proj': _dense(d, d)},
        'mlp': {'c_fc': _dense(d, 4 * d), 'c_proj': _dense(4 * d, d)}}
  params = models.abstract_params(cfg)
  assert _shapes(params) == want
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}


def test_abstract_params_equal_the_unrolled_init():
  # abstract_params traces the scanned model (one block) and unstacks it.
  cfgs = (arch.sample('vits-1k', 4, 1) + arch.sample('gpts-1k', 4, 1)
          + [arch.named('vit-b/16'), arch.named('gpt2-medium-untied'),
             SMALL_VIT, SMALL_GPT])
  for cfg in cfgs:
    want = jax.eval_shape(models.build(cfg).init, jax.random.key(0),
                          models.dummy_input(cfg))['params']
    got = models.abstract_params(cfg)
    assert jax.tree.structure(got) == jax.tree.structure(want), cfg.name
    assert list(got) == list(want), cfg.name
    assert jax.tree.leaves(got) == jax.tree.leaves(want), cfg.name


def test_api_inputs_and_errors():
  assert models.dummy_input(SMALL_VIT, 2).shape == (2, 8, 8, 3)
  assert models.dummy_input(SMALL_VIT).dtype == jnp.float32
  x = models.dummy_input(arch.named('gpt2-small'), 3)
  assert x.shape == (3, 8) and x.dtype == jnp.int32
  assert models.dummy_input(GPT2Config(1, 8, 2, 11, 5)).shape == (1, 5)
  for fn in (models.build, models.dummy_input, models.abstract_params):
    with pytest.raises(ValueError, match='neither a ViTConfig'):
      fn({'depth': 2})
  # The cache hands out fresh containers: editing one cannot corrupt it.
  models.abstract_params(SMALL_VIT).pop('head')
  assert 'head' in models.abstract_params(SMALL_VIT)
  params = random_params(SMALL_VIT)
  with pytest.raises(ValueError, match='does not match'):
    models.build(SMALL_VIT).apply({'params': params}, jnp.zeros((1, 16, 16, 3)))


# ------------------------------------------------------- NumPy references


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


# ------------------------------------------------------------ default init


def _check_normal(x, std, tol=0.05):
  x = np.asarray(x, np.float64).ravel()
  assert abs(x.std() / std - 1) < tol, (x.std(), std)
  assert abs(x.mean()) < 5 * std / math.sqrt(x.size)
  # Gaussian, not uniform: 68.3% within one std (a uniform has 57.7%).
  assert abs(np.mean(np.abs(x) < std) - 0.6827) < 0.02


def _check_uniform(x, bound):
  x = np.asarray(x, np.float64).ravel()
  assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
  assert abs(x.std() / (bound / math.sqrt(3)) - 1) < 0.03
  assert abs(x.mean()) < 5 * bound / math.sqrt(3 * x.size)


def _check_const(x, value):
  np.testing.assert_array_equal(np.asarray(x), value)


def test_trunc_normal_is_cut_at_absolute_two():
  key = jax.random.key(0)
  x = np.asarray(layers.trunc_normal_abs(1.0)(key, (200_000,)))
  # N(0, 1) cut at +-2 std: std^2 = 1 - 2 a phi(a) / (2 Phi(a) - 1), a = 2.
  phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
  want = math.sqrt(1 - 4 * phi / math.erf(2 / math.sqrt(2)))
  assert np.abs(x).max() <= 2.0 and abs(x.std() / want - 1) < 0.01
  # std 0.5: the cut is at 4 std, so practically a plain normal (the cut
  # would give std 0.44 if it were at 2 std).
  y = np.asarray(layers.trunc_normal_abs(0.5)(key, (200_000,)))
  assert np.abs(y).max() <= 2.0 and np.abs(y).max() > 1.5
  assert abs(y.std() / 0.5 - 1) < 0.01


def test_gpt2_default_init():
  cfg = GPT2Config(depth=4, width=256, heads=4, vocab_size=2048,
                   n_positions=256, tie_embeddings=False)
  p = models.init_params(cfg, jax.random.key(0))
  resid = 0.02 / math.sqrt(2 * cfg.depth)
  for path, x in jax.tree.leaves_with_path(p):
    names = [k.key for k in path]
    if names[-1] == 'bias':
      _check_const(x, 0.0)
    elif names[-1] == 'scale':
      _check_const(x, 1.0)
    elif names[-2] == 'c_proj':
      _check_normal(x, resid)
    else:  # wte, wpe, c_attn, c_fc, lm_head
      _check_normal(x, 0.02)
  assert not np.allclose(p['h_0']['attn']['c_attn']['kernel'],
                         p['h_1']['attn']['c_attn']['kernel'])
  same = models.init_params(cfg, jax.random.key(0))
  other = models.init_params(cfg, jax.random.key(1))
  np.testing.assert_array_equal(same['wte']['embedding'], p['wte']['embedding'])
  assert not np.allclose(other['wte']['embedding'], p['wte']['embedding'])


def test_vit_default_init():
  cfg = ViTConfig(depth=2, width=256, heads=4, mlp_dim=1024, patch=8,
                  image_size=32, channels=3, num_classes=100)
  p = models.init_params(cfg, jax.random.key(0))
  c, m = cfg.width, cfg.mlp_dim
  _check_normal(p['conv_proj']['kernel'], math.sqrt(1 / (3 * 8 * 8)))
  assert np.abs(p['conv_proj']['kernel']).max() <= 2.0
  _check_const(p['conv_proj']['bias'], 0.0)
  _check_const(p['class_token'], 0.0)
  _check_normal(p['pos_embedding'], 0.02)
  for name in ('ln', 'encoder_layer_0/ln_1', 'encoder_layer_1/ln_2'):
    ln = p
    for k in name.split('/'):
      ln = ln[k]
    _check_const(ln['scale'], 1.0)
    _check_const(ln['bias'], 0.0)
  _check_const(p['head']['kernel'], 0.0)  # torchvision zero-inits the head
  _check_const(p['head']['bias'], 0.0)
  for i in range(cfg.depth):
    layer = p[f'encoder_layer_{i}']
    att, mlp = layer['self_attention'], layer['mlp']
    _check_uniform(att['in_proj']['kernel'], math.sqrt(6 / (4 * c)))
    _check_const(att['in_proj']['bias'], 0.0)
    _check_uniform(att['out_proj']['kernel'], 1 / math.sqrt(c))
    _check_const(att['out_proj']['bias'], 0.0)
    _check_uniform(mlp['fc1']['kernel'], math.sqrt(6 / (c + m)))
    _check_uniform(mlp['fc2']['kernel'], math.sqrt(6 / (c + m)))
    for fc in ('fc1', 'fc2'):
      bias = np.asarray(mlp[fc]['bias'], np.float64)
      assert abs(bias.std() / 1e-6 - 1) < 0.15 and np.abs(bias).max() < 1e-5
  assert not np.allclose(p['encoder_layer_0']['mlp']['fc1']['kernel'],
                         p['encoder_layer_1']['mlp']['fc1']['kernel'])


# ------------------------------------------------------------- behaviour


def test_gpt2_is_causal():
  params = random_params(SMALL_GPT_UNTIED, seed=5)
  model = models.build(SMALL_GPT_UNTIED)
  a = jax.random.randint(jax.random.key(6), (2, 10), 0, 37)
  b = a.at[:, 6].set((a[:, 6] + 1) % 37)
  la = model.apply({'params': params}, a)
  lb = model.apply({'params': params}, b)
  np.testing.assert_array_equal(la[:, :6], lb[:, :6])
  assert not np.allclose(la[:, 6:], lb[:, 6:])


@pytest.mark.parametrize('cfg', [
    pytest.param(SMALL_VIT, marks=pytest.mark.slow), SMALL_GPT])
def test_jit_and_grad(cfg):
  params = random_params(cfg, seed=7)
  x = models.dummy_input(cfg, 2)
  if cfg.family == 'vit':
    x = jax.random.normal(jax.random.key(8), x.shape)
  else:
    x = jax.random.randint(jax.random.key(8), x.shape, 0, cfg.vocab_size)
  model = models.build(cfg)
  loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({'params': p}, x)))
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for path, g in jax.tree.leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


def test_too_long_sequence_raises():
  params = random_params(SMALL_GPT)
  model = models.build(SMALL_GPT)
  tokens = jnp.zeros((1, 13), jnp.int32)
  with pytest.raises(ValueError, match='exceeds n_positions=12'):
    model.apply({'params': params}, tokens)
  with pytest.raises(ValueError, match='exceeds n_positions=12'):
    jax.jit(model.apply)({'params': params}, tokens)


@pytest.mark.parametrize('cfg', [
    pytest.param(SMALL_VIT, marks=pytest.mark.slow),  # ~35 s
    SMALL_GPT, SMALL_GPT_UNTIED])
def test_bfloat16_compute(cfg):
  model = models.build(cfg, dtype=jnp.bfloat16)
  x = models.dummy_input(cfg, 2)
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  params = random_params(cfg, seed=9, std=0.1)
  if cfg.family == 'vit':
    x = jax.random.normal(jax.random.key(10), x.shape)
  got = jax.jit(model.apply)({'params': params}, x)
  want = models.build(cfg).apply({'params': params}, x)
  assert got.dtype == jnp.float32 and np.all(np.isfinite(got))
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got, want, atol=0.05 * scale)


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


@pytest.mark.parametrize('cfg', [
    GPT2Config(depth=3, width=32, heads=2, vocab_size=50, n_positions=16),
    pytest.param(ViTConfig(depth=3, width=32, heads=2, mlp_dim=64, patch=4,
                           image_size=16, channels=3, num_classes=5),
                 marks=pytest.mark.slow)], ids=['gpt2', 'vit'])
def test_scanned_blocks_equal_unrolled_blocks(cfg):
  # GHN training runs targets as one scan over stacked block params.
  params = random_params(cfg, seed=1)
  x = (jnp.arange(16).reshape(2, 8) % 50 if cfg.family == 'gpt2' else
       jax.random.normal(jax.random.key(0), (2, 16, 16, 3)))
  want = models.build(cfg).apply({'params': params}, x)
  stacked = models.stack_blocks(cfg, params)
  assert stacked['blocks']['ln_1']['scale'].shape == (3, 32)
  layout = jax.eval_shape(models.build(cfg, scan=True).init,
                          jax.random.key(0), x)['params']
  assert jax.tree.structure(layout) == jax.tree.structure(stacked)
  for remat in (False, True):
    got = models.build(cfg, remat=remat, scan=True).apply(
        {'params': stacked}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  back = models.unstack_blocks(cfg, stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
