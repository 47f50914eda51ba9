"""Image sources: Fashion-MNIST (ours), CIFAR-10/100 and ImageNet (tfds).

Small sets (Fashion-MNIST, CIFAR) are decoded once into uint8 arrays cached
in DATA_DIR/cache/images/ and memory-mapped afterwards (the tfds record reader
costs about 35 us an example; the cache makes every later run instant).
ImageNet stays random-access and is decoded batch by batch.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np

from logah_jax.data import builders
from logah_jax.data import sources
from logah_jax.data import storage
from logah_jax.validation import ConfigError, InputNotFoundError

_READ_CHUNK = 10_000


def _read_all(records, bulk: bool) -> dict[str, np.ndarray]:
  """All examples of a record source as {'image': uint8, 'label': int32}."""
  n = len(records)
  examples = []
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(n, start + _READ_CHUNK)))
    examples.extend(records.__getitems__(keys) if bulk else
                    [records[i] for i in keys])
  if not examples:
    raise ConfigError('The split holds no examples.')
  return {'image': np.stack([np.asarray(ex['image'], np.uint8)
                             for ex in examples]),
          'label': np.asarray([int(ex['label']) for ex in examples], np.int32)}


def _cached_split(records, name: str, split: str, data_dir,
                  fingerprint: dict | None) -> tuple[np.ndarray, np.ndarray]:
  loaded = {}

  def read(key):
    if not loaded:
      logging.info('Decoding %s/%s into the cache', name, split)
      loaded.update(_read_all(records, bulk=fingerprint is not None))
    return loaded[key]

  stem = (storage.resolve_data_dir(data_dir) / storage.CACHE_SUBDIR /
          'images' / f'{name}-{storage.split_key(split)}')
  fp = None if fingerprint is None else {'split': split, **fingerprint}
  images = storage.cached_array(f'{stem}-image.npy', fp, lambda: read('image'))
  labels = storage.cached_array(f'{stem}-label.npy', fp, lambda: read('label'))
  return images, labels


def _info(spec: sources.DatasetSpec, split: str, n: int,
          **overrides) -> sources.SourceInfo:
  fields = {f.name for f in dataclasses.fields(sources.SourceInfo)}
  base = {k: v for k, v in dataclasses.asdict(spec).items() if k in fields}
  base.update(split=split, num_examples=n, **overrides)
  return sources.SourceInfo(**base)


def load_fashion_mnist(split: str, data_dir=None) -> sources.ArraySource:
  data_dir = storage.resolve_data_dir(data_dir)
  prepared = builders.prepared_dir('fashion_mnist_local', data_dir)
  if prepared is None:
    raw = data_dir / storage.FASHION_MNIST_SUBDIR
    for part in ('train', 'test'):  # raises naming the package if absent
      for f in builders.FASHION_MNIST_FILES[part]:
        if not (raw / f).exists():
          raise InputNotFoundError(
              f'Fashion-MNIST not found in {data_dir} (no {raw / f}): '
              f'{builders.FASHION_MNIST_HINT.format(data_dir=data_dir)}.')
    logging.info('Preparing tfds fashion_mnist_local in %s', data_dir)
    prepared = builders.prepare('fashion_mnist_local', data_dir)
  try:
    records = builders.data_source('fashion_mnist_local', split, data_dir)
  except InputNotFoundError:
    raise
  except ConfigError as e:  # e.g. an empty slice such as 'train[55000:]'
    raise ConfigError(
        f'{e}. Its splits: '
        "'train' = the idx train file less its last images (55,000 of "
        "60,000), 'validation' = those last images (5,000), 'test' = the "
        "t10k file; a slice of 'train' never reaches 'validation'.") from e
  fingerprint = {'source': storage.file_fingerprint(
      prepared / 'dataset_info.json')}
  images, labels = _cached_split(records, 'fashion_mnist', split, data_dir,
                                 fingerprint)
  spec = sources.DATASETS['fashion_mnist']
  return sources.ArraySource(images, labels, _info(spec, split, len(labels)))


def _tfds_records(name: str, split: str, tfds_dir: pathlib.Path):
  """(records, prepared version folder or None) of a standard tfds dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = sources.DATASETS[name]
  builder = tfds.builder(name, data_dir=str(tfds_dir))
  prepared = builder.is_prepared()
  try:
    records = builder.as_data_source(split)
    len(records)  # a reversed slice fails only here
  except (FileNotFoundError, NotImplementedError, AssertionError,
          ValueError) as e:
    if prepared and isinstance(e, ValueError):  # a bad slice of real data
      raise builders.split_error(name, split, e) from e
    if prepared:
      raise
    raise InputNotFoundError(
        f'{name} not found in {tfds_dir} (no array_record data at '
        f'{builder.data_dir}): {spec.provider}.') from e
  return records, (pathlib.Path(builder.data_dir) if prepared else None)


def load_tfds_images(name: str, split: str, data_dir=None, tfds_dir=None,
                     image_size: int | None = None):
  """CIFAR-10/100 (cached arrays) or ImageNet (random access)."""
  spec = sources.DATASETS[name]
  tfds_dir = pathlib.Path(tfds_dir) if tfds_dir else (
      storage.resolve_data_dir(data_dir) / storage.TFDS_SUBDIR)
  records, prepared = _tfds_records(name, split, tfds_dir)
  if name == 'imagenet2012':
    size = image_size or spec.image_shape[0]
    info = _info(spec, split, len(records), image_shape=(size, size, 3))
    return sources.RecordImageSource(records, info,
                                     sources.center_crop_resizer(size))
  if image_size not in (None, spec.image_shape[0]):
    raise ConfigError(f'image_size={image_size} is only for imagenet2012; '
                      f'{name} images are {spec.image_shape[0]} pixels.')
  fingerprint = None if prepared is None else {
      'source': storage.file_fingerprint(prepared / 'dataset_info.json')}
  images, labels = _cached_split(records, name, split, data_dir, fingerprint)
  return sources.ArraySource(images, labels, _info(spec, split, len(labels)))
