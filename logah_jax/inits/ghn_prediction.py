"""Inits predicted by a trained GHN: LoGAH (both factorisations) and GHN-3.

The three methods differ only in the GHN's decoder: LoGAH's low-rank decoder
with the paper code's row-major reshape ('logah') or the factorisation the
paper describes ('logah-transpose'), and GHN-3's full-rank decoder ('ghn3')
(docs/algorithm.md §4). A method only loads: the GHN must already be trained
in its workdir (by `main` with a GHN-training config, or by the comparison
harness, which trains one per method with the same recipe).
"""

from __future__ import annotations

from logah_jax import ghn as ghn_lib
from logah_jax.inits.base import InitMethod
from logah_jax.validation import ConfigError

VARIANTS = {  # method -> GHNConfig fields it fixes
    'logah': {'decoder': 'lowrank', 'factorization': 'paper'},
    'logah-transpose': {'decoder': 'lowrank', 'factorization': 'transpose'},
    'ghn3': {'decoder': 'fullrank'},
}


class GHNPrediction(InitMethod):
  """Params predicted by the GHN trained in `ghn_workdir`.

  Args:
    method: 'logah', 'logah-transpose' or 'ghn3' (checked against the
      loaded GHN, so a workdir of the wrong decoder is refused).
    ghn_workdir: a GHN training workdir holding a trained GHN.
    step: the checkpoint step to predict with (None = the latest).
    fill, fill_noise: how a target wider than the GHN's training
      architectures is filled (`ghn.FILLS`; None = the GHN config's).
  """

  deterministic = True

  def __init__(self, method: str, ghn_workdir: str, *,
               step: int | None = None, fill: str | None = None,
               fill_noise: float | None = None):
    if method not in VARIANTS:
      raise ConfigError(f'GHN init method {method!r} is not one of '
                        f'{tuple(VARIANTS)}')
    if fill is not None and fill not in ghn_lib.FILLS:
      raise ConfigError(f'init fill={fill!r} must be one of {ghn_lib.FILLS}')
    self.name, self.ghn_workdir, self.step = method, ghn_workdir, step
    self.fill, self.fill_noise = fill, fill_noise
    self._ghn = None
    self._predicted = {}  # arch -> params: seeds of a comparison share one

  @classmethod
  def from_workdir(cls, ghn_workdir: str, step: int | None = None,
                   fill: str | None = None) -> 'GHNPrediction':
    """The method of whatever GHN `ghn_workdir` holds (loaded once)."""
    trained = ghn_lib.load(ghn_workdir, step, fill=fill)
    method = cls(method_of(trained.cfg), ghn_workdir, step=step, fill=fill)
    method._ghn = trained
    return method

  def prepare(self) -> None:
    """Loads the GHN (once) and checks that its decoder fits the method."""
    if self._ghn is not None:
      return
    trained = ghn_lib.load(self.ghn_workdir, self.step, fill=self.fill,
                           fill_noise=self.fill_noise)
    for key, want in VARIANTS[self.name].items():
      have = getattr(trained.cfg, key)
      if have != want:
        raise ConfigError(f'{self.ghn_workdir}: the GHN there has {key}='
                          f'{have!r}, but init method {self.name!r} needs '
                          f'{want!r}')
    self._ghn = trained

  @property
  def trained(self):
    """The loaded `ghn.TrainedGHN`."""
    self.prepare()
    return self._ghn

  def params(self, arch, seed: int):
    del seed  # a prediction does not depend on it
    self.prepare()
    if getattr(arch, 'family', None) != self._ghn.family:
      raise ConfigError(f'{self.ghn_workdir}: the GHN there predicts '
                        f'{self._ghn.family} models, not {arch.name} (a '
                        f'{getattr(arch, "family", None)})')
    if arch not in self._predicted:
      self._predicted = {arch: self._ghn.predict(arch)}
    return self._predicted[arch]

  def describe(self, arch=None) -> dict:
    del arch
    self.prepare()
    return {'method': self.name, 'generator': self._ghn.describe()}


def method_of(cfg) -> str:
  """The init method name of a trained GHN's config."""
  for name, fields in VARIANTS.items():
    if all(getattr(cfg, k) == v for k, v in fields.items()):
      return name
  raise ConfigError(f'no init method for GHN {cfg}')
