"""Evaluation of a target on a whole split: accuracy, loss, perplexity.

Batches keep one static shape: the last, smaller batch is padded and masked,
so evaluating a split compiles once per (architecture, batch size).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from logah_jax import data as data_lib
from logah_jax import models
from logah_jax.arch.configs import ViTConfig
from logah_jax.train import objective
from logah_jax.validation import ConfigError


@functools.lru_cache(maxsize=64)
def _eval_fn(arch, scan: bool):
  def sums(params, batch, mask):
    x, targets = objective.inputs_and_targets(arch, batch)
    logits = models.build(arch, scan=scan).apply({'params': params}, x)
    logits = logits.astype(jnp.float32)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None],
                              -1)[..., 0]
    hits = objective.hits(logits, targets).astype(jnp.float32)
    per_row = ce.reshape(ce.shape[0], -1)
    weights = jnp.broadcast_to(mask[:, None], per_row.shape)
    return (jnp.sum(per_row * weights),
            jnp.sum(hits.reshape(per_row.shape) * weights),
            jnp.sum(weights))
  return jax.jit(sums)


def _pad(batch: dict, size: int):
  rows = len(next(iter(batch.values())))
  mask = np.zeros((size,), np.float32)
  mask[:rows] = 1.0
  if rows == size:
    return batch, mask
  padded = {k: np.concatenate([v, np.repeat(v[:1], size - rows, 0)])
            for k, v in batch.items()}
  return padded, mask


def eval_loader(source, batch_size: int) -> data_lib.Loader:
  """One pass over `source` in order, never augmented: whatever the split is
  called (a held-out slice such as 'train[50000:]' included), evaluation
  sees the images as stored."""
  return data_lib.Loader(source, min(batch_size, len(source)), shuffle=False,
                         drop_remainder=False, num_epochs=1, augment=False)


def evaluate(arch, params, source, *, batch_size: int = 500,
             max_batches: int = 0, scan: bool = False) -> dict[str, float]:
  """Mean loss and accuracy (ViT) or loss and perplexity (GPT-2) of `params`.

  Args:
    source: a data source (e.g. `data.get_dataset(name, 'test')`).
    max_batches: evaluate only the first this many batches (0 = all).
    scan: `params` hold the blocks stacked (`models.stack_blocks`); they run
      as one scan.
  """
  loader = eval_loader(source, batch_size)
  fn = _eval_fn(arch, bool(scan))
  totals = [0.0, 0.0, 0.0]  # loss, hits, count

  def add(sums):
    for j, value in enumerate(jax.device_get(sums)):
      totals[j] += value

  # Each batch's sums are fetched once the next batch is dispatched, so the
  # host prepares a batch while the device runs the one before, and at most
  # two batches wait on the device.
  pending = None
  for i, batch in enumerate(loader):
    if max_batches and i >= max_batches:
      break
    batch, mask = _pad(batch, loader.batch_size)
    sums = fn(params, batch, mask)
    if pending is not None:
      add(pending)
    pending = sums
  if pending is not None:
    add(pending)
  loss, hits, count = totals
  if not count:
    raise ConfigError(f'evaluate: no examples in {source.info.name}/'
                     f'{source.info.split} (max_batches={max_batches})')
  out = {'loss': float(loss / count), 'examples': int(
      count if isinstance(arch, ViTConfig) else count / max(
          1, source.info.block_size))}
  if isinstance(arch, ViTConfig):
    out['accuracy'] = float(hits / count)
  else:
    out['perplexity'] = float(math.exp(min(out['loss'], 700.0)))
    out['token_accuracy'] = float(hits / count)
  return out
