"""An init saved earlier (a predicted init, or any params checkpoint).

`checkpoint:DIR` restores what `main --config=configs/predict.py` or the
main job wrote, so a prediction made once (maybe on a bigger machine) can
start any number of fine-tuning runs. A checkpoint made for another
architecture is refused: by the architecture its metadata names (shapes alone
cannot tell 4 heads from 8), else with the first mismatching parameter and
both shapes.
"""

from __future__ import annotations

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import models
from logah_jax.inits.base import InitMethod
from logah_jax.validation import ConfigError


class CheckpointInit(InitMethod):
  deterministic = True

  def __init__(self, directory: str):
    self.directory = directory
    self.name = f'checkpoint:{directory}'

  def params(self, arch, seed: int):
    del seed
    self.check_arch(arch)
    return ckpt_lib.restore_params(
        self.directory, abstract_params=models.abstract_params(arch))

  def check_arch(self, arch) -> None:
    """ConfigError when the metadata names another architecture than
    `arch` (an init without one is checked by its shapes only)."""
    try:
      stored = arch_lib.from_dict(ckpt_lib.read_metadata(self.directory)
                                  ['arch'])
    except (FileNotFoundError, ValueError, TypeError, KeyError):
      return  # no readable architecture: restore_params checks the shapes
    if stored != arch:
      theirs, ours = arch_lib.to_dict(stored), arch_lib.to_dict(arch)
      diff = [f'{k}={theirs.get(k)!r} there, {ours.get(k)!r} here'
              for k in sorted(set(theirs) | set(ours))
              if theirs.get(k) != ours.get(k)]
      raise ConfigError(f'{self.name} holds an init of {stored.name}, not of '
                        f'the target {arch.name} ({"; ".join(diff)})')

  def describe(self, arch=None) -> dict:
    del arch
    try:
      metadata = ckpt_lib.read_metadata(self.directory)
    except (FileNotFoundError, ValueError):
      metadata = {}
    return {'method': self.name, 'metadata': metadata}
