"""The accuracy metric: `objective.hits` is NumPy's argmax, ties included."""

import jax
import numpy as np
import pytest

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
