"""The compiled form of the models' training step: what XLA is left to do.

Every Dense layer multiplies a (rows, d_in) matrix (`layers.dense`), so its
kernel's gradient contracts one dimension and XLA's CPU backend multiplies
without first writing the layer's output gradient transposed (about 6-9% of
a step; docs/performance.md).
"""

import re

import jax
import numpy as np
import optax
import pytest

from configs_for_tests import random_params
from logah_jax import models
from logah_jax.arch import GPT2Config, ViTConfig

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
