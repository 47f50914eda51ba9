"""One fine-tuning step of a target (ViT or GPT-2), compiled once per run.

The state (step, params, optimizer state) lives on the mesh with the params'
shardings (replicated, or FSDP-split for targets too big to replicate); the
batch is split over the 'data' axis. The update is `state.guarded_update`: a
step whose loss or gradient norm is not finite leaves the state unchanged.

With `scan_blocks` the state holds the blocks' params (and their optimizer
state) stacked, and the forward runs them as one scan: XLA compiles one
block instead of every block, and the blocks keep only their matmul outputs
for the backward pass (`block_remat`; docs/performance.md has the
trade-off). `reference_params` gives the params back in the usual per-block
layout, for export.
"""

from __future__ import annotations

import functools

import jax
import optax

from logah_jax import compiles
from logah_jax import models
from logah_jax.models import layers
from logah_jax import parallel
from logah_jax.train import objective
from logah_jax.train import state as state_lib
from logah_jax.train.compute import Compute
from logah_jax.train.state import TrainState

TRACE_NAME = 'finetune_step.update'  # compiles.trace_counts() key


class FinetuneStep:
  """Callable `(state, batch) -> (state, metrics)` for one target and run.

  Args:
    arch: the target's ArchConfig.
    tx: the optax transformation (clipping included).
    mesh: from `parallel.make_mesh`, with a 'data' axis.
    param_rule: 'replicate' or 'fsdp' (see `parallel.param_shardings`).
    label_smoothing: for ViT cross-entropy.
    fsdp_min_mb: with 'fsdp', leaves smaller than this stay replicated.
    compute: the forward's dtype and remat (`compute.Compute`).
    scan_blocks: keep the blocks stacked and run them as one scan.
  """

  def __init__(self, arch, tx, mesh, *, param_rule: str = 'replicate',
               label_smoothing: float = 0.0, fsdp_min_mb: float = 4,
               compute: Compute = Compute(), scan_blocks: bool = False):
    self.arch, self.tx, self.mesh = arch, tx, mesh
    self.compute = compute
    self.scan_blocks = bool(scan_blocks)
    self.label_smoothing = float(label_smoothing)
    abstract = models.abstract_params(arch)
    # Shardings of the per-block layout (the init's and the export's); a
    # stacked leaf keeps its blocks' split (`parallel.stacked_sharding`).
    self.reference_shardings = parallel.param_shardings(
        mesh, abstract, param_rule, min_size_mb=fsdp_min_mb)
    self._layout = None
    self.param_shardings = self.reference_shardings
    if self.scan_blocks:
      self._layout = functools.partial(models.stack_blocks, arch)
      abstract = jax.eval_shape(self._layout, abstract)
      self.param_shardings = models.stack_blocks(
          arch, self.reference_shardings, stack=parallel.stacked_sharding)
    self._params_abstract = abstract
    self._state_shardings = jax.tree.map(
        lambda x: x.sharding, self.abstract_state())
    self._step = jax.jit(
        self._update, donate_argnums=0,
        in_shardings=(self._state_shardings, parallel.data_sharded(mesh)),
        out_shardings=(self._state_shardings, parallel.replicated(mesh)))

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with shardings: the init and restore target.

    Optimizer-state leaves that mirror a parameter (moments, traces) take
    that parameter's sharding, matched by position in the tree, not by shape
    (a stacked leaf and another leaf may share a shape but not a sharding);
    the rest (counts, scalars) are replicated.
    """
    abstract = jax.eval_shape(self._fresh, self._params_abstract)
    rep = parallel.replicated(self.mesh)
    opt_shardings = optax.tree_map_params(
        self.tx, lambda _, sharding: sharding, abstract.opt_state,
        self.param_shardings, transform_non_params=lambda _: rep)
    return TrainState(
        step=jax.ShapeDtypeStruct((), abstract.step.dtype, sharding=rep),
        params=parallel.with_shardings(abstract.params, self.param_shardings),
        opt_state=parallel.with_shardings(abstract.opt_state, opt_shardings))

  def _fresh(self, params) -> TrainState:
    return state_lib.fresh(self.tx, params)

  def init_state(self, params) -> TrainState:
    """A step-0 state on the mesh from per-block `params` (stacked here with
    `scan_blocks`); `params` is copied, never donated."""
    return state_lib.fresh_on(self.tx, params, self.reference_shardings,
                              self._state_shardings, layout=self._layout)

  def reference_params(self, params):
    """A state's params in the per-block layout (`models.abstract_params`):
    the same arrays without `scan_blocks`; with it, an unstacked copy (one
    more copy of the params in device memory while it is held)."""
    if not self.scan_blocks:
      return params
    return self._unstack(params)

  def _unstack(self, params):
    """`models.unstack_blocks` as copies on the reference shardings, leaf by
    leaf: block i of a stacked leaf is one program with `i` an argument, so
    a model compiles one small program per leaf shape however deep it is
    (one program for the whole tree compiled a slice per block and leaf:
    2.9 s for 24 blocks on a 2-core CPU)."""
    stacked = params[layers.STACKED]
    out = {k: jax.tree.map(lambda x, s: _copy(s)(x), v,
                           self.reference_shardings[k])
           for k, v in params.items() if k != layers.STACKED}
    for i, name in enumerate(models.block_names(self.arch)):
      out[name] = jax.tree.map(lambda x, s, i=i: _take(s)(x, i), stacked,
                               self.reference_shardings[name])
    return dict(sorted(out.items()))

  def _update(self, state: TrainState, batch):
    compiles.count_trace(TRACE_NAME)
    arch, smoothing = self.arch, self.label_smoothing

    def loss_fn(params):
      loss, logits, targets = objective.task_loss(
          arch, params, batch, smoothing, dtype=self.compute.dtype,
          remat=self.block_remat, scan=self.scan_blocks)
      return loss, objective.correct(logits, targets) / targets.size

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state, metrics = state_lib.guarded_update(state, grads, loss, self.tx)
    return state, dict(metrics, acc=acc)

  @property
  def block_remat(self):
    """The blocks' remat (`Compute.block_remat`)."""
    return self.compute.block_remat(self.scan_blocks)

  def __call__(self, state: TrainState, batch):
    return self._step(state, parallel.shard_batch(self.mesh, batch))


@functools.lru_cache(maxsize=256)
def _take(sharding):
  """(stacked leaf, i) -> block i's leaf on `sharding`: one program per
  leaf shape and sharding, whatever the depth."""
  return jax.jit(lambda x, i: x[i], out_shardings=sharding)


@functools.lru_cache(maxsize=256)
def _copy(sharding):
  """A leaf outside the blocks, copied onto `sharding` (jit's outputs are
  new buffers, so a later donated step cannot delete it)."""
  return jax.jit(lambda x: x, out_shardings=sharding)
