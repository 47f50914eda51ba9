"""Saved inits: `{'params': ...}` plus JSON metadata, in plain orbax layout."""

from typing import Any, Mapping

from etils import epath
import jax
import orbax.checkpoint as ocp

from logah_jax import checksums
from logah_jax import tree_compare
from logah_jax.checkpoint.common import (
    CHECKSUMS, CorruptCheckpointError, abstract_from_metadata, barrier,
    check_shardings, reading, registry, rmtree, save_args, to_target,
    verify)
from logah_jax.validation import ConfigError, InputNotFoundError
from logah_jax.validation import OutputExistsError

_PARAMS, _METADATA = 'params', 'metadata'
_TMP_SUFFIX, _OLD_SUFFIX = '.logah-tmp', '.logah-old'


def _params_checkpointer():
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      handler_registry=registry(_PARAMS, _METADATA)))


def _write_params(directory: epath.Path, tree, metadata) -> None:
  with _params_checkpointer() as ckptr:
    ckptr.save(directory, ocp.args.Composite(**{
        _PARAMS: save_args(tree),
        _METADATA: ocp.args.JsonSave(metadata)}))


def save_params(directory, params, *, metadata: Mapping[str, Any],
                overwrite: bool = False) -> None:
  """Saves a predicted init as `{'params': params}` plus JSON metadata.

  Every process calls this (orbax coordinates the writes). The checkpoint is
  written to a sibling `<name>.logah-tmp` and renamed into place only once
  complete, so a failed save never damages an existing checkpoint.

  Raises:
    FileExistsError: `directory` exists (and is not an empty directory, which
      a user may make for the output) and overwrite is False.
  """
  path = epath.Path(directory)
  empty = path.is_dir() and not any(path.iterdir())
  if path.exists() and not (overwrite or empty):
    raise OutputExistsError(f'{path} already exists; pass overwrite=True to '
                            'replace it')
  metadata = tree_compare.jsonable(dict(metadata), 'metadata')
  metadata[CHECKSUMS] = checksums.tree_checksums(params)
  tree = {'params': params}
  tmp = path.parent / (path.name + _TMP_SUFFIX)
  old = path.parent / (path.name + _OLD_SUFFIX)
  primary = jax.process_index() == 0

  def remove_tmp(quiet):  # ours, and orbax's own `<tmp>.orbax-checkpoint-tmp`
    for leftover in path.parent.glob(tmp.name + '*'):
      rmtree(leftover, quiet=quiet)

  if primary:
    remove_tmp(quiet=False)
    if old.exists() and path.exists():
      old.rmtree()
  barrier('logah_save_params_start')
  try:
    _write_params(tmp, tree, metadata)
  except BaseException:
    if primary:  # never let the clean-up hide the original error
      remove_tmp(quiet=True)
    raise
  if primary:  # between the renames the old copy sits at `old`
    if path.exists():
      path.rename(old)
    tmp.rename(path)
    if old.exists():
      old.rmtree()
  barrier('logah_save_params_swap')


def _require_item(path: epath.Path, item: str) -> None:
  """Clear errors for a missing path or a directory we did not write."""
  if not path.exists():
    old = path.parent / (path.name + _OLD_SUFFIX)
    hint = (f'; an interrupted overwrite left the previous checkpoint at {old}'
            if old.exists() else '')
    raise InputNotFoundError(f'no checkpoint at {path}{hint}')
  if not (path / item).is_dir():
    raise ConfigError(f'{path} is not a params checkpoint: it has no orbax '
                      f"item '{item}'")


def _stored_params(path: epath.Path):
  """The saved params tree of metadata (shapes, dtypes), from orbax."""
  _require_item(path, _PARAMS)
  with reading(path), _params_checkpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata[_PARAMS].tree
  if not isinstance(tree, Mapping) or set(tree) != {'params'}:
    raise ConfigError(f"{path}: item '{_PARAMS}' does not hold a "
                      "{'params': ...} tree")
  return tree['params']


def _as_stored(target, stored):
  """`target` with each leaf's dtype that of its stored leaf."""
  dtypes = {tree_compare.path_str(p): tree_compare.stored_dtype(leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}

  def one(p, leaf):
    dtype = dtypes.get(tree_compare.path_str(p))
    if (not isinstance(leaf, jax.ShapeDtypeStruct) or dtype is None
        or dtype == leaf.dtype):
      return leaf
    return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
  return jax.tree_util.tree_map_with_path(one, target)


def restore_params(directory, *, abstract_params=None, shardings=None):
  """Restores a predicted init, directly into the wanted sharding.

  Args:
    directory: written by `save_params`.
    abstract_params: pytree of ShapeDtypeStruct (e.g.
      `jax.eval_shape(model.init, ...)['params']`); checked against the stored
      tree before anything is read. A leaf stored in another dtype is read
      as stored (its checksum checked) and then cast to this one. None
      restores the stored tree as is.
    shardings: one `jax.sharding.Sharding` for all leaves, or a pytree matching
      the params; overrides the shardings carried by abstract_params.

  Returns:
    The params pytree (without the outer {'params': ...}).

  Raises:
    ConfigError: the stored tree differs from abstract_params (naming the
      first differing path and both shapes), or a parameter holds NaN/Inf.
    CorruptCheckpointError: files are missing, truncated or garbled (the
      values do not match the checksums saved with them).
  """
  path = epath.Path(directory)
  stored = _stored_params(path)
  if abstract_params is None:
    abstract_params = abstract_from_metadata(stored)
  else:
    tree_compare.check_tree(stored, abstract_params, path, dtypes=False)
  wanted = to_target(abstract_params, shardings)
  check_shardings(wanted, path)
  # Read each leaf in its stored dtype, so that the checksums check the
  # stored values; cast to the wanted dtype after.
  target = {'params': _as_stored(wanted, stored)}
  with reading(path), _params_checkpointer() as ckptr:
    restored = ckptr.restore(path, ocp.args.Composite(**{
        _PARAMS: ocp.args.StandardRestore(target),
        _METADATA: ocp.args.JsonRestore()}))
  params = restored[_PARAMS]['params']
  verify(path, (restored[_METADATA] or {}).get(CHECKSUMS), params)
  params = jax.tree.map(
      lambda x, want: (x if getattr(want, 'dtype', x.dtype) == x.dtype
                       else x.astype(want.dtype)),
      params, wanted)
  bad = checksums.nonfinite_leaves(params)
  if bad:
    more = f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''
    raise ConfigError(f'{path}: parameter {bad[0]}{more} holds NaN or Inf '
                      'values; it cannot start a run')
  return params


def read_metadata(directory) -> dict:
  """The JSON metadata saved next to a predicted init."""
  path = epath.Path(directory)
  _require_item(path, _METADATA)
  with reading(path), _params_checkpointer() as ckptr:
    restored = ckptr.restore(path, ocp.args.Composite(
        **{_METADATA: ocp.args.JsonRestore()}))
  metadata = restored[_METADATA]
  if not isinstance(metadata, dict):
    raise CorruptCheckpointError(f'{path}: its metadata is not a JSON object')
  metadata.pop(CHECKSUMS, None)
  return metadata
