"""Task losses, metrics and the predicted-parameter regulariser.

One place defines what "loss" means for a target, so GHN training, fine-tuning
and evaluation can never disagree: cross-entropy over classes for a ViT (with
optional label smoothing), next-token cross-entropy for GPT-2 (batches hold
block+1 tokens; inputs [:, :-1], targets [:, 1:]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from logah_jax import models
from logah_jax.arch.configs import GPT2Config, ViTConfig
from logah_jax.models import layers
from logah_jax.models.layers import STACKED


def inputs_and_targets(arch, batch):
  """(model input, integer targets) of a loader batch for `arch`."""
  if isinstance(arch, ViTConfig):
    return batch['image'], batch['label']
  if isinstance(arch, GPT2Config):
    tokens = batch['tokens']
    return tokens[:, :-1], tokens[:, 1:]
  raise ValueError(f'no task for architecture {arch!r}')


def cross_entropy(logits, targets, label_smoothing: float = 0.0):
  """Mean cross-entropy over all leading axes (float32)."""
  logits = logits.astype(jnp.float32)
  if label_smoothing:
    n = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(targets, n), label_smoothing)
    return optax.softmax_cross_entropy(logits, labels).mean()
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, targets).mean()


def task_loss(arch, params, batch, label_smoothing: float = 0.0, *,
              dtype=jnp.float32, remat: bool = False, scan: bool = False,
              depth=None, vocab_period: int = 0, embedding_period: int = 0):
  """(loss, logits, targets) of target `arch` with `params` on `batch`.

  `dtype` is the forward's compute dtype, `remat` rematerialises its blocks
  and `scan` runs them as one scan over stacked params (`models.build`);
  logits and the loss are float32 either way. `depth` (with `scan`, traced):
  only the first `depth` blocks run.

  `embedding_period` (GPT-2): the embedding's rows repeat with this period
  (`ghn.tiled_periods`) and `params` hold its first period only
  (`ghn.decode_function(..., first_period=True)`); so may `lm_head`'s
  columns, with `vocab_period`.

  `vocab_period` (GPT-2, no label smoothing): the output layer's columns
  repeat with this period (`ghn.vocab_period`: a GHN's prediction tiles a
  decoded block over the vocabulary), so the logits do too. The logits of
  the first period only are computed and returned, and the loss weighs each
  by its number of repeats: the same loss and gradients as the full logits,
  for a fraction of the output layer's work (docs/performance.md); `hits`
  with `periodic` gives their argmax's hits.
  """
  x, targets = inputs_and_targets(arch, batch)
  model = models.build(arch, dtype, remat, scan)
  if embedding_period and not isinstance(arch, GPT2Config):
    raise ValueError('task_loss: embedding_period needs a GPT-2')
  extra = {'embedding_period': embedding_period} if embedding_period else {}
  if not vocab_period:
    logits = model.apply({'params': params}, x, depth=depth, **extra)
    return cross_entropy(logits, targets, label_smoothing), logits, targets
  if not isinstance(arch, GPT2Config) or label_smoothing:
    raise ValueError('task_loss: vocab_period needs a GPT-2 and no label '
                     'smoothing')
  h = model.apply({'params': params}, x, depth=depth, hidden=True, **extra)
  if arch.tie_embeddings:
    w = params['wte']['embedding'][:vocab_period].T
  else:
    w = params['lm_head']['kernel'][:, :vocab_period]
  logits = layers.rows_apply(lambda r: r @ w.astype(dtype), h)
  logits = logits.astype(jnp.float32)
  repeats = period_copies(arch.vocab_size, vocab_period)
  top = jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True))
  lse = top[..., 0] + jnp.log(jnp.sum(repeats * jnp.exp(logits - top), -1))
  picked = jnp.take_along_axis(logits, (targets % vocab_period)[..., None],
                               -1)[..., 0]
  return jnp.mean(lse - picked), logits, targets


def hits(logits, targets, periodic: bool = False):
  """Where `argmax(logits, -1) == targets` (bool, the shape of targets).

  Exactly argmax's answer for finite logits, first index on ties: the
  target's logit is the row's maximum and no earlier class reaches it. This
  avoids argmax's index-carrying reduction, which took 53 ms of a
  GHN-training GPT-2's forward and backward (512 x 50,257 logits, 2-core
  CPU, profiled) against about 21 ms for this compare and reduction
  (docs/performance.md).

  `periodic`: the logits are a periodic vocabulary's first period
  (`task_loss` with `vocab_period`); a target past them repeats an earlier
  class, so it is never the first index of the maximum. (Not the default:
  the extra select made XLA keep a full-size temporary of the logits.)
  """
  inside = None
  if periodic:
    inside = targets < logits.shape[-1]
    targets = jnp.where(inside, targets, 0)
  top = jnp.max(logits, -1, keepdims=True)
  picked = jnp.take_along_axis(logits, targets[..., None], -1)
  earlier = (jnp.arange(logits.shape[-1], dtype=targets.dtype)
             < targets[..., None])
  tie_before = jnp.any(earlier & (logits == top), -1)
  hit = (picked[..., 0] == top[..., 0]) & ~tie_before
  return hit if inside is None else hit & inside


def correct(logits, targets, periodic: bool = False):
  """Number of argmax hits (float32 scalar; see `hits`)."""
  return jnp.sum(hits(logits, targets, periodic)).astype(jnp.float32)


def _safe_sqrt(sq):
  """sqrt whose gradient at 0 is 0 instead of NaN."""
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


# The vocabulary axis of a GPT-2's (vocab, width) matrices in Flax's layout.
_VOCAB_AXIS = {('wte', 'embedding'): 0, ('lm_head', 'kernel'): 1}


def period_copies(vocab: int, period: int) -> np.ndarray:
  """How many times each of the first `period` rows of a (vocab, ...)
  matrix whose rows repeat with `period` occurs in it."""
  return np.bincount(np.arange(vocab) % period).astype(np.float32)


def frobenius_sum(params, depth=None, copies=None):
  """Σ over tensors of ||w||_F, not squared, on full-size leaves.

  The regulariser of LoGAH's objective (docs/algorithm.md §6.1). Stacked
  block params (`models.stack_blocks`) count one norm per block; with a
  (traced) `depth`, only the first `depth` blocks count. The squared norms
  are gathered into one vector before the square roots, so that the program
  holds one reduction per leaf and one small tail, not a tail per leaf.

  `copies` ({(module, param): counts}): a GPT-2's vocabulary matrices given
  as the first period of a matrix that repeats it (`ghn.tiled_periods`);
  each of their rows counts `counts[i]` times (`period_copies`), which is
  the full matrix's norm.
  """
  copies = copies or {}
  squares, counted = [], []
  for key, sub in params.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
      stacked = key == STACKED
      x = jnp.square(leaf.astype(jnp.float32))
      name = (key,) + tuple(getattr(p, 'key', p) for p in path)
      if name in copies:
        x = x * np.expand_dims(copies[name], 1 - _VOCAB_AXIS[name])
      # Reduced in place, not reshaped to rows: XLA's CPU backend runs a
      # single long row's reduction on one thread.
      squares.append(jnp.sum(x, axis=tuple(range(1, x.ndim))) if stacked
                     else jnp.sum(x)[None])
      counted.append(jnp.arange(x.shape[0]) < depth
                     if stacked and depth is not None
                     else jnp.ones(squares[-1].shape, bool))
  if not squares:
    return jnp.zeros((), jnp.float32)
  norms = _safe_sqrt(jnp.concatenate(squares))
  return jnp.sum(jnp.where(jnp.concatenate(counted), norms, 0.0))
