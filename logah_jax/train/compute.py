"""How a run computes its targets: the compute dtype and rematerialisation.

Params and optimizer state stay float32 whatever the compute dtype; matmuls
and activations run in it, while LayerNorm statistics, attention softmax and
the losses are float32 (docs/performance.md). 'auto' picks bfloat16 on GPUs
and TPUs, whose matmul units are built for it, and float32 on CPUs, where
bfloat16 is emulated and slower.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from logah_jax.models import layers
from logah_jax.validation import ConfigError

DTYPES = ('auto', 'float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class Compute:
  """The resolved options: `dtype` a jnp dtype, `remat` per target block."""

  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @property
  def dtype_name(self) -> str:
    return jnp.dtype(self.dtype).name

  def block_remat(self, scan: bool):
    """The `remat` of a training step's target blocks: `remat`, and for
    scanned blocks at most their matmul outputs kept
    (`layers.scanned_remat`)."""
    return layers.scanned_remat(self.remat) if scan else self.remat

  def describe(self, scan: bool = False) -> str:
    """The start-up line: what was chosen, on which backend. `scan`: the
    step runs its target's blocks as one scan (`block_remat`)."""
    what = {True: 'remat on', False: 'remat off',
            layers.REMAT_DOTS: 'remat keeping matmul outputs'}[
                self.block_remat(scan)]
    return (f'compute dtype {self.dtype_name} on {jax.default_backend()} '
            f'(params and optimizer state float32), '
            f'{"blocks scanned, " if scan else ""}{what}')


def resolve_dtype(name: str, prefix: str = 'config.compute_dtype') -> jnp.dtype:
  """'auto' | 'float32' | 'bfloat16' -> a jnp dtype for this backend."""
  if name not in DTYPES:
    raise ConfigError(f'{prefix}={name!r} must be one of {DTYPES}')
  if name == 'auto':
    name = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return jnp.bfloat16 if name == 'bfloat16' else jnp.float32


def from_config(config) -> Compute:
  """`config.compute_dtype` and `config.remat` (defaults 'auto', False)."""
  remat = config.get('remat', False)
  if not isinstance(remat, bool):
    raise ConfigError(f'config.remat={remat!r} must be true or false')
  return Compute(resolve_dtype(config.get('compute_dtype', 'auto')), remat)
