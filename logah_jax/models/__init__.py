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
from logah_jax.models import block_init, layers
from logah_jax.models.gpt2 import GPT2
from logah_jax.models.vit import ViT

__all__ = ['GPT2', 'ViT', 'abstract_params', 'block_names', 'build',
           'dummy_input', 'init_params', 'stack_blocks', 'unstack_blocks']


def _check(cfg, fn: str):
  if not isinstance(cfg, (ViTConfig, GPT2Config)):
    raise ValueError(f'models.{fn}: config {cfg!r} is neither a ViTConfig '
                     'nor a GPT2Config.')


def build(cfg, dtype=jnp.float32, remat: bool | str = False,
          scan: bool = False) -> nn.Module:
  """The Flax module of `cfg`; `dtype` is the compute dtype, params are fp32.

  `remat` rematerialises each block (less activation memory, about one more
  forward pass of compute) and keeps the params tree; `layers.REMAT_DOTS`
  recomputes only a block's elementwise work (`layers.block_class`). `scan`
  runs the blocks as one `nn.scan`: its params are `stack_blocks` of the
  usual tree.
  """
  _check(cfg, 'build')
  if isinstance(cfg, ViTConfig):
    return ViT(cfg, dtype, remat, scan)
  return GPT2(cfg, dtype, remat, scan)


def block_names(cfg) -> list[str]:
  """The params keys of `cfg`'s residual blocks, in order."""
  _check(cfg, 'block_names')
  prefix = 'encoder_layer_' if isinstance(cfg, ViTConfig) else 'h_'
  return [f'{prefix}{i}' for i in range(cfg.depth)]


def stack_blocks(cfg, params: dict, stack=None) -> dict:
  """The params of `build(cfg, scan=True)`: block subtrees stacked on axis 0
  under `layers.STACKED`, every other entry as it is.

  `stack(*leaves)` combines one leaf of every block (default `jnp.stack`);
  another function lays out a tree shaped like the params, such as their
  shardings (`parallel.stacked_sharding`).
  """
  stack = stack or (lambda *xs: jnp.stack(xs))
  names = block_names(cfg)
  out = {k: v for k, v in params.items() if k not in names}
  out[layers.STACKED] = jax.tree.map(stack, *[params[n] for n in names])
  return out


def unstack_blocks(cfg, params: dict) -> dict:
  """The inverse of `stack_blocks`: the reference (per-block) layout."""
  out = {k: v for k, v in params.items() if k != layers.STACKED}
  for i, name in enumerate(block_names(cfg)):
    out[name] = jax.tree.map(lambda x, i=i: x[i], params[layers.STACKED])
  return out


def dummy_input(cfg, batch: int = 1) -> jax.Array:
  """A zero input of the right shape and dtype, for init and shape tracing."""
  _check(cfg, 'dummy_input')
  if isinstance(cfg, ViTConfig):
    return jnp.zeros((batch, cfg.image_size, cfg.image_size, cfg.channels),
                     jnp.float32)
  return jnp.zeros((batch, min(8, cfg.n_positions)), jnp.int32)


@functools.lru_cache(maxsize=None)
def _abstract_params(cfg):
  """Traced through the scanned model, whose one block stands for all of
  them: tracing GPT-2-Large's unrolled init took about 1 s, on the path of
  every prediction (docs/performance.md). Same tree as the unrolled init's
  (tests), blocks in their place in the key order."""
  stacked = jax.eval_shape(build(cfg, scan=True).init, jax.random.key(0),
                           dummy_input(cfg))['params']
  out = {}
  for key, value in stacked.items():
    if key != layers.STACKED:
      out[key] = value
      continue
    for name in block_names(cfg):
      out[name] = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), value)
  return out


def abstract_params(cfg):
  """The params tree of `cfg` as ShapeDtypeStructs: no memory, no FLOPs.

  Traced once per config (cached); each call gets its own containers so that
  a caller editing the dict cannot corrupt the cache.
  """
  _check(cfg, 'abstract_params')
  return jax.tree.map(lambda leaf: leaf, _abstract_params(cfg))


@functools.lru_cache(maxsize=64)
def _init_plan(cfg, key: jax.ShapeDtypeStruct) -> block_init.Plan:
  return block_init.Plan(build(cfg), (dummy_input(cfg),), block_names(cfg),
                         key)


def init_params(cfg, key: jax.Array):
  """Params with the reference default init (the RandInit baseline).

  The draws are jax.random's from `key`, computed through the fused
  threefry implementation (`prng`): the same values, 3-4x faster on CPUs.
  The blocks' init compiles once per distinct block (`block_init`), with
  the values of Flax's init of the whole model.
  """
  _check(cfg, 'init_params')
  plan = _init_plan(cfg, jax.ShapeDtypeStruct(key.shape, key.dtype))
  return block_init.run(plan, key)
