"""Deterministic, checkpointable batching of any source.

The order of epoch e is a permutation drawn from (seed, e) alone, and the
augmentation of global step s from (seed, s) alone, so the position
(epoch, batch) is the whole state: `state()` is a small dict of ints that can
be stored beside a model checkpoint, and `restore()` resumes with exactly the
batches an uninterrupted loader would have produced.
"""

from __future__ import annotations

import numpy as np

from logah_jax.data import augment as augment_lib
from logah_jax.validation import ConfigError, check_int

_STATE_KEYS = ('epoch', 'batch', 'seed', 'batch_size', 'num_examples')


class Loader:
  """Yields numpy batches of a source (see sources.Source).

  Image batches: {'image': float32 (B,H,W,C) normalised with the dataset's
  mean/std (uint8 if normalize=False), 'label': int32 (B,)}. Text batches:
  {'tokens': int32 (B, block_size+1)}; inputs [:, :-1], targets [:, 1:].

  batch_size is the global batch; with shard_count > 1 each process gets
  rows [shard_index*B/shard_count, (shard_index+1)*B/shard_count) of it.
  augment=True crops and flips every image batch, whatever the split is
  called (evaluation builds its loaders with augment=False).
  num_epochs=None iterates forever. The loader is its own iterator:
  iterating it again continues from the current position.
  """

  def __init__(self, source, batch_size: int, *, seed: int = 0,
               shuffle: bool = True, drop_remainder: bool = True,
               num_epochs: int | None = None, augment: bool = False,
               pad: int = 4, normalize: bool = True,
               shard_index: int = 0, shard_count: int = 1):
    check_int(batch_size, 'batch_size', 1)
    check_int(seed, 'seed', 0)
    check_int(pad, 'pad', 0)
    if num_epochs is not None:
      check_int(num_epochs, 'num_epochs', 1)
    check_int(shard_count, 'shard_count', 1)
    check_int(shard_index, 'shard_index', 0)
    if shard_index >= shard_count:
      raise ConfigError(f'shard_index={shard_index} must be < '
                        f'shard_count={shard_count}.')
    if batch_size % shard_count:
      raise ConfigError(f'batch_size={batch_size} (global) is not divisible '
                        f'by shard_count={shard_count}.')
    if shard_count > 1 and not drop_remainder:
      raise ConfigError('shard_count > 1 needs drop_remainder=True so that '
                        'every shard gets the same batch size.')
    info = source.info
    if augment and info.kind != 'image':
      raise ConfigError(f'augment=True applies to images; {info.name} is '
                        f'{info.kind}.')
    n = len(source)
    if n == 0:
      raise ConfigError(f'{info.name}/{info.split} is empty.')
    if drop_remainder and n < batch_size:
      raise ConfigError(
          f'batch_size={batch_size} exceeds the {n} examples of '
          f'{info.name}/{info.split}; with drop_remainder=True no batch '
          'would be produced.')
    self.source, self.info = source, info
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.shuffle, self.drop_remainder = shuffle, drop_remainder
    self.num_epochs, self.pad, self.normalize = num_epochs, pad, normalize
    self.augment = bool(augment)
    self.shard_index, self.shard_count = shard_index, shard_count
    self.num_examples = n
    per = batch_size // shard_count
    self._rows = slice(shard_index * per, (shard_index + 1) * per)
    self._epoch = self._batch = 0
    self._order_cache = (None, None)

  @property
  def batches_per_epoch(self) -> int:
    if self.drop_remainder:
      return self.num_examples // self.batch_size
    return -(-self.num_examples // self.batch_size)

  @property
  def step(self) -> int:
    """Global batches produced so far (the augmentation key)."""
    return self._epoch * self.batches_per_epoch + self._batch

  def epoch_order(self, epoch: int) -> np.ndarray:
    """Example indices of an epoch, in the order they are served."""
    if self._order_cache[0] != epoch:
      if self.shuffle:
        order = np.random.default_rng([self.seed, epoch]).permutation(
            self.num_examples)
      else:
        order = np.arange(self.num_examples)
      self._order_cache = (epoch, order)
    return self._order_cache[1]

  def state(self) -> dict[str, int]:
    return {'epoch': self._epoch, 'batch': self._batch, 'seed': self.seed,
            'batch_size': self.batch_size, 'num_examples': self.num_examples}

  def restore(self, state: dict) -> None:
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
      raise ConfigError(f'Loader state lacks {", ".join(missing)}.')
    for key in ('seed', 'batch_size', 'num_examples'):
      if int(state[key]) != getattr(self, key):
        raise ConfigError(
            f'Loader state has {key}={state[key]} but this loader has '
            f'{key}={getattr(self, key)}; it belongs to another data stream.')
    epoch, batch = int(state['epoch']), int(state['batch'])
    if epoch < 0 or not 0 <= batch < self.batches_per_epoch:
      raise ConfigError(f'Loader state epoch={epoch}, batch={batch} is out of '
                        f'range ({self.batches_per_epoch} batches an epoch).')
    self._epoch, self._batch = epoch, batch

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_epochs is not None and self._epoch >= self.num_epochs:
      raise StopIteration
    start = self._batch * self.batch_size
    indices = self.epoch_order(self._epoch)[start:start + self.batch_size]
    step = self.step
    self._batch += 1
    if self._batch == self.batches_per_epoch:
      self._epoch, self._batch = self._epoch + 1, 0
    return self._make_batch(indices, step)

  def _make_batch(self, indices: np.ndarray, step: int) -> dict:
    batch = self.source.get_batch(indices[self._rows])
    if self.info.kind != 'image':
      return batch
    images = batch['image']
    if self.augment:
      params = augment_lib.sample_crop_flip(self.seed, step, len(indices),
                                            self.pad)
      images = augment_lib.apply_crop_flip(images, params[self._rows],
                                           self.pad)
    if self.normalize:
      images = augment_lib.normalize(images, self.info.mean, self.info.std)
    batch['image'] = images
    return batch
