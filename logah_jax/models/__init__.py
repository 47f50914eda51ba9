"""Flax Linen target models (ViT, GPT-2), built from an ArchConfig.

Everything else in logah_jax reaches the targets through these four
functions, so that the params layout (the paths the graph builder and the GHN
write into) has one source: `abstract_params`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from logah_jax.arch.configs import GPT2Config, ViTConfig
from logah_jax.models.gpt2 import GPT2
from logah_jax.models.vit import ViT

__all__ = ['GPT2', 'ViT', 'abstract_params', 'build', 'dummy_input',
           'init_params']


def _check(cfg, fn: str):
  if not isinstance(cfg, (ViTConfig, GPT2Config)):
    raise ValueError(f'models.{fn}: config {cfg!r} is neither a ViTConfig '
                     'nor a GPT2Config.')


def build(cfg, dtype=jnp.float32, remat: bool = False) -> nn.Module:
  """The Flax module of `cfg`; `dtype` is the compute dtype, params are fp32.

  `remat` rematerialises each block (less activation memory, about one more
  forward pass of compute); neither option changes the params tree.
  """
  _check(cfg, 'build')
  if isinstance(cfg, ViTConfig):
    return ViT(cfg, dtype, remat)
  return GPT2(cfg, dtype, remat)


def dummy_input(cfg, batch: int = 1) -> jax.Array:
  """A zero input of the right shape and dtype, for init and shape tracing."""
  _check(cfg, 'dummy_input')
  if isinstance(cfg, ViTConfig):
    return jnp.zeros((batch, cfg.image_size, cfg.image_size, cfg.channels),
                     jnp.float32)
  return jnp.zeros((batch, min(8, cfg.n_positions)), jnp.int32)


@functools.lru_cache(maxsize=None)
def _abstract_params(cfg):
  return jax.eval_shape(build(cfg).init, jax.random.key(0),
                        dummy_input(cfg))['params']


def abstract_params(cfg):
  """The params tree of `cfg` as ShapeDtypeStructs: no memory, no FLOPs.

  Traced once per config (cached); each call gets its own containers so that
  a caller editing the dict cannot corrupt the cache.
  """
  _check(cfg, 'abstract_params')
  return jax.tree.map(lambda leaf: leaf, _abstract_params(cfg))


@functools.lru_cache(maxsize=64)
def _jitted_init(cfg):
  model = build(cfg)
  x = dummy_input(cfg)
  return jax.jit(lambda key: model.init(key, x)['params'])


def init_params(cfg, key: jax.Array):
  """Params with the reference default init (the RandInit baseline)."""
  _check(cfg, 'init_params')
  return _jitted_init(cfg)(key)
