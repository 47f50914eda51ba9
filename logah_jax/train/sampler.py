"""Which architectures a GHN step trains on: a pure function of the step.

`ArchSampler.at(step)` draws m architectures from a fixed pool of `pool_size`
architectures (like ViTs-1K; the pool is `arch.sample(space, pool_size,
seed)`), or, with pool_size=0, m fresh ones from the space at every step (like
the GPT-2 trainer). The draw depends on (seed, step) alone, so the sampler's
whole state is the step number: a resumed run sees the same architectures as
an uninterrupted one.

Compilation bound: every distinct architecture compiles its training step
once per arch group of the mesh it runs on, so a run compiles at most
`distinct_archs() x arch groups` target steps, however long it runs.
"""

from __future__ import annotations

import numpy as np

from logah_jax import arch as arch_lib
from logah_jax.arch import batching
from logah_jax.validation import check_int


class ArchSampler:
  """m architectures per step from a space, deterministic in (seed, step)."""

  def __init__(self, space, m: int, *, seed: int = 0, pool_size: int = 1000):
    check_int(m, 'train.m')  # architectures per step
    check_int(pool_size, 'train.pool_size', 0)  # 0: fresh ones every step
    self.space = arch_lib.make_space(space)
    self.m, self.seed, self.pool_size = m, int(seed), pool_size
    self.pool = (arch_lib.sample(self.space, pool_size, self.seed)
                 if pool_size else None)

  @property
  def family(self) -> str:
    return self.space.family

  def at(self, step: int) -> list:
    """The m architectures of `step`."""
    rng = np.random.default_rng([self.seed, 1 + int(step)])
    if self.pool is None:
      return [self.space.sample_one(rng) for _ in range(self.m)]
    idx = rng.integers(0, len(self.pool), self.m)
    return [self.pool[i] for i in idx]

  def candidates(self) -> list:
    """Every architecture training can see: the pool, or the whole space."""
    if self.pool is not None:
      return list(dict.fromkeys(self.pool))
    space, out = self.space, []
    lo, hi = space.depth_range
    patches = space.patches if space.family == 'vit' else (None,)
    for depth in range(lo, hi + 1):
      rule = next(r for r in space.width_rules if r[0] <= depth <= r[1])
      for width in range(rule[2], rule[3] + 1, rule[4]):
        for heads in space._heads_choices(width):
          out.extend(space._build(depth, width, heads, p) for p in patches)
    return out

  def distinct_archs(self) -> int:
    """How many different ArchConfigs training can ever see (compile bound)."""
    return len(self.candidates())

  def deepest(self) -> list:
    """One architecture of the maximal depth per patch size (most nodes)."""
    space = self.space
    depth = space.depth_range[1]
    rule = next(r for r in space.width_rules if r[0] <= depth <= r[1])
    width = rule[2]
    heads = space._heads_choices(width)[0]
    patches = space.patches if space.family == 'vit' else (None,)
    return [space._build(depth, width, heads, p) for p in patches]

  def node_bucket(self, cutoff: int = 250) -> int:
    """The node padding every step uses: one bucket, so the body compiles once."""
    nodes = max(arch_lib.to_graph(a, cutoff=cutoff).n_nodes
                for a in self.deepest())
    return batching.bucket_size(nodes)
