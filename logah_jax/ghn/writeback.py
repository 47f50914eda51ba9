"""From node embeddings to a target's params pytree (traced, per architecture).

`decode_arch` runs the decoder once per request group of an ArchPlan and turns
each node's block into its Flax leaves: tile (docs/algorithm.md §5.1),
normalise (§5.2), change layout. The plan is static, so under jit this
compiles once per architecture; the result has exactly the structure, shapes
and dtypes of the target model's `init`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from logah_jax.ghn.config import GHNConfig
from logah_jax.ghn.decoders import FullRankDecoder, LowRankDecoder
from logah_jax.ghn.plan import ArchPlan, Request, SlotPlan

# The class-token row of a ViT position embedding has no node of its own. It
# gets the reference's own init, N(0, 0.02^2), from a fixed key: the same
# values on every call (the original draws fresh noise each time).
CLASS_POS_KEY = 0
CLASS_POS_STD = 0.02


def decoder_module(cfg: GHNConfig):
  if cfg.decoder == 'lowrank':
    return LowRankDecoder(cfg.hid, cfg.rank, cfg.max_ck, cfg.factorization)
  return FullRankDecoder(cfg.hid, cfg.max_shape[2], cfg.num_classes)


def _decode_group(cfg: GHNConfig, params, x, hidden, req: Request):
  """Blocks for one group: matrix [n,R,C], conv [n,R,C,kh,kw], vector [n,2,c]."""
  dec = decoder_module(cfg)
  call = lambda method, *a: dec.apply({'params': params}, *a, method=method)
  n = x.shape[0]
  if cfg.decoder == 'lowrank':
    rows, cols = req.rows * req.kh, req.cols * req.kw
    if req.mode == 'vector':
      rows, cols = 2 * req.cols, 1
    a, b = call(LowRankDecoder.factors, hidden, rows, cols)
    if req.mode == 'matrix':
      return a, b  # multiplied per leaf, after tiling the factors
    w = a @ b
    if req.mode == 'vector':
      return w.reshape(n, 2, req.cols)
    if req.mode == 'conv':
      w = w.reshape(n, req.rows, req.kh, req.cols, req.kw)
      return jnp.transpose(w, (0, 1, 3, 2, 4))
    return w
  if req.mode == 'vector':
    return call(FullRankDecoder.vector, x)
  if req.mode == 'classifier_bias':
    return call(FullRankDecoder.classifier_bias, x)
  if req.mode == 'classifier':
    return call(FullRankDecoder.classifier, x)[:, :req.rows, :req.cols]
  w = call(FullRankDecoder.conv, x, req.kh, req.kw)[:, :req.rows, :req.cols]
  return w[..., 0, 0] if req.mode == 'matrix' else w


def _tile(x, axis: int, size: int):
  """Repeat `x` along `axis` until it covers `size`, then cut.

  docs/algorithm.md §5.1.
  """
  have = x.shape[axis]
  if have >= size:
    return jax.lax.slice_in_dim(x, 0, size, axis=axis)
  reps = [1] * x.ndim
  reps[axis] = -(-size // have)
  return jax.lax.slice_in_dim(jnp.tile(x, reps), 0, size, axis=axis)


def _normalise(x, sp: SlotPlan):
  if sp.norm == 'fan_in':
    return x * sp.scale
  if sp.norm == 'sigmoid':
    return 2.0 * jax.nn.sigmoid(0.5 * x)
  if sp.norm == 'tanh':
    return jnp.tanh(0.2 * x)
  return x


def _lowrank_matrix(a, b, sp: SlotPlan):
  """A low-rank matrix leaf written by one product, in the Flax layout.

  Tiling A @ B equals A tiled along rows times B tiled along columns, so the
  tiled, normalised tensor is the product of [t0, r] and [r, t1] factors and
  no decoded block or tiled copy is ever materialised (docs/algorithm.md §5.1).
  """
  shape = sp.slot.ref_shape
  a = _tile(a, 0, shape[0])
  b = _tile(b, 1, shape[1])
  if sp.norm == 'fan_in':
    a = a * sp.scale
  if sp.slot.to_flax == (1, 0):
    return b.T @ a.T
  return sp.slot.to_flax_layout(a @ b)


def _leaf(block, sp: SlotPlan):
  """One reference-layout tensor from its node's block, then the Flax layout."""
  shape = sp.slot.ref_shape
  if isinstance(block, tuple):
    return _lowrank_matrix(*block, sp)
  if sp.kind == 'vector':
    x = _tile(block[sp.row], 0, shape[0])
  elif sp.kind == 'matrix':
    x = _tile(_tile(block, 0, shape[0]), 1, shape[1])
  elif sp.kind == 'conv':
    x = _tile(_tile(block, 0, shape[0]), 1, shape[1])
    if x.shape[2:] != tuple(shape[2:]):  # kernels larger than max_shape
      x = jax.image.resize(x, shape, 'bilinear')
  elif sp.kind == 'pos':  # block [1, C', s, s] -> (1, s*s + 1, C)
    c = shape[2]
    x = block.reshape(1, block.shape[1], -1).transpose(0, 2, 1)
    x = _tile(x, 2, c)
    cls_row = CLASS_POS_STD * jax.random.normal(
        jax.random.key(CLASS_POS_KEY), (1, 1, c), jnp.float32)
    x = jnp.concatenate([cls_row, x], axis=1)
  else:
    raise ValueError(f'unknown slot kind {sp.kind!r}')
  return sp.slot.to_flax_layout(_normalise(x, sp))


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def decode_arch(cfg: GHNConfig, decoder_params, x_ND, plan: ArchPlan,
                abstract_params) -> dict:
  """Params pytree of plan's architecture from its node embeddings [N, D].

  `abstract_params` (the target's eval_shape tree) supplies the leaves that
  are deliberately not predicted; they get the reference init (zeros).
  """
  x_ND = x_ND.astype(jnp.float32)
  groups = plan.groups()
  param_nodes = [p.node for p in plan.nodes]
  position = {node: i for i, node in enumerate(param_nodes)}
  hidden = None
  if cfg.decoder == 'lowrank':
    hidden = decoder_module(cfg).apply(
        {'params': decoder_params}, x_ND[jnp.array(param_nodes)],
        method=LowRankDecoder.hidden)
  tree: dict = {}
  for req, nodes in groups.items():
    idx = jnp.array([n.node for n in nodes])
    hid = None if hidden is None else hidden[
        jnp.array([position[n.node] for n in nodes])]
    blocks = _decode_group(cfg, decoder_params, x_ND[idx], hid, req)
    for j, node_plan in enumerate(nodes):
      block = (tuple(x[j] for x in blocks) if isinstance(blocks, tuple)
               else blocks[j])
      for sp in node_plan.slots:
        _set(tree, sp.slot.path, _leaf(block, sp))
  for path, _ in plan.graph.unpredicted:
    leaf = abstract_params
    for key in path:
      leaf = leaf[key]
    _set(tree, path, jnp.zeros(leaf.shape, leaf.dtype))
  return tree

