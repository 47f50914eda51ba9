"""Whole-split evaluation against NumPy over every example at once.

`evaluate.evaluate` pads the last, smaller batch and masks the padding out;
the references here see each example exactly once, in one batch, and take
log-softmax and argmax in float64 NumPy.
"""

import math

import jax
import numpy as np
import pytest

from logah_jax import data as data_lib
from logah_jax import models
from logah_jax.arch.configs import GPT2Config, ViTConfig
from logah_jax.data import sources
from logah_jax.train import evaluate

VIT = ViTConfig(depth=1, width=16, heads=2, mlp_dim=32, patch=4,
                image_size=8, channels=3, num_classes=10)
GPT = GPT2Config(depth=1, width=16, heads=2, vocab_size=37, n_positions=8)


def _spread(params, seed):
  """Random params far from init, so logits differ row by row (a zero
  head would give every example the same loss and hide masking errors)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: p + rng.normal(0, 0.5, p.shape).astype(np.float32), params)


def _image_source(n, params):
  """n images, every other one labelled with the class `params` predict
  for it (so the accuracy is neither 0 nor 1), the rest at random."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  info = sources.SourceInfo('cifar10', 'test', 'image', n, num_classes=10,
                            image_shape=(8, 8, 3), mean=(0.5,) * 3,
                            std=(0.25,) * 3)
  labels = rng.integers(0, 10, n).astype(np.int32)
  unlabelled = sources.ArraySource(images, labels, info)
  x = next(data_lib.Loader(unlabelled, n, shuffle=False))['image']
  predicted = np.asarray(models.build(VIT).apply({'params': params}, x))
  labels[::2] = predicted.argmax(-1)[::2]
  return sources.ArraySource(images, labels, info)


def _token_source(windows, block=7):
  tokens = np.random.default_rng(2).integers(
      0, GPT.vocab_size, windows * block + 1).astype(np.int32)
  info = sources.SourceInfo('wikitext2', 'test', 'text', windows,
                            vocab_size=GPT.vocab_size, block_size=block)
  return sources.TokenWindows(tokens, block, info)


def _numpy_reference(arch, params, source, examples):
  """(mean cross-entropy, argmax accuracy) over the first `examples`."""
  batch = next(data_lib.Loader(source, len(source), shuffle=False,
                               drop_remainder=False, num_epochs=1))
  if isinstance(arch, ViTConfig):
    x, targets = batch['image'], batch['label']
  else:
    x, targets = batch['tokens'][:, :-1], batch['tokens'][:, 1:]
  logits = np.asarray(models.build(arch).apply({'params': params}, x),
                      np.float64)[:examples]
  targets = np.asarray(targets)[:examples]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  return ce.mean(), (logits.argmax(-1) == targets).mean()


@pytest.mark.parametrize('max_batches', [0, 2])
def test_vit_loss_and_accuracy_over_a_padded_last_batch(max_batches):
  params = _spread(models.init_params(VIT, jax.random.key(0)), 0)
  source = _image_source(21, params)  # batches of 8, 8 and 5 (+3 padded rows)
  got = evaluate.evaluate(VIT, params, source, batch_size=8,
                          max_batches=max_batches)
  examples = 16 if max_batches else 21
  loss, accuracy = _numpy_reference(VIT, params, source, examples)
  assert got['examples'] == examples
  np.testing.assert_allclose(got['loss'], loss, rtol=1e-5)
  assert got['accuracy'] == pytest.approx(accuracy, abs=1e-7)
  assert 0 < accuracy < 1  # some hits, some misses: the count is checked


def test_gpt2_loss_perplexity_and_token_accuracy_over_a_padded_last_batch():
  params = _spread(models.init_params(GPT, jax.random.key(1)), 1)
  source = _token_source(11)  # batches of 4, 4 and 3 (+1 padded window)
  got = evaluate.evaluate(GPT, params, source, batch_size=4)
  loss, accuracy = _numpy_reference(GPT, params, source, 11)
  assert got['examples'] == 11
  np.testing.assert_allclose(got['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(got['perplexity'], math.exp(loss), rtol=1e-5)
  assert got['token_accuracy'] == pytest.approx(accuracy, abs=1e-7)
  assert 0 < accuracy < 1
