"""OrthInit (Saxe et al. 2014), as the LoGAH paper's baseline applies it.

Every weight matrix of a linear or convolutional layer gets a (semi-)
orthogonal draw with gain 1, like `torch.nn.init.orthogonal_` on the torch
layout (out, in...): the trailing dims are flattened and the shorter side is
orthonormal. The last layer (ViT `head`, GPT-2 `lm_head`) is skipped, as in
ppuda's `init(orth=True)`. Embeddings, biases and norms keep the reference
init (RandInit with the same seed), so the two baselines differ only in the
matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from logah_jax import models
from logah_jax import prng
from logah_jax.inits.base import InitMethod

_LAST_LAYERS = ('head', 'lm_head')


def _is_hidden_kernel(path) -> bool:
  names = [getattr(k, 'key', None) for k in path]
  return names[-1] == 'kernel' and names[0] not in _LAST_LAYERS


def _orthogonal(key, shape, dtype):
  """Flax layout (..., in, out): flatten to (fan_in, out), orthonormal."""
  fan_in = 1
  for d in shape[:-1]:
    fan_in *= d
  w = jax.nn.initializers.orthogonal(scale=1.0, column_axis=-1)(
      key, (fan_in, shape[-1]), jnp.float32)
  return w.reshape(shape).astype(dtype)


class OrthogonalInit(InitMethod):
  name = 'orthogonal'

  def params(self, arch, seed: int):
    key = jax.random.key(seed)
    params = models.init_params(arch, key)
    # the same draws as from the plain key, without the CPU loop (`prng`)
    orth_key = prng.fused_threefry(jax.random.fold_in(key, 1))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(orth_key, len(leaves))
    out = [_orthogonal(k, leaf.shape, leaf.dtype)
           if _is_hidden_kernel(path) else leaf
           for k, (path, leaf) in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)
