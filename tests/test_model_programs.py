"""The compiled form of training steps: what XLA is left to do.

Every Dense layer of the models (`layers.dense`) and of the GHN
(`TorchDense`, the decoder's `SliceableDense`) multiplies a (rows, d_in)
matrix, so its kernel's gradient contracts one dimension and XLA's CPU
backend multiplies without first writing the layer's output gradient
transposed (2-10% of a step; docs/performance.md).
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs_for_tests import random_params
from logah_jax import models
from logah_jax.arch import GPT2Config, ViTConfig
from logah_jax.ghn import decoders
from logah_jax.ghn import graphormer
from logah_jax.models import layers

B, T = 2, 20  # no other array of the step has a size checked below
GPT = GPT2Config(depth=2, width=16, heads=2, vocab_size=37, n_positions=32)
GPT_UNTIED = GPT2Config(depth=2, width=16, heads=2, vocab_size=37,
                        n_positions=32, tie_embeddings=False)
VIT = ViTConfig(depth=2, width=24, heads=3, mlp_dim=40, patch=4, image_size=16,
                channels=3, num_classes=10)
_SHAPE = re.compile(r'^\s*(?:ROOT )?%(copy|transpose)\S* = \w+\[([\d,]*)\]')


def _loss_and_grad_program(cfg) -> str:
  params = random_params(cfg)
  rng = np.random.default_rng(0)
  if cfg.family == 'gpt2':
    tokens = rng.integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)

    def loss(p):
      logits = models.build(cfg).apply({'params': p}, tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, tokens[:, 1:]).mean()
  else:
    images = rng.normal(size=(B, 16, 16, 3)).astype(np.float32)

    def loss(p):
      return models.build(cfg).apply({'params': p}, images).mean()
  return jax.jit(jax.value_and_grad(loss)).lower(params).compile().as_text()


def _copied_sizes(hlo: str) -> set[int]:
  """Element counts of the copies and transposes XLA kept."""
  sizes = set()
  for line in hlo.splitlines():
    m = _SHAPE.match(line)
    if m:
      sizes.add(int(np.prod([int(d) for d in m.group(2).split(',') if d])))
  return sizes


@pytest.mark.parametrize('cfg', [GPT, GPT_UNTIED, VIT], ids=lambda c: c.name)
def test_dense_outputs_gradients_are_not_copied_transposed(cfg):
  rows = B * (T if cfg.family == 'gpt2' else (16 // 4) ** 2 + 1)
  if cfg.family == 'gpt2':  # fused q, k, v; MLP; output layer (tied or not)
    features = (3 * cfg.width, 4 * cfg.width, cfg.vocab_size)
  else:  # fused q, k, v; MLP
    features = (3 * cfg.width, cfg.mlp_dim)
  sizes = _copied_sizes(_loss_and_grad_program(cfg))
  assert not sizes & {rows * f for f in features}, sorted(sizes)


class _Layer(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    if self.kind == 'layers.dense':
      return layers.dense(40, nn.initializers.normal(0.02),
                          nn.initializers.zeros, dtype=jnp.float32,
                          name='dense')(x)
    if self.kind == 'TorchDense':
      return graphormer.TorchDense(40)(x)
    return decoders.SliceableDense(48)(x, 40)


@pytest.mark.parametrize('kind', ['layers.dense', 'TorchDense',
                                  'SliceableDense'])
def test_dense_layers_on_3d_inputs_need_no_copy_in_their_gradient(kind):
  x = np.random.default_rng(0).normal(size=(2, 24, 16)).astype(np.float32)
  layer = _Layer(kind)
  params = layer.init(jax.random.key(0), x)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x))),
                          argnums=(0, 1)))
  assert not _copied_sizes(grad.lower(params, x).compile().as_text())
