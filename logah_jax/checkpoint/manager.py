"""Training checkpoints: the last k steps of one run, with their config."""

import json
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from logah_jax import checksums
from logah_jax import tree_compare
from logah_jax.checkpoint.common import (
    CHECKSUMS, CORRUPT_DIR, CorruptCheckpointError, abstract_from_metadata,
    barrier, check_shardings, reading, registry, save_args, to_target,
    verify)
from logah_jax.validation import ConfigError, InputNotFoundError

CONFIG_FILE = 'config.json'
# Config keys that may change between a run and its resumption.
DEFAULT_IGNORE_KEYS = ('workdir', 'log_every_steps', 'eval_every_steps')
_STATE, _EXTRA = 'state', 'extra'
_TMP_SUFFIX = '.logah-tmp'


def check_config(directory, config: Mapping[str, Any],
                 ignore_keys=DEFAULT_IGNORE_KEYS,
                 later_keys: Mapping[str, Any] | None = None) -> bool:
  """Refuses (ConfigError) a checkpoint directory of another config.

  Reads only `<directory>/config.json`; writes nothing, so a job that runs
  several runs can check them all before it starts any. Returns True when
  the stored config differs but no finished checkpoint binds it (it is then
  replaced), False when it matches or there is none.
  """
  directory = epath.Path(directory)
  path = directory / CONFIG_FILE
  if not path.exists():
    return False
  try:
    stored = json.loads(path.read_text())
  except ValueError as e:
    raise ConfigError(f'{path} is not valid JSON: {e}') from e
  if isinstance(stored, dict):
    stored = tree_compare.with_defaults(stored, later_keys or {})
  diff = tree_compare.first_diff(
      stored, tree_compare.jsonable(config, 'config'), set(ignore_keys))
  if not diff:
    return False
  if not _holds_steps(directory):
    return True  # no checkpoint binds the stored config
  key, old, new = diff
  raise ConfigError(
      f'{directory} holds checkpoints of another config: key '
      f"'{key}' is {old!r} there but {new!r} now (use a new workdir, or "
      'add the key to ignore_keys if it may change)')


def _holds_steps(directory: epath.Path) -> bool:
  """Whether a finished checkpoint is here (orbax names each by its step;
  unfinished saves and moved-aside steps have other names)."""
  return any(p.name.isdigit() and p.is_dir() for p in directory.iterdir())


class CheckpointManager:
  """Keeps the last k training checkpoints of one run, saving asynchronously.

  Use as a context manager (or call `close`) so pending saves finish.
  """

  def __init__(self, directory, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True,
               config: Mapping[str, Any] | None = None,
               ignore_keys=DEFAULT_IGNORE_KEYS,
               later_keys: Mapping[str, Any] | None = None,
               read_only: bool = False):
    """Opens or creates `directory`.

    Args:
      directory: local path or any epath URL (e.g. gs://...).
      max_to_keep: newest checkpoints kept; None keeps all.
      save_interval_steps: `save` writes only on multiples of this (or force).
      async_save: write in a background thread; call `wait_until_finished`.
      config: JSON-able dict (or ConfigDict) of the run. Stored as config.json
        on first use; a differing stored one raises ConfigError before
        anything is written, so a resumed run can't mix configs, unless the
        directory holds no checkpoint yet (an attempt that stopped before its
        first save): then there is nothing to resume and it is replaced.
      ignore_keys: config keys (names or dotted paths) allowed to differ.
      later_keys: {dotted key: default} for keys added to the config after
        some workdirs were written; a stored config without one is compared
        as if it held the default, the value that means the old behaviour.
      read_only: for readers of another run's directory (a GHN to predict
        with): nothing is created, saved or cleaned up, so the unfinished
        save of a run still training there is left alone.
    """
    self.directory = epath.Path(directory)
    self.restored_step = None  # the step the last `restore` read
    self._config = None
    self._replace_config = False
    if config is not None:
      self._config = tree_compare.jsonable(config, 'config')
      self._replace_config = check_config(self.directory, self._config,
                                          ignore_keys, later_keys)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps,
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        create=not read_only)
    self._read_only = read_only
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        handler_registry=registry(_STATE, _EXTRA))
    if self._config is not None:
      self._write_config()

  def _write_config(self) -> None:
    path = self.directory / CONFIG_FILE
    if jax.process_index() == 0 and (self._replace_config
                                     or not path.exists()):
      tmp = self.directory / (CONFIG_FILE + _TMP_SUFFIX)
      tmp.write_text(json.dumps(self._config, indent=2, sort_keys=True))
      tmp.replace(path)

  def save(self, step: int, state, *, extra: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Saves `state` (pytree) and `extra` (JSON) as `step`.

    The state's per-leaf checksums go into the extra, in the same commit.

    Returns:
      True if a save was started (False when the interval says skip).
    """
    if self._read_only:
      raise ValueError(f'{self.directory} was opened read-only')
    if not (force or self._mngr.should_save(step)):
      return False
    extra = tree_compare.jsonable(dict(extra or {}), 'extra')
    extra[CHECKSUMS] = checksums.tree_checksums(state)
    args = ocp.args.Composite(**{
        _STATE: save_args(state),
        _EXTRA: ocp.args.JsonSave(extra)})
    return bool(self._mngr.save(step, args=args, force=force))

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def restore(self, step: int | None = None, *, abstract_state=None,
              repair: bool = False):
    """Restores (state, extra) of `step` (default: the newest good step).

    Args:
      step: which step; None takes the newest step that reads back intact,
        warning about each damaged newer one (`restored_step` says which).
      abstract_state: pytree of ShapeDtypeStruct (with .sharding to place the
        leaves) or of arrays; the result has its structure and shardings.
        None restores the stored tree as nested dicts on the first device
        (for readers that only want part of it, e.g. the GHN params).
      repair: with step None, move each damaged step to `corrupt/` (the run
        that owns the directory does this; readers only skip).

    Raises:
      InputNotFoundError: no (intact) checkpoint in the directory.
      CorruptCheckpointError: the asked-for step is damaged.
      ConfigError: unknown step, or a tree that does not match.
    """
    self._mngr.wait_until_finished()  # never read a step still being written
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise ConfigError(f'no step {step} in {self.directory}; it has '
                          f'{steps}')
      return self._restore_step(step, abstract_state)
    if not steps:
      raise InputNotFoundError(f'no checkpoint in {self.directory}')
    damaged = []
    for step in reversed(steps):
      try:
        return self._restore_step(step, abstract_state)
      except CorruptCheckpointError as e:
        damaged.append(step)
        where = self._move_aside(step) if repair else None
        logging.warning('checkpoint step %d is damaged, %s: %s', step,
                        f'moved to {where}' if where else 'skipped', e)
    raise InputNotFoundError(
        f'no intact checkpoint in {self.directory}: steps {damaged} are '
        'damaged' + (f' (moved to {self.directory / CORRUPT_DIR})'
                     if repair else ''))

  def _restore_step(self, step: int, abstract_state):
    where = self.directory / str(step)
    with reading(where):
      stored = self._mngr.metadata(step).item_metadata[_STATE].tree
    if abstract_state is None:
      abstract_state = abstract_from_metadata(stored)
    target = to_target(abstract_state)
    tree_compare.check_tree(stored, target, where)
    check_shardings(target, where)
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target),
                                 _EXTRA: ocp.args.JsonRestore()})
    with reading(where):
      restored = self._mngr.restore(step, args=args)
    state, extra = restored[_STATE], dict(restored[_EXTRA] or {})
    verify(where, extra.pop(CHECKSUMS, None), state)
    self.restored_step = step
    return state, extra

  def _move_aside(self, step: int) -> epath.Path:
    """Moves a damaged step to `corrupt/<step>[.n]`; returns where."""
    aside = self.directory / CORRUPT_DIR
    target = aside / str(step)
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      n = 0
      while target.exists():
        n += 1
        target = aside / f'{step}.{n}'
      (self.directory / str(step)).rename(target)
    barrier(f'logah_move_aside_{step}')
    self._mngr.reload()
    return target

  def wait_until_finished(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


