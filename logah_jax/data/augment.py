"""Image augmentation and normalisation on host numpy arrays.

The CIFAR training augmentation of the paper (ppuda): random crop back to
the original size from the image zero-padded by 4 pixels, then a horizontal
flip with probability 1/2. Parameters are drawn for a whole global batch
from a generator seeded by (seed, step), so a batch is reproducible and a
host that holds only a shard of it applies the same crops as one that holds
all of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_AUGMENT_STREAM = 0x617567  # keeps augmentation draws apart from shuffling


@dataclasses.dataclass(frozen=True)
class CropFlip:
  """Per-image crop offsets (in the padded image) and flip flags."""

  dy: np.ndarray
  dx: np.ndarray
  flip: np.ndarray

  def __getitem__(self, index) -> 'CropFlip':
    return CropFlip(self.dy[index], self.dx[index], self.flip[index])


def sample_crop_flip(seed: int, step: int, n: int, pad: int = 4) -> CropFlip:
  rng = np.random.default_rng([_AUGMENT_STREAM, seed, step])
  dy = rng.integers(0, 2 * pad + 1, size=n)
  dx = rng.integers(0, 2 * pad + 1, size=n)
  flip = rng.random(n) < 0.5
  return CropFlip(dy, dx, flip)


def apply_crop_flip(images: np.ndarray, params: CropFlip,
                    pad: int = 4) -> np.ndarray:
  """images (B,H,W,C) -> (B,H,W,C), each cropped/flipped by its params."""
  b, h, w, _ = images.shape
  if len(params.dy) != b:
    raise ValueError(f'{len(params.dy)} augmentation draws for {b} images.')
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = params.dy[:, None] + np.arange(h)
  cols = params.dx[:, None] + np.arange(w)
  cols = np.where(params.flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 -> float32 (x/255 - mean) / std, per channel."""
  mean = np.asarray(mean, np.float32)
  inv_std = 1.0 / np.asarray(std, np.float32)
  out = images.astype(np.float32)
  out *= np.float32(1 / 255)
  out -= mean
  out *= inv_std
  return out
