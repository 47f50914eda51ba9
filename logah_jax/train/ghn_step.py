"""One GHN training step over m architectures, compiled without recompiles.

A step is three kinds of compiled program (DESIGN.md decision 5):

1. `body`: the Graphormer on the m graphs of the step, padded to one node
   bucket fixed for the whole run -> m node-embedding blocks [N, D]. Compiles
   once per run.
2. `arch`: for one architecture, its decoder + write-back + target forward +
   loss, differentiated with respect to the decoder params and the node block.
   Compiles once per (ArchConfig, arch group): a fixed pool of architectures
   bounds the count, whatever the number of steps.
3. `finish`: pulls the m node-block gradients back through the body with
   `jax.vjp`, averages, clips, applies AdamW, and keeps the old state when the
   loss or gradient norm is not finite. Compiles once per run.

Placement: the mesh may have an 'arch' axis; architecture b of a step runs on
group b % groups (a sub-mesh with its own 'data' axis over which the shared
batch is split), so different architectures run side by side on different
devices. GHN params and optimizer state are replicated on the whole mesh; the
per-architecture gradients come back to it for `finish`.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from logah_jax import ghn as ghn_lib
from logah_jax import parallel
from logah_jax.ghn.config import GHNConfig
from logah_jax.train import objective

_TRACES: collections.Counter = collections.Counter()


def trace_counts() -> dict[str, int]:
  """Traces (= compilations) of each GHN-training program so far."""
  return dict(_TRACES)


@flax.struct.dataclass
class GHNTrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied
  params: Any
  opt_state: Any


class GHNStep:
  """Callable `(state, archs, batch) -> (state, metrics)` for a fixed run.

  Args:
    cfg: the GHN.
    family: 'vit' or 'gpt2'.
    tx: the optax transformation (clipping included).
    mesh: from `parallel.make_mesh`; axes 'data' and optionally 'arch'.
    m: architectures per step.
    n_pad: node bucket every step pads to (`ArchSampler.node_bucket`).
    gamma: weight of the Frobenius regulariser (spec §8.1).
    label_smoothing: for ViT cross-entropy.
  """

  def __init__(self, cfg: GHNConfig, family: str, tx, mesh, *, m: int,
               n_pad: int, gamma: float = 3e-5, label_smoothing: float = 0.0):
    self.cfg, self.family, self.tx = cfg, family, tx
    self.mesh, self.m, self.n_pad = mesh, m, n_pad
    self.gamma, self.label_smoothing = float(gamma), float(label_smoothing)
    self.groups = parallel.arch_groups(mesh)
    self.replicated = parallel.replicated(mesh)
    self._body = self._compile_body()
    self._finish = self._compile_finish()

  # ------------------------------------------------------------------ state

  def init_state(self, params) -> GHNTrainState:
    """A fresh state (step 0) replicated on the mesh.

    The state is a copy: steps donate it, and `params` stays usable.
    """
    state = GHNTrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params))
    return jax.device_put(state, self.replicated, may_alias=False)

  def abstract_state(self, params) -> GHNTrainState:
    """ShapeDtypeStructs (with shardings) of a state: the restore target."""
    abstract = jax.eval_shape(
        lambda p: GHNTrainState(step=jnp.zeros((), jnp.int32), params=p,
                                opt_state=self.tx.init(p)), params)
    return parallel.with_shardings(abstract, self.replicated)

  # --------------------------------------------------------------- programs

  def _compile_body(self):
    body = ghn_lib.body_function(self.cfg, self.family)

    def forward(body_params, inputs):
      _TRACES['body'] += 1
      x = body(body_params, inputs)
      return tuple(x[b] for b in range(x.shape[0]))
    return jax.jit(forward, out_shardings=self.replicated)

  @functools.lru_cache(maxsize=None)
  def _arch_program(self, arch, group: int):
    """value-and-grad of one architecture's loss, compiled on its group."""
    decode = ghn_lib.decode_function(self.cfg, arch)
    n = ghn_lib.num_nodes(self.cfg, arch)
    gamma, smoothing = self.gamma, self.label_smoothing

    def loss_fn(decoder_params, x_ND, batch):
      predicted = decode(decoder_params, x_ND[:n])
      ce, logits, targets = objective.task_loss(arch, predicted, batch,
                                                smoothing)
      reg = objective.frobenius_sum(predicted)
      acc = objective.correct(logits, targets) / targets.size
      return ce + gamma * reg, {'ce': ce, 'reg': reg, 'acc': acc}

    def program(decoder_params, x_ND, batch):
      _TRACES['arch'] += 1
      (_, aux), (g_dec, g_x) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(decoder_params, x_ND, batch)
      return g_dec, g_x, aux

    mesh = self.groups[group]
    rep = parallel.replicated(mesh)
    return jax.jit(program, in_shardings=(rep, rep, parallel.data_sharded(mesh)),
                   out_shardings=rep)

  def _compile_finish(self):
    body = ghn_lib.body_function(self.cfg, self.family)
    tx, gamma = self.tx, self.gamma

    def finish(state: GHNTrainState, inputs, g_xs, g_decs, auxes):
      _TRACES['finish'] += 1
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
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      new = GHNTrainState(step=state.step + 1, params=params,
                          opt_state=opt_state)
      state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
      metrics = dict(aux, loss=loss, grad_norm=grad_norm, finite=ok)
      return state, metrics

    return jax.jit(finish, out_shardings=self.replicated, donate_argnums=0)

  # ------------------------------------------------------------------- step

  def inputs(self, archs: Sequence):
    """Host-side GHN inputs of the step's graphs, on the mesh."""
    x = ghn_lib.make_inputs(self.cfg, self.family, archs, self.n_pad)
    return jax.device_put(x, self.replicated)

  def __call__(self, state: GHNTrainState, archs: Sequence, batch):
    """One update. `batch` is a host (numpy) batch shared by all archs.

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
    outs = []
    for b, arch in enumerate(archs):
      g = b % n_groups
      mesh = self.groups[g]
      if g not in group_data:
        rep = parallel.replicated(mesh)
        group_data[g] = (jax.device_put(state.params['decoder'], rep),
                         parallel.shard_batch(mesh, batch))
      decoder_params, shared_batch = group_data[g]
      x_b = jax.device_put(xs[b], parallel.replicated(mesh))
      outs.append(self._arch_program(arch, g)(decoder_params, x_b,
                                              shared_batch))
    outs = jax.device_put(outs, self.replicated)
    g_decs, g_xs, auxes = (tuple(o[i] for o in outs) for i in range(3))
    return self._finish(state, inputs, g_xs, g_decs, auxes)


def batch_rows_check(batch_size: int, mesh) -> None:
  """The global batch must split evenly over each arch group's 'data' axis."""
  per_group = parallel.arch_groups(mesh)[0].shape[parallel.DATA]
  if batch_size % per_group:
    raise ValueError(f'data.batch_size={batch_size} is not divisible by the '
                     f"{per_group} devices of the mesh's '{parallel.DATA}' axis")


def host_metrics(metrics) -> dict[str, float]:
  """Device metrics -> python floats (one transfer)."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
