"""Architecture spaces the GHN trains on, and seeded sampling from them.

`vits-1k` and `gpts-1k` follow the LoGAH generators (docs/algorithm.md §7):
depth uniform in [3, 9], the width range depending on depth, MLP = 4 x width.
`vits-cpu` and `gpts-cpu` are the same kind of space shrunk to what a 2-core
CPU trains in minutes (28x28 grayscale images; a byte vocabulary and short
context). Every field can be overridden from a config with `make_space`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from logah_jax.arch.configs import ArchConfig, GPT2Config, ViTConfig
from logah_jax.arch.configs import replace_fields
from logah_jax.validation import ConfigError, check_int

# (depth_lo, depth_hi, width_lo, width_hi, width_step): a depth in
# [depth_lo, depth_hi] draws its width uniformly from range(lo, hi + 1, step).
WidthRule = tuple[int, int, int, int, int]
VIT_HEADS_RULE = 'vit'  # heads from the width, as the ViTs-1K generator does


def vit_heads_choices(width: int) -> tuple[int, ...]:
  """ViTs-1K: heads drawn from these, chosen by what divides the width."""
  if width % 12 == 0:
    return (3, 6, 12)
  if width % 6 == 0:
    return (3, 6)
  if width % 3 == 0:
    return (3,)
  return (4, 8)


@dataclasses.dataclass(frozen=True)
class Space:
  """A distribution over architectures of one family."""

  family: str
  width_rules: tuple[WidthRule, ...]
  heads: str | int = VIT_HEADS_RULE
  mlp_ratio: int = 4
  # ViT only.
  patches: tuple[int, ...] = (2, 4)
  image_size: int = 32
  channels: int = 3
  num_classes: int = 10
  # GPT-2 only.
  vocab_size: int = 50257
  n_positions: int = 1024
  tie_embeddings: bool = False

  def __post_init__(self):
    if self.family not in ('vit', 'gpt2'):
      raise ConfigError(f'Space.family={self.family!r} must be "vit" or '
                        '"gpt2".')
    object.__setattr__(self, 'width_rules',
                       tuple(tuple(int(v) for v in r) for r in self.width_rules))
    object.__setattr__(self, 'patches', tuple(int(p) for p in self.patches))
    if not self.width_rules:
      raise ConfigError('Space.width_rules is empty.')
    for rule in self.width_rules:
      if len(rule) != 5 or min(rule) <= 0 or rule[0] > rule[1] or (
          rule[2] > rule[3]):
        raise ConfigError(
            f'Space.width_rules entry {rule} must be (depth_lo, depth_hi, '
            'width_lo, width_hi, step) with positive values and lo <= hi.')
    depths = [d for r in self.width_rules for d in range(r[0], r[1] + 1)]
    if len(depths) != len(set(depths)):
      raise ConfigError(f'Space.width_rules={self.width_rules} overlap in '
                        'depth.')
    if sorted(depths) != list(range(min(depths), max(depths) + 1)):
      raise ConfigError(f'Space.width_rules={self.width_rules} leave a gap '
                        'between depths.')
    if self.heads != VIT_HEADS_RULE:
      check_int(self.heads, f'Space.heads (or "{VIT_HEADS_RULE}")')
    for width in self.widths():  # every draw must build
      for heads in self._heads_choices(width):
        if width % heads:
          raise ConfigError(f'Space.heads={self.heads!r} gives {heads} heads '
                            f'to width {width} of Space.width_rules, which '
                            'they do not divide.')
    check_int(self.mlp_ratio, 'Space.mlp_ratio')
    if self.family == 'gpt2' and self.mlp_ratio != 4:
      raise ConfigError(f'Space.mlp_ratio={self.mlp_ratio}: GPT-2 blocks '
                        'have an MLP of 4 x width; only ViT spaces take '
                        'another ratio.')
    if self.family == 'vit' and not self.patches:
      raise ConfigError('Space.patches is empty; a ViT space needs at least '
                        'one patch size.')
    # Building one architecture of each patch checks the remaining fields.
    for patch in (self.patches if self.family == 'vit' else (None,)):
      self._build(self.width_rules[0][0], self.width_rules[0][2],
                  self._heads_choices(self.width_rules[0][2])[0], patch)

  def widths(self) -> list[int]:
    return sorted({w for r in self.width_rules
                   for w in range(r[2], r[3] + 1, r[4])})

  @property
  def depth_range(self) -> tuple[int, int]:
    return (min(r[0] for r in self.width_rules),
            max(r[1] for r in self.width_rules))

  def _heads_choices(self, width: int) -> tuple[int, ...]:
    if self.heads == VIT_HEADS_RULE:
      return vit_heads_choices(width)
    return (self.heads,)

  def _build(self, depth, width, heads, patch) -> ArchConfig:
    if self.family == 'vit':
      return ViTConfig(depth=depth, width=width, heads=heads,
                       mlp_dim=self.mlp_ratio * width, patch=patch,
                       image_size=self.image_size, channels=self.channels,
                       num_classes=self.num_classes)
    return GPT2Config(depth=depth, width=width, heads=heads,
                      vocab_size=self.vocab_size, n_positions=self.n_positions,
                      tie_embeddings=self.tie_embeddings)

  def sample_one(self, rng: np.random.Generator) -> ArchConfig:
    lo, hi = self.depth_range
    depth = int(rng.integers(lo, hi + 1))
    rule = next(r for r in self.width_rules if r[0] <= depth <= r[1])
    width = int(rng.choice(np.arange(rule[2], rule[3] + 1, rule[4])))
    heads = int(rng.choice(self._heads_choices(width)))
    patch = int(rng.choice(self.patches)) if self.family == 'vit' else None
    return self._build(depth, width, heads, patch)


SPACES: dict[str, Space] = {
    # ViTs-1K, CIFAR variant (patch 2 or 4 on 32x32 images).
    'vits-1k': Space(family='vit', width_rules=((3, 3, 384, 512, 32),
                                                (4, 5, 256, 384, 32),
                                                (6, 9, 128, 256, 32)),
                     patches=(2, 4), image_size=32, channels=3,
                     num_classes=10),
    # ViTs-1K, ImageNet variant (patch 16 or 32 on 224x224 images).
    'vits-1k-imagenet': Space(family='vit', width_rules=((3, 3, 384, 512, 32),
                                                         (4, 5, 256, 384, 32),
                                                         (6, 9, 128, 256, 32)),
                              patches=(16, 32), image_size=224, channels=3,
                              num_classes=1000),
    # GPTs-1K: untied, 8 heads, the GPT-2 vocabulary and context.
    'gpts-1k': Space(family='gpt2', width_rules=((3, 3, 176, 256, 8),
                                                 (4, 5, 128, 176, 8),
                                                 (6, 9, 72, 176, 8)),
                     heads=8, vocab_size=50257, n_positions=1024,
                     tie_embeddings=False),
    # Small ViTs for 28x28 grayscale images (Fashion-MNIST) on a CPU.
    'vits-cpu': Space(family='vit', width_rules=((2, 2, 64, 96, 16),
                                                 (3, 3, 48, 80, 16),
                                                 (4, 4, 32, 64, 16)),
                      patches=(4, 7), image_size=28, channels=1,
                      num_classes=10),
    # Small GPTs with a byte vocabulary and a 128-token context on a CPU.
    'gpts-cpu': Space(family='gpt2', width_rules=((2, 2, 64, 96, 16),
                                                  (3, 3, 48, 80, 16),
                                                  (4, 4, 32, 64, 16)),
                      heads=4, vocab_size=256, n_positions=128,
                      tie_embeddings=False),
}


def make_space(space: str | Space, **overrides) -> Space:
  """A named space (or a Space) with fields replaced, e.g. from a config."""
  if isinstance(space, Space):
    base = space
  elif space in SPACES:
    base = SPACES[space]
  else:
    raise ConfigError(f'architecture space={space!r} is unknown; known: '
                      f'{", ".join(sorted(SPACES))}.')
  return replace_fields(base, **overrides)


def sample(space: str | Space, n: int, seed: int) -> list[ArchConfig]:
  """n architectures drawn from `space`; the same seed gives the same list."""
  space = make_space(space)
  check_int(n, 'sample: n', 0)
  rng = np.random.default_rng(seed)
  return [space.sample_one(rng) for _ in range(n)]
