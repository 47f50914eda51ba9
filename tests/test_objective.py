"""GHN training's loss and metric against NumPy: the Frobenius regulariser,
cross-entropy, the GPT task loss, and `objective.hits` (argmax, ties
included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logah_jax import arch as arch_lib
from logah_jax import models
from logah_jax.models import layers
from logah_jax.train import objective


def _reference(logits, targets):
  return np.argmax(logits, -1) == targets


@pytest.mark.parametrize('shape,kind', [
    ((64,), 'normal'),              # ViT: one label per image
    ((2, 16), 'normal'),            # GPT-2: one per position
    ((4, 8), 'few_values'),         # many ties, at and before the target
    ((3, 5), 'constant'),           # every class ties
])
@pytest.mark.parametrize('classes', [7, 1000])
def test_hits_equal_numpy_argmax(shape, kind, classes):
  rng = np.random.default_rng(classes + len(shape))
  if kind == 'normal':
    logits = rng.normal(size=(*shape, classes)).astype(np.float32)
  elif kind == 'few_values':
    logits = rng.integers(0, 3, size=(*shape, classes)).astype(np.float32)
  else:
    logits = np.full((*shape, classes), 0.25, np.float32)
  targets = rng.integers(0, classes, size=shape).astype(np.int32)
  # Make about half of the targets the argmax, and put some at the ends.
  flat_t = targets.reshape(-1)
  flat_l = logits.reshape(-1, classes)
  flat_t[::2] = np.argmax(flat_l[::2], -1)
  flat_t[1::5] = 0
  flat_t[3::7] = classes - 1
  want = _reference(logits, targets)
  got = np.asarray(jax.jit(objective.hits)(logits, targets))
  np.testing.assert_array_equal(got, want)
  assert float(objective.correct(logits, targets)) == want.sum()
  if kind == 'constant':  # argmax is class 0 on every row
    np.testing.assert_array_equal(got, targets == 0)


def test_frobenius_sum_and_its_gradient_at_zero():
  tree = {'a': jnp.arange(6.0).reshape(2, 3), 'b': jnp.zeros((4,))}
  want = np.linalg.norm(np.arange(6.0))
  np.testing.assert_allclose(float(objective.frobenius_sum(tree)), want,
                             rtol=1e-6)
  g = jax.grad(objective.frobenius_sum)(tree)
  assert np.all(np.isfinite(g['b'])) and np.all(g['b'] == 0)
  np.testing.assert_allclose(g['a'], np.arange(6.0).reshape(2, 3) / want,
                             rtol=1e-6)


def test_frobenius_sum_of_stacked_blocks_takes_one_square_root():
  # One norm per leaf and per stacked block, the first `depth` blocks
  # counted; the square roots of all of them in one operation.
  rng = np.random.default_rng(0)
  tree = {'wte': rng.normal(size=(5, 3)), 'ln': {'b': rng.normal(size=4)},
          layers.STACKED: {'k': rng.normal(size=(3, 4, 2)),
                           'v': rng.normal(size=(3, 6))}}
  tree = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
  blocks = tree[layers.STACKED]
  for depth in (None, 2):
    d = 3 if depth is None else depth
    want = (np.linalg.norm(tree['wte']) + np.linalg.norm(tree['ln']['b'])
            + sum(np.linalg.norm(np.asarray(blocks[k][i]))
                  for k in 'kv' for i in range(d)))
    np.testing.assert_allclose(float(objective.frobenius_sum(tree, depth)),
                               want, rtol=1e-6)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(objective.frobenius_sum))(tree)
  assert str(jaxpr).count(' sqrt ') == 1


def test_cross_entropy_matches_numpy_with_label_smoothing():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, 5)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  hard = -logp[np.arange(5), targets].mean()
  smooth = 0.9 * hard + 0.1 * (-logp.mean(-1)).mean()
  np.testing.assert_allclose(objective.cross_entropy(logits, targets), hard,
                             rtol=1e-5)
  np.testing.assert_allclose(objective.cross_entropy(logits, targets, 0.1),
                             smooth, rtol=1e-5)


def test_gpt_task_loss_is_next_token():
  arch = arch_lib.GPT2Config(depth=1, width=16, heads=2, vocab_size=11,
                             n_positions=8)
  params = models.init_params(arch, jax.random.key(0))
  tokens = np.arange(10, dtype=np.int32).reshape(2, 5) % 11
  loss, logits, targets = objective.task_loss(arch, params,
                                              {'tokens': tokens})
  assert logits.shape == (2, 4, 11)
  np.testing.assert_array_equal(targets, tokens[:, 1:])
  want = objective.cross_entropy(
      models.build(arch).apply({'params': params}, tokens[:, :-1]),
      tokens[:, 1:])
  np.testing.assert_allclose(loss, want, rtol=1e-6)


@pytest.mark.parametrize('tied', [False, True])
def test_periodic_vocabulary_loss_gradient_and_hits_equal_the_full_ones(tied):
  """An output layer whose columns repeat every `period` tokens (a GHN's
  tiled prediction): the loss from one period's logits weighted by repeat
  counts, its gradient through the tiling, and the hits equal those of the
  full logits (NumPy argmax for the hits)."""
  vocab, period = 300, 128  # 2 whole copies and a cut one
  arch = arch_lib.GPT2Config(depth=1, width=16, heads=2, vocab_size=vocab,
                             n_positions=16, tie_embeddings=tied)
  params = models.init_params(arch, jax.random.key(0))
  key = 'wte' if tied else 'lm_head'
  leaf = 'embedding' if tied else 'kernel'
  axis = 0 if tied else 1  # the vocabulary axis of the Flax leaf
  block = jnp.take(params[key][leaf], jnp.arange(period), axis=axis) * 50.0

  def with_block(b):
    copies = [b, b, jnp.take(b, jnp.arange(vocab - 2 * period), axis=axis)]
    return {**params, key: {leaf: jnp.concatenate(copies, axis=axis)}}

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (2, 13)).astype(np.int32)
  apply = jax.jit(lambda x: models.build(arch).apply(
      {'params': with_block(block)}, x))
  for i in range(0, 12, 3):  # causal: position i's logits see tokens <= i
    top = np.argmax(np.asarray(apply(tokens[:, :-1]))[:, i], -1)
    tokens[:, i + 1] = top  # a hit (the maximum is in the first period)
    top = np.argmax(np.asarray(apply(tokens[:, :-1]))[:, i + 1], -1)
    tokens[:, i + 2] = top + period  # the same logit repeated: no hit
  full_logits = np.asarray(apply(tokens[:, :-1]))
  targets = tokens[:, 1:]
  batch = {'tokens': tokens}

  def loss(b, vocab_period):
    out = objective.task_loss(arch, with_block(b), batch,
                              vocab_period=vocab_period)
    return out[0], out[1:]

  (full, (logits, t)), g_full = jax.value_and_grad(loss, has_aux=True)(
      block, 0)
  (part, (plogits, _)), g_part = jax.value_and_grad(loss, has_aux=True)(
      block, period)
  assert plogits.shape == (2, 12, period)
  np.testing.assert_allclose(part, full, rtol=1e-6)
  np.testing.assert_allclose(g_part, g_full, rtol=1e-4, atol=1e-6)
  want = np.argmax(full_logits, -1) == targets
  assert 0 < want.sum() < want.size
  np.testing.assert_array_equal(objective.hits(logits, t), want)
  np.testing.assert_array_equal(
      objective.hits(plogits, t, periodic=True), want)


@pytest.mark.parametrize('tied', [False, True])
def test_first_period_params_give_the_full_loss_gradients_and_norm(tied):
  """GHN training's view of a GPT-2 whose vocabulary matrices repeat every
  `period` rows: params holding the first period only, looked up mod the
  period (`embedding_period`), with one period of logits and the
  regulariser's rows weighted by their copies, give the loss, the
  regulariser (against NumPy's norm of the full matrices) and the
  gradients of the full, tiled params."""
  vocab, period = 300, 128  # 2 whole copies and a cut one
  arch = arch_lib.GPT2Config(depth=1, width=16, heads=2, vocab_size=vocab,
                             n_positions=16, tie_embeddings=tied)
  params = models.init_params(arch, jax.random.key(0))
  paths = [('wte', 'embedding', 0)] + ([] if tied else [('lm_head', 'kernel',
                                                         1)])
  blocks = {m: 20.0 * jnp.take(params[m][n], jnp.arange(period), axis=a)
            for m, n, a in paths}

  def tiled(bs):
    out = dict(params)
    for m, n, a in paths:
      rest = jnp.take(bs[m], jnp.arange(vocab - 2 * period), axis=a)
      out[m] = {n: jnp.concatenate([bs[m], bs[m], rest], axis=a)}
    return out

  def first(bs):
    return {**params, **{m: {n: bs[m]} for m, n, _ in paths}}

  tokens = np.random.default_rng(0).integers(0, vocab, (2, 13)).astype(
      np.int32)
  batch = {'tokens': tokens}
  copies = {(m, n): objective.period_copies(vocab, period)
            for m, n, _ in paths}

  def full_loss(bs):
    p = tiled(bs)
    return (objective.task_loss(arch, p, batch)[0],
            objective.frobenius_sum(p))

  def part_loss(bs):
    p = first(bs)
    return (objective.task_loss(arch, p, batch, vocab_period=period,
                                embedding_period=period)[0],
            objective.frobenius_sum(p, copies=copies))

  total = lambda f: lambda bs: sum(f(bs))
  (ce, reg), (ce_p, reg_p) = full_loss(blocks), part_loss(blocks)
  np.testing.assert_allclose(ce_p, ce, rtol=1e-6)
  want = sum(np.sqrt(np.sum(np.square(np.asarray(x, np.float64))))
             for x in jax.tree.leaves(tiled(blocks)))
  np.testing.assert_allclose(reg, want, rtol=1e-5)
  np.testing.assert_allclose(reg_p, want, rtol=1e-5)
  g = jax.grad(total(full_loss))(blocks)
  g_p = jax.grad(total(part_loss))(blocks)
  for m, _, _ in paths:
    np.testing.assert_allclose(g_p[m], g[m], rtol=1e-4, atol=1e-6)
  if tied:
    with pytest.raises(ValueError, match='hidden=True'):
      models.build(arch).apply({'params': first(blocks)}, tokens[:, :-1],
                               embedding_period=period)
