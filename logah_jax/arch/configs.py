"""Frozen, hashable descriptions of target architectures.

An ArchConfig is the one identity of a target network in logah_jax: models are
built from it, graphs are built from it, and jitted per-architecture functions
are cached on it. Validation happens at construction so that no expensive work
starts on a config that cannot describe a network.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

from logah_jax.validation import ConfigError, check_int


def _check_positive_ints(cfg, names):
  """Each field must be an int >= 1; numpy ints are stored as Python ints."""
  for name in names:
    value = check_int(getattr(cfg, name), f'{type(cfg).__name__}.{name}')
    object.__setattr__(cfg, name, value)


def _check_divisible(cfg, name, divisor_name):
  value, divisor = getattr(cfg, name), getattr(cfg, divisor_name)
  if value % divisor:
    raise ConfigError(
        f'{type(cfg).__name__}.{name}={value} is not divisible by '
        f'{divisor_name}={divisor}.')


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """A torchvision-style Vision Transformer (pre-LN, class token, linear head)."""

  depth: int
  width: int
  heads: int
  mlp_dim: int
  patch: int
  image_size: int
  channels: int = 3
  num_classes: int = 1000

  family = 'vit'

  def __post_init__(self):
    _check_positive_ints(self, ('depth', 'width', 'heads', 'mlp_dim', 'patch',
                                'image_size', 'channels', 'num_classes'))
    _check_divisible(self, 'width', 'heads')
    _check_divisible(self, 'image_size', 'patch')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch) ** 2

  @property
  def seq_len(self) -> int:
    """Tokens seen by the encoder: the patches plus the class token."""
    return self.num_patches + 1

  @property
  def name(self) -> str:
    return (f'vit-L{self.depth}-C{self.width}-H{self.heads}-M{self.mlp_dim}'
            f'-p{self.patch}-{self.image_size}px-{self.channels}ch'
            f'-{self.num_classes}cls')


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """A GPT-2 language model (pre-LN causal blocks, learned positions)."""

  depth: int
  width: int
  heads: int
  vocab_size: int = 50257
  n_positions: int = 1024
  tie_embeddings: bool = True

  family = 'gpt2'

  def __post_init__(self):
    _check_positive_ints(self, ('depth', 'width', 'heads', 'vocab_size',
                                'n_positions'))
    _check_divisible(self, 'width', 'heads')
    if not isinstance(self.tie_embeddings, bool):
      raise ConfigError(f'GPT2Config.tie_embeddings={self.tie_embeddings!r} '
                        'must be a bool.')

  @property
  def mlp_dim(self) -> int:
    return 4 * self.width

  @property
  def name(self) -> str:
    tie = 'tied' if self.tie_embeddings else 'untied'
    return (f'gpt2-L{self.depth}-D{self.width}-H{self.heads}-V{self.vocab_size}'
            f'-T{self.n_positions}-{tie}')


def replace_fields(obj, **overrides):
  """dataclasses.replace, with one clear error for a field that does not exist.

  Used wherever a config (named architecture, space, GHN) takes overrides
  from the command line, so a typo fails instead of being ignored.
  """
  fields = {f.name for f in dataclasses.fields(obj)}
  for key in overrides:
    if key not in fields:
      raise ConfigError(f'{type(obj).__name__} has no field {key!r}; fields: '
                        f'{", ".join(sorted(fields))}.')
  return dataclasses.replace(obj, **overrides) if overrides else obj


ArchConfig = Union[ViTConfig, GPT2Config]
FAMILIES = ('vit', 'gpt2')


def at_width(cfg: ArchConfig, width: int) -> ArchConfig:
  """`cfg` with its width (and a ViT's MLP width) scaled to `width`.

  Every tensor of the result has the shape of `cfg`'s tensor with each
  width-derived dimension scaled; heads become a divisor of `width`.
  """
  heads = math.gcd(cfg.heads, width)
  if isinstance(cfg, ViTConfig):
    mlp = max(1, round(cfg.mlp_dim * width / cfg.width))
    return dataclasses.replace(cfg, width=width, heads=heads, mlp_dim=mlp)
  return dataclasses.replace(cfg, width=width, heads=heads)


def to_dict(cfg: ArchConfig) -> dict:
  """JSON-ready form, with the family so that from_dict can rebuild it."""
  return {'family': cfg.family, **dataclasses.asdict(cfg)}


def from_dict(d: dict) -> ArchConfig:
  """`to_dict`'s inverse; a ConfigError names a missing or unknown field
  (a stored architecture may come from a damaged or foreign file)."""
  if not isinstance(d, dict):
    raise ConfigError(f'an architecture must be a mapping of its fields, '
                      f'not {type(d).__name__}')
  d = dict(d)
  family = d.pop('family', None)
  classes = {'vit': ViTConfig, 'gpt2': GPT2Config}
  if family not in classes:
    raise ConfigError(f'ArchConfig family={family!r} is unknown; '
                      f'expected one of {FAMILIES}.')
  cls = classes[family]
  fields = dataclasses.fields(cls)
  unknown = sorted(set(d) - {f.name for f in fields})
  missing = [f.name for f in fields
             if f.default is dataclasses.MISSING and f.name not in d]
  if unknown or missing:
    raise ConfigError(
        f'a {family} architecture '
        + (f'has unknown field(s) {", ".join(unknown)}' if unknown else '')
        + (' and ' if unknown and missing else '')
        + (f'lacks field(s) {", ".join(missing)}' if missing else ''))
  return cls(**d)
