"""`models.init_params` and `ghn.init` compile one program per distinct
block, and their values are those of Flax's init of the whole model in one
program."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logah_jax import compiles, ghn, models, prng
from logah_jax.arch import GPT2Config, ViTConfig
from logah_jax.ghn import api as ghn_api
from logah_jax.models import block_init

GPT_UNTIED = GPT2Config(depth=11, width=24, heads=2, vocab_size=41,
                        n_positions=12, tie_embeddings=False)
GPT_TIED = GPT2Config(depth=3, width=24, heads=2, vocab_size=41,
                      n_positions=12, tie_embeddings=True)
VIT = ViTConfig(depth=3, width=24, heads=3, mlp_dim=40, patch=4,
                image_size=8, channels=3, num_classes=7)


def _whole_model_init(cfg, key):
  """The reference: Flax's init of the whole model, one jitted program
  (keys sorted: h_10 before h_2)."""
  model, x = models.build(cfg), models.dummy_input(cfg)
  return jax.jit(lambda k: model.init(prng.fused_threefry(k), x)['params'])(
      key)


def _assert_same(got, want):
  assert list(got) == list(want)  # top-level key order too
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize('cfg', [GPT_UNTIED, GPT_TIED, VIT],
                         ids=['gpt-untied', 'gpt-tied', 'vit'])
@pytest.mark.parametrize('key', [jax.random.key(7), jax.random.PRNGKey(3)],
                         ids=['typed-key', 'raw-key'])
def test_equals_the_whole_model_init(cfg, key):
  got = models.init_params(cfg, key)
  _assert_same(got, _whole_model_init(cfg, key))
  first, second = (jax.tree.leaves(got[name])
                    for name in models.block_names(cfg)[:2])
  assert any(not np.array_equal(a, b) for a, b in zip(first, second))


def test_inside_jit_and_eval_shape():
  # the first call, which makes the plan, under a trace: no tracer leaks
  fresh = GPT2Config(depth=2, width=12, heads=2, vocab_size=23, n_positions=8,
                     tie_embeddings=False)
  key = jax.random.key(2)
  shapes = jax.eval_shape(lambda k: models.init_params(fresh, k), key)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
      lambda s: (s.shape, s.dtype), models.abstract_params(fresh))
  in_jit = jax.jit(lambda k: models.init_params(fresh, k))(key)
  _assert_same(in_jit, _whole_model_init(fresh, key))
  _assert_same(models.init_params(fresh, key), in_jit)
  small = dataclasses.replace(ghn.named('ghn3-tiny'), hid=8, layers=2,
                              heads=2, max_shape=(8, 8, 16, 16))
  expected = jax.eval_shape(lambda: ghn.init(small, 'vit'))
  got = ghn.init(small, 'vit')
  assert jax.tree.structure(got) == jax.tree.structure(expected)


def _block_traces(cfg, seed):
  """Block programs traced by `init_params(cfg)`, and its params."""
  before = compiles.trace_counts('block_init').get('block', 0)
  params = models.init_params(cfg, jax.random.key(seed))
  return compiles.trace_counts('block_init').get('block', 0) - before, params


def test_models_with_the_same_blocks_share_one_program():
  untied = GPT2Config(depth=4, width=20, heads=2, vocab_size=29,
                      n_positions=10, tie_embeddings=False)
  tied = dataclasses.replace(untied, vocab_size=31, tie_embeddings=True)
  shallow = ViTConfig(depth=2, width=20, heads=2, mlp_dim=36, patch=4,
                      image_size=8, channels=3, num_classes=3)
  # depth varies for ViTs only: a GPT-2's init depends on its depth
  deep = dataclasses.replace(shallow, depth=5)
  assert _block_traces(untied, 0)[0] == 1  # four blocks, one program
  traces, params = _block_traces(tied, 1)
  assert traces == 0
  _assert_same(params, _whole_model_init(tied, jax.random.key(1)))
  assert _block_traces(shallow, 2)[0] == 1
  traces, params = _block_traces(deep, 3)
  assert traces == 0
  _assert_same(params, _whole_model_init(deep, jax.random.key(3)))
  plan = models._init_plan(  # pylint: disable=protected-access
      tied, jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
  outside = jax.eval_shape(plan.outside, jax.random.key(0))
  assert sorted(outside) == ['ln_f', 'wpe', 'wte']  # blocks skipped there


class _Block(nn.Module):
  std: float

  @nn.compact
  def __call__(self, x, gate, *, shift):
    kernel_init = nn.initializers.normal(self.std)
    return x + nn.Dense(x.shape[-1], kernel_init=kernel_init)(x) * gate + shift


class _Stack(nn.Module):
  """Blocks b_0..b_3 of several inputs, whose init differs past b_1: two
  block programs."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(6, name='embed')(x)
    gate = jax.nn.sigmoid(nn.Dense(1, name='gate')(x))
    for i in range(4):
      x = _Block(0.02 if i < 2 else 0.5, name=f'b_{i}')(x, gate, shift=1.0)
    return nn.Dense(3, name='head')(x)


def test_blocks_that_init_differently_get_their_own_program():
  model, x, names = _Stack(), jnp.zeros((2, 5)), [f'b_{i}' for i in range(4)]
  key = jax.random.key(4)
  plan = block_init.Plan(model, (x,), names, jax.ShapeDtypeStruct(key.shape,
                                                               key.dtype))
  structures = [structure for _, structure, _ in plan.blocks]
  assert structures[0] == structures[1] != structures[2] == structures[3]
  got = block_init.run(plan, key)
  want = jax.jit(lambda k: model.init(prng.fused_threefry(k), x)['params'])(
      key)
  _assert_same(got, want)


def test_a_block_the_model_never_calls_is_named():
  with pytest.raises(ValueError, match=r"\['b_9'\]"):
    block_init.Plan(_Stack(), (jnp.zeros((2, 5)),), ['b_0', 'b_9'],
                    jax.ShapeDtypeStruct((), jax.random.key(0).dtype))


@pytest.mark.parametrize('decoder', ['logah-tiny', 'ghn3-tiny'])
def test_ghn_init_equals_one_program(decoder):
  small = (dict(rank=4) if decoder.startswith('logah')
           else dict(max_shape=(16, 16, 16, 16)))
  cfg = dataclasses.replace(ghn.named(decoder), hid=16, layers=3, heads=2,
                            **small)
  # pylint: disable=protected-access
  body = ghn_api._body_module(cfg, 'gpt2')
  dummy = ghn_api.make_inputs(cfg, 'gpt2', [ghn_api._dummy_arch('gpt2')])

  @jax.jit
  def reference(key):
    k_body, k_dec, k_1d, k_cls = jax.random.split(prng.fused_threefry(key), 4)
    params = {'body': body.init(k_body, dummy)['params'],
              'decoder': ghn_api.decoder_module(cfg).init(
                  k_dec, *ghn_api._decoder_init_args(cfg))['params']}
    if cfg.decoder == 'lowrank':
      one = jnp.zeros((1, 1))
      params['decoder_1d'] = ghn_api.TorchDense(1).init(k_1d, one)['params']
      params['bias_class'] = ghn_api.TorchDense(1).init(k_cls, one)['params']
    return params

  got = ghn.init(cfg, 'gpt2', seed=6)
  want = reference(jax.random.key(6))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  layers = [got['body'][f'layer_{i}']['fc1']['kernel'] for i in range(3)]
  assert not np.array_equal(layers[0], layers[1])
  assert not np.array_equal(layers[1], layers[2])
