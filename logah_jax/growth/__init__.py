"""Grow a small pretrained model into a larger one (ViT, GPT-2).

  params = growth.grow('net2net', small_params, small_arch, large_arch,
                       key=jax.random.key(0))

Methods: `stack`, `interpolate`, `net2net`, `bert2bert` (closed form, see
`closed_form`) and `ligo` (a learned linear operator, see `ligo`; pass the
trained `operator=`). Every method returns params with exactly the tree,
shapes and dtypes of `models.abstract_params(large_arch)`; docs/growth.md
explains each and which preserve the small model's function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from logah_jax import models
from logah_jax import tree_compare
from logah_jax.growth import closed_form
from logah_jax.growth import layout
from logah_jax.growth import ligo
from logah_jax.growth.layout import check_pair
from logah_jax.validation import ConfigError

METHODS = ('stack', 'interpolate', 'net2net', 'bert2bert', 'ligo')
# Whether the grown model computes the small model's function exactly (at
# an integer width ratio, where LayerNorm statistics are unchanged).
FUNCTION_PRESERVING = {'stack': False, 'interpolate': False, 'net2net': True,
                       'bert2bert': False, 'ligo': False}
OPTIONS = {'stack': ('split_noise',), 'interpolate': ('split_noise',),
            'net2net': ('split_noise',), 'bert2bert': ('mode',),
            'ligo': ('operator',)}


def preserves_function(method: str, small_arch, large_arch) -> bool:
  """Whether `method` grows `small_arch` into a `large_arch` that computes
  the small model's function: net2net does only at an integer ratio of the
  widths (otherwise the copies cannot split evenly, and LayerNorm statistics
  change)."""
  check_method(method)
  return (FUNCTION_PRESERVING[method]
          and large_arch.width % small_arch.width == 0)


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ConfigError(f'growth method {method!r} is unknown; use one of '
                      f'{METHODS}')


def grow(method: str, small_params, small_arch, large_arch, *, key=None,
         **options):
  """`small_params` of `small_arch` grown into params of `large_arch`.

  Options: `split_noise` (stack, interpolate, net2net; default 0.5: how
  unequal the shares of a copied unit are, 0 = even), `mode` (bert2bert:
  'aki', the default, or 'fpi'), `operator` (ligo: a trained operator from
  `ligo.init_operator` and training; required). `key` draws which units are
  copied (closed-form methods).
  """
  check_method(method)
  check_pair(small_arch, large_arch)
  unknown = sorted(set(options) - set(OPTIONS[method]))
  if unknown:
    raise ConfigError(f'growth method {method!r} takes no option '
                      f'{unknown[0]!r}; options: {OPTIONS[method]}')
  tree_compare.check_tree(small_params, models.abstract_params(small_arch),
                          f'growth source of {small_arch.name}', what='source',
                          dtypes=False)  # any float dtype: cast below
  small_params = jax.tree.map(jnp.asarray, small_params)
  if method == 'ligo':
    if options.get('operator') is None:
      raise ConfigError('growth method ligo needs operator= (a trained LiGO '
                        'operator)')
    ligo.check_operator(options['operator'], small_arch, large_arch)
    out = ligo.grow_params(options['operator'], small_params, small_arch,
                           large_arch)
  else:
    if key is None:
      raise ConfigError(f'growth method {method!r} needs key=')
    canon = layout.to_canonical(small_params, small_arch)
    out = layout.from_canonical(
        closed_form.grow(method, canon, small_arch, large_arch, key=key,
                         **options), large_arch)
  out = jax.tree.map(lambda x: x.astype(jnp.float32), out)
  tree_compare.check_tree(out, models.abstract_params(large_arch),
                          f'{method} growth into {large_arch.name}',
                          what='grown params')
  return out


__all__ = ['FUNCTION_PRESERVING', 'METHODS', 'OPTIONS', 'check_method',
           'check_pair', 'closed_form', 'grow', 'layout', 'ligo',
           'preserves_function']
