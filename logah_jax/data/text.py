"""Token streams of the text datasets, tokenised once and cached as .npy.

A split becomes one int32 stream. Shakespeare: each text (play or poem)
followed by the tokenizer's end-of-text id, in name order. WikiText: the
whole wiki.<split>.raw file as one text, as in the GPT-2/LoGAH setup
("concatenated and cut into 1024-token blocks"). The cache lives in
DATA_DIR/cache/tokens/ and is rebuilt when its source or tokenizer changes.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from logah_jax.data import builders
from logah_jax.data import storage
from logah_jax.data import tokenizer as tokenizer_lib
from logah_jax.validation import ConfigError, InputNotFoundError

WIKITEXT_FILES = {'train': 'wiki.train.raw', 'validation': 'wiki.valid.raw',
                  'test': 'wiki.test.raw'}
WIKITEXT_SUBDIRS = {'wikitext2': 'wikitext-2-raw',
                    'wikitext103': 'wikitext-103-raw'}
_READ_CHARS = 1 << 22


def wikitext_dir(name: str, data_dir=None, source_dir=None) -> pathlib.Path:
  if source_dir is not None:
    return pathlib.Path(source_dir).expanduser()
  return storage.resolve_data_dir(data_dir) / WIKITEXT_SUBDIRS[name]


def wikitext_file(name: str, split: str, data_dir=None,
                  source_dir=None) -> pathlib.Path:
  """The raw file of a split; raises naming the directory and file names."""
  if split not in WIKITEXT_FILES:
    raise ConfigError(f'{name} has splits {", ".join(WIKITEXT_FILES)}; '
                      f'got split={split!r}.')
  folder = wikitext_dir(name, data_dir, source_dir)
  path = folder / WIKITEXT_FILES[split]
  if not path.is_file():
    archive = WIKITEXT_SUBDIRS[name]
    raise InputNotFoundError(
        f'{name}: {path} not found. Expected the directory {folder} to hold '
        f'{", ".join(WIKITEXT_FILES.values())} (the unzipped {archive}.zip, '
        f'HF config {archive}-v1): put it there, or set config.data.data_dir '
        f'to a directory whose {archive}/ holds them.')
  return path


def _read_chunks(path: pathlib.Path):
  with open(path, encoding='utf-8', newline='') as f:
    while chunk := f.read(_READ_CHARS):
      yield chunk


def shakespeare_prepared(data_dir=None) -> pathlib.Path:
  """The prepared tfds folder; prepares it from the raw texts if needed."""
  done = builders.prepared_dir('shakespeare_local', data_dir)
  if done is not None:
    return done
  data_dir = storage.resolve_data_dir(data_dir)
  builders.shakespeare_texts(data_dir / storage.SHAKESPEARE_SUBDIR)  # raises
  logging.info('Preparing tfds shakespeare_local in %s', data_dir)
  return builders.prepare('shakespeare_local', data_dir)


def shakespeare_documents(split: str, data_dir=None) -> list[tuple[str, str]]:
  """[(name, text)] of a split, read back through tfds (no TensorFlow)."""
  shakespeare_prepared(data_dir)
  records = builders.data_source('shakespeare_local', split, data_dir)
  docs = [records[i] for i in range(len(records))]
  return [(_text(d['name']), _text(d['text'])) for d in docs]


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _tokenizer_id(tok) -> dict:
  return {'tokenizer': tok.name, 'vocab_size': tok.vocab_size,
          'eot_id': tok.eot_id}


def load_tokens(name: str, split: str, *, data_dir=None, tokenizer='gpt2',
                wikitext_dir=None) -> np.ndarray:
  """The int32 token stream of a text split (memory-mapped from the cache)."""
  tok = (tokenizer_lib.get_tokenizer(tokenizer) if isinstance(tokenizer, str)
         else tokenizer)
  data_dir = storage.resolve_data_dir(data_dir)
  cache = (data_dir / storage.CACHE_SUBDIR / 'tokens' /
           f'{name}-{tok.name}-{storage.split_key(split)}.npy')
  if name == 'shakespeare':
    prepared = shakespeare_prepared(data_dir)
    fingerprint = {'split': split, **_tokenizer_id(tok),
                   'source': storage.file_fingerprint(
                       prepared / 'dataset_info.json')}

    def build():
      docs = shakespeare_documents(split, data_dir)
      eot = np.asarray([tok.eot_id], np.int32)
      encoded = tok.encode_batch([text for _, text in docs])
      return np.concatenate([part for ids in encoded for part in (ids, eot)])
  elif name in WIKITEXT_SUBDIRS:
    path = wikitext_file(name, split, data_dir, wikitext_dir)
    fingerprint = {'split': split, **_tokenizer_id(tok),
                   'source': storage.file_fingerprint(path)}

    def build():
      logging.info('Tokenising %s with %s (cached afterwards)', path, tok.name)
      return tokenizer_lib.encode_stream(tok, _read_chunks(path))
  else:
    raise ConfigError(f'{name!r} is not a text dataset; text datasets: '
                      f'shakespeare, {", ".join(WIKITEXT_SUBDIRS)}.')
  return storage.cached_array(cache, fingerprint, build)
