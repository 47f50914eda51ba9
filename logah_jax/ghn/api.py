"""Public GHN functions: init, num_params, predict.

Prediction is two compiled steps. The body (embeddings + Graphormer) runs on a
dense padded batch of graphs and compiles once per (batch size, node bucket).
Decoding runs per architecture on that architecture's own node embeddings
(see `decode`: on CPUs with programs compiled once per tensor shape, on
accelerators with one program per architecture); a batch of different-sized
architectures therefore gives each exactly its solo prediction, and a
repeated architecture never recompiles. `trace_counts()` reports the
compilations.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from logah_jax import arch as arch_lib
from logah_jax import compiles
from logah_jax import models
from logah_jax import prng
from logah_jax.arch import batching
from logah_jax.ghn import per_shape as per_shape_lib
from logah_jax.ghn import plan as plan_lib
from logah_jax.ghn import vocab
from logah_jax.ghn.config import GHNConfig
from logah_jax.ghn.graphormer import GHNBody, TorchDense
from logah_jax.ghn.writeback import decode_arch, decoder_module
from logah_jax.models import block_init
from logah_jax.validation import ConfigError



def trace_counts() -> dict[str, int]:
  """How often each compiled GHN function was traced (= compiled) so far."""
  return compiles.trace_counts('ghn')


@flax.struct.dataclass
class GHNInputs:
  """What the GHN body reads from a batch of graphs ([B, N] unless noted)."""

  op_ids: jax.Array
  shape_idx: jax.Array  # [B, N, 4] rows of the channel/spatial tables
  dist: jax.Array       # [B, N, N]
  node_mask: jax.Array
  in_degree: jax.Array
  out_degree: jax.Array
  input_dist: jax.Array


def _tables(cfg: GHNConfig, family: str) -> tuple[int, int]:
  n_ch = len(vocab.channel_vocab(family, cfg.num_classes)) + 1
  n_sp = len(vocab.spatial_vocab(cfg.max_shape[3])) + 1
  return n_ch, n_sp


def _body_module(cfg: GHNConfig, family: str) -> GHNBody:
  n_ch, n_sp = _tables(cfg, family)
  return GHNBody(hid=cfg.hid, layers=cfg.layers, heads=cfg.heads,
                 n_channels=n_ch, n_spatial=n_sp, max_degree=cfg.max_degree,
                 max_input_dist=cfg.max_input_dist, final_ln=cfg.final_ln,
                 dtype=cfg.compute_dtype)


def make_inputs(cfg: GHNConfig, family: str, archs: Sequence,
                n_pad: int | None = None) -> GHNInputs:
  """Host-side: graphs of `archs` as one padded GHNInputs batch (numpy)."""
  graphs = [plan_lib.make_plan(cfg, a).graph for a in archs]
  batch = batching.batch_graphs(graphs, n_pad)
  b, n = batch.op_ids.shape
  shape_idx = np.zeros((b, n, 4), np.int32)
  for i, g in enumerate(graphs):
    shape_idx[i, :g.n_nodes] = vocab.shape_indices(
        g.shapes4d, family, cfg.num_classes, cfg.max_shape[3])
  return GHNInputs(op_ids=batch.op_ids, shape_idx=shape_idx, dist=batch.dist,
                   node_mask=batch.node_mask, in_degree=batch.in_degree,
                   out_degree=batch.out_degree, input_dist=batch.input_dist)


def _check_family(family: str):
  if family not in ('vit', 'gpt2'):
    raise ConfigError(f'GHN family={family!r} must be "vit" or "gpt2".')


@functools.lru_cache(maxsize=None)
def _init_fn(cfg: GHNConfig, family: str):
  """key -> fresh GHN params. The Graphormer layers, which differ only in
  their params' paths, share one compiled init program
  (`models.block_init`): a 12-layer body otherwise compiled 12 copies."""
  split = lambda key: jax.random.split(prng.fused_threefry(key), 4)
  body = _body_module(cfg, family)
  dummy = make_inputs(cfg, family, [_dummy_arch(family)])
  k_body = jax.eval_shape(lambda k: split(k)[0], jax.random.key(0))
  body_plan = block_init.Plan(body, (dummy,),
                              [f'layer_{i}' for i in range(cfg.layers)],
                              jax.ShapeDtypeStruct(k_body.shape, k_body.dtype))

  @jax.jit
  def rest(k_dec, k_1d, k_cls):
    compiles.count_trace('ghn.init')
    params = {'decoder': decoder_module(cfg).init(
        k_dec, *_decoder_init_args(cfg))['params']}
    if cfg.decoder == 'lowrank':
      # The original allocates these two Linear(1, 1) placeholders and never
      # uses them; the paper's counts include their 4 parameters.
      one = jnp.zeros((1, 1))
      params['decoder_1d'] = TorchDense(1).init(k_1d, one)['params']
      params['bias_class'] = TorchDense(1).init(k_cls, one)['params']
    return params

  def init(key):
    # jax.random's draws from `key`, one fused pass each (`prng`)
    k_body, k_dec, k_1d, k_cls = split(key)
    return {'body': block_init.run(body_plan, k_body),
            **rest(k_dec, k_1d, k_cls)}
  return init


def _decoder_init_args(cfg: GHNConfig):
  x = jnp.zeros((1, cfg.hid), jnp.float32)
  return (x, 1, 1) if cfg.decoder == 'lowrank' else (x,)


def _dummy_arch(family: str):
  if family == 'vit':
    return arch_lib.ViTConfig(depth=1, width=8, heads=1, mlp_dim=8, patch=2,
                          image_size=4, channels=1, num_classes=2)
  return arch_lib.GPT2Config(depth=1, width=8, heads=1, vocab_size=8,
                         n_positions=4)


def init(cfg: GHNConfig, family: str, seed: int = 0):
  """Fresh GHN parameters for targets of `family` ('vit' or 'gpt2')."""
  _check_family(family)
  return _init_fn(cfg, family)(jax.random.key(seed))


def num_params(cfg: GHNConfig, family: str,
               num_classes: int | None = None) -> int:
  """Parameters of the initialised GHN, counted from its (abstract) tree."""
  _check_family(family)
  if num_classes is not None:
    cfg = dataclasses.replace(cfg, num_classes=num_classes)
  tree = jax.eval_shape(_init_fn(cfg, family), jax.random.key(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _channel_rows(params) -> int:
  return params['body']['channel_embed']['embedding'].shape[0]


def family_of(cfg: GHNConfig, params) -> str:
  """The target family `params` were initialised for (its shape table size)."""
  rows = _channel_rows(params)
  for family in ('vit', 'gpt2'):
    if rows == _tables(cfg, family)[0]:
      return family
  raise ConfigError(f'GHN params have a channel table of {rows} rows, which '
                    f'matches neither family for this GHNConfig.')


def _family_for(cfg: GHNConfig, params, archs: Sequence) -> str:
  """The family to predict `archs` with: theirs when they share one, checked
  against the params' channel table, whose size alone can match the other
  family under another `num_classes`; else `family_of`."""
  families = {getattr(a, 'family', None) for a in archs}
  if len(families) != 1 or not families <= {'vit', 'gpt2'}:
    return family_of(cfg, params)
  family = families.pop()
  rows = _channel_rows(params)
  want = _tables(cfg, family)[0]
  if rows != want:
    other = 'gpt2' if family == 'vit' else 'vit'
    if rows == _tables(cfg, other)[0]:
      raise ConfigError(
          f'this GHN has a channel table of {rows} rows: that of {other} '
          f'targets under GHNConfig.num_classes={cfg.num_classes}, not of '
          f'{family} targets ({want}). It was built for family={other!r}, '
          'or under another num_classes.')
    raise ConfigError(
        f'GHN params have a channel table of {rows} rows; a GHN for {family} '
        f'targets with GHNConfig.num_classes={cfg.num_classes} has {want}: '
        'the params belong to another family or another GHNConfig.')
  return family


def body_function(cfg: GHNConfig, family: str):
  """The pure body: (params['body'], GHNInputs) -> [B, N, D] (not jitted)."""
  module = _body_module(cfg, family)
  return lambda body_params, inputs: module.apply({'params': body_params},
                                                   inputs)


def decode_function(cfg: GHNConfig, arch, stacked: bool = False,
                    with_layout: bool = False, first_period: bool = False):
  """The pure decoder of `arch`: (params['decoder'], x [n_nodes, D]) -> params.

  Not jitted: GHN training traces it inside its own per-architecture step,
  with `stacked` (the block params stacked, for `models.build(scan=True)`).
  `with_layout`: the function takes a third argument, the (node_rows,
  slot_scales) of `depth_sharing.layout`, and serves every architecture
  that runs `arch`'s program. `first_period`: the vocabulary matrices of
  `plan.tiled_periods` come back as their first period only, (period,
  width) rows of the embedding and (width, period) columns of `lm_head`.
  """
  plan = plan_lib.make_plan(cfg, arch)
  if first_period:
    plan = plan_lib.first_periods(plan, plan_lib.tiled_periods(cfg, arch))
  abstract = models.abstract_params(arch)
  stack = tuple(models.block_names(arch)) if stacked else ()
  if with_layout:
    return lambda decoder_params, x_ND, layout: decode_arch(
        cfg, decoder_params, x_ND, plan, abstract, stack, layout)
  return lambda decoder_params, x_ND: decode_arch(cfg, decoder_params, x_ND,
                                                  plan, abstract, stack)


def num_nodes(cfg: GHNConfig, arch) -> int:
  """Nodes of `arch`'s graph (rows of its node embeddings that decode reads)."""
  return plan_lib.make_plan(cfg, arch).graph.n_nodes


@functools.lru_cache(maxsize=None)
def _body_fn(cfg: GHNConfig, family: str):
  body_fn = body_function(cfg, family)

  def body(body_params, inputs):
    compiles.count_trace('ghn.body')
    return body_fn(body_params, inputs)
  return jax.jit(body)


def node_embeddings(cfg: GHNConfig, params, archs: Sequence,
                    n_pad: int | None = None) -> jax.Array:
  """[B, N, D] node embeddings of `archs` (padded to a node bucket)."""
  family = _family_for(cfg, params, archs)
  check_archs(cfg, family, archs)
  inputs = make_inputs(cfg, family, archs, n_pad)
  return _body_fn(cfg, family)(params['body'], inputs)


@functools.lru_cache(maxsize=4096)
def _decode_fn(cfg: GHNConfig, arch):
  decode_fn = decode_function(cfg, arch)

  def decode_program(decoder_params, x_ND):
    compiles.count_trace('ghn.decode')
    return decode_fn(decoder_params, x_ND)
  return jax.jit(decode_program)


def _per_shape_default() -> bool:
  return jax.default_backend() == 'cpu'


def decode(cfg: GHNConfig, params, arch, x_ND: jax.Array,
           per_shape: bool | None = None, ahead=None):
  """The params pytree of `arch` from its node embeddings [n_nodes, D].

  `per_shape` (default: on CPUs) runs programs compiled once per tensor
  shape (`per_shape.decode_arch_per_shape`): a cold GPT-2-Large prediction
  compiles in a third of the time, and a new architecture of known shapes
  compiles nothing, but each leaf is its own call. Otherwise one program per
  architecture, which runs faster once compiled (1.3x on a 2-core CPU for
  GPT-2-Large) and is the better choice on accelerators, where the ~440
  calls, not the compilation, dominate (docs/performance.md). `ahead`:
  the per-shape programs' `per_shape.compile_ahead`, if started already.
  """
  need = (num_nodes(cfg, arch), cfg.hid)
  if (len(x_ND.shape) != 2 or x_ND.shape[0] < need[0]
      or x_ND.shape[1] != need[1]):  # a short x would be read clamped
    raise ConfigError(f'decode: node embeddings of shape {x_ND.shape}; '
                      f'this {type(arch).__name__} needs at least {need[0]} '
                      f'rows of {need[1]} (num_nodes x GHNConfig.hid)')
  if per_shape is None:
    per_shape = _per_shape_default()
  if per_shape:
    return per_shape_lib.decode_arch_per_shape(
        cfg, params['decoder'], x_ND, plan_lib.make_plan(cfg, arch),
        models.abstract_params(arch), ahead)
  return _decode_fn(cfg, arch)(params['decoder'], x_ND)


def check_archs(cfg: GHNConfig, family: str, archs: Sequence):
  """Raises ConfigError for an ArchConfig this GHN cannot predict."""
  for a in archs:
    if getattr(a, 'family', None) != family:
      raise ConfigError(f'this GHN was built for family={family!r}; got an '
                        f'ArchConfig of family={getattr(a, "family", None)!r}'
                        f' ({a!r}).')
    try:
      plan_lib.make_plan(cfg, a)
    except ValueError as e:  # a shape the GHN cannot place
      raise ConfigError(str(e)) from e


def predict(cfg: GHNConfig, params, archs):
  """Predicted params for one ArchConfig, or a list for any iterable of
  them (an empty one gives []).

  Each result has exactly the tree structure, shapes and dtypes of
  `models.abstract_params(arch)`.
  """
  # an ArchConfig (or a string, refused below), not a collection
  single = hasattr(archs, 'family') or isinstance(archs, str)
  archs = [archs] if single else list(archs)
  if not archs:
    return []
  check_archs(cfg, _family_for(cfg, params, archs), archs)
  ahead = [None] * len(archs)
  if _per_shape_default():  # compiled while the GHN body compiles and runs
    pool = per_shape_lib.compile_thread()  # one for all: the cores are shared
    for b, a in enumerate(archs):
      x_ND = jax.ShapeDtypeStruct((num_nodes(cfg, a), cfg.hid), jnp.float32)
      ahead[b] = per_shape_lib.compile_ahead(
          cfg, params['decoder'], plan_lib.make_plan(cfg, a), x_ND, pool)
    pool.shutdown(wait=False)  # the thread ends when its queue is done
  out = []
  try:
    x = node_embeddings(cfg, params, archs)
    for b, a in enumerate(archs):
      out.append(decode(cfg, params, a, x[b, :num_nodes(cfg, a)],
                        ahead=ahead[b]))
  except BaseException:
    for started in ahead:
      if started is not None:
        started.cancel()
    raise
  return out[0] if single else out
