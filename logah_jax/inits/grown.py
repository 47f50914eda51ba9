"""Inits grown from a small pretrained model (`logah_jax.growth`).

The source (a small model's params directory) is trained beforehand, by a
fine-tuning run or by the comparison harness; a `ligo` method also needs its
operator trained beforehand (`train.ligo_training`). This class only loads
them and applies the operator. Closed-form methods draw which units are
copied from the seed; LiGO's operator is fixed, so its init is too.
"""

from __future__ import annotations

import jax

from logah_jax import growth
from logah_jax.inits import growth_source
from logah_jax.inits.base import InitMethod
from logah_jax.validation import ConfigError


class GrowthInit(InitMethod):
  """`growth.grow(method, source params, ...)` as an init method.

  Args:
    method: one of `growth.METHODS`.
    source: the small model's params directory.
    operator: for 'ligo', the directory of the trained operator.
    options: closed-form options (`split_noise`, bert2bert `mode`).
  """

  def __init__(self, method: str, source: str, *, operator: str = '',
               options: dict | None = None):
    growth.check_method(method)
    if method == 'ligo' and not operator:
      raise ConfigError('init method ligo needs the directory of a trained '
                        'LiGO operator')
    self.name, self.source, self.operator_dir = method, source, operator
    self.options = dict(options or {})
    self.deterministic = method == 'ligo'
    self._small = self._small_params = None
    self._operator = self._operator_meta = self._operator_for = None

  def prepare(self) -> None:
    if self._small is None:
      self._small = growth_source.source_arch(self.source)
      self._small_params = growth_source.load_params(self.source,
                                                     self._small)

  def params(self, arch, seed: int):
    self.prepare()
    growth.check_pair(self._small, arch)
    if self.name == 'ligo':
      if self._operator_for != arch:  # loading checks the pair it grows
        self._operator, self._operator_meta = growth_source.load_operator(
            self.operator_dir, self._small, arch)
        self._operator_for = arch
      return growth.grow('ligo', self._small_params, self._small, arch,
                         operator=self._operator)
    return growth.grow(self.name, self._small_params, self._small, arch,
                       key=jax.random.key(seed), **self.options)

  def describe(self, arch=None) -> dict:
    """`function_preserving`: for `arch`, or (without one) whether the
    method can preserve the function at all."""
    self.prepare()
    preserves = (growth.FUNCTION_PRESERVING[self.name] if arch is None else
                 growth.preserves_function(self.name, self._small, arch))
    out = {'method': self.name, 'source': self.source,
           'source_arch': self._small.name, 'options': self.options,
           'function_preserving': preserves}
    if self.name == 'ligo':
      out['operator'] = self.operator_dir
    return out
