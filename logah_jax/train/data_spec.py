"""The data a run reads, checked once: dataset, split, batch, tokenizer.

Both loops, the held-out evaluation and the comparison harness take the data
section of their config through `DataSpec.from_config`, so the dataset is
named, checked against the architectures it feeds, and turned into sources
and loaders in one place.
"""

from __future__ import annotations

import dataclasses

from logah_jax import data as data_lib
from logah_jax.validation import ConfigError, InputNotFoundError, check_int


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A dataset split and how it is batched (a config's `data` section)."""

  name: str
  split: str
  batch_size: int
  augment: bool
  tokenizer: str
  block_size: int
  data_dir: str  # '' = $LOGAH_DATA_DIR or ~/.cache/logah_jax
  # ImageNet only: the side its images are resized to, the target's (set by
  # `check_data_matches`; the other image sets have one size)
  image_size: int | None = None

  @classmethod
  def from_config(cls, section, prefix: str = 'config.data') -> 'DataSpec':
    """Checks the section's fields; raises ConfigError naming a bad one."""
    if not isinstance(section.augment, bool):
      raise ConfigError(f'{prefix}.augment={section.augment!r} must be true '
                        'or false')
    spec = cls(name=section.name, split=section.split,
               batch_size=check_int(section.batch_size,
                                    f'{prefix}.batch_size'),
               augment=section.augment,
               tokenizer=section.get('tokenizer', 'gpt2'),
               block_size=section.get('block_size', 1024),
               data_dir=section.get('data_dir', '') or '')
    try:
      spec.info()
    except ValueError as e:
      raise ConfigError(f'{prefix}: {e}') from e
    try:  # the training split may be a tfds slice ('train[:50000]')
      data_lib.check_split(spec.name, spec.split)
    except ConfigError as e:
      raise ConfigError(f'{prefix}.split={spec.split!r}: {e}') from e
    if spec.is_text:
      check_int(spec.block_size, f'{prefix}.block_size')
      if spec.augment:
        raise ConfigError(f'{prefix}.augment=True applies to image datasets; '
                          f'{spec.name} is text')
    return spec

  def info(self) -> dict:
    """`data.describe`: kind, classes or vocabulary, splits."""
    return data_lib.describe(self.name, self.tokenizer)

  @property
  def is_text(self) -> bool:
    return self.info()['kind'] == 'text'

  def check_split(self, split: str, field: str) -> None:
    """`split` is a whole split of the dataset: evaluation reads whole
    splits, so `trains_on` can tell whether training reads it too."""
    splits = self.info()['splits']
    if split not in splits:
      raise ConfigError(f'{field}={split!r} is not a split of {self.name}: '
                        f'{splits}')

  def trains_on(self, split: str) -> bool:
    """Whether the training split (a name, a tfds slice or a sum of them,
    'train[:50000]+validation') reads from the whole split `split`."""
    return split in data_lib.split_names(self.split)

  def source(self, split: str | None = None):
    """The source of `split` (default: the training split)."""
    kwargs = {}
    if self.is_text:
      kwargs = dict(tokenizer=self.tokenizer, block_size=self.block_size)
    elif self.image_size is not None:
      kwargs = dict(image_size=self.image_size)
    return data_lib.get_dataset(self.name, split or self.split,
                                data_dir=self.data_dir or None, **kwargs)

  def loader(self, seed: int, shard_index: int = 0, shard_count: int = 1):
    """The training loader: this process's rows of each global batch."""
    try:
      source = self.source()
    except InputNotFoundError:
      raise
    except ConfigError as e:  # a slice tfds refuses, e.g. 'train[:0]'
      raise ConfigError(f'config.data.split: {e}') from e
    return data_lib.Loader(source, self.batch_size, seed=seed,
                           augment=self.augment, shard_index=shard_index,
                           shard_count=shard_count)


def check_data_matches(target, data: DataSpec,
                       prefix: str = 'config.space') -> DataSpec:
  """The dataset must fit the architectures: image shape/classes or vocab.

  `target` is a Space or an ArchConfig (both carry these fields); `prefix`
  names it in errors. Returns the DataSpec to read: `data`, or for ImageNet,
  whose images are cropped and resized, `data` at the target's image size.
  """
  info = data.info()
  if target.family == 'vit':
    if info['kind'] != 'image':
      raise ConfigError(f'config.data.name={data.name!r} is a text dataset; '
                        'a ViT space needs images')
    h, w, c = info['image_shape']
    if data.name != 'imagenet2012' and (h, w) != (target.image_size,) * 2:
      raise ConfigError(f'{prefix}.image_size={target.image_size} but '
                        f'{data.name} images are {h}x{w}')
    if c != target.channels:
      raise ConfigError(f'{prefix}.channels={target.channels} but '
                        f'{data.name} images have {c} channels')
    if info['num_classes'] != target.num_classes:
      raise ConfigError(f'{prefix}.num_classes={target.num_classes} but '
                        f'{data.name} has {info["num_classes"]} classes')
    if data.name == 'imagenet2012':
      return dataclasses.replace(data, image_size=target.image_size)
    return data
  if info['kind'] != 'text':
    raise ConfigError(f'config.data.name={data.name!r} is an image dataset; '
                      'a GPT-2 space needs text')
  if info['vocab_size'] != target.vocab_size:
    raise ConfigError(f'{prefix}.vocab_size={target.vocab_size} but the '
                      f'{data.tokenizer!r} tokenizer has {info["vocab_size"]}')
  if data.block_size > target.n_positions:
    raise ConfigError(f'config.data.block_size={data.block_size} exceeds '
                      f'{prefix}.n_positions={target.n_positions}')
  return data
