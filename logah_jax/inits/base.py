"""The one interface every initialisation method implements.

A method turns (ArchConfig, seed) into a params pytree with exactly the tree,
shapes and dtypes of `models.abstract_params(arch)`, so fine-tuning and the
comparison harness never special-case a method. A method only loads: what
it is made from (a trained GHN; for a growth method, a small pretrained
model) is trained beforehand by whoever needs it, and handed over as a
directory. One-time loading goes in `prepare`, which is idempotent, so a
comparison over several seeds pays for it once.
"""

from __future__ import annotations

from logah_jax import models
from logah_jax import tree_compare
from logah_jax.validation import check_seed


class InitMethod:
  """Base class: override `params` (and `prepare`, `describe` if needed)."""

  name: str = ''
  # True when every seed gives the same params (a GHN prediction): seeds then
  # vary only the data order of the fine-tuning run.
  deterministic: bool = False

  def prepare(self) -> None:
    """One-time loading before `params` is called (default: none)."""

  def params(self, arch, seed: int):
    raise NotImplementedError

  def describe(self, arch=None) -> dict:
    """JSON-able provenance, stored with the init and in result tables;
    `arch`: the target, where the answer depends on it."""
    return {'method': self.name}

  def __call__(self, arch, seed: int):
    """`params(arch, seed)`, checked against the architecture's tree.

    The seed must fit a PRNG key's 32 bits: `jax.random.key` would wrap a
    larger one, so that two seeds gave one init.
    """
    check_seed(seed, 'seed')
    out = self.params(arch, seed)
    tree_compare.check_tree(out, models.abstract_params(arch),
                            f'{self.name!r} for {arch.name}', what='init')
    return out
