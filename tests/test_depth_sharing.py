"""One GHN-training program for every depth of an architecture: the padded
program gives each architecture its own loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from logah_jax import arch as arch_lib
from logah_jax import compiles
from logah_jax import ghn as ghn_lib
from logah_jax import models
from logah_jax import parallel
from logah_jax.arch import batching
from logah_jax.ghn import depth_sharing
from logah_jax.train import ghn_step
from logah_jax.train import ghn_training
from logah_jax.train import objective
from logah_jax.validation import ConfigError

GHN = ghn_lib.named('logah-tiny')
# XLA's own values of the quick CPU options: the test run sets the quick ones
# for the whole process (conftest.py), a program given these compiles as a
# user's would.
XLA_DEFAULT_CPU = {'xla_cpu_use_fusion_emitters': True,
                   'xla_backend_optimization_level': 3}


def _gpt(depth, width=32):
  return arch_lib.GPT2Config(depth=depth, width=width, heads=4,
                             vocab_size=64, n_positions=16)


def _vit(depth, width=32):
  return arch_lib.ViTConfig(depth=depth, width=width, heads=4,
                            mlp_dim=4 * width, patch=7, image_size=28,
                            channels=1, num_classes=10)


def _batch(arch):
  rng = np.random.default_rng(0)
  if arch.family == 'vit':
    return {'image': rng.normal(size=(4, 28, 28, 1)).astype(np.float32),
            'label': rng.integers(0, 10, 4).astype(np.int32)}
  return {'tokens': rng.integers(0, 64, (2, 9)).astype(np.int32)}


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow  # ~35 s; the step test below covers it end to end
@pytest.mark.parametrize('make', [_gpt, _vit])
def test_skipped_blocks_are_the_identity_with_zero_gradients(make):
  """A depth-2 model = the first 2 blocks of a depth-4 scan run to depth 2."""
  short, deep = make(2), make(4)
  batch = _batch(short)
  params = models.stack_blocks(deep, models.init_params(deep,
                                                        jax.random.key(0)))
  own = jax.tree.map(lambda x: x, params)
  own['blocks'] = jax.tree.map(lambda x: x[:2], params['blocks'])

  def loss(arch, p, depth=None):
    return objective.task_loss(arch, p, batch, scan=True, depth=depth)[0]

  want, g_want = jax.jit(jax.value_and_grad(lambda p: loss(short, p)))(own)
  got, g_got = jax.jit(jax.value_and_grad(
      lambda p, d: loss(deep, p, d)))(params, jnp.int32(2))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  g_first = dict(g_got, blocks=jax.tree.map(lambda x: x[:2], g_got['blocks']))
  assert _max_diff(g_first, g_want) < 1e-6
  assert all(float(jnp.max(jnp.abs(x[2:]))) == 0.0
             for x in jax.tree.leaves(g_got['blocks']))
  # All four blocks when depth is 4: the plain scan.
  full = jax.jit(lambda p: loss(deep, p, jnp.int32(4)))(params)
  np.testing.assert_allclose(float(full), float(jax.jit(
      lambda p: loss(deep, p))(params)), rtol=1e-6)


def test_frobenius_sum_counts_the_first_depth_blocks():
  tree = {'w': jnp.ones((2, 2)),
          'blocks': {'k': jnp.arange(12.0).reshape(3, 4)}}
  norms = np.linalg.norm(np.arange(12.0).reshape(3, 4), axis=1)
  np.testing.assert_allclose(float(objective.frobenius_sum(tree, 2)),
                             2.0 + norms[:2].sum(), rtol=1e-6)
  g = jax.grad(objective.frobenius_sum)(tree, 2)
  assert np.all(g['blocks']['k'][2] == 0) and np.all(g['blocks']['k'][1] != 0)


@pytest.mark.slow  # ~30 s; the step test below covers it end to end
@pytest.mark.parametrize('make', [_gpt, _vit])
def test_layout_decodes_the_architecture_s_own_params(make):
  """Decoding with the depth-4 plan and a depth-2 layout = the depth-2
  decode, in its first 2 blocks and every other leaf (the GPT's residual
  projections check the depth-dependent scale)."""
  short, deep = make(2), make(4)
  family = short.family
  params = ghn_lib.init(GHN, family, 0)
  n_pad = batching.bucket_size(ghn_lib.num_nodes(GHN, deep))
  x = ghn_lib.node_embeddings(GHN, params, [short], n_pad)[0]
  n = ghn_lib.num_nodes(GHN, short)
  want = jax.jit(ghn_lib.decode_function(GHN, short, stacked=True))(
      params['decoder'], x[:n])
  rows, scales, depth = depth_sharing.layout(GHN, short, deep)
  assert int(depth) == 2
  got = jax.jit(ghn_lib.decode_function(GHN, deep, stacked=True,
                                        with_layout=True))(
      params['decoder'], x, (rows, scales))
  got['blocks'] = jax.tree.map(lambda v: v[:2], got['blocks'])
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert _max_diff(got, want) < 1e-6


def test_layout_refuses_another_width_or_a_shallower_program():
  with pytest.raises(ValueError, match='cannot run the program'):
    depth_sharing.layout(GHN, _gpt(2), _gpt(4, width=48))
  with pytest.raises(ValueError, match='cannot run the program'):
    depth_sharing.layout(GHN, _gpt(4), _gpt(2))


def test_program_arch_pads_to_the_deepest_candidate():
  depths = depth_sharing.program_depths([_gpt(2), _gpt(3), _gpt(2, 48)])
  assert depth_sharing.program_arch(_gpt(2), depths) == _gpt(3)
  assert depth_sharing.program_arch(_gpt(2, 48), depths) == _gpt(2, 48)
  assert depth_sharing.program_arch(_gpt(5), depths) == _gpt(5)
  assert depth_sharing.program_arch(_gpt(2, 64), depths) == _gpt(2, 64)


@pytest.mark.parametrize('make', [
    _gpt, pytest.param(_vit, marks=pytest.mark.slow)])  # ViT: ~30 s more
def test_shared_program_gives_each_depth_its_own_gradients(make):
  """Depth 2 runs the depth-3 program (compiled ahead, as GHN training
  does) and gets the loss and gradients of its own program. (GHN training
  runs shared programs end to end on CPUs, where they are the default.)
  The own program is compiled with the quick CPU options
  (`train.quick_compile`) and the shared one with XLA's defaults: those
  options must not change the results either."""
  assert XLA_DEFAULT_CPU.keys() == compiles.QUICK_CPU_COMPILE.keys()
  short, deep = make(2), make(3)
  family = short.family
  batch = _batch(short)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  n_pad = batching.bucket_size(ghn_lib.num_nodes(GHN, deep))
  step = ghn_step.GHNStep(GHN, family, optax.sgd(0.1), mesh, m=2,
                          n_pad=n_pad, share_depths=[deep, short],
                          compiler_options=XLA_DEFAULT_CPU)
  assert step.program_arch(short) == step.program_arch(deep) == deep
  params = ghn_lib.init(GHN, family, 0)
  # pylint: disable=protected-access
  xs = step._body(params['body'], step.inputs([short, deep]))
  step._signature = jax.tree.map(  # what a step sets before compiling ahead
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
      (params['decoder'], xs[0], batch))
  program = step._compile_arch_now(deep, 0)
  got = program(params['decoder'], xs[0], batch, step._layout(short, 0))
  own = ghn_step.GHNStep(GHN, family, optax.sgd(0.1), mesh, m=2,
                         n_pad=n_pad,
                         compiler_options=compiles.quick_compile_options())
  want = own._compile_arch(short, 0)(params['decoder'], xs[0], batch)
  # pylint: enable=protected-access
  assert _max_diff(got[:2], want[:2]) < 1e-6  # decoder and node gradients
  for k in ('ce', 'reg', 'acc'):
    np.testing.assert_allclose(float(got[2][k]), float(want[2][k]),
                               rtol=1e-6)


def test_share_depths_setting(monkeypatch):
  assert ghn_training.share_depths('auto') is True  # CPU backend
  assert ghn_training.share_depths('false') is False
  assert ghn_training.share_depths('False') is False
  assert ghn_training.share_depths(True) is True
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert ghn_training.share_depths('auto') is False
  for bad in ('yes', 1, None):
    with pytest.raises(ConfigError, match='config.train.share_depths'):
      ghn_training.share_depths(bad)

