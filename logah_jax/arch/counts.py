"""Closed-form parameter counts of the target architectures.

Written from the reference architectures (torchvision ViT, HF GPT-2), not from
our Flax modules, so that the tests can check one against the other.
"""

from logah_jax.arch.configs import ArchConfig, GPT2Config, ViTConfig


def _layer_norm(width: int) -> int:
  return 2 * width


def _linear(fan_in: int, fan_out: int) -> int:
  return fan_in * fan_out + fan_out


def vit_num_params(cfg: ViTConfig) -> int:
  c, m = cfg.width, cfg.mlp_dim
  stem = cfg.channels * cfg.patch**2 * c + c  # conv_proj weight + bias
  stem += c  # class token
  stem += cfg.seq_len * c  # position embedding, class token row included
  block = (2 * _layer_norm(c) + _linear(c, 3 * c) + _linear(c, c)
           + _linear(c, m) + _linear(m, c))
  head = _layer_norm(c) + _linear(c, cfg.num_classes)
  return stem + cfg.depth * block + head


def gpt2_num_params(cfg: GPT2Config) -> int:
  d = cfg.width
  embed = cfg.vocab_size * d + cfg.n_positions * d
  block = (2 * _layer_norm(d) + _linear(d, 3 * d) + _linear(d, d)
           + _linear(d, 4 * d) + _linear(4 * d, d))
  lm_head = 0 if cfg.tie_embeddings else cfg.vocab_size * d  # no bias
  return embed + cfg.depth * block + _layer_norm(d) + lm_head


def num_params(cfg: ArchConfig) -> int:
  if isinstance(cfg, ViTConfig):
    return vit_num_params(cfg)
  if isinstance(cfg, GPT2Config):
    return gpt2_num_params(cfg)
  raise ValueError(f'num_params: {cfg!r} is not a ViTConfig or GPT2Config.')
