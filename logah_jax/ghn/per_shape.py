"""GHN prediction on CPUs: programs compiled once per tensor shape.

`decode_arch_per_shape` runs the pieces of `writeback.decode_arch` as
separate programs: one per decoder request group, one per kind of leaf
called once per leaf, one to take a node's block out of its group. Leaf
programs are keyed by shapes, not by architecture: the 36 blocks of
GPT-2-Large share one per kind of tensor, a deeper model of the same width
compiles no new one, and every leaf is written straight into its own
buffer. The programs are compiled on a thread of their own, ahead of the
calls (docs/performance.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from logah_jax import compiles
from logah_jax.ghn.config import GHNConfig
from logah_jax.ghn.decoders import LowRankDecoder
from logah_jax.ghn.plan import ArchPlan, Request, SlotPlan
from logah_jax.ghn.writeback import (decode_group, decoder_module, recipes,
                                     set_path, write_leaf)


@functools.lru_cache(maxsize=None)
def _hidden_program(cfg: GHNConfig):
  def hidden(decoder_params, x_ND, rows):
    compiles.count_trace('ghn.decode.hidden')
    return decoder_module(cfg).apply({'params': decoder_params}, x_ND[rows],
                                     method=LowRankDecoder.hidden)
  return jax.jit(hidden)


@functools.lru_cache(maxsize=None)
def _group_program(cfg: GHNConfig, req: Request):
  """Decodes a request group: its nodes' blocks, stacked."""
  def group(decoder_params, x_ND, rows, hidden, hidden_rows):
    compiles.count_trace('ghn.decode.group')
    hid = None if hidden is None else hidden[hidden_rows]
    return decode_group(cfg, decoder_params, x_ND[rows], hid, req)
  return jax.jit(group)


@jax.jit
def _block_of(blocks, row):
  """One node's block of a group (a traced row: one program per shape)."""
  return jax.tree.map(lambda b: b[row], blocks)


@functools.lru_cache(maxsize=None)
def _leaf_program(recipe: SlotPlan):
  """One leaf from its node's block; the fan-in scale is an argument (it
  depends on depth through the residual projections), not a constant."""
  def leaf(block, scale, node_id):
    compiles.count_trace('ghn.decode.leaf')
    return write_leaf(block, dataclasses.replace(recipe, scale=scale), node_id)
  return jax.jit(leaf)


@functools.lru_cache(maxsize=None)
def _zeros_program(shape: tuple[int, ...], dtype):
  return jax.jit(lambda: jnp.zeros(shape, dtype))


def _param_nodes(plan: ArchPlan):
  """The plan's parameter nodes (the hidden program's rows), and each one's
  row among them."""
  param_nodes = [p.node for p in plan.nodes]
  return param_nodes, {node: i for i, node in enumerate(param_nodes)}


def _program_inputs(nodes, position, hidden):
  """The node rows of a request group, and their rows of `hidden`."""
  rows = np.array([n.node for n in nodes], np.int32)
  if hidden is None:
    return rows, None
  return rows, np.array([position[n.node] for n in nodes], np.int32)


def _outputs(compiled, committed: bool) -> object:
  """ShapeDtypeStructs of a compiled program's outputs as the next program
  will see them: with the shardings it gives them when they are committed
  to a device (as inputs committed to one make them), else without."""
  return jax.tree.map(
      lambda s, sharding: jax.ShapeDtypeStruct(
          s.shape, s.dtype, sharding=sharding if committed else None),
      compiled.out_info, compiled.output_shardings)


@dataclasses.dataclass(frozen=True)
class CompiledAhead:
  """Programs of one prediction being compiled on a thread: the node
  embeddings they were compiled for, and {program key: Future}."""
  x_ND: jax.ShapeDtypeStruct
  futures: dict

  def wait(self, key) -> None:
    if key in self.futures:
      self.futures[key].result()  # re-raises a compile error here

  def cancel(self) -> None:
    """Drops the compiles not started yet (the prediction failed)."""
    for future in self.futures.values():
      future.cancel()


def compile_ahead(cfg: GHNConfig, decoder_params, plan: ArchPlan, x_ND,
                  pool: concurrent.futures.Executor | None = None
                  ) -> CompiledAhead:
  """Starts compiling the hidden, group, block and leaf programs of `plan`.

  `x_ND`: the node embeddings, or their ShapeDtypeStruct (so that this can
  start before the GHN body has run). Dispatching a leaf can block the
  calling thread while the CPU runs the leaves queued before it; compiling
  on a thread of its own keeps the compiler busy meanwhile, and the body's
  compile can run beside it. The calls then find the executables in jit's
  cache (same avals and shardings; tests count the compiles). `pool`: the
  one-thread executor to queue on (several predictions share one: a second
  compile thread would only compete for the cores); default: a new one.
  """
  leaves = jax.tree.leaves((decoder_params, x_ND))
  if any(isinstance(a, jax.core.Tracer) for a in leaves):
    return CompiledAhead(x_ND, {})  # traced (eval_shape): nothing to compile
  on_device = [a for a in leaves if getattr(a, 'committed', False)]
  committed = bool(on_device)
  x_ND = jax.ShapeDtypeStruct(x_ND.shape, x_ND.dtype, sharding=(
      on_device[0].sharding if committed else None))
  param_nodes, position = _param_nodes(plan)
  outputs = {}

  def hidden():
    outputs['hidden'] = _outputs(_hidden_program(cfg).lower(
        decoder_params, x_ND, np.array(param_nodes, np.int32)).compile(),
                                 committed)

  def group(req, nodes):
    rows, hidden_rows = _program_inputs(nodes, position,
                                        outputs.get('hidden'))
    out = _outputs(_group_program(cfg, req).lower(
        decoder_params, x_ND, rows, outputs.get('hidden'),
        hidden_rows).compile(), committed)
    outputs[req] = _outputs(_block_of.lower(out, np.int32(0)).compile(),
                            committed)

  def leaf(req, recipe):
    _leaf_program(dataclasses.replace(recipe, scale=1.0)).lower(
        outputs[req], np.float32(1.0), np.int32(0)).compile()

  own_pool = pool is None
  if own_pool:
    pool = compile_thread()
  futures = {}
  if cfg.decoder == 'lowrank':
    futures['hidden'] = pool.submit(hidden)
  for req, nodes in plan.groups().items():
    futures[req] = pool.submit(group, req, nodes)
    for recipe in recipes(nodes):
      futures[req, recipe] = pool.submit(leaf, req, recipe)
  if own_pool:
    pool.shutdown(wait=False)  # the thread ends when its queue is done
  return CompiledAhead(x_ND, futures)


def compile_thread() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(1, 'logah-compile')


def decode_arch_per_shape(cfg: GHNConfig, decoder_params, x_ND,
                          plan: ArchPlan, abstract_params,
                          ahead: CompiledAhead | None = None) -> dict:
  """`decode_arch`'s params, computed by programs compiled once per shape.

  Not differentiable as a whole (each piece is its own program): this is
  the prediction path; training traces `decode_arch` into its step.
  `ahead`: this prediction's `compile_ahead`, if already started.
  """
  x_ND = jnp.asarray(x_ND, jnp.float32)
  if ahead is None or ahead.x_ND.shape != x_ND.shape:
    ahead = compile_ahead(cfg, decoder_params, plan, x_ND)
  try:
    return _decode(cfg, decoder_params, x_ND, plan, abstract_params, ahead)
  except BaseException:
    ahead.cancel()
    raise


def _decode(cfg: GHNConfig, decoder_params, x_ND, plan: ArchPlan,
            abstract_params, ahead: CompiledAhead) -> dict:
  param_nodes, position = _param_nodes(plan)
  hidden = None
  if cfg.decoder == 'lowrank':
    ahead.wait('hidden')
    hidden = _hidden_program(cfg)(decoder_params, x_ND,
                                  np.array(param_nodes, np.int32))
  tree: dict = {}
  for req, nodes in plan.groups().items():
    ahead.wait(req)
    rows, hidden_rows = _program_inputs(nodes, position, hidden)
    blocks = _group_program(cfg, req)(decoder_params, x_ND, rows, hidden,
                                      hidden_rows)
    for recipe, members in recipes(nodes).items():
      ahead.wait((req, recipe))
      program = _leaf_program(dataclasses.replace(recipe, scale=1.0))
      # NumPy scalars: jit takes them as they are (a jnp scalar is an eager
      # op of its own, one per leaf).
      scale = np.float32(recipe.scale)
      for j, path in members:
        set_path(tree, path, program(_block_of(blocks, np.int32(j)), scale,
                                     np.int32(nodes[j].node)))
  for path, _ in plan.graph.unpredicted:
    leaf = abstract_params
    for key in path:
      leaf = leaf[key]
    set_path(tree, path, _zeros_program(tuple(leaf.shape), leaf.dtype)())
  return tree
