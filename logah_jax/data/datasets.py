"""get_dataset: one entry point for every dataset, arguments checked first."""

from __future__ import annotations

import re

from logah_jax.data import images
from logah_jax.data import sources
from logah_jax.data import text
from logah_jax.data import tokenizer as tokenizer_lib
from logah_jax.validation import ConfigError, check_int


def split_names(split: str) -> list[str]:
  """The whole splits a tfds split string reads: 'train[:50000]+test' ->
  ['train', 'test']."""
  return [re.sub(r'\[.*\]$', '', part.strip()) for part in split.split('+')]


def check_split(name: str, split: str) -> None:
  """Checks the split names in a tfds split string such as 'train[:10%]'
  (WikiText takes whole splits only), before any file is read."""
  if not isinstance(split, str) or not split:
    raise ConfigError(f'split={split!r} must be a non-empty string.')
  spec = sources.DATASETS[name]
  for base in split_names(split):
    if base not in spec.splits:
      raise ConfigError(f'{name} has splits {", ".join(spec.splits)}; '
                        f'got split={split!r}.')
  if name.startswith('wikitext') and ('[' in split or '+' in split):
    raise ConfigError(f'{name} takes whole splits; got split={split!r}.')


def get_dataset(name: str, split: str, *, data_dir=None, tokenizer='gpt2',
                block_size: int = 1024, image_size: int | None = None,
                tfds_dir=None, wikitext_dir=None):
  """A random-access source of one split (see sources.Source).

  Args:
    name: one of sources.DATASETS: fashion_mnist, cifar10, cifar100,
      imagenet2012 (images) or shakespeare, wikitext2, wikitext103 (text).
    split: 'train', 'validation' or 'test' where the dataset has it; tfds
      slicing ('train[:1000]', 'train+validation') works for the tfds-backed
      sets (fashion_mnist, cifar*, imagenet2012, shakespeare).
    data_dir: DATA_DIR (default $LOGAH_DATA_DIR or ~/.cache/logah_jax).
    tokenizer: 'gpt2' | 'bytes' or a tokenizer object (text only).
    block_size: tokens per window; each example holds block_size+1 tokens.
    image_size: ImageNet output side (default 224).
    tfds_dir: where the user's tfds datasets live (default DATA_DIR/tfds).
    wikitext_dir: folder with wiki.{train,valid,test}.raw (default
      DATA_DIR/wikitext-2-raw or DATA_DIR/wikitext-103-raw).
  """
  if name not in sources.DATASETS:
    raise ConfigError(f'Unknown dataset {name!r}; known: '
                      f'{", ".join(sources.DATASETS)}.')
  check_split(name, split)
  spec = sources.DATASETS[name]
  if spec.kind == 'image':
    if name == 'fashion_mnist':
      if image_size not in (None, 28):
        raise ConfigError(f'image_size={image_size} is only for imagenet2012.')
      return images.load_fashion_mnist(split, data_dir)
    return images.load_tfds_images(name, split, data_dir, tfds_dir,
                                   image_size)
  check_int(block_size, 'block_size')
  tok = (tokenizer_lib.get_tokenizer(tokenizer) if isinstance(tokenizer, str)
         else tokenizer)
  tokens = text.load_tokens(name, split, data_dir=data_dir, tokenizer=tok,
                            wikitext_dir=wikitext_dir)
  info = sources.SourceInfo(
      name=name, split=split, kind='text',
      num_examples=max(0, (len(tokens) - 1) // block_size),
      vocab_size=tok.vocab_size, tokenizer=tok.name, block_size=block_size,
      num_tokens=len(tokens))
  return sources.TokenWindows(tokens, block_size, info)


def describe(name: str, tokenizer: str = 'gpt2') -> dict:
  """num_classes/image_shape (images) or vocab_size (text) of a dataset."""
  if name not in sources.DATASETS:
    raise ConfigError(f'Unknown dataset {name!r}; known: '
                      f'{", ".join(sources.DATASETS)}.')
  spec = sources.DATASETS[name]
  if spec.kind == 'image':
    return {'kind': 'image', 'num_classes': spec.num_classes,
            'image_shape': spec.image_shape, 'splits': spec.splits}
  if tokenizer not in tokenizer_lib.VOCAB_SIZES:
    raise ConfigError(f'Unknown tokenizer {tokenizer!r}; known: '
                      f'{", ".join(tokenizer_lib.VOCAB_SIZES)}.')
  vocab = tokenizer_lib.VOCAB_SIZES[tokenizer]
  return {'kind': 'text', 'vocab_size': vocab, 'splits': spec.splits}
