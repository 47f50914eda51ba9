"""The closed-form growth operators: unit maps for width, layer maps for depth.

Width (every method grows width the same way unless it says otherwise): each
role's axis grows by replication. New unit r copies old unit `source[r]`; the
first n_small units keep their identity. Copies are spread evenly (every old
unit is copied once before any is copied twice), so at an integer ratio each
unit has the same number of copies and LayerNorm statistics are unchanged.
Where an axis is read (the in side: `emb_in`, `v_in`, `fc_in`) the rows of a
unit and its copies are scaled by fractions that sum to one, so the next layer
sees the same sum. Equal fractions are bert2BERT's FPI (Net2Net's
Net2WiderNet); unequal ones (`split_noise` > 0) keep the function exactly as
well, and let copies drift apart under training instead of staying identical
forever (Chen et al. 2016 add noise instead, which breaks preservation).

Depth: large layer i is a copy of widened small layer `layers[i]`:
  stack        i mod L1 (StackBERT, Gong et al. 2019)
  interpolate  floor(i L1 / L2) (Chang et al. 2017)
  net2net      interpolate's order, every repeated layer an identity block
               (its attention and MLP output projections zero)
  bert2bert    the widened model stacked L2 // L1 times, the rest from its
               top layers; width by FPI or AKI (Chen et al. 2022)

The one protocol for the depth-only methods (stack, interpolate) when the
width grows too: widen by replication as above, then apply the depth rule.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from logah_jax.growth import layout
from logah_jax.validation import ConfigError

IN_ROLES = ('emb_in', 'v_in', 'fc_in')
# Roles that share one unit map: q, k, v and the output projection's input
# copy the same heads; the MLP's two sides copy the same hidden units.
MAP_OF_ROLE = {'emb_out': 'emb', 'emb_in': 'emb', 'q': 'heads', 'k': 'heads',
               'v': 'heads', 'v_in': 'heads', 'fc_out': 'fc', 'fc_in': 'fc'}
DEPTH_RULES = ('stack', 'interpolate', 'net2net', 'bert2bert')


@dataclasses.dataclass(frozen=True)
class Expansion:
  """One role's growth: new index r reads old `source[r]`, times `scale[r]`."""

  source: np.ndarray  # (n_large,) int
  scale: np.ndarray   # (n_large,) float32; ones on an out side

  def matrix(self, n_small: int) -> np.ndarray:
    """The same expansion as an (n_large, n_small) matrix (for LiGO)."""
    m = np.zeros((len(self.source), n_small), np.float32)
    m[np.arange(len(self.source)), self.source] = self.scale
    return m


def spread_copies(n_small: int, n_large: int, rng) -> np.ndarray:
  """Identity on the first n_small, then old units in shuffled rounds."""
  extra = n_large - n_small
  rounds = -(-extra // n_small) if extra else 0
  picks = [rng.permutation(n_small) for _ in range(rounds)]
  tail = np.concatenate(picks)[:extra] if picks else np.zeros(0, np.int64)
  return np.concatenate([np.arange(n_small), tail]).astype(np.int64)


def split_fractions(source: np.ndarray, rng, noise: float) -> np.ndarray:
  """Per new index, its share of the old unit; shares of a unit sum to one."""
  weights = np.ones(len(source))
  if noise:
    weights = 1.0 + rng.uniform(-noise, noise, len(source))
  totals = np.zeros(source.max() + 1)
  np.add.at(totals, source, weights)
  return (weights / totals[source]).astype(np.float32)


def numpy_rng(key) -> np.random.Generator:
  """A NumPy generator determined by a JAX key (maps are built on the host)."""
  dtype = getattr(key, 'dtype', None)
  if dtype is None or not (jnp.issubdtype(dtype, jax.dtypes.prng_key) or (
      dtype == jnp.uint32 and jnp.shape(key) == (2,))):
    raise ConfigError(f'growth key={key!r} must be a JAX PRNG key '
                      '(jax.random.key(seed))')
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  seed = np.asarray(key).astype(np.uint64).ravel()
  return np.random.default_rng(seed.tolist())


def unit_maps(small, large, key, split_noise: float) -> dict[str, Expansion]:
  """The Expansion of every role for `small -> large` (see module)."""
  if (isinstance(split_noise, bool) or not isinstance(
      split_noise, numbers.Real) or not 0.0 <= split_noise < 1.0):
    raise ConfigError(f'growth split_noise={split_noise} must be in [0, 1)')
  rng = numpy_rng(key)
  small_sizes, large_sizes = layout.role_sizes(small), layout.role_sizes(large)
  sources = {}
  for role, group in MAP_OF_ROLE.items():
    if group not in sources:
      sources[group] = spread_copies(small_sizes[role], large_sizes[role], rng)
  out = {}
  fractions = {}
  for role, group in MAP_OF_ROLE.items():
    source = sources[group]
    if role in IN_ROLES:
      if group not in fractions:
        fractions[group] = split_fractions(source, rng, split_noise)
      scale = fractions[group]
    else:
      scale = np.ones(len(source), np.float32)
    out[role] = Expansion(source, scale)
  return out


def _expand_axis(x, axis: int, expansion: Expansion):
  shape = [1] * x.ndim
  shape[axis] = -1
  return (jnp.take(x, expansion.source, axis=axis)
          * expansion.scale.reshape(shape).astype(x.dtype))


def expand_tensor(x, roles, maps: dict, layer_axis: bool):
  """`x` with every labelled axis grown by its role's Expansion."""
  offset = 1 if layer_axis else 0
  for axis, role in enumerate(roles):
    if role is not None:
      x = _expand_axis(x, axis + offset, maps[role])
  return x


def widen(canon: dict, family: str, maps: dict) -> dict:
  """Grows every width of a canonical params dict (depth unchanged)."""
  outer = {name: expand_tensor(x, layout.OUTER_AXES[family][name], maps,
                               False) for name, x in canon['outer'].items()}
  blocks = {name: expand_tensor(x, layout.BLOCK_AXES[name], maps, True)
            for name, x in canon['blocks'].items()}
  return {'outer': outer, 'blocks': blocks}


def aki(blocks: dict, small, maps: dict) -> dict:
  """bert2BERT's AKI: layer l's new heads and MLP units come from layer l+1.

  Whole units move together (a new head's q, k, v columns and its output
  projection rows; a new hidden unit's fc1 column, bias and fc2 row), and the
  residual width keeps FPI in every layer so the residual stream agrees. The
  top layer keeps FPI.
  """
  small_sizes = layout.role_sizes(small)
  out = {}
  for name, x in blocks.items():
    for axis, role in enumerate(layout.BLOCK_AXES[name]):
      if role is None or MAP_OF_ROLE[role] == 'emb':
        continue
      new = slice(small_sizes[role], None)
      index = (slice(None),) * (axis + 1) + (new,)
      from_next = jnp.concatenate([x[1:], x[-1:]], axis=0)[index]
      x = x.at[index].set(from_next)
    out[name] = x
  return out


def depth_layers(rule: str, l_small: int, l_large: int):
  """(small layer of each large layer, large layers that are identity blocks)."""
  if rule == 'stack':
    return [i % l_small for i in range(l_large)], []
  if rule in ('interpolate', 'net2net'):
    layers = [i * l_small // l_large for i in range(l_large)]
    repeated = [i for i in range(1, l_large) if layers[i] == layers[i - 1]]
    return layers, repeated if rule == 'net2net' else []
  if rule == 'bert2bert':
    times, rest = divmod(l_large, l_small)
    layers = [i % l_small for i in range(times * l_small)]
    return layers + list(range(l_small - rest, l_small)), []
  raise ConfigError(f'growth depth rule {rule!r} is not one of {DEPTH_RULES}')


def deepen(blocks: dict, layers, identity) -> dict:
  """Large layer i := small layer layers[i]; identity blocks write nothing."""
  index = np.asarray(layers)
  out = {}
  for name, x in blocks.items():
    x = jnp.take(x, index, axis=0)
    if identity and layout.MODULE_OF[name] in layout.RESIDUAL_WRITERS:
      x = x.at[np.asarray(identity)].set(0.0)
    out[name] = x
  return out


def grow(method: str, canon: dict, small, large, *, key,
         split_noise: float = 0.5, mode: str = 'aki') -> dict:
  """A closed-form method on canonical params (see module and `growth.grow`)."""
  if method == 'bert2bert':
    if mode not in ('fpi', 'aki'):
      raise ConfigError(f"growth bert2bert mode={mode!r} must be 'fpi' or "
                        "'aki'")
    split_noise = 0.0  # FPI divides evenly
  maps = unit_maps(small, large, key, split_noise)
  wide = widen(canon, small.family, maps)
  blocks = wide['blocks']
  if method == 'bert2bert' and mode == 'aki':
    blocks = aki(blocks, small, maps)
  layers, identity = depth_layers(method, small.depth, large.depth)
  return {'outer': wide['outer'], 'blocks': deepen(blocks, layers, identity)}
