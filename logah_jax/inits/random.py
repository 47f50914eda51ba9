"""RandInit: the references' default initialisation (the baseline to beat).

ViT: torchvision's (trunc-normal / LeCun / zero class token); GPT-2: Hugging
Face's `_init_weights` (N(0, 0.02), residual projections scaled by
1/sqrt(2 * depth)). Both live in the Flax models' initialisers.
"""

from __future__ import annotations

import jax

from logah_jax import models
from logah_jax.inits.base import InitMethod


class RandomInit(InitMethod):
  name = 'random'

  def params(self, arch, seed: int):
    return models.init_params(arch, jax.random.key(seed))
