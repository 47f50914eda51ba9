"""The reference random init, compiled once per distinct residual block.

Flax draws each param from `fold_in(key, h)`, where `h` is a hash of the
param's path (`h_3/attn/c_attn`, ...) folded in as a constant. Compiled as
one program, a deep model's init repeats the same draws block after block
with only those constants changed, and XLA compiles every copy: GPT-2-Large's
36 blocks made the program take 10-17 s to compile on a 2-core CPU.

Here each block's init is traced on its own (a standalone block module,
started from the same path of the key as in the model), its hash constants
are lifted out of the trace into an argument, and blocks whose traces are
otherwise equal run one compiled program, shared by every model whose blocks
trace the same (tied and untied GPT-2-L; ViTs of the same widths at any
depth, but not GPT-2s of another depth, whose residual projections' init
depends on it). Everything outside the blocks is a second program: the model's
init with its blocks' calls skipped (`nn.intercept_methods`). The values are
those of Flax's init of the whole model, bit for bit (tests).
"""

from __future__ import annotations

import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.scope import LazyRng
from jax.extend import core as jcore

from logah_jax import compiles, prng

_FOLD_IN = 'random_fold_in'


def _is_hash(eqn) -> bool:
  """A fold-in of a constant, such as Flax's path hashes. Lifting any other
  one too is harmless: every block passes its own values."""
  return (eqn.primitive.name == _FOLD_IN
          and isinstance(eqn.invars[1], jcore.Literal))


def _structure(closed: jcore.ClosedJaxpr) -> str:
  """The trace printed with every path hash set to 0, plus its constants:
  equal for two blocks exactly when their inits differ only in those hashes.
  """
  eqns = []
  for eqn in closed.jaxpr.eqns:
    if _is_hash(eqn):
      msg = eqn.invars[1]
      eqn = eqn.replace(invars=[eqn.invars[0],
                                jcore.Literal(np.uint32(0), msg.aval)])
    eqns.append(eqn)
  digest = hashlib.sha256(str(closed.jaxpr.replace(eqns=eqns)).encode())
  for const in closed.consts:
    const = np.asarray(const)
    digest.update(f'{const.shape}{const.dtype}'.encode())
    digest.update(const.tobytes())
  return digest.hexdigest()


def _hashes(closed: jcore.ClosedJaxpr) -> np.ndarray:
  return np.asarray([eqn.invars[1].val for eqn in closed.jaxpr.eqns
                     if _is_hash(eqn)], np.uint32)


def _eval_with_hashes(closed: jcore.ClosedJaxpr, hashes, *args):
  """Evaluates `closed` (as `jax.core.eval_jaxpr` does) with its path hashes,
  in trace order, taken from the traced array `hashes` instead."""
  env = {}
  read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
  env.update(zip(closed.jaxpr.constvars, closed.consts))
  env.update(zip(closed.jaxpr.invars, args))
  n = 0
  for eqn in closed.jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    if _is_hash(eqn):
      ins[1] = hashes[n]
      n += 1
    out = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(
        eqn.params))
    outs = out if eqn.primitive.multiple_results else [out]
    for v, x in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = x
  return [read(v) for v in closed.jaxpr.outvars]


_PROGRAMS: dict = {}  # structure -> jitted block init; oldest dropped
_MAX_PROGRAMS = 32


def _block_program(structure: str, closed: jcore.ClosedJaxpr, treedef):
  """The one jitted program of every block with this `structure`:
  (path hashes, key) -> the block's params."""
  program = _PROGRAMS.get(structure)
  if program is None:
    def block(hashes, key):
      compiles.count_trace('block_init.block')
      return jax.tree.unflatten(treedef,
                                _eval_with_hashes(closed, hashes, key))
    program = _PROGRAMS[structure] = jax.jit(block)
    while len(_PROGRAMS) > _MAX_PROGRAMS:
      del _PROGRAMS[next(iter(_PROGRAMS))]
  return program


def _abstract(leaf):
  return (jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
          if isinstance(leaf, (jax.Array, np.ndarray)) else leaf)


def _zeros(leaf):
  return (jnp.zeros(leaf.shape, leaf.dtype)
          if isinstance(leaf, jax.ShapeDtypeStruct) else leaf)


def _trace_block(module: nn.Module, inputs, name: str,
                 key: jax.ShapeDtypeStruct):
  """(structure, hashes, trace, output treedef) of block `name`'s init, with
  the key split as in the whole model's init: Flax's path (`name`, ...).
  `inputs`: the block call's (args, kwargs), arrays as shapes."""
  def init(k):
    rng = LazyRng.create(prng.fused_threefry(k), name)
    args, kwargs = jax.tree.map(_zeros, inputs)
    return module.init({'params': rng}, *args, **kwargs)['params']
  closed, out = jax.make_jaxpr(init, return_shape=True)(key)
  return _structure(closed), _hashes(closed), closed, jax.tree.structure(out)


class Plan:
  """How to init one model: a program for the params outside its blocks,
  and for each block its structure (which program) and path hashes.

  `names`: the blocks, direct children of `model` that its `__call__`
  calls, each returning an array shaped like its first argument (a
  residual block; the init skips them by returning that argument);
  `inputs`: `model`'s positional arguments; `key`: the shape and dtype of
  the keys `run` will get.
  """

  def __init__(self, model: nn.Module, inputs: tuple, names: list[str],
               key: jax.ShapeDtypeStruct):
    wanted = set(names)
    seen = {}
    # shapes only: a plan made under a trace keeps none of its tracers
    inputs = jax.tree.map(_abstract, inputs)

    def skip_blocks(next_fun, args, kwargs, context):
      module = context.module
      if (context.method_name == '__call__' and module.name in wanted
          and module.scope.path == (module.name,)):
        seen[module.name] = (module.clone(parent=None, name=None),
                             jax.tree.map(_abstract, (args, kwargs)))
        return args[0]
      return next_fun(*args, **kwargs)

    def outside(k):
      with nn.intercept_methods(skip_blocks):
        return model.init(prng.fused_threefry(k),
                          *jax.tree.map(_zeros, inputs))['params']

    jax.eval_shape(outside, key)  # finds the blocks and their inputs
    if set(seen) != wanted:
      raise ValueError(f'block_init: blocks {sorted(wanted - set(seen))} '
                       f'were not called by {type(model).__name__}.')
    self.outside = jax.jit(outside)
    self.blocks = []  # (name, structure, hashes)
    self.traces = {}  # structure -> (trace, treedef), first block's
    for name in names:
      structure, hashes, *trace = _trace_block(*seen[name], name, key)
      self.blocks.append((name, structure, hashes))
      self.traces.setdefault(structure, trace)


def run(plan: Plan, key: jax.Array) -> dict:
  """The model's params from `key`, keys sorted as a jitted init's are."""
  params = dict(plan.outside(key))
  for name, structure, hashes in plan.blocks:
    params[name] = _block_program(structure, *plan.traces[structure])(
        hashes, key)
  return dict(sorted(params.items()))
