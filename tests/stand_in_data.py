"""Small stand-in datasets written in the formats the real packages ship
(idx files, Gutenberg plays, WikiText lines), for the data tests."""

import gzip
import pathlib

import numpy as np

from logah_jax.data import builders
from logah_jax.data import storage

WIKI_TEXT = (
    ' \n = Valkyria Chronicles III = \n \n'
    ' Senjō no Valkyria 3 : <unk> Chronicles '
    '( Japanese : 戦場のヴァルキュリア3 ) '
    ', commonly referred to as Valkyria Chronicles III outside Japan , is a '
    'tactical role @-@ playing video game . \n \n'
    ' = = Gameplay = = \n  \n   \n'
    " The game 's battle system , the BliTZ system , is carried over . \n"
    ' It was released in 2011 ;   it sold 102 @,@ 000 copies .  \n'
    ' \t\n \n' * 3)


def write_idx(path, array):
  """An idx file as Fashion-MNIST ships it: gzip, uint8, big-endian dims."""
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(root, n_train=30, n_test=10, seed=0):
  rng = np.random.default_rng(seed)
  folder = pathlib.Path(root) / storage.FASHION_MNIST_SUBDIR
  folder.mkdir(parents=True)
  out = {}
  for part, n in (('train', n_train), ('test', n_test)):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10
    image_file, label_file = builders.FASHION_MNIST_FILES[part]
    write_idx(folder / image_file, x)
    write_idx(folder / label_file, y)
    out[part] = (x, y)
  return out


PLAYS = builders.SHAKESPEARE_VALIDATION + builders.SHAKESPEARE_TEST + (
    'hamlet', 'sonnets')


def make_shakespeare(root, names=PLAYS):
  folder = pathlib.Path(root) / storage.SHAKESPEARE_SUBDIR
  folder.mkdir(parents=True)
  texts = {}
  for i, name in enumerate(names):
    texts[name] = f'{name.upper()}\n\nby William Shakespeare\n\nLine {i}.\n'
    (folder / (name + builders.SHAKESPEARE_SUFFIX)).write_text(texts[name])
  (folder / 'hamlet_gut_f.txt').write_text('Folio: must be ignored\n')
  return texts
