"""Named evaluation architectures (LoGAH paper, App. C).

ViTs come in two variants: `/2` is the CIFAR one (patch 2 on 32x32 images, as
the paper evaluates on CIFAR-10/100) and `/16` the ImageNet one (patch 16 on
224x224, 1000 classes, the torchvision ViT-x/16). A bare `vit-s` means the
ImageNet variant. GPT-2 models are tied like Hugging Face's default; the
`-untied` names are the untied configs LoGAH predicts for.
"""

from __future__ import annotations

import dataclasses

from logah_jax.arch.configs import ArchConfig, GPT2Config, ViTConfig
from logah_jax.arch.configs import replace_fields
from logah_jax.validation import ConfigError

_VIT_SIZES = {  # depth, width, heads, mlp
    's': (12, 384, 6, 1536),
    'b': (12, 768, 12, 3072),
    'l': (24, 1024, 16, 4096),
}
_GPT2_SIZES = {  # depth, width, heads
    'small': (12, 768, 12),
    'medium': (24, 1024, 16),
    'large': (36, 1280, 20),
}


def _build_table() -> dict[str, ArchConfig]:
  table: dict[str, ArchConfig] = {}
  for size, (depth, width, heads, mlp) in _VIT_SIZES.items():
    common = dict(depth=depth, width=width, heads=heads, mlp_dim=mlp,
                  channels=3)
    table[f'vit-{size}/2'] = ViTConfig(patch=2, image_size=32, num_classes=10,
                                       **common)
    table[f'vit-{size}/16'] = ViTConfig(patch=16, image_size=224,
                                        num_classes=1000, **common)
    table[f'vit-{size}'] = table[f'vit-{size}/16']
  for size, (depth, width, heads) in _GPT2_SIZES.items():
    for tied in (True, False):
      suffix = '' if tied else '-untied'
      table[f'gpt2-{size}{suffix}'] = GPT2Config(
          depth=depth, width=width, heads=heads, tie_embeddings=tied)
  return table


NAMED = _build_table()


def names() -> list[str]:
  return sorted(NAMED)


def named(name: str, **overrides) -> ArchConfig:
  """The named architecture, optionally with fields replaced.

  Example: `named('vit-b/2', num_classes=100)` is ViT-B/2 for CIFAR-100.
  """
  if name not in NAMED:
    raise ConfigError(f'named architecture name={name!r} is unknown; '
                      f'known: {", ".join(names())}.')
  return replace_fields(NAMED[name], **overrides)


def _typed(field_type, key: str, value: str, spec: str):
  if field_type in (bool, 'bool'):
    if value.lower() not in ('true', 'false'):
      raise ConfigError(f'architecture {spec!r}: {key}={value!r} must be '
                        'true or false')
    return value.lower() == 'true'
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f'architecture {spec!r}: {key}={value!r} must be an '
                      'int') from None


def parse(spec: str) -> ArchConfig:
  """An ArchConfig from one string, as configs and command lines give it.

  'NAME' is a named architecture (`gpt2-large`, `vit-s/2`); 'NAME:k=v,...'
  replaces fields of it; 'vit:k=v,...' or 'gpt2:k=v,...' spells every
  required field out (a ViT's mlp_dim defaults to 4 x width). Examples:
  'vit-b/2:num_classes=100', 'vit:depth=6,width=96,heads=6,patch=4,
  image_size=28,channels=1,num_classes=10', 'gpt2:depth=6,width=96,heads=6,
  vocab_size=256,n_positions=128'.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ConfigError(f'architecture {spec!r}: expected NAME or '
                      'NAME:field=value,...')
  head, _, tail = spec.strip().partition(':')
  fields = {}
  if tail.strip():
    for part in tail.split(','):
      key, sep, value = part.partition('=')
      if not sep:
        raise ConfigError(f'architecture {spec!r}: {part!r} is not '
                          'field=value')
      if key.strip() in fields:
        raise ConfigError(f'architecture {spec!r}: field {key.strip()!r} '
                          'is given twice')
      fields[key.strip()] = value.strip()
  head = head.strip()
  if head in ('vit', 'gpt2'):
    cls = ViTConfig if head == 'vit' else GPT2Config
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(types))
    if unknown:
      raise ConfigError(f'architecture {spec!r}: {cls.__name__} has no field '
                        f'{unknown[0]!r}; fields: {", ".join(types)}')
    values = {k: _typed(types[k], k, v, spec) for k, v in fields.items()}
    if cls is ViTConfig and 'width' in values:
      values.setdefault('mlp_dim', 4 * values['width'])
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
      raise ConfigError(f'architecture {spec!r}: missing field(s) '
                        f'{", ".join(missing)}')
    return cls(**values)
  base = named(head)
  types = {f.name: f.type for f in dataclasses.fields(base)}
  unknown = sorted(set(fields) - set(types))
  if unknown:
    raise ConfigError(f'architecture {spec!r}: {type(base).__name__} has no '
                      f'field {unknown[0]!r}; fields: {", ".join(types)}')
  return named(head, **{k: _typed(types[k], k, v, spec)
                        for k, v in fields.items()})


def to_spec(cfg: ArchConfig) -> str:
  """The string `parse` reads back into `cfg` ('vit:depth=6,width=96,...')."""
  fields = ','.join(f'{f.name}={str(getattr(cfg, f.name)).lower()}'
                    for f in dataclasses.fields(cfg))
  return f'{cfg.family}:{fields}'
