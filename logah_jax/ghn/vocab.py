"""Shape vocabularies and decoding keys, computed on the host with numpy.

The shape encoder embeds each node's 4-D shape through two lookup tables
(channels, spatial); decoding groups nodes by a "key" that clamps each
dimension (docs/algorithm.md §2, §4.1). Both are pure functions of
integers, so they run once per (GHN config, architecture) and never inside
jit.
"""

from __future__ import annotations

import functools

import numpy as np

GPT2_VOCAB = 50257  # the LLM shape encoder's extra channel entry


@functools.lru_cache(maxsize=None)
def channel_vocab(family: str, num_classes: int) -> np.ndarray:
  """Sorted channel sizes with their own embedding row (one more: no shape)."""
  values = {1, 3, num_classes}
  values |= set(range(8, 57, 8)) | set(range(64, 4081, 16))
  values |= set(range(4096, 8193, 32))
  if family == 'gpt2':
    values.add(GPT2_VOCAB)
  elif family != 'vit':
    raise ValueError(f'GHN family={family!r} must be "vit" or "gpt2".')
  return np.array(sorted(values), dtype=np.int64)


@functools.lru_cache(maxsize=None)
def spatial_vocab(max_spatial: int) -> np.ndarray:
  values = set(range(1, max(12, max_spatial), 2)) | {14, 16}
  return np.array(sorted(values), dtype=np.int64)


def _nearest(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Index of the nearest entry; ties go to the smaller entry (argmin)."""
  return np.abs(values[..., None] - vocab).argmin(-1)


def channel_index(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
  values = np.asarray(values, np.int64)
  idx = _nearest(vocab, values)
  idx = np.where((values >= 4) & (values <= 7),
                 np.searchsorted(vocab, 8), idx)  # 4..7 share the 8 bucket
  return np.where(values >= vocab[-1], len(vocab) - 1, idx)


def spatial_index(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
  values = np.asarray(values, np.int64)
  idx = _nearest(vocab, values)
  idx = np.where(values == 2, np.searchsorted(vocab, 3), idx)
  return np.where(values >= vocab[-1], len(vocab) - 1, idx)


def shape_indices(shapes4d: np.ndarray, family: str, num_classes: int,
                  max_spatial: int) -> np.ndarray:
  """[N, 4] shapes -> [N, 4] table rows; shapeless nodes get the dummy row."""
  shapes4d = np.asarray(shapes4d, np.int64)
  if shapes4d.ndim != 2 or shapes4d.shape[1] != 4:
    raise ValueError(f'shapes4d has shape {shapes4d.shape}; expected (N, 4).')
  if (shapes4d < 0).any():
    raise ValueError(f'the shape vocabulary cannot place negative dimension '
                     f'{int(shapes4d.min())}.')
  ch, sp = channel_vocab(family, num_classes), spatial_vocab(max_spatial)
  out = np.concatenate([channel_index(ch, shapes4d[:, :2]),
                        spatial_index(sp, shapes4d[:, 2:])], axis=1)
  shapeless = (shapes4d == 0).all(axis=1)
  partial = (shapes4d == 0).any(axis=1) & ~shapeless
  if partial.any():
    row = int(np.flatnonzero(partial)[0])
    raise ValueError(f'the shape vocabulary cannot place node {row} with a '
                     f'zero dimension: {tuple(shapes4d[row])}.')
  dummy = np.array([len(ch), len(ch), len(sp), len(sp)])
  return np.where(shapeless[:, None], dummy, out).astype(np.int32)


def min_size(size: int, limit: int) -> int:
  """Decoded size of one dimension (`min_sz`, docs/algorithm.md §4.1)."""
  n = min(size, limit)
  if n % 3 == 0:
    n = n // 3 * 4
  if n >= limit / 2:
    n = limit
  return n
