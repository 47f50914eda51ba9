"""Named evaluation architectures (LoGAH paper, App. C).

ViTs come in two variants: `/2` is the CIFAR one (patch 2 on 32x32 images, as
the paper evaluates on CIFAR-10/100) and `/16` the ImageNet one (patch 16 on
224x224, 1000 classes, the torchvision ViT-x/16). A bare `vit-s` means the
ImageNet variant. GPT-2 models are tied like Hugging Face's default; the
`-untied` names are the untied configs LoGAH predicts for.
"""

from __future__ import annotations

from logah_jax.arch.configs import ArchConfig, GPT2Config, ViTConfig
from logah_jax.arch.configs import replace_fields

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
    raise ValueError(f'named architecture name={name!r} is unknown; '
                     f'known: {", ".join(names())}.')
  return replace_fields(NAMED[name], **overrides)
