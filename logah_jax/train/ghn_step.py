"""One GHN training step over m architectures, compiled without recompiles.

A step is three kinds of compiled program (docs/algorithm.md §6.3):

1. `body`: the Graphormer on the m graphs of the step, padded to one node
   bucket fixed for the whole run -> m node-embedding blocks [N, D]. Compiles
   once per run.
2. `arch`: for one architecture, its decoder + write-back + target forward +
   loss, differentiated with respect to the decoder params and the node block.
   The target's blocks are decoded straight into a stacked layout and run as
   one scan, so the program does not grow with depth.
   Compiles once per (ArchConfig, arch group): a fixed pool of architectures
   bounds the count, whatever the number of steps. One program per
   architecture because different architectures are different programs: one
   SPMD program (or `shard_map`) cannot run them side by side. With
   `share_depths`, architectures that differ only in depth share one
   program, that of their deepest version among the given architectures
   (`ghn.depth_sharing`): the count is then bounded by the distinct
   (width, heads, patch, ...) combinations.
3. `finish`: pulls the m node-block gradients back through the body with
   `jax.vjp`, averages, and applies the guarded update (`state.py`).
   Compiles once per run.

Compiling ahead: with `compile_workers` > 0, a step also takes the
architectures of the steps to come and compiles their `arch` programs on
background threads (ahead-of-time, on abstract inputs), in order, while the
current step runs. It is meant for accelerator hosts, whose cores are idle
while the device runs: the first pass over a pool is then no longer one
compilation at a time (on a 2-core CPU it does not pay; docs/performance.md).
The programs, and so the results, are the same.

Placement: the mesh may have an 'arch' axis; architecture b of a step runs on
group b % groups (a sub-mesh with its own 'data' axis over which the shared
batch is split), so different architectures run side by side on different
devices. GHN params and optimizer state are replicated on the whole mesh; the
per-architecture gradients come back to it for `finish`.
"""

from __future__ import annotations

from concurrent import futures
from typing import Sequence

import jax
import jax.numpy as jnp

from logah_jax import compiles
from logah_jax import ghn as ghn_lib
from logah_jax import parallel
from logah_jax.ghn import depth_sharing
from logah_jax.ghn.config import GHNConfig
from logah_jax.train import objective
from logah_jax.train import state as state_lib
from logah_jax.train.compute import Compute
from logah_jax.train.state import TrainState

TRACE_GROUP = 'ghn_step'  # compiles.trace_counts(TRACE_GROUP): body/arch/finish


def vocabulary_terms(cfg: GHNConfig, arch, label_smoothing: float = 0.0):
  """(periods, vocab_period, embedding_period, copies) of `arch`'s program.

  A GPT-2's vocabulary matrices that repeat (`ghn.tiled_periods`) are
  decoded as their first period, which suffices for the logits
  (`vocab_period`), the embedding lookup (`embedding_period`) and the
  regulariser (`copies`, `objective.frobenius_sum`). Label smoothing needs
  the full logits: then nothing is periodic.
  """
  periods = {} if label_smoothing else ghn_lib.tiled_periods(cfg, arch)
  period = ghn_lib.vocab_period(cfg, arch) if periods else 0
  copies = {path: objective.period_copies(arch.vocab_size, p)
            for path, p in periods.items()}
  return periods, period, periods.get(('wte', 'embedding'), 0), copies

class GHNStep:
  """Callable `(state, archs, batch) -> (state, metrics)` for a fixed run.

  Args:
    cfg: the GHN.
    family: 'vit' or 'gpt2'.
    tx: the optax transformation (clipping included).
    mesh: from `parallel.make_mesh`; axes 'data' and optionally 'arch'.
    m: architectures per step.
    n_pad: node bucket every step pads to (`ArchSampler.node_bucket`).
    gamma: weight of the Frobenius regulariser (docs/algorithm.md §6.1).
    label_smoothing: for ViT cross-entropy.
    compute: the target forward's dtype and remat (`compute.Compute`); the
      Graphormer's dtype is the GHN's own (`GHNConfig.dtype`).
    compile_workers: threads that compile the `arch` programs of upcoming
      architectures (0: each compiles when first used). Call `close` when
      done.
    share_depths: the architectures the run can see (`ArchSampler.candidates`)
      to share programs across depths; empty: one program per architecture.
      Losses and gradients are the same up to float rounding.
    compiler_options: XLA options of the `arch` programs (the ones compiled
      per architecture), e.g. `compiles.quick_compile_options()`.
  """

  def __init__(self, cfg: GHNConfig, family: str, tx, mesh, *, m: int,
               n_pad: int, gamma: float = 3e-5, label_smoothing: float = 0.0,
               compute: Compute = Compute(), compile_workers: int = 0,
               share_depths: Sequence = (),
               compiler_options: dict | None = None):
    self.cfg, self.family, self.tx = cfg, family, tx
    self.compute = compute
    self.mesh, self.m, self.n_pad = mesh, m, n_pad
    self.gamma, self.label_smoothing = float(gamma), float(label_smoothing)
    self.groups = parallel.arch_groups(mesh)
    self.replicated = parallel.replicated(mesh)
    self._body = self._compile_body()
    self._finish = self._compile_finish()
    self._arch_programs = {}  # (ArchConfig, group) -> program or Future
    self._pool = (futures.ThreadPoolExecutor(
        compile_workers, thread_name_prefix='ghn-compile')
                  if compile_workers > 0 else None)
    self._signature = None  # abstract (decoder params, x_ND, batch)
    self.shared = bool(share_depths)
    self._depths = depth_sharing.program_depths(share_depths)
    self._layouts = {}  # (ArchConfig, group) -> layout on the group's mesh
    self.compiler_options = dict(compiler_options or {})

  def close(self) -> None:
    """Stops compiling ahead: queued compilations are dropped."""
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)

  # ------------------------------------------------------------------ state

  def init_state(self, params) -> TrainState:
    """A fresh state (step 0) replicated on the mesh.

    The state is a copy: steps donate it, and `params` stays usable.
    """
    return state_lib.fresh_on(self.tx, params, self.replicated,
                              self.replicated)

  def abstract_state(self, params) -> TrainState:
    """ShapeDtypeStructs (with shardings) of a state: the restore target."""
    abstract = jax.eval_shape(lambda p: state_lib.fresh(self.tx, p), params)
    return parallel.with_shardings(abstract, self.replicated)

  # --------------------------------------------------------------- programs

  def _compile_body(self):
    body = ghn_lib.body_function(self.cfg, self.family)

    def forward(body_params, inputs):
      compiles.count_trace(f'{TRACE_GROUP}.body')
      x = body(body_params, inputs)
      return tuple(x[b] for b in range(x.shape[0]))
    return jax.jit(forward, out_shardings=self.replicated)

  def program_arch(self, arch):
    """The architecture whose `arch` program `arch` runs."""
    if not self.shared:
      return arch
    return depth_sharing.program_arch(arch, self._depths)

  def _layout(self, arch, group: int):
    """`arch`'s layout inputs of its shared program, on `group`'s mesh."""
    key = (arch, group)
    if key not in self._layouts:
      self._layouts[key] = jax.device_put(
          depth_sharing.layout(self.cfg, arch, self.program_arch(arch)),
          parallel.replicated(self.groups[group]))
    return self._layouts[key]

  def _arch_program(self, arch, group: int):
    """value-and-grad of one architecture's loss, compiled on its group."""
    key = (self.program_arch(arch), group)
    if key not in self._arch_programs:
      self._arch_programs[key] = self._compile_arch(*key)
    program = self._arch_programs[key]
    if isinstance(program, futures.Future):  # compiled ahead: wait for it
      program = self._arch_programs[key] = program.result()
    return program

  def _compile_ahead(self, steps: Sequence[Sequence]) -> None:
    """Queues the `arch` programs of `steps` not compiled or queued yet."""
    for archs in steps:
      for b, arch in enumerate(archs):
        key = (self.program_arch(arch), b % len(self.groups))
        if key not in self._arch_programs:
          ghn_lib.check_archs(self.cfg, self.family, [arch])
          self._arch_programs[key] = self._pool.submit(
              self._compile_arch_now, *key)

  def _compile_arch_now(self, arch, group: int):
    """The AOT-compiled program of `arch` (same program as the jit path)."""
    signature = self._signature
    if self.shared:
      signature += (jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
          depth_sharing.layout(self.cfg, arch, arch)),)
    return self._compile_arch(arch, group).lower(*signature).compile()

  def block_remat(self, scan: bool = True):
    """The target blocks' remat (`Compute.block_remat`)."""
    return self.compute.block_remat(scan)

  def _compile_arch(self, arch, group: int, scan: bool = True):
    """The program of `arch` on arch group `group`.

    `scan=False` unrolls the target's blocks: the same values, for FLOP
    counting (XLA's cost analysis counts a loop body once, not per trip).
    With depth sharing (and `scan`), the program takes a fourth argument,
    the layout (`depth_sharing.layout`) of the architecture it runs for.
    """
    shared = self.shared and scan
    gamma, smoothing, compute = self.gamma, self.label_smoothing, self.compute
    periods, period, embedding_period, copies = vocabulary_terms(
        self.cfg, arch, smoothing)
    decode = ghn_lib.decode_function(self.cfg, arch, stacked=scan,
                                     with_layout=shared,
                                     first_period=bool(periods))
    n = ghn_lib.num_nodes(self.cfg, arch)

    def loss_fn(decoder_params, x_ND, batch, layout):
      if shared:
        node_rows, slot_scales, depth = layout
        predicted = decode(decoder_params, x_ND, (node_rows, slot_scales))
      else:
        depth, predicted = None, decode(decoder_params, x_ND[:n])
      ce, logits, targets = objective.task_loss(
          arch, predicted, batch, smoothing, dtype=compute.dtype,
          remat=self.block_remat(scan), scan=scan, depth=depth,
          vocab_period=period, embedding_period=embedding_period)
      reg = objective.frobenius_sum(predicted, depth, copies)
      acc = objective.correct(logits, targets, bool(period)) / targets.size
      return ce + gamma * reg, {'ce': ce, 'reg': reg, 'acc': acc}

    def program(decoder_params, x_ND, batch, layout=None):
      compiles.count_trace(f'{TRACE_GROUP}.arch')
      (_, aux), (g_dec, g_x) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(decoder_params, x_ND, batch,
                                                 layout)
      return g_dec, g_x, aux

    mesh = self.groups[group]
    rep = parallel.replicated(mesh)
    shardings = (rep, rep, parallel.data_sharded(mesh)) + (
        (rep,) if shared else ())
    return jax.jit(program, in_shardings=shardings, out_shardings=rep,
                   compiler_options=self.compiler_options or None)

  def _compile_finish(self):
    body = ghn_lib.body_function(self.cfg, self.family)
    tx, gamma = self.tx, self.gamma

    def finish(state: TrainState, inputs, g_xs, g_decs, auxes):
      compiles.count_trace(f'{TRACE_GROUP}.finish')
      inv_m = 1.0 / len(g_xs)
      _, pull_back = jax.vjp(lambda p: body(p, inputs), state.params['body'])
      (g_body,) = pull_back(jnp.stack(g_xs))
      g_dec = jax.tree.map(lambda *g: sum(g), *g_decs)
      grads = jax.tree.map(jnp.zeros_like, state.params)
      grads['body'] = g_body
      grads['decoder'] = g_dec
      grads = jax.tree.map(lambda g: g * inv_m, grads)
      aux = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *auxes)
      loss = aux['ce'] + gamma * aux['reg']
      state, metrics = state_lib.guarded_update(state, grads, loss, tx)
      return state, dict(aux, **metrics)

    return jax.jit(finish, out_shardings=self.replicated, donate_argnums=0)

  # ------------------------------------------------------------------- step

  def inputs(self, archs: Sequence):
    """Host-side GHN inputs of the step's graphs, on the mesh."""
    x = ghn_lib.make_inputs(self.cfg, self.family, archs, self.n_pad)
    return jax.device_put(x, self.replicated)

  def __call__(self, state: TrainState, archs: Sequence, batch,
               upcoming: Sequence[Sequence] = ()):
    """One update. `batch` is a host (numpy) batch shared by all archs.

    `upcoming`: the architectures of the next steps, compiled ahead on the
    background threads (ignored without `compile_workers`).

    Returns (state, metrics); metrics are device scalars: loss, ce, reg, acc
    (means over the architectures), grad_norm (before clipping) and finite
    (False when the update was skipped because of a NaN/Inf).
    """
    if len(archs) != self.m:
      raise ValueError(f'GHNStep built for m={self.m} got {len(archs)} '
                       'architectures')
    ghn_lib.check_archs(self.cfg, self.family, archs)
    inputs = self.inputs(archs)
    xs = self._body(state.params['body'], inputs)
    n_groups = len(self.groups)
    group_data = {}
    for g in range(min(n_groups, len(archs))):
      rep = parallel.replicated(self.groups[g])
      group_data[g] = (parallel.regroup(state.params['decoder'], rep),
                       parallel.shard_batch(self.groups[g], batch))
    if self._pool is not None:
      if self._signature is None:  # shapes only: the same on every group
        decoder_params, shared_batch = group_data[0]
        self._signature = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
            (decoder_params, xs[0], shared_batch))
      self._compile_ahead([archs, *upcoming])
    outs = []
    for b, arch in enumerate(archs):
      g = b % n_groups
      decoder_params, shared_batch = group_data[g]
      x_b = parallel.regroup(xs[b], parallel.replicated(self.groups[g]))
      layout = (self._layout(arch, g),) if self.shared else ()
      outs.append(self._arch_program(arch, g)(decoder_params, x_b,
                                              shared_batch, *layout))
    outs = parallel.regroup(outs, self.replicated)
    g_decs, g_xs, auxes = (tuple(o[i] for o in outs) for i in range(3))
    return self._finish(state, inputs, g_xs, g_decs, auxes)

