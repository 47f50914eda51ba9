"""Checkpoints: the only module in logah_jax that imports orbax.

orbax changes its API often; keeping every call in this file means a new orbax
version touches one place. Two kinds of checkpoint live here:

* Training checkpoints (`CheckpointManager`): one directory of steps, each with
  an item 'state' (the pytree, orbax StandardSave layout) and an item 'extra'
  (JSON: data-loader position, sampler state, rng as ints), plus `config.json`
  at the top, so a resumed run cannot silently continue under another config.
* Predicted inits (`save_params` / `restore_params`): one directory with the
  item 'params' holding `{'params': params}` in plain StandardSave layout and
  the item 'metadata' (JSON: ArchConfig, GHN checkpoint, code version). Users
  restore it with orbax and flax alone, into any sharding:

    import json, jax, orbax.checkpoint as ocp
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)  # {'params':..}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # or Named
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        abstract)
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(f'{path}/params', abstract)
    metadata = json.load(open(f'{path}/metadata/metadata'))
    logits = model.apply(variables, x)

orbax quirks handled here (orbax-checkpoint 0.12.8):
* A numpy scalar leaf (`np.int32(3)`) saves but fails on restore ("Unsupported
  type"): we save numpy scalars as 0-d arrays (they come back as such).
* `item_names` and `max_to_keep` are documented as deprecated: we use a
  handler registry and the `LatestN` preservation policy.
* A restore without a target reuses the saved sharding file, which breaks on
  another device count: we always restore into an explicit target.
* Typed PRNG keys are stored as their key data (metadata shape + (2,)).
* Steps are written to `<step>.orbax-checkpoint-tmp` and renamed once complete,
  so a crash never exposes a half-written step; `cleanup_tmp_directories`
  removes the leftover when the next manager opens the directory.
"""

import json
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from logah_jax import tree_compare
from logah_jax.validation import ConfigError, InputNotFoundError
from logah_jax.validation import OutputExistsError

CONFIG_FILE = 'config.json'
# Config keys that may change between a run and its resumption.
DEFAULT_IGNORE_KEYS = ('workdir', 'log_every_steps', 'eval_every_steps')
_STATE, _EXTRA = 'state', 'extra'
_PARAMS, _METADATA = 'params', 'metadata'
_TMP_SUFFIX, _OLD_SUFFIX = '.logah-tmp', '.logah-old'


# ------------------------------------------------------------------ helpers


def _registry(tree_item: str, json_item: str):
  """Handler registry: one StandardSave pytree item and one JSON item."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
    registry.add(tree_item, args)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
    registry.add(json_item, args)
  return registry


def _to_savable(tree):
  """Numpy scalars become 0-d arrays: orbax 0.12.8 cannot restore them."""
  return jax.tree.map(
      lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree)


def _to_target(tree, shardings=None):
  """Restore target: arrays become ShapeDtypeStructs that carry a sharding.

  A leaf without a sharding lands on the first local device; we never let
  orbax fall back to the saved sharding, which breaks on another topology.
  """
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def one(leaf, sharding=None):
    if isinstance(leaf, np.generic):
      leaf = np.asarray(leaf)
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
      if sharding is None:
        sharding = getattr(leaf, 'sharding', None) or default
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    if sharding is not None:
      dtype = leaf.dtype if hasattr(leaf, 'dtype') else np.result_type(leaf)
      return jax.ShapeDtypeStruct(np.shape(leaf), dtype, sharding=sharding)
    return leaf  # numpy arrays and python scalars restore as themselves

  if shardings is None:
    return jax.tree.map(one, tree)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda leaf: one(leaf, shardings), tree)
  return jax.tree.map(one, tree, shardings)


def _abstract_from_metadata(tree):
  """ShapeDtypeStructs of a stored tree's array metadata."""
  return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def _corrupt(where, e: Exception) -> ConfigError:
  msg = str(e).splitlines()[0][:300] if str(e) else ''
  return ConfigError(f'{where} is not a readable checkpoint (corrupt or '
                     f'incomplete?): {type(e).__name__}: {msg}')


def _rmtree(path: epath.Path, quiet: bool) -> None:
  """Removes `path`; quietly retries while a failed orbax save still writes."""
  for delay in (0.05, 0.2, 0.5, 1.0, None):
    try:
      if path.exists():
        path.rmtree()
      return
    except OSError as e:
      if not quiet:
        raise
      if delay is None:
        logging.warning('could not remove %s: %s', path, e)
        return
      time.sleep(delay)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(name)


# ---------------------------------------------------- training checkpoints


class CheckpointManager:
  """Keeps the last k training checkpoints of one run, saving asynchronously.

  Use as a context manager (or call `close`) so pending saves finish.
  """

  def __init__(self, directory, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True,
               config: Mapping[str, Any] | None = None,
               ignore_keys=DEFAULT_IGNORE_KEYS):
    """Opens or creates `directory`.

    Args:
      directory: local path or any epath URL (e.g. gs://...).
      max_to_keep: newest checkpoints kept; None keeps all.
      save_interval_steps: `save` writes only on multiples of this (or force).
      async_save: write in a background thread; call `wait_until_finished`.
      config: JSON-able dict (or ConfigDict) of the run. Stored as config.json
        on first use; a differing stored one raises ValueError before anything
        is written, so a resumed run can't mix configs.
      ignore_keys: config keys (names or dotted paths) allowed to differ.
    """
    self.directory = epath.Path(directory)
    self._config = None
    if config is not None:
      self._config = tree_compare.jsonable(config, 'config')
      self._check_config(set(ignore_keys))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps,
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        handler_registry=_registry(_STATE, _EXTRA))
    if self._config is not None:
      self._write_config()

  def _check_config(self, ignore) -> None:
    path = self.directory / CONFIG_FILE
    if not path.exists():
      return
    try:
      stored = json.loads(path.read_text())
    except ValueError as e:
      raise ConfigError(f'{path} is not valid JSON: {e}') from e
    diff = tree_compare.first_diff(stored, self._config, ignore)
    if diff:
      key, old, new = diff
      raise ConfigError(
          f'{self.directory} holds checkpoints of another config: key '
          f"'{key}' is {old!r} there but {new!r} now (use a new workdir, or "
          'add the key to ignore_keys if it may change)')

  def _write_config(self) -> None:
    path = self.directory / CONFIG_FILE
    if jax.process_index() == 0 and not path.exists():
      tmp = self.directory / (CONFIG_FILE + _TMP_SUFFIX)
      tmp.write_text(json.dumps(self._config, indent=2, sort_keys=True))
      tmp.rename(path)

  def save(self, step: int, state, *, extra: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Saves `state` (pytree) and `extra` (JSON) as `step`.

    Returns:
      True if a save was started (False when the interval says skip).
    """
    extra = tree_compare.jsonable(dict(extra or {}), 'extra')
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(_to_savable(state)),
        _EXTRA: ocp.args.JsonSave(extra)})
    return bool(self._mngr.save(step, args=args, force=force))

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def restore(self, step: int | None = None, *, abstract_state=None):
    """Restores (state, extra) of `step` (default: latest).

    Args:
      step: which step; None takes the latest.
      abstract_state: pytree of ShapeDtypeStruct (with .sharding to place the
        leaves) or of arrays; the result has its structure and shardings.
        None restores the stored tree as nested dicts on the first device
        (for readers that only want part of it, e.g. the GHN params).

    Raises:
      FileNotFoundError: no checkpoint in the directory.
      ValueError: unknown step, a tree that does not match, or a corrupt step.
    """
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise InputNotFoundError(f'no checkpoint in {self.directory}')
      step = steps[-1]
    elif step not in steps:
      raise ConfigError(f'no step {step} in {self.directory}; it has {steps}')
    self._mngr.wait_until_finished()  # never read a step still being written
    where = self.directory / str(step)
    try:
      stored = self._mngr.metadata(step).item_metadata[_STATE].tree
    except Exception as e:  # orbax raises many types for a damaged step
      raise _corrupt(where, e) from e
    if abstract_state is None:
      abstract_state = _abstract_from_metadata(stored)
    target = _to_target(abstract_state)
    tree_compare.check_tree(stored, target, where)
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target),
                                 _EXTRA: ocp.args.JsonRestore()})
    try:
      restored = self._mngr.restore(step, args=args)
    except Exception as e:
      raise _corrupt(where, e) from e
    return restored[_STATE], restored[_EXTRA] or {}

  def wait_until_finished(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ---------------------------------------------------------- predicted inits


def _params_checkpointer():
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      handler_registry=_registry(_PARAMS, _METADATA)))


def _write_params(directory: epath.Path, tree, metadata) -> None:
  with _params_checkpointer() as ckptr:
    ckptr.save(directory, ocp.args.Composite(**{
        _PARAMS: ocp.args.StandardSave(tree),
        _METADATA: ocp.args.JsonSave(metadata)}))


def save_params(directory, params, *, metadata: Mapping[str, Any],
                overwrite: bool = False) -> None:
  """Saves a predicted init as `{'params': params}` plus JSON metadata.

  Every process calls this (orbax coordinates the writes). The checkpoint is
  written to a sibling `<name>.logah-tmp` and renamed into place only once
  complete, so a failed save never damages an existing checkpoint.

  Raises:
    FileExistsError: `directory` exists and overwrite is False.
  """
  path = epath.Path(directory)
  if path.exists() and not overwrite:
    raise OutputExistsError(f'{path} already exists; pass overwrite=True to '
                            'replace it')
  metadata = tree_compare.jsonable(dict(metadata), 'metadata')
  tree = {'params': _to_savable(params)}
  tmp = path.parent / (path.name + _TMP_SUFFIX)
  old = path.parent / (path.name + _OLD_SUFFIX)
  primary = jax.process_index() == 0

  def remove_tmp(quiet):  # ours, and orbax's own `<tmp>.orbax-checkpoint-tmp`
    for leftover in path.parent.glob(tmp.name + '*'):
      _rmtree(leftover, quiet=quiet)

  if primary:
    remove_tmp(quiet=False)
    if old.exists() and path.exists():
      old.rmtree()
  _barrier('logah_save_params_start')
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
  _barrier('logah_save_params_swap')


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
  try:
    with _params_checkpointer() as ckptr:
      tree = ckptr.metadata(path).item_metadata[_PARAMS].tree
  except Exception as e:
    raise _corrupt(path, e) from e
  if not isinstance(tree, Mapping) or set(tree) != {'params'}:
    raise ConfigError(f"{path}: item '{_PARAMS}' does not hold a "
                      "{'params': ...} tree")
  return tree['params']


def restore_params(directory, *, abstract_params=None, shardings=None):
  """Restores a predicted init, directly into the wanted sharding.

  Args:
    directory: written by `save_params`.
    abstract_params: pytree of ShapeDtypeStruct (e.g.
      `jax.eval_shape(model.init, ...)['params']`); checked against the stored
      tree before anything is read. None restores the stored tree as is.
    shardings: one `jax.sharding.Sharding` for all leaves, or a pytree matching
      the params; overrides the shardings carried by abstract_params.

  Returns:
    The params pytree (without the outer {'params': ...}).

  Raises:
    ValueError: the stored tree differs from abstract_params (naming the first
      differing path and both shapes), or the checkpoint is corrupt.
  """
  path = epath.Path(directory)
  stored = _stored_params(path)
  if abstract_params is None:
    abstract_params = _abstract_from_metadata(stored)
  else:
    tree_compare.check_tree(stored, abstract_params, path)
  target = {'params': _to_target(abstract_params, shardings)}
  try:
    with _params_checkpointer() as ckptr:
      restored = ckptr.restore(path, ocp.args.Composite(
          **{_PARAMS: ocp.args.StandardRestore(target)}))
  except Exception as e:
    raise _corrupt(path, e) from e
  return restored[_PARAMS]['params']


def read_metadata(directory) -> dict:
  """The JSON metadata saved next to a predicted init."""
  path = epath.Path(directory)
  _require_item(path, _METADATA)
  try:
    with _params_checkpointer() as ckptr:
      restored = ckptr.restore(path, ocp.args.Composite(
          **{_METADATA: ocp.args.JsonRestore()}))
  except Exception as e:
    raise _corrupt(path, e) from e
  return restored[_METADATA]
