"""From a GHN-training config to checked objects, before any compilation.

Every field a run reads is validated here, so a bad config fails in about a
second with one sentence naming the field, instead of after minutes of
compiling or, worse, in the middle of training.
"""

from __future__ import annotations

import dataclasses
import os

from logah_jax import arch as arch_lib
from logah_jax import data as data_lib
from logah_jax import ghn as ghn_lib
from logah_jax.train import optim
from logah_jax.train.sampler import ArchSampler

CHECKPOINT_DIR = 'checkpoints'


@dataclasses.dataclass
class GHNRun:
  """Everything a GHN training run is built from (no device work yet)."""

  ghn_cfg: ghn_lib.GHNConfig
  family: str
  space: arch_lib.Space
  sampler: ArchSampler
  num_steps: int
  tx: object
  schedule: object


def check_int(value, field: str, minimum: int = 1) -> int:
  """`value` if it is an int >= minimum, else ValueError naming `field`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{field}={value!r} must be an int >= {minimum}')
  return value


def ghn_config(config) -> ghn_lib.GHNConfig:
  """The GHNConfig of `config.ghn` (every GHNConfig field, checked)."""
  try:
    return ghn_lib.from_dict(config.ghn.to_dict())
  except (TypeError, ValueError) as e:
    raise ValueError(f'config.ghn: {e}') from e


def space_of(config) -> arch_lib.Space:
  fields = config.space.to_dict()
  name = fields.pop('name')
  fields.pop('family', None)
  heads = str(fields.get('heads', arch_lib.VIT_HEADS_RULE))
  if heads.isdigit():
    fields['heads'] = int(heads)
  try:
    return arch_lib.make_space(name, **fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f'config.space: {e}') from e


def check_data_matches(space, data, prefix: str = 'config.space') -> None:
  """The dataset must fit the architectures: image shape/classes or vocab.

  `space` is a Space or an ArchConfig (both carry these fields); `prefix`
  names it in errors.
  """
  info = data_lib.describe(data.name, data.get('tokenizer', 'gpt2'))
  if space.family == 'vit':
    if info['kind'] != 'image':
      raise ValueError(f'config.data.name={data.name!r} is a text dataset; '
                       'a ViT space needs images')
    h, w, c = info['image_shape']
    if data.name != 'imagenet2012' and (h, w) != (space.image_size,) * 2:
      raise ValueError(f'{prefix}.image_size={space.image_size} but '
                       f'{data.name} images are {h}x{w}')
    if c != space.channels:
      raise ValueError(f'{prefix}.channels={space.channels} but '
                       f'{data.name} images have {c} channels')
    if info['num_classes'] != space.num_classes:
      raise ValueError(f'{prefix}.num_classes={space.num_classes} but '
                       f'{data.name} has {info["num_classes"]} classes')
    return
  if info['kind'] != 'text':
    raise ValueError(f'config.data.name={data.name!r} is an image dataset; '
                     'a GPT-2 space needs text')
  if info['vocab_size'] != space.vocab_size:
    raise ValueError(f'{prefix}.vocab_size={space.vocab_size} but the '
                     f'{data.tokenizer!r} tokenizer has {info["vocab_size"]}')
  if data.block_size > space.n_positions:
    raise ValueError(f'config.data.block_size={data.block_size} exceeds '
                     f'{prefix}.n_positions={space.n_positions}')


def build_run(config) -> GHNRun:
  """Checks `config` and builds the host-side objects of a GHN run."""
  cfg = ghn_config(config)
  space = space_of(config)
  train = config.train
  m = check_int(train.m, 'config.train.m')
  check_int(config.data.batch_size, 'config.data.batch_size')
  num_steps = check_int(train.num_steps, 'config.train.num_steps')
  if train.gamma < 0:
    raise ValueError(f'config.train.gamma={train.gamma} must be >= 0')
  if not 0 <= train.label_smoothing < 1:
    raise ValueError(f'config.train.label_smoothing={train.label_smoothing} '
                     'must be in [0, 1)')
  if data_lib.describe(config.data.name, config.data.get('tokenizer', 'gpt2')
                       )['kind'] == 'image' and space.family == 'vit' and (
                           cfg.num_classes != space.num_classes):
    raise ValueError(f'config.ghn.num_classes={cfg.num_classes} must equal '
                     f'the dataset classes {space.num_classes}')
  check_data_matches(space, config.data)
  sampler = ArchSampler(space, m, seed=train.arch_seed,
                        pool_size=train.pool_size)
  for a in sampler.deepest():
    ghn_lib.check_archs(cfg, space.family, [a])
  tx, schedule = optim.make_optimizer(config.optim, num_steps,
                                      prefix='config.optim')
  return GHNRun(ghn_cfg=cfg, family=space.family, space=space,
                sampler=sampler, num_steps=num_steps, tx=tx,
                schedule=schedule)


def data_source(config, split: str | None = None):
  """The dataset source of `config.data` (raises naming what provides it)."""
  d = config.data
  kwargs = {}
  if data_lib.describe(d.name, d.get('tokenizer', 'gpt2'))['kind'] == 'text':
    kwargs = dict(tokenizer=d.tokenizer, block_size=d.block_size)
  return data_lib.get_dataset(d.name, split or d.split,
                              data_dir=d.data_dir or None, **kwargs)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)
