"""Meshes and sharding rules: the one place that decides where arrays live.

Parallelism in logah_jax is `jax.jit` with `NamedSharding`s built here (no
pmap, no `with mesh:`). The mesh axes are Auto on purpose: `jax.make_mesh`
defaults to Explicit axes, under which shardings become part of array types,
`with_sharding_constraint` asserts instead of resharding and `shard_map` rejects
unsharded inputs. With Auto axes, jit's in/out_shardings and sharding
constraints behave classically and the compiler propagates the rest, which is
what our jitted GHN and target steps expect. We still call `jax.make_mesh`
(not `Mesh(...)`) for its topology-aware device order on TPUs and GPUs.
"""

import math
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA = 'data'
ARCH = 'arch'
RULES = ('replicate', 'fsdp')


def make_mesh(axes: Mapping[str, int] | None = None,
              devices: Sequence[Any] | None = None) -> Mesh:
  """Builds an Auto-axis mesh over `devices` (default: all devices).

  Args:
    axes: ordered {name: size}; one size may be -1 for "the rest". Default
      {'data': -1}: plain data parallelism.
    devices: the devices to use, default `jax.devices()`.

  Raises:
    ValueError: the sizes don't multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = dict(axes or {DATA: -1})
  n = len(devices)
  if not axes:
    raise ValueError('make_mesh needs at least one axis')
  rest = [name for name, size in axes.items() if size == -1]
  bad = [name for name, size in axes.items() if size != -1 and size < 1]
  if len(rest) > 1 or bad:
    raise ValueError(f'mesh axes {axes} for {n} devices: sizes must be '
                     'positive, with at most one -1 ("the rest")')
  known = math.prod(size for size in axes.values() if size != -1)
  if rest:
    if n % known:
      raise ValueError(f'mesh axes {axes}: {n} devices are not divisible by '
                       f'the fixed axes product {known}')
    axes[rest[0]] = n // known
  if math.prod(axes.values()) != n:
    raise ValueError(f'mesh axes {axes} multiply to {math.prod(axes.values())}'
                     f' but there are {n} devices')
  return jax.make_mesh(tuple(axes.values()), tuple(axes),
                       axis_types=(AxisType.Auto,) * len(axes),
                       devices=devices)


def arch_groups(mesh: Mesh) -> list[Mesh]:
  """One 1-D 'data' mesh per slice of the optional 'arch' axis.

  GHN training runs each architecture of a step on one group (its batch split
  over the group's 'data' axis), so different architectures, which are
  different programs, run side by side on different devices. A mesh without
  an 'arch' axis is a single group: every architecture uses every device.

  With several processes every group takes an equal share of every
  process's devices (process-major along its 'data' axis), so that moving
  a value between the whole mesh and a group never crosses processes
  (`regroup`), and each process feeds its own rows of the batch.

  Raises:
    ValueError: axes other than 'arch' and 'data', or (several processes)
      local devices not divisible by the groups.
  """
  names = tuple(mesh.axis_names)
  if set(names) - {ARCH, DATA} or DATA not in names:
    raise ValueError(f"GHN training needs mesh axes 'data' and optionally "
                     f"'{ARCH}'; got {names}")
  if ARCH not in names:
    return [mesh]
  n_groups = mesh.shape[ARCH]
  if jax.process_count() == 1:
    devices = np.moveaxis(mesh.devices, names.index(ARCH), 0)
  else:
    by_process = {}
    for d in sorted(mesh.devices.flat, key=lambda d: (d.process_index, d.id)):
      by_process.setdefault(d.process_index, []).append(d)
    local = {len(v) for v in by_process.values()}
    if len(local) != 1 or local.pop() % n_groups:
      raise ValueError(f"mesh axis '{ARCH}'={n_groups}: every process needs "
                       'a multiple of that many devices')
    devices = np.stack([
        np.concatenate([np.array_split(np.array(v, dtype=object),
                                       n_groups)[g]
                        for _, v in sorted(by_process.items())])
        for g in range(n_groups)])
  return [Mesh(group, (DATA,), axis_types=(AxisType.Auto,))
          for group in devices]


def regroup(tree, sharding: NamedSharding):
  """Replicated arrays of one device set, replicated on another (a copy).

  Built from each process's own buffers only: multi-controller JAX refuses
  a `device_put` between different device sets across processes, and the
  GHN step moves values between the whole mesh and its arch groups. Every
  leaf must be fully replicated and have a buffer in every process that
  holds a device of `sharding` (true for `arch_groups`' layout). A value
  already on the same devices is only re-labelled (no copy).
  """
  targets = [d for d in sharding.mesh.devices.flat
             if d.process_index == jax.process_index()]
  devices = set(sharding.mesh.devices.flat)

  def one(x):
    if set(x.sharding.device_set) == devices:  # same devices: may alias
      return jax.device_put(x, sharding)
    if not x.is_fully_replicated:
      raise ValueError(f'regroup needs replicated arrays; got {x.sharding}')
    local = {s.device: s.data for s in x.addressable_shards}
    any_local = next(iter(local.values()))
    copies = [jax.device_put(local.get(d, any_local), d, may_alias=False)
              for d in targets]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, copies)

  return jax.tree.map(one, tree)


def _data_size(mesh: Mesh) -> int:
  if DATA not in mesh.shape:
    raise ValueError(f"mesh axes {dict(mesh.shape)} have no '{DATA}' axis")
  return mesh.shape[DATA]


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Array dimension `axis` (default: the batch axis) split over 'data'."""
  _data_size(mesh)
  return NamedSharding(mesh, P(*([None] * axis), DATA))


def _path_str(path) -> str:
  """'images' or 'inputs/0' for a jax key path."""
  parts = []
  for key in path:  # DictKey, SequenceKey, GetAttrKey
    attr = next((a for a in ('key', 'idx', 'name') if hasattr(key, a)), None)
    parts.append(str(getattr(key, attr) if attr else key))
  return '/'.join(parts) or '<root>'


def shard_batch(mesh: Mesh, batch):
  """Places every leaf of `batch` with its leading axis split over 'data'.

  On several processes each one passes its own slice of the global batch
  (`jax.make_array_from_process_local_data` assembles them).

  Raises:
    ValueError: a leaf's leading dim is not divisible by the devices it is
      split over (named by its path).
  """
  sharding = data_sharded(mesh)
  per_process = max(1, _data_size(mesh) // jax.process_count())

  def put(path, x):
    shape = np.shape(x)
    if not shape or shape[0] % per_process:
      raise ValueError(
          f"batch leaf '{_path_str(path)}' of shape {shape}: leading dim must "
          f"be divisible by {per_process} (the '{DATA}' axis"
          + (' per process)' if jax.process_count() > 1 else ')'))
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree_util.tree_map_with_path(put, batch)


def _fsdp_spec(shape, itemsize, data: int, min_bytes: float) -> P:
  """Splits the largest dim divisible by `data`; small leaves replicate."""
  if math.prod(shape) * itemsize < min_bytes:
    return P()
  dims = [i for i, d in enumerate(shape) if d % data == 0]
  if not dims:
    return P()
  dim = max(dims, key=lambda i: (shape[i], -i))  # ties: the first
  return P(*([None] * dim), DATA)


def param_shardings(mesh: Mesh, abstract_params, rule: str = 'replicate',
                    min_size_mb: float = 4):
  """A NamedSharding per leaf of `abstract_params` (arrays or abstract).

  Args:
    rule: 'replicate' (every device holds all params) or 'fsdp' (leaves of at
      least `min_size_mb` MiB split along their largest dim divisible by the
      'data' axis size; the rest replicate).

  Raises:
    ValueError: unknown rule.
  """
  if rule not in RULES:
    raise ValueError(f'param sharding rule {rule!r} is not one of {RULES}')
  if rule == 'replicate':
    return jax.tree.map(lambda _: replicated(mesh), abstract_params)
  data = _data_size(mesh)
  min_bytes = min_size_mb * 2**20
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(
          tuple(x.shape), np.dtype(x.dtype).itemsize, data, min_bytes)),
      abstract_params)


def stacked_sharding(*block_shardings: NamedSharding) -> NamedSharding:
  """The sharding of one leaf of every block stacked on a new leading axis
  (`models.stack_blocks(..., stack=stacked_sharding)`).

  The layer axis stays whole and each block keeps its own split: a scan
  over the blocks slices one layer per iteration, which a split layer axis
  would turn into a gather of the whole stack.

  Raises:
    ValueError: the blocks' shardings differ (the same shapes always get the
      same sharding from `param_shardings`).
  """
  first = block_shardings[0]
  if any(s != first for s in block_shardings[1:]):
    raise ValueError(f'stacked leaves need one sharding; got '
                     f'{sorted({str(s.spec) for s in block_shardings})}')
  return NamedSharding(first.mesh, P(None, *first.spec))


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying `shardings` (a pytree or one Sharding).

  The usual restore target: `with_shardings(jax.eval_shape(init), shardings)`.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings),
        abstract_tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_tree, shardings)
