"""What both kinds of checkpoint share: item registry, targets, errors."""

import contextlib
import time
from typing import Mapping

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from logah_jax import checksums
from logah_jax import tree_compare
from logah_jax.validation import ConfigError

CHECKSUMS = 'checksums'   # key in a step's extra and an init's metadata
CORRUPT_DIR = 'corrupt'   # damaged steps are moved here, never deleted


class CorruptCheckpointError(ConfigError):
  """A checkpoint's files are missing, truncated or garbled."""


def registry(tree_item: str, json_item: str):
  """Handler registry: one pytree item and one JSON item.

  The pytree is written without compression (`save_args`): weights and
  optimizer moments barely compress (zstd saved about 8% of a predicted
  GPT-2-L init), and compressing cost most of the save's time on a CPU
  host. The layout is orbax's standard one: `StandardRestore` (and a user's
  `ocp.StandardCheckpointer`) reads it, compressed or not.
  """
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(tree_item, ocp.args.PyTreeSave,
               ocp.PyTreeCheckpointHandler(use_compression=False))
  registry.add(tree_item, ocp.args.StandardRestore)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
    registry.add(json_item, args)
  return registry


def save_args(tree):
  """orbax's save args for a pytree item (written by `registry`'s handler).

  Numpy scalars become 0-d arrays: orbax 0.12.8 cannot restore them.
  """
  return ocp.args.PyTreeSave(jax.tree.map(
      lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree))


def to_target(tree, shardings=None):
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


def abstract_from_metadata(tree):
  """ShapeDtypeStructs of a stored tree's array metadata."""
  return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


# A read that fails for one of these reasons says nothing about the files
# (memory, a network or permission problem, a device error): it is raised as
# it is, and a run's steps are not moved aside for it.
_NOT_DAMAGE_TYPES = (MemoryError, PermissionError, TimeoutError,
                     ConnectionError, jax.errors.JaxRuntimeError)
_NOT_DAMAGE_CODES = ('RESOURCE_EXHAUSTED', 'DEADLINE_EXCEEDED', 'UNAVAILABLE',
                     'CANCELLED', 'ABORTED', 'PERMISSION_DENIED',
                     'UNAUTHENTICATED', 'Out of memory')


def is_damage(e: Exception) -> bool:
  """Whether a failed orbax read blames the checkpoint's files."""
  if isinstance(e, _NOT_DAMAGE_TYPES):
    return False
  return not any(code in str(e) for code in _NOT_DAMAGE_CODES)


def check_shardings(target, where) -> None:
  """ConfigError naming the first leaf that its target sharding cannot
  split (a dimension not divisible by its mesh axes), before any read."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    sharding = getattr(leaf, 'sharding', None)
    if sharding is None or not hasattr(leaf, 'shape'):
      continue
    try:
      sharding.shard_shape(tuple(leaf.shape))
    except ValueError as e:
      spec = getattr(sharding, 'spec', sharding)
      mesh = getattr(getattr(sharding, 'mesh', None), 'shape', None)
      on = f'on the mesh {dict(mesh)}' if mesh else 'on these devices'
      raise ConfigError(
          f"{where}: parameter '{tree_compare.path_str(path)}' of shape "
          f'{tuple(leaf.shape)} cannot be split as {spec} {on}: choose a '
          'sharding whose mesh axes divide its dimensions') from e


@contextlib.contextmanager
def reading(where):
  """Around an orbax read: a failure that blames the files (`is_damage`)
  becomes CorruptCheckpointError naming `where`; any other is raised as
  it is. orbax raises many types for a damaged checkpoint."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not is_damage(e):
      raise
    raise corrupt(where, e) from e


def corrupt(where, e: Exception) -> CorruptCheckpointError:
  msg = str(e).splitlines()[0] if str(e) else ''
  msg = msg.split(' See full TensorStore details')[0][:300]
  return CorruptCheckpointError(
      f'{where} is not a readable checkpoint (corrupt or incomplete?): '
      f'{type(e).__name__}: {msg}')


def verify(where, expected, tree) -> None:
  """CorruptCheckpointError if `tree` does not match its saved checksums.

  A checkpoint written before checksums were stored has none to check.
  """
  if expected is None:
    return
  if not isinstance(expected, Mapping):
    raise CorruptCheckpointError(f'{where}: its checksums are not a mapping')
  bad = checksums.mismatches(expected, tree)
  if bad:
    more = f' and {len(bad) - 1} more' if len(bad) > 1 else ''
    raise CorruptCheckpointError(
        f'{where}: the values of {bad[0]}{more} do not match the checksums '
        'saved with them (garbled files?)')


def rmtree(path: epath.Path, quiet: bool) -> None:
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


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(name)


