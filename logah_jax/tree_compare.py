"""Comparing pytrees and configs: the first difference, named.

Used by the checkpoint package to refuse a restore into a mismatching target
and a resume under a different config, before any data is read or written.
"""

import copy
import json
from typing import Any, Mapping

import jax
import numpy as np

from logah_jax.validation import ConfigError


def path_str(path) -> str:
  """'encoder_layer_0/mlp/fc1/kernel' for a jax key path."""
  parts = []
  for key in path:  # DictKey, SequenceKey, GetAttrKey
    attr = next((a for a in ('key', 'idx', 'name') if hasattr(key, a)), None)
    parts.append(str(getattr(key, attr) if attr else key))
  return '/'.join(parts)


def stored_shape(leaf) -> tuple[int, ...]:
  """Shape as orbax stores it: typed PRNG keys are stored as their key data."""
  dtype = getattr(leaf, 'dtype', None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  shape = getattr(leaf, 'shape', None)
  return tuple(shape) if shape is not None else tuple(np.shape(leaf))


def stored_dtype(leaf):
  """dtype as orbax stores it (a typed PRNG key as its key data's), or None
  for a leaf without one (a Python scalar)."""
  dtype = getattr(leaf, 'dtype', None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return jax.eval_shape(jax.random.key_data, leaf).dtype
  return None if dtype is None else np.dtype(dtype)


def check_tree(stored, target, directory, *, what: str = 'checkpoint',
               dtypes: bool = True) -> None:
  """Raises ConfigError naming the first leaf whose path, shape or (with
  `dtypes`) dtype differs. orbax would cast another dtype on restore, and
  the checksums of the stored values would then call sound files garbled."""
  where = f'{what} {directory}'
  flatten = jax.tree_util.tree_flatten_with_path
  stored_leaves = {path_str(p): leaf for p, leaf in flatten(stored)[0]}
  stored_shapes = {k: stored_shape(v) for k, v in stored_leaves.items()}
  seen = set()
  for p, leaf in flatten(target)[0]:
    name, want = path_str(p), stored_shape(leaf)
    seen.add(name)
    if name not in stored_shapes:
      raise ConfigError(f"{where}: target expects parameter '{name}' of shape "
                        f'{want} but the {what} has no such leaf')
    if stored_shapes[name] != want:
      raise ConfigError(f"{where}: parameter '{name}' does not match: "
                        f'{what} has {stored_shapes[name]}, target expects '
                        f'{want}')
    have, want = stored_dtype(stored_leaves[name]), stored_dtype(leaf)
    if dtypes and have is not None and want is not None and have != want:
      raise ConfigError(f"{where}: parameter '{name}' is stored as {have} "
                        f'but the target expects {want}')
  for name, have in stored_shapes.items():
    if name not in seen:
      raise ConfigError(f"{where}: {what} has parameter '{name}' of shape "
                        f'{have} that the target lacks')


def _json_default(x):
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f'{type(x).__name__} is not JSON-serialisable')


def jsonable(obj, what: str) -> Any:
  """JSON round trip, so what we compare or save is what a reader gets back."""
  if hasattr(obj, 'to_dict'):  # ml_collections.ConfigDict
    obj = obj.to_dict()
  try:
    return json.loads(json.dumps(obj, default=_json_default))
  except (TypeError, ValueError) as e:
    raise TypeError(f'{what} must be JSON-serialisable: {e}') from e


def with_defaults(tree: dict, defaults: Mapping[str, Any]) -> dict:
  """`tree` with each dotted key of `defaults` that it lacks set to its
  default (a copy; `tree` is not changed). For configs written before a key
  existed: the default is the value that means what its absence meant."""
  tree = copy.deepcopy(tree)
  for dotted, value in defaults.items():
    *parents, leaf = dotted.split('.')
    node = tree
    for name in parents:
      node = node.get(name) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf not in node:
      node[leaf] = value
  return tree


def first_diff(old, new, ignore, prefix=''):
  """(dotted key, old value, new value) of the first difference, or None."""
  if isinstance(old, dict) and isinstance(new, dict):
    for key in list(old) + [k for k in new if k not in old]:
      path = f'{prefix}.{key}' if prefix else str(key)
      if key in ignore or path in ignore:
        continue
      diff = first_diff(old.get(key, '<missing>'), new.get(key, '<missing>'),
                         ignore, path)
      if diff:
        return diff
    return None
  return None if old == new else (prefix or '<root>', old, new)
