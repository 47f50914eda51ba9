"""GHN configurations: LoGAH (low-rank decoder) and GHN-3 (full-rank decoder).

Sizes follow LoGAH Table 1 and GHN-3 (docs/algorithm.md §3, §4). A GHNConfig
is frozen and hashable: compiled GHN functions are cached on it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from logah_jax.arch.configs import replace_fields
from logah_jax.validation import ConfigError, check_int

# The longest virtual edge the Graphormer's edge table tells apart: larger
# distances would share its last row.
MAX_CUTOFF = 254

DECODERS = ('lowrank', 'fullrank')
FACTORIZATIONS = ('paper', 'transpose')
DTYPES = ('float32', 'bfloat16')
# How a target wider than every training architecture gets the rows and
# columns past the trained width (docs/extrapolation.md).
FILLS = ('decoder', 'tile', 'widen')
# Fields chosen at prediction time, not part of a GHN training config.
PREDICTION_FIELDS = ('trained_width', 'fill', 'fill_noise')


@dataclasses.dataclass(frozen=True)
class GHNConfig:
  """One graph hypernetwork.

  decoder: 'lowrank' (LoGAH) or 'fullrank' (GHN-3).
  hid, layers, heads: Graphormer width d, depth and attention heads.
  rank: LoGAH's rank r (ignored by the full-rank decoder).
  max_shape: largest (c_out, c_in, h, w) decoded before tiling.
  max_ck: K, the rows of LoGAH's factor matrices (max c*k decoded).
  factorization: 'paper' reinterprets the decoder output row-major as the
    paper's code does; 'transpose' uses the factorisation the paper describes.
  num_classes: the classifier width GHN-3 predicts (and a channel-vocabulary
    entry, as in the original).
  cutoff: longest virtual edge (shortest-path length) seen by the Graphormer,
    at most MAX_CUTOFF.
  normalize: fan-in / sigmoid / tanh normalisation of predicted tensors.
  dtype: compute dtype of the Graphormer; decoders always run in float32.
  trained_width: the largest width among the training architectures (0:
    unknown); set when a trained GHN is loaded.
  fill: for a target wider than `trained_width`: 'decoder' decodes every
    row and column (the paper; those past the trained width were never
    trained), 'tile' decodes the target at the trained width and repeats it,
    'widen' repeats each block of a fused tensor (q, k, v) on its own, so
    that the wider model computes the trained-width one's function (except
    a GPT-2 with tied embeddings, whose logits scale with the width ratio,
    and widths that are not a multiple of it: docs/extrapolation.md), and
    adds noise to the copies to break their symmetry.
  fill_noise: the noise of 'widen', relative to the tensor's std.
  """

  decoder: str = 'lowrank'
  hid: int = 64
  layers: int = 3
  heads: int = 8
  rank: int = 32
  max_shape: tuple[int, int, int, int] = (2048, 2048, 16, 16)
  max_ck: int = 32768
  factorization: str = 'paper'
  num_classes: int = 10
  cutoff: int = 250
  max_degree: int = 100
  max_input_dist: int = 1000
  final_ln: bool = True
  normalize: bool = True
  dtype: str = 'float32'
  trained_width: int = 0
  fill: str = 'widen'
  fill_noise: float = 0.1

  def __post_init__(self):
    object.__setattr__(self, 'max_shape', tuple(self.max_shape))
    if self.decoder not in DECODERS:
      raise ConfigError(f'GHNConfig.decoder={self.decoder!r} must be one of '
                        f'{DECODERS}.')
    if self.factorization not in FACTORIZATIONS:
      raise ConfigError(f'GHNConfig.factorization={self.factorization!r} must '
                        f'be one of {FACTORIZATIONS}.')
    if self.fill not in FILLS:
      raise ConfigError(f'GHNConfig.fill={self.fill!r} must be one of '
                        f'{FILLS}.')
    check_int(self.trained_width, 'GHNConfig.trained_width', 0)
    if (isinstance(self.fill_noise, bool) or
        not isinstance(self.fill_noise, (int, float)) or
        not 0 <= self.fill_noise < 10):
      raise ConfigError(f'GHNConfig.fill_noise={self.fill_noise!r} must be a '
                        'number in [0, 10).')
    if self.dtype not in DTYPES:
      raise ConfigError(f'GHNConfig.dtype={self.dtype!r} must be one of '
                        f'{DTYPES}.')
    names = ['hid', 'layers', 'heads', 'max_ck', 'num_classes', 'cutoff',
             'max_degree', 'max_input_dist']
    if self.decoder == 'lowrank':
      names.append('rank')
    for name in names:
      check_int(getattr(self, name), f'GHNConfig.{name}')
    if self.cutoff > MAX_CUTOFF:
      raise ConfigError(f'GHNConfig.cutoff={self.cutoff} must be at most '
                        f'{MAX_CUTOFF} (the edge table\'s longest distance).')
    if self.hid % self.heads:
      raise ConfigError(f'GHNConfig.hid={self.hid} is not divisible by '
                        f'heads={self.heads}.')
    if self.hid % 4:
      raise ConfigError(f'GHNConfig.hid={self.hid} must be divisible by 4 '
                        '(the shape encoder concatenates four d/4 embeddings).')
    if len(self.max_shape) != 4:
      raise ConfigError(f'GHNConfig.max_shape={self.max_shape} must be four '
                        'positive ints (c_out, c_in, h, w).')
    object.__setattr__(self, 'max_shape', tuple(
        check_int(v, f'GHNConfig.max_shape[{i}]')
        for i, v in enumerate(self.max_shape)))
    for name in ('final_ln', 'normalize'):
      if not isinstance(getattr(self, name), bool):  # 'false' would be truthy
        raise ConfigError(f'GHNConfig.{name}={getattr(self, name)!r} must be '
                          'True or False.')
    if self.decoder == 'lowrank' and (
        self.max_ck < self.max_shape[0] or self.max_ck < self.max_shape[1]):
      raise ConfigError(f'GHNConfig.max_ck={self.max_ck} is smaller than '
                        f'max_shape={self.max_shape[:2]}.')
    if self.decoder == 'fullrank' and self.max_shape[:2] != (
        self.hid, self.hid):
      raise ConfigError(f'GHNConfig.max_shape={self.max_shape} must start '
                        f'with (hid, hid)=({self.hid}, {self.hid}) for the '
                        'full-rank decoder.')
    if self.decoder == 'fullrank' and self.max_shape[2] != self.max_shape[3]:
      # its decoder emits square h x w kernels of max_shape[2]
      raise ConfigError(f'GHNConfig.max_shape={self.max_shape}: the '
                        'full-rank decoder needs h == w.')

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.dtype == 'bfloat16' else jnp.float32


_LOGAH = {  # rank, layers, hid, heads (LoGAH Table 1)
    'logah-tiny': (32, 3, 64, 8),
    'logah-small': (90, 5, 128, 16),
    'logah-base': (128, 5, 256, 16),
    'logah-large': (256, 12, 256, 16),
}
_GHN3 = {  # layers, hid, heads (GHN-3; max width = hid, 16x16 spatial)
    'ghn3-tiny': (3, 64, 8),
    'ghn3-small': (5, 128, 16),
    'ghn3-large': (12, 256, 16),
    'ghn3-xl': (24, 384, 16),
}


def names() -> list[str]:
  return sorted(_LOGAH) + sorted(_GHN3)


def named(name: str, **overrides) -> GHNConfig:
  """A named GHN, optionally with fields replaced (e.g. num_classes=100)."""
  if name in _LOGAH:
    rank, layers, hid, heads = _LOGAH[name]
    base = dict(decoder='lowrank', rank=rank, layers=layers, hid=hid,
                heads=heads, max_shape=(2048, 2048, 16, 16), max_ck=32768)
  elif name in _GHN3:
    layers, hid, heads = _GHN3[name]
    base = dict(decoder='fullrank', rank=0, layers=layers, hid=hid,
                heads=heads, max_shape=(hid, hid, 16, 16))
  else:
    raise ConfigError(f'GHN name={name!r} is unknown; known: '
                      f'{", ".join(names())}.')
  return replace_fields(GHNConfig(**base), **overrides)


def to_dict(cfg: GHNConfig) -> dict:
  d = dataclasses.asdict(cfg)
  d['max_shape'] = list(cfg.max_shape)
  return d


def from_dict(d: dict) -> GHNConfig:
  return GHNConfig(**{**d, 'max_shape': tuple(d['max_shape'])})
