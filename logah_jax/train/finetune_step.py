"""One fine-tuning step of a target (ViT or GPT-2), compiled once per run.

The state (step, params, optimizer state) lives on the mesh with the params'
shardings (replicated, or FSDP-split for targets too big to replicate); the
batch is split over the 'data' axis. A step whose loss or gradient norm is
not finite leaves the state unchanged and reports `finite = 0`, so the loop
can stop with the last good state and checkpoint intact.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from logah_jax import parallel
from logah_jax.train import objective


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied
  params: Any
  opt_state: Any


class FinetuneStep:
  """Callable `(state, batch) -> (state, metrics)` for one target and run.

  Args:
    arch: the target's ArchConfig.
    tx: the optax transformation (clipping included).
    mesh: from `parallel.make_mesh`, with a 'data' axis.
    param_rule: 'replicate' or 'fsdp' (see `parallel.param_shardings`).
    label_smoothing: for ViT cross-entropy.
    fsdp_min_mb: with 'fsdp', leaves smaller than this stay replicated.
  """

  def __init__(self, arch, tx, mesh, *, param_rule: str = 'replicate',
               label_smoothing: float = 0.0, fsdp_min_mb: float = 4):
    self.arch, self.tx, self.mesh = arch, tx, mesh
    self.label_smoothing = float(label_smoothing)
    self.traces = 0
    from logah_jax import models  # pylint: disable=g-import-not-at-top
    abstract = models.abstract_params(arch)
    self._params_abstract = abstract
    self.param_shardings = parallel.param_shardings(
        mesh, abstract, param_rule, min_size_mb=fsdp_min_mb)
    self._state_shardings = jax.tree.map(
        lambda x: x.sharding, self.abstract_state())
    self._step = jax.jit(
        self._update, donate_argnums=0,
        in_shardings=(self._state_shardings, parallel.data_sharded(mesh)),
        out_shardings=(self._state_shardings, parallel.replicated(mesh)))

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs with shardings: the init and restore target.

    Optimizer-state leaves shaped like a parameter take that parameter's
    sharding; the rest (counts, scalars) are replicated.
    """
    abstract = jax.eval_shape(self._fresh, self._params_abstract)
    rep = parallel.replicated(self.mesh)
    by_shape = {}
    for leaf, sharding in zip(jax.tree.leaves(self._params_abstract),
                              jax.tree.leaves(self.param_shardings)):
      by_shape.setdefault((leaf.shape, leaf.dtype), sharding)

    def sharding_of(x):
      if x.ndim == 0:
        return rep
      return by_shape.get((x.shape, x.dtype), rep)
    params = parallel.with_shardings(abstract.params, self.param_shardings)
    rest = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding_of(x)),
        (abstract.step, abstract.opt_state))
    return TrainState(step=rest[0], params=params, opt_state=rest[1])

  def _fresh(self, params) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params))

  def init_state(self, params) -> TrainState:
    """A step-0 state on the mesh; `params` is copied, never donated."""
    params = jax.device_put(params, self.param_shardings, may_alias=False)
    return jax.jit(self._fresh, out_shardings=self._state_shardings)(params)

  def _update(self, state: TrainState, batch):
    self.traces += 1
    arch, smoothing = self.arch, self.label_smoothing

    def loss_fn(params):
      loss, logits, targets = objective.task_loss(arch, params, batch,
                                                  smoothing)
      return loss, objective.correct(logits, targets) / targets.size

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, {'loss': loss, 'acc': acc, 'grad_norm': grad_norm,
                 'finite': finite.astype(jnp.float32)}

  def __call__(self, state: TrainState, batch):
    return self._step(state, parallel.shard_batch(self.mesh, batch))
