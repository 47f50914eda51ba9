"""Optimizers and learning-rate schedules from a config (GHN and targets).

The GHN recipe (docs/algorithm.md §6.2): AdamW with PyTorch's defaults (betas
0.9/0.999, eps 1e-8), weight decay 1e-2, global-norm clipping at 5, and a
cosine schedule after a linear warm-up. The original steps its schedule per
epoch; here it is per step, with the warm-up and the decay given in steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from logah_jax.validation import ConfigError, check_int

OPTIMIZERS = ('adamw', 'sgd')
SCHEDULES = ('cosine', 'constant')


def _check(cond: bool, field: str, value, what: str) -> None:
  if not cond:
    raise ConfigError(f'{field}={value!r} {what}')


def schedule(*, lr: float, num_steps: int, warmup_steps: int = 0,
             warmup_init: float = 0.0, end_lr: float = 0.0,
             kind: str = 'cosine', prefix: str = 'optim'):
  """Linear warm-up from warmup_init to lr, then cosine to end_lr (or flat)."""
  _check(kind in SCHEDULES, f'{prefix}.schedule', kind,
         f'must be one of {SCHEDULES}')
  _check(lr > 0, f'{prefix}.lr', lr, 'must be > 0')
  check_int(num_steps, f'{prefix}.num_steps')
  check_int(warmup_steps, f'{prefix}.warmup_steps', 0)
  _check(warmup_steps < num_steps, f'{prefix}.warmup_steps', warmup_steps,
         f'must be an int in [0, num_steps={num_steps})')
  _check(warmup_init >= 0, f'{prefix}.warmup_init', warmup_init,
         'must be >= 0')
  _check(end_lr >= 0, f'{prefix}.end_lr', end_lr, 'must be >= 0')
  if kind == 'constant':
    if not warmup_steps:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(warmup_init, lr, warmup_steps),
         optax.constant_schedule(lr)], [warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      init_value=warmup_init, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=num_steps, end_value=end_lr)


def clip_by_global_norm(
    max_norm: float) -> optax.GradientTransformationExtraArgs:
  """`optax.clip_by_global_norm` that can take the norm already measured.

  The train step measures the gradient's global norm anyway (a metric, and
  the finite-step guard of `state.guarded_update`), and passes it as the
  `grad_norm` extra argument; without it the norm is measured here. An
  H100 profile of a GPT-2-M step with optax's version showed about two small
  reduction kernels per leaf (about 710 for its 292; docs/performance.md).
  Same arithmetic and the same (empty) state as optax's. A given norm must be
  the norm of `updates`, so this is the chain's first transformation.
  """
  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    if grad_norm is None:
      grad_norm = optax.tree.norm(updates)
    keep = jnp.squeeze(grad_norm < max_norm)
    updates = jax.tree.map(
        lambda t: jax.lax.select(
            keep, t, (t / grad_norm.astype(t.dtype)) * max_norm), updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state,
                                               update)


def make_optimizer(opt, num_steps: int, prefix: str = 'optim'):
  """(optax transformation, schedule) from a config section `opt`.

  `opt` fields: name ('adamw' | 'sgd'), lr, schedule, warmup_steps,
  warmup_init, end_lr, weight_decay, clip_norm (0 = off), b1, b2, eps (adamw),
  momentum (sgd).
  """
  _check(opt.name in OPTIMIZERS, f'{prefix}.name', opt.name,
         f'must be one of {OPTIMIZERS}')
  lr = schedule(lr=opt.lr, num_steps=num_steps,
                warmup_steps=opt.warmup_steps, warmup_init=opt.warmup_init,
                end_lr=opt.end_lr, kind=opt.schedule, prefix=prefix)
  _check(opt.weight_decay >= 0, f'{prefix}.weight_decay', opt.weight_decay,
         'must be >= 0')
  _check(opt.clip_norm >= 0, f'{prefix}.clip_norm', opt.clip_norm,
         'must be >= 0 (0 turns clipping off)')
  if opt.name == 'adamw':
    for field in ('b1', 'b2'):
      _check(0 <= opt[field] < 1, f'{prefix}.{field}', opt[field],
             'must be in [0, 1)')
    _check(opt.eps > 0, f'{prefix}.eps', opt.eps, 'must be > 0')
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay)
  else:
    _check(0 <= opt.momentum < 1, f'{prefix}.momentum', opt.momentum,
           'must be in [0, 1) (0 = plain SGD)')
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(lr, momentum=opt.momentum or None))
  if opt.clip_norm:
    tx = optax.chain(clip_by_global_norm(opt.clip_norm), tx)
  return tx, lr
