"""The train state of every loop, and its one guarded optimizer update.

GHN training and fine-tuning hold the same state (step, params, optimizer
state) and apply updates the same way: measure the gradient norm, apply the
optax transformation, and keep the old state when the loss or the gradient
norm is not finite, so that the loop can stop with the last good state and
checkpoint intact (`loop.NonFiniteLossError`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied
  params: Any
  opt_state: Any


def fresh(tx, params) -> TrainState:
  """Step 0: `params` and a new optimizer state (traceable)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params))


def fresh_on(tx, params, param_shardings, state_shardings,
             layout=None) -> TrainState:
  """Step 0 on the mesh, made by one compiled program (made eagerly, every
  zero leaf of a new shape compiles a program of its own). `params` is
  copied, never donated: steps donate the state, and `params` stays usable.

  `layout` (traceable) rearranges the params inside that program, e.g.
  `models.stack_blocks`; `param_shardings` are those of `params` as given.
  """
  params = jax.device_put(params, param_shardings, may_alias=False)
  arrange = layout or (lambda p: p)
  return jax.jit(lambda p: fresh(tx, arrange(p)),
                 out_shardings=state_shardings)(params)


def guarded_update(state: TrainState, grads, loss, tx):
  """Applies `grads` unless `loss` or their norm is not finite (in jit).

  Returns (state, metrics) with metrics {'loss', 'grad_norm' (before
  clipping), 'finite'}: finite is False when the old state was kept.
  """
  grad_norm = optax.tree.norm(grads)
  # A transformation that clips (`optim.clip_by_global_norm`) reuses the
  # norm instead of measuring it again; others ignore it.
  updates, opt_state = optax.with_extra_args_support(tx).update(
      grads, state.opt_state, state.params, grad_norm=grad_norm)
  new = TrainState(step=state.step + 1,
                   params=optax.apply_updates(state.params, updates),
                   opt_state=opt_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
  return state, {'loss': loss, 'grad_norm': grad_norm, 'finite': finite}
