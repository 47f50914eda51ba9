"""logah_jax.data's tokenizers: GPT-2's BPE (its published ids) and bytes."""

import numpy as np
import pytest

from logah_jax import data
from logah_jax.data import tokenizer as tokenizer_lib
from stand_in_data import WIKI_TEXT


def test_gpt2_ids_are_gpt2s():
  tok = data.get_tokenizer('gpt2')
  assert tok.encode('Hello world').tolist() == [15496, 995]
  assert tok.encode('Hello world').dtype == np.int32
  assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
  assert tok.encoding.n_vocab == 50257
  # Special-token text in data is plain text, never the EOT id.
  assert 50256 not in tok.encode('a <|endoftext|> b').tolist()


def test_gpt2_round_trip():
  tok = data.gpt2_tokenizer()
  for text in (WIKI_TEXT, 'naïve café — “quotes” 🙂', ''):
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_file_hash_is_checked(tmp_path):
  bad = tmp_path / 'vocab.bpe'
  bad.write_text('not the GPT-2 merges')
  with pytest.raises(ValueError, match='vocab.bpe.*SHA-256'):
    tokenizer_lib._check_sha256(str(bad), tokenizer_lib.GPT2_FILES_SHA256[
        'vocab.bpe'])
  files = tokenizer_lib.gpt2_files()
  for name, sha in tokenizer_lib.GPT2_FILES_SHA256.items():
    tokenizer_lib._check_sha256(files[name], sha)  # the shipped ones pass


def test_byte_tokenizer():
  tok = data.get_tokenizer('bytes')
  ids = tok.encode('héllo\n')
  assert ids.dtype == np.int32 and tok.vocab_size == 256
  assert ids.tolist() == list('héllo\n'.encode('utf-8'))
  assert tok.decode(ids) == 'héllo\n'
  with pytest.raises(ValueError, match=r'\[0, 255\]'):
    tok.decode([300])


def test_unknown_tokenizer():
  with pytest.raises(ValueError, match="'bpe'.*gpt2, bytes"):
    data.get_tokenizer('bpe')


@pytest.mark.parametrize('name', ['gpt2', 'bytes'])
def test_encoding_in_pieces_equals_whole(name):
  tok = data.get_tokenizer(name)
  text = WIKI_TEXT * 20
  pieces = list(tokenizer_lib.safe_pieces(
      [text[i:i + 37] for i in range(0, len(text), 37)], min_chars=50))
  assert len(pieces) > 10 and ''.join(pieces) == text
  np.testing.assert_array_equal(
      tokenizer_lib.encode_long(tok, text, piece_chars=64), tok.encode(text))

