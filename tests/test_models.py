"""Flax targets: counts, params layout, default inits, behaviour.

Their numerics against plain-NumPy references are in test_model_references.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_for_tests import (SMALL_GPT, SMALL_GPT_UNTIED, SMALL_VIT,
                               random_params)
from logah_jax import arch, models
from logah_jax.arch import GPT2Config, ViTConfig
from logah_jax.models import layers


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
