"""Inits predicted by a trained GHN: LoGAH (both factorisations) and GHN-3.

The three methods differ only in the GHN's decoder: LoGAH's low-rank decoder
with the paper code's row-major reshape ('logah') or the factorisation the
paper describes ('logah-transpose'), and GHN-3's full-rank decoder ('ghn3').
Each GHN is trained with the same recipe, space and data (the base training
config with the decoder swapped), once, in its own workdir; `prepare` resumes
or skips a run that is already complete.
"""

from __future__ import annotations

import copy

from logah_jax import ghn as ghn_lib
from logah_jax.inits.base import InitMethod

VARIANTS = {  # method -> GHNConfig fields it fixes
    'logah': {'decoder': 'lowrank', 'factorization': 'paper'},
    'logah-transpose': {'decoder': 'lowrank', 'factorization': 'transpose'},
    'ghn3': {'decoder': 'fullrank'},
}


def training_config(base, method: str, ghn3_name: str = 'ghn3-tiny'):
  """The GHN-training config of `method`, derived from a LoGAH config `base`.

  GHN-3 takes the named full-rank GHN (same Graphormer sizes as the LoGAH of
  the same size name) and keeps the base's classes, cutoff, dtype and
  normalisation, so only the decoder differs.
  """
  if method not in VARIANTS:
    raise ValueError(f'GHN init method {method!r} is not one of '
                     f'{tuple(VARIANTS)}')
  config = copy.deepcopy(base)
  with config.unlocked():
    if method == 'ghn3':
      keep = {k: base.ghn[k] for k in ('num_classes', 'cutoff', 'dtype',
                                       'normalize', 'max_degree',
                                       'max_input_dist', 'final_ln')}
      try:
        cfg = ghn_lib.named(ghn3_name, **keep)
      except ValueError as e:
        raise ValueError(f'config.ghn3_name: {e}') from e
      if cfg.decoder != 'fullrank':
        raise ValueError(f'config.ghn3_name={ghn3_name!r} is not a GHN-3 '
                         '(full-rank) GHN')
      for key, value in ghn_lib.to_dict(cfg).items():
        config.ghn[key] = value
    else:
      if base.ghn.decoder != 'lowrank':
        raise ValueError(f'the base GHN config has decoder '
                         f'{base.ghn.decoder!r}; LoGAH methods need lowrank')
      config.ghn.factorization = VARIANTS[method]['factorization']
  return config


class GHNPrediction(InitMethod):
  """Params predicted by the GHN trained in `ghn_workdir`.

  Args:
    method: 'logah', 'logah-transpose' or 'ghn3' (checked against the
      loaded GHN, so a workdir of the wrong decoder is refused).
    ghn_workdir: the GHN training workdir.
    train_config: a GHN-training config; when given, `prepare` trains (or
      resumes) it in ghn_workdir first. None: the workdir must hold a run.
    step: the checkpoint step to predict with (None = the latest).
  """

  deterministic = True

  def __init__(self, method: str, ghn_workdir: str, *, train_config=None,
               step: int | None = None):
    if method not in VARIANTS:
      raise ValueError(f'GHN init method {method!r} is not one of '
                       f'{tuple(VARIANTS)}')
    self.name, self.ghn_workdir = method, ghn_workdir
    self.train_config, self.step = train_config, step
    self._ghn = None
    self._predicted = {}  # arch -> params: seeds of a comparison share one

  def prepare(self) -> None:
    if self._ghn is not None:
      return
    if self.train_config is not None:
      from logah_jax.train import ghn_loop  # pylint: disable=g-import-not-at-top
      ghn_loop.train_ghn(self.train_config, self.ghn_workdir)
    trained = ghn_lib.load(self.ghn_workdir, self.step)
    for key, want in VARIANTS[self.name].items():
      have = getattr(trained.cfg, key)
      if have != want:
        raise ValueError(f'{self.ghn_workdir}: the GHN there has {key}='
                         f'{have!r}, but init method {self.name!r} needs '
                         f'{want!r}')
    self._ghn = trained

  def params(self, arch, seed: int):
    del seed  # a prediction does not depend on it
    self.prepare()
    if arch not in self._predicted:
      self._predicted = {arch: self._ghn.predict(arch)}
    return self._predicted[arch]

  def describe(self) -> dict:
    self.prepare()
    return {'method': self.name, 'generator': self._ghn.describe()}


def method_of(cfg) -> str:
  """The init method name of a trained GHN's config."""
  for name, fields in VARIANTS.items():
    if all(getattr(cfg, k) == v for k, v in fields.items()):
      return name
  raise ValueError(f'no init method for GHN {cfg}')
