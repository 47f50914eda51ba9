"""An init saved earlier (a predicted init, or any params checkpoint).

`checkpoint:DIR` restores what `main --config=configs/predict.py` or the
main job wrote, so a prediction made once (maybe on a bigger machine) can
start any number of fine-tuning runs. A checkpoint made for another
architecture is refused with the first mismatching parameter and both shapes.
"""

from __future__ import annotations

from logah_jax import checkpoint as ckpt_lib
from logah_jax import models
from logah_jax.inits.base import InitMethod


class CheckpointInit(InitMethod):
  deterministic = True

  def __init__(self, directory: str):
    self.directory = directory
    self.name = f'checkpoint:{directory}'

  def params(self, arch, seed: int):
    del seed
    return ckpt_lib.restore_params(
        self.directory, abstract_params=models.abstract_params(arch))

  def describe(self, arch=None) -> dict:
    del arch
    try:
      metadata = ckpt_lib.read_metadata(self.directory)
    except (FileNotFoundError, ValueError):
      metadata = {}
    return {'method': self.name, 'metadata': metadata}
