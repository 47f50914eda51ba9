"""LiGO's learned linear growth operator (Wang et al. 2023, arXiv 2303.00980).

The operator is linear in the small model's params and factored as in the
paper (§3.2-3.3): every small layer l is widened by expansion matrices,
W'_l = A W_l B^T in Flax's (in, out) layout, and then large layer i mixes the
widened layers, W_i = sum_j w^k[i, j] W'_j, with one depth matrix w^k
(L2 x L1) per module k in (ln1, q, k, v, o, ln2, fc1, fc2); a module's weight
and bias share w^k.

Width matrices, tied as in the paper: one residual expansion for the whole
network, and per small layer (or shared by all layers, `sharing='shared'`)
one per attention projection and one for the MLP's hidden units. Two
choices differ from the paper, for reasons docs/growth.md gives:
  * the side that reads an axis has its own matrix (`emb_in`, `v_in`,
    `fc_in`) rather than reusing the writing side's, so that Proposition 1
    (stacking, interpolation and Net2Net are special cases) holds exactly:
    Net2Net divides what reads a copied unit, which a tied matrix cannot;
  * attention matrices act on whole heads (H2 x H1, the same mix for every
    channel of a head), so no entry can move a channel into another head.
All matrices are full and trainable; `init_operator` sets them to a closed-
form method's unit and layer maps, so before training LiGO *is* that method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from logah_jax import models
from logah_jax.growth import closed_form
from logah_jax.growth import layout
from logah_jax.validation import ConfigError

SHARING = ('layer', 'shared')
INIT_SCHEMES = ('stack', 'interpolate', 'net2net')
GLOBAL_ROLES = ('emb_out', 'emb_in')
LAYER_ROLES = ('q', 'k', 'v', 'v_in', 'fc_out', 'fc_in')
_HIGHEST = jax.lax.Precision.HIGHEST


def _check(sharing: str, scheme: str | None = None) -> None:
  if sharing not in SHARING:
    raise ConfigError(f'ligo sharing={sharing!r} must be one of {SHARING}')
  if scheme is not None and scheme not in INIT_SCHEMES:
    raise ConfigError(f'ligo init={scheme!r} must be one of {INIT_SCHEMES}')


def operator_shapes(small, large, sharing: str = 'layer') -> dict:
  """{'width': {role: shape}, 'depth': {module: shape}} of the operator."""
  _check(sharing)
  s, l = layout.role_sizes(small), layout.role_sizes(large)
  copies = small.depth if sharing == 'layer' else 1
  width = {r: (l[r], s[r]) for r in GLOBAL_ROLES}
  width.update({r: (copies, l[r], s[r]) for r in LAYER_ROLES})
  depth = {k: (large.depth, small.depth) for k in layout.MODULES}
  return {'width': width, 'depth': depth}


def abstract_operator(small, large, sharing: str = 'layer') -> dict:
  """The operator's tree as float32 ShapeDtypeStructs (restore target)."""
  return jax.tree.map(lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32),
                      operator_shapes(small, large, sharing),
                      is_leaf=lambda x: isinstance(x, tuple))


def num_params(small, large, sharing: str = 'layer') -> int:
  shapes = jax.tree.leaves(operator_shapes(small, large, sharing),
                           is_leaf=lambda x: isinstance(x, tuple))
  return int(sum(np.prod(s) for s in shapes))


def init_operator(small, large, *, key, scheme: str = 'stack',
                  sharing: str = 'layer', split_noise: float = 0.5) -> dict:
  """The operator equal to closed-form method `scheme` (same key, same maps).

  Proposition 1 of the paper, made exact: `grow_params(init_operator(...))`
  equals `closed_form.grow(scheme, ...)` with the same key and split_noise.
  """
  _check(sharing, scheme)
  layout.check_pair(small, large)
  maps = closed_form.unit_maps(small, large, key, split_noise)
  sizes = layout.role_sizes(small)
  copies = small.depth if sharing == 'layer' else 1
  width = {r: jnp.asarray(maps[r].matrix(sizes[r])) for r in GLOBAL_ROLES}
  for role in LAYER_ROLES:
    m = maps[role].matrix(sizes[role])
    width[role] = jnp.asarray(np.broadcast_to(m, (copies, *m.shape)))
  layers, identity = closed_form.depth_layers(scheme, small.depth, large.depth)
  depth = {}
  for module in layout.MODULES:
    w = np.zeros((large.depth, small.depth), np.float32)
    w[np.arange(large.depth), layers] = 1.0
    if module in layout.RESIDUAL_WRITERS and identity:
      w[identity] = 0.0
    depth[module] = jnp.asarray(w)
  return {'width': width, 'depth': depth}


def _apply_global(x, axis: int, m):
  """Contracts axis `axis` of x with m (n_large, n_small)."""
  x = jnp.moveaxis(x, axis, -1)
  x = jnp.einsum('...m,nm->...n', x, m, precision=_HIGHEST)
  return jnp.moveaxis(x, -1, axis)


def _apply_per_layer(x, axis: int, m):
  """Axis `axis` (>= 1) of x (L1, ...) with layer l's matrix m[l] (or m[0])."""
  m = jnp.broadcast_to(m, (x.shape[0], *m.shape[1:]))
  x = jnp.moveaxis(x, axis, -1)
  x = jnp.einsum('l...m,lnm->l...n', x, m, precision=_HIGHEST)
  return jnp.moveaxis(x, -1, axis)


def apply(operator: dict, canon: dict, family: str) -> dict:
  """Grows canonical small params with the operator: widen, then mix depth."""
  width = operator['width']
  outer = {}
  for name, x in canon['outer'].items():
    for axis, role in enumerate(layout.OUTER_AXES[family][name]):
      if role is not None:
        x = _apply_global(x, axis, width[role])
    outer[name] = x
  blocks = {}
  for name, x in canon['blocks'].items():
    for axis, role in enumerate(layout.BLOCK_AXES[name]):
      if role in GLOBAL_ROLES:
        x = _apply_global(x, axis + 1, width[role])
      elif role is not None:
        x = _apply_per_layer(x, axis + 1, width[role])
    w = operator['depth'][layout.MODULE_OF[name]]
    blocks[name] = jnp.einsum('ij,j...->i...', w, x, precision=_HIGHEST)
  return {'outer': outer, 'blocks': blocks}


def check_operator(operator, small, large) -> None:
  """Raises ConfigError unless `operator` has the shapes of a small -> large
  operator (either sharing): `apply` would otherwise use the first layers of
  a deeper operator, or fail on a reshape."""
  try:
    have = jax.tree.map(lambda x: tuple(jnp.shape(x)), operator)
  except TypeError as e:
    raise ConfigError(f'LiGO operator: not a tree of arrays ({e})') from e
  wants = {sharing: operator_shapes(small, large, sharing)
           for sharing in SHARING}
  if not any(have == want for want in wants.values()):
    want = wants['layer']
    first = next(((part, key) for part in want for key in want[part]
                  if have.get(part, {}).get(key) != want[part][key]),
                 ('', ''))
    got = have.get(first[0], {}).get(first[1]) if first[0] else have
    raise ConfigError(f'this LiGO operator does not grow {small.name} into '
                      f'{large.name}: its {"/".join(first)} has shape '
                      f'{got}, and that pair needs '
                      f'{want[first[0]][first[1]] if first[0] else want}')


def grow_params(operator: dict, small_params, small, large) -> dict:
  """Large-model Flax params from small ones (differentiable in `operator`)."""
  canon = layout.to_canonical(small_params, small)
  return layout.from_canonical(apply(operator, canon, small.family), large)


def materialise_flops(small, large, sharing: str = 'layer') -> dict:
  """FLOPs of `grow_params` (2 per multiply-add, matmuls only).

  Returns {'forward', 'backward'}: each einsum contracts one axis of a tensor,
  2 x (output elements) x (contracted size); the depth mix is 2 x L2 x L1 x
  (large-layer elements). The backward computes every operator gradient
  (one forward's worth per product) and carries cotangents back through
  every product but the first of each tensor, whose input is the frozen
  small model: 2 x forward minus those first products.
  """
  del sharing  # the per-layer and shared operators do the same products
  s, l = layout.role_sizes(small), layout.role_sizes(large)
  total = first = 0.0

  def widen_cost(shape_small, roles, layer_axis):
    nonlocal total, first
    shape = list(shape_small)
    offset = 1 if layer_axis else 0
    products = []
    for axis, role in enumerate(roles):
      if role is not None:
        shape[axis + offset] = l[role]
        products.append(2.0 * np.prod(shape) * s[role])
    total += sum(products)
    first += products[0] if products else 0.0
    return shape, bool(products)

  abstract = jax.eval_shape(lambda p: layout.to_canonical(p, small),
                            models.abstract_params(small))
  for name, x in abstract['outer'].items():
    widen_cost(x.shape, layout.OUTER_AXES[small.family][name], False)
  for name, x in abstract['blocks'].items():
    shape, widened = widen_cost(x.shape, layout.BLOCK_AXES[name], True)
    mix = 2.0 * large.depth * np.prod(shape)  # shape[0] == L1
    total += mix
    if not widened:
      first += mix
  return {'forward': float(total), 'backward': float(2 * total - first)}
