"""Checks on the real offline data; skipped until `bash launch/setup_data.sh`.

The data live in $LOGAH_DATA_DIR (default ~/.cache/logah_jax).
"""

import numpy as np
import pytest

from logah_jax import data
from logah_jax.data import builders
from logah_jax.data import storage
from logah_jax.data import text

DATA_DIR = storage.default_data_dir()
_SETUP = f'run `bash launch/setup_data.sh {DATA_DIR}`'


def _fashion_present() -> bool:
  raw = DATA_DIR / storage.FASHION_MNIST_SUBDIR
  return all((raw / f).exists()
             for pair in builders.FASHION_MNIST_FILES.values() for f in pair)


def _shakespeare_present() -> bool:
  raw = DATA_DIR / storage.SHAKESPEARE_SUBDIR
  return len(list(raw.glob('*' + builders.SHAKESPEARE_SUFFIX))) == 42


needs_fashion = pytest.mark.skipif(
    not _fashion_present(),
    reason=f'real Fashion-MNIST not in {DATA_DIR}: {_SETUP}')
needs_shakespeare = pytest.mark.skipif(
    not _shakespeare_present(),
    reason=f'real Shakespeare texts not in {DATA_DIR}: {_SETUP}')


@needs_fashion
def test_fashion_mnist_real():
  parts = [data.get_dataset('fashion_mnist', split)
           for split in ('train', 'validation')]
  images = np.concatenate([p.images for p in parts])
  labels = np.concatenate([p.labels for p in parts])
  test = data.get_dataset('fashion_mnist', 'test')
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1)
  # Published: mean pixel 0.2860*255 = 72.94, 6,000 images per class.
  assert abs(float(np.mean(images, dtype=np.float64)) - 72.94) < 0.01
  np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)


@needs_fashion
def test_fashion_mnist_real_validation_is_last_5000_of_train():
  train = data.get_dataset('fashion_mnist', 'train')
  val = data.get_dataset('fashion_mnist', 'validation')
  assert (len(train), len(val)) == (55000, 5000)
  raw_x, raw_y = builders.read_fashion_mnist(
      DATA_DIR / storage.FASHION_MNIST_SUBDIR, 'train')
  np.testing.assert_array_equal(val.images, raw_x[55000:])
  np.testing.assert_array_equal(val.labels, raw_y[55000:])
  # disjoint: train is the rest of the file, and no slice of it reaches val
  np.testing.assert_array_equal(train.images, raw_x[:55000])
  np.testing.assert_array_equal(train.labels, raw_y[:55000])
  with pytest.raises(ValueError, match="'validation' = those last images"):
    data.get_dataset('fashion_mnist', 'train[55000:]')
  np.testing.assert_array_equal(train.labels[:100], raw_y[:100])


@needs_fashion
def test_fashion_mnist_real_loader_batches():
  src = data.get_dataset('fashion_mnist', 'test')
  batch = next(data.Loader(src, 1000, seed=0))
  img = batch['image']
  assert img.shape == (1000, 28, 28, 1) and img.dtype == np.float32
  assert abs(float(img.mean())) < 0.05 and abs(float(img.std()) - 1) < 0.05


@needs_shakespeare
def test_shakespeare_real_splits():
  text.shakespeare_prepared(DATA_DIR)  # prepares tfds from the texts if needed
  names = {}
  for split in ('train', 'validation', 'test'):
    src = builders.data_source('shakespeare_local', split, DATA_DIR)
    names[split] = sorted(src[i]['name'].decode() for i in range(len(src)))
  assert names['validation'] == sorted(data.SHAKESPEARE_VALIDATION)
  assert names['test'] == sorted(data.SHAKESPEARE_TEST)
  assert len(names['train']) == 34 and 'sonnets' in names['train']
  assert not set(names['train']) & set(names['validation'] + names['test'])


@needs_shakespeare
def test_shakespeare_real_tokens():
  counts = {}
  for tok in ('gpt2', 'bytes'):
    counts[tok] = sum(
        data.get_dataset('shakespeare', split, tokenizer=tok).info.num_tokens
        for split in ('train', 'validation', 'test'))
  # 42 texts, 5,057,198 bytes, plus one end-of-text id after each text.
  assert counts['bytes'] == 5_057_198 + 42
  assert counts['gpt2'] == 1_566_001
  val = data.get_dataset('shakespeare', 'validation', block_size=1024)
  assert len(val) == (166_779 - 1) // 1024
  first = val.get_batch(np.array([0]))['tokens'][0]
  assert 'AS YOU LIKE IT' in data.gpt2_tokenizer().decode(first)
