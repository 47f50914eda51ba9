"""Plain-NumPy references for the GHN body and the write-back.

Each expected value is computed here with NumPy from the published
description (LoGAH, arXiv 2405.16287; GHN-3, arXiv 2303.04143;
docs/algorithm.md §2, §3, §5), never with the Flax modules: those are only
called for the actual values, and for LoGAH's factors A, B (whose own
reference is in tests/test_ghn_decoders.py). The inputs are chosen so that
the swaps these tests guard against (forward/backward distances, in/out
degrees, c_out/c_in and h/w, the layout permutations) change the result.
"""

import dataclasses
import functools
import types

import jax
import numpy as np
from scipy.special import erf

from logah_jax import arch, ghn
from logah_jax.arch import batching
from logah_jax.arch.graph import OP_TYPES
from logah_jax.ghn import vocab
from logah_jax.ghn.api import GHNInputs
from logah_jax.ghn.decoders import LowRankDecoder
from logah_jax.ghn.graphormer import EdgeBias, GHNBody, GraphormerLayer
from logah_jax.ghn.plan import make_plan

# One Graphormer layer; max_shape 16 makes the 32-wide ViT below tile on both
# axes; low caps on degree and input distance so that the 5-node graph below
# hits them.
CFG = ghn.named('logah-tiny', hid=16, heads=2, rank=4, layers=1,
                max_shape=(16, 16, 16, 16), max_ck=64, max_degree=2,
                max_input_dist=1)
# c_out=32 != c_in=3, mlp 64 != width 32: transposed layouts change shapes
# or values. seq_len 5 -> a 2x2 position grid plus the class token.
VIT = arch.ViTConfig(depth=1, width=32, heads=2, mlp_dim=64, patch=4,
                     image_size=8, channels=3, num_classes=10)


@functools.lru_cache(maxsize=None)
def _params(cfg):
  """Random GHN params of the right tree (every leaf N(0, 0.3^2), LayerNorm
  scales around 1), so that no LayerNorm or bias is an identity; built from
  the abstract tree, which is much faster here than compiling `ghn.init`."""
  abstract = jax.eval_shape(lambda: ghn.init(cfg, 'vit', seed=0))
  paths, treedef = jax.tree.flatten_with_path(abstract)
  rng = np.random.default_rng(0)
  leaves = []
  for path, leaf in paths:
    x = 0.3 * rng.standard_normal(leaf.shape).astype(np.float32)
    leaves.append(1.0 + x if path[-1].key == 'scale' else x)
  return jax.tree.unflatten(treedef, leaves)


# ------------------------------------------------------------ numpy pieces


def _np_distances(n, edges):
  """Shortest directed path lengths by repeated relaxation, 0 if none."""
  inf = 10**6
  d = np.full((n, n), inf)
  for s, r in edges:
    d[s, r] = 1
  for k in range(n):
    d = np.minimum(d, d[:, k:k + 1] + d[k:k + 1, :])
  np.fill_diagonal(d, 0)
  return np.where(d >= inf, 0, d).astype(np.int32)


def _layer_norm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_edge_bias(p, dist):
  """GHN-3's edge bias [H, N, N]: MLP of [E[fwd_ij]; E[bwd_ij]], bwd = fwd^T."""
  fwd = np.minimum(dist, 254) + 2
  bwd = fwd.T
  table = p['edge_embed']
  e = np.concatenate([table[fwd], table[bwd]], axis=-1)  # [N, N, 2D]
  h = np.maximum(e @ p['fc1_kernel'] + p['fc1_bias'], 0)
  bias = h @ p['fc2']['kernel'] + p['fc2']['bias']  # [N, N, H]
  return bias.transpose(2, 0, 1)


def _np_layer(p, x, bias, mask, heads):
  """Pre-LN block: x + Proj(MHA(LN1 x) + bias), then x + FC2(GELU(FC1(LN2)))."""
  n, d = x.shape
  s = d // heads
  qkv = _layer_norm(x, p['ln1']) @ p['qkv']['kernel']  # no bias
  q, k, v = (qkv[:, t * d:(t + 1) * d].reshape(n, heads, s) for t in range(3))
  logits = np.einsum('ihs,jhs->hij', q, k) / np.sqrt(s) + bias
  logits = np.where((mask[:, None] & mask[None, :])[None], logits, -2.0**15)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  out = np.einsum('hij,jhs->ihs', attn, v).reshape(n, d)
  x = x + out @ p['proj']['kernel'] + p['proj']['bias']
  h = _layer_norm(x, p['ln2']) @ p['fc1']['kernel'] + p['fc1']['bias']
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
  return x + h @ p['fc2']['kernel'] + p['fc2']['bias']


def _np_embeddings(p, op, shape_idx, deg_in, deg_out, in_dist, mask,
                   max_degree, max_input_dist):
  """docs/algorithm.md §2-§3: op + 4 shape chunks + degrees + input dist."""
  ch, sp = p['channel_embed']['embedding'], p['spatial_embed']['embedding']
  shape = np.concatenate([ch[shape_idx[:, 0]], ch[shape_idx[:, 1]],
                          sp[shape_idx[:, 2]], sp[shape_idx[:, 3]]], axis=-1)
  x = (p['op_embed']['embedding'][op] + shape
       + p['centrality_in']['embedding'][np.minimum(deg_in, max_degree)]
       + p['centrality_out']['embedding'][np.minimum(deg_out, max_degree)]
       + p['input_dist']['embedding'][np.minimum(in_dist, max_input_dist)])
  return x * mask[:, None]


def _embedding_body(cfg, body_params):
  """GHNBody stopped after the node embeddings (no layer, no final LN)."""
  return GHNBody(hid=cfg.hid, layers=0, heads=cfg.heads,
                 n_channels=body_params['channel_embed']['embedding'].shape[0],
                 n_spatial=body_params['spatial_embed']['embedding'].shape[0],
                 max_degree=cfg.max_degree, max_input_dist=cfg.max_input_dist,
                 final_ln=False)


# ---------------------------------------------------------------- 1. layer


def test_graphormer_layer_with_edge_bias_matches_numpy():
  """Layer 0 and its edge bias on a directed graph with one padded node.

  The graph is asymmetric (dist != dist^T), so reading the backward
  distance where the forward one belongs changes the bias; the last check
  makes sure this graph is able to tell them apart.
  """
  cfg = CFG
  body = _params(cfg)['body']
  edges = [(0, 1), (1, 2), (2, 3), (3, 5), (0, 4), (4, 5)]
  n_real, n = 6, 7
  dist = np.zeros((n, n), np.int32)
  dist[:n_real, :n_real] = _np_distances(n_real, edges)
  assert (dist != dist.T).any() and dist.max() >= 3
  mask = np.arange(n) < n_real
  x = np.asarray(jax.random.normal(jax.random.key(3), (n, cfg.hid)))

  bias = EdgeBias(cfg.hid, cfg.heads).apply(
      {'params': body['edge_bias']}, dist[None])
  got = GraphormerLayer(cfg.hid, cfg.heads).apply(
      {'params': body['layer_0']}, x[None], bias,
      (mask[:, None] & mask[None, :])[None])

  want_bias = _np_edge_bias(body['edge_bias'], dist)
  np.testing.assert_allclose(np.asarray(bias)[0], want_bias, rtol=1e-5,
                             atol=1e-6, err_msg='edge bias')
  want = _np_layer(body['layer_0'], x, want_bias, mask, cfg.heads)
  np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5, atol=1e-5,
                             err_msg='Graphormer layer')
  swapped = _np_layer(body['layer_0'], x,
                      _np_edge_bias(body['edge_bias'], dist.T), mask,
                      cfg.heads)
  assert not np.allclose(swapped[:n_real], want[:n_real], atol=1e-3)


# ------------------------------------------------- 2. degrees, input dist

G2_EDGES = [(0, 1)]
# Node 4 has in-degree 3 (> max_degree 2); nodes 3, 4 are 2 hops from the
# input (> max_input_dist 1): both caps are hit.
G5_EDGES = [(0, 1), (0, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4)]
G2_SHAPES = [(0, 0, 0, 0), (48, 16, 3, 5)]
G5_SHAPES = [(0, 0, 0, 0), (16, 3, 1, 1), (48, 16, 1, 1), (0, 0, 0, 0),
             (10, 1, 1, 1)]


def _fake_graph(ops, shapes, edges):
  """The fields batching.batch_graphs reads, built from an edge list."""
  n = len(ops)
  dist = _np_distances(n, edges)
  senders = np.array([s for s, _ in edges])
  receivers = np.array([r for _, r in edges])
  return types.SimpleNamespace(
      n_nodes=n, cfg=types.SimpleNamespace(name=f'{n}-node graph'),
      op_ids=np.array([OP_TYPES.index(o) for o in ops], np.int32),
      shapes4d=np.array(shapes, np.int64), dist=dist,
      in_degree=np.bincount(receivers, minlength=n).astype(np.int32),
      out_degree=np.bincount(senders, minlength=n).astype(np.int32),
      input_dist=dist[0].copy())


def test_degree_and_input_distance_embeddings_match_numpy():
  """A 2-node and a 5-node graph batched (padded to 8) into the body.

  Expected: E_in[min(in, max_degree)] + E_out[min(out, max_degree)] +
  E_dist[min(input_dist, max_input_dist)] on top of the op and shape
  embeddings, zero on padded nodes (GHN-3; docs/algorithm.md §3).
  """
  cfg = CFG
  body = _params(cfg)['body']
  g2 = _fake_graph(['input', 'conv'], G2_SHAPES, G2_EDGES)
  g5 = _fake_graph(['input', 'conv', 'conv', 'sum', 'bias'], G5_SHAPES,
                   G5_EDGES)
  np.testing.assert_array_equal(g5.in_degree, [0, 1, 1, 2, 3])
  np.testing.assert_array_equal(g5.out_degree, [2, 2, 2, 1, 0])
  np.testing.assert_array_equal(g5.input_dist, [0, 1, 1, 2, 2])
  batch = batching.batch_graphs([g2, g5], n_pad=8)
  shape_idx = np.zeros((2, 8, 4), np.int32)
  for i, g in enumerate((g2, g5)):
    shape_idx[i, :g.n_nodes] = vocab.shape_indices(
        g.shapes4d, 'vit', cfg.num_classes, cfg.max_shape[3])
  inputs = GHNInputs(op_ids=batch.op_ids, shape_idx=shape_idx,
                     dist=batch.dist, node_mask=batch.node_mask,
                     in_degree=batch.in_degree, out_degree=batch.out_degree,
                     input_dist=batch.input_dist)
  got = np.asarray(_embedding_body(cfg, body).apply({'params': body}, inputs))
  for i, g in enumerate((g2, g5)):
    n = g.n_nodes
    mask = np.arange(8) < n
    pad = lambda a: np.pad(a, [(0, 8 - n)] + [(0, 0)] * (a.ndim - 1))
    want = _np_embeddings(body, pad(g.op_ids), shape_idx[i],
                          pad(g.in_degree), pad(g.out_degree),
                          pad(g.input_dist), mask, cfg.max_degree,
                          cfg.max_input_dist)
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6,
                               err_msg=f'{n}-node graph')
    assert not np.any(got[i, n:]), 'padded nodes must embed to zero'


# ---------------------------------------------------------- 3. shape slots


def test_shape_encoder_slot_order_is_cout_cin_h_w():
  """Chunk k (d/4 wide) of a (48, 16, 3, 5) node is the table row of its
  k-th dimension: c_out, c_in from the channel table, h, w from the spatial
  table (GHN-3 ShapeEncoder; docs/algorithm.md §2).

  Rows written as literals: the ViT channel vocabulary starts
  [1, 3, 8, 10, 16, 24, 32, 40, 48, ...] (num_classes 10), the spatial one
  [1, 3, 5, ...]; a shapeless node gets the extra last row of each table.
  """
  cfg = CFG
  body = _params(cfg)['body']
  ch = body['channel_embed']['embedding']
  sp = body['spatial_embed']['embedding']
  shapes = np.array([(48, 16, 3, 5), (16, 48, 5, 3), (0, 0, 0, 0)])
  rows = np.array([(8, 4, 1, 2), (4, 8, 2, 1),
                   (ch.shape[0] - 1, ch.shape[0] - 1, sp.shape[0] - 1,
                    sp.shape[0] - 1)])
  np.testing.assert_array_equal(
      vocab.shape_indices(shapes, 'vit', cfg.num_classes, cfg.max_shape[3]),
      rows, err_msg='shape_indices')
  n = len(shapes)
  zeros = np.zeros((1, n), np.int32)
  op = np.full((1, n), OP_TYPES.index('conv'), np.int32)
  inputs = GHNInputs(op_ids=op, shape_idx=rows[None].astype(np.int32),
                     dist=np.zeros((1, n, n), np.int32),
                     node_mask=np.ones((1, n), bool), in_degree=zeros,
                     out_degree=zeros, input_dist=zeros)
  got = np.asarray(_embedding_body(cfg, body).apply({'params': body}, inputs))
  rest = (body['op_embed']['embedding'][op[0]]
          + body['centrality_in']['embedding'][0]
          + body['centrality_out']['embedding'][0]
          + body['input_dist']['embedding'][0])
  chunks = (got[0] - rest).reshape(n, 4, cfg.hid // 4)
  tables = (ch, ch, sp, sp)
  for node in range(n):
    for k, name in enumerate(('c_out', 'c_in', 'h', 'w')):
      np.testing.assert_allclose(
          chunks[node, k], tables[k][rows[node, k]], rtol=1e-5, atol=1e-6,
          err_msg=f'node {shapes[node].tolist()}: chunk {k} should be {name}')
  assert not np.allclose(chunks[0], chunks[1], atol=1e-3)


# --------------------------------------------------------- 4, 5. write-back


def _node(plan, path):
  return next(p.node for p in plan.nodes
              if any(s.slot.path == path for s in p.slots))


def _factors(cfg, params, x, node, rows, cols):
  """A [rows, r], B [r, cols] of one node (LowRankDecoder.factors)."""
  dec = LowRankDecoder(cfg.hid, cfg.rank, cfg.max_ck, cfg.factorization)
  p = {'params': params['decoder']}
  h = dec.apply(p, x[node:node + 1], method=LowRankDecoder.hidden)
  a, b = dec.apply(p, h, rows, cols, method=LowRankDecoder.factors)
  return np.asarray(a)[0], np.asarray(b)[0]


def _np_tile(x, axis, size):
  """docs/algorithm.md §5.1: whole copies of x along `axis`, then cut."""
  reps = -(-size // x.shape[axis])
  x = np.concatenate([x] * reps, axis=axis)
  return np.take(x, np.arange(size), axis=axis)


def _decoded(cfg):
  """(node embeddings, per-shape prediction, traced prediction) of VIT."""
  params = _params(cfg)
  n = ghn.num_nodes(cfg, VIT)
  x = ghn.node_embeddings(cfg, params, [VIT])[0, :n]
  return (params, x, ghn.decode(cfg, params, VIT, x, per_shape=True),
          ghn.decode(cfg, params, VIT, x, per_shape=False))


def test_conv_and_matrix_write_back_match_numpy():
  """Low-rank conv kernel and Dense kernels, rebuilt from A and B.

  Conv (LoGAH's ConvDecoder3LoRA): W = A @ B is (c_out*kh) x (c_in*kw) with
  K[o, c, y, x] = W[o*kh + y, c*kw + x]; tiled to (32, 3, 4, 4), scaled by
  sqrt(2 / (c_in*h*w)), then OIHW -> Flax HWIO. Matrices: W = A @ B tiled to
  the torch (out, in) shape, scaled by sqrt(2 / in), then -> Flax (in, out).
  """
  cfg = CFG
  params, x, per_shape, traced = _decoded(cfg)
  plan = make_plan(cfg, VIT)

  # Conv: c_out 32 decodes 16 rows (tiled twice), c_in 3 decodes 3; 4x4.
  kh = kw = 4
  a, b = _factors(cfg, params, x, _node(plan, ('conv_proj', 'kernel')),
                  16 * kh, 3 * kw)
  w = a @ b
  o, c, yy, xx = np.meshgrid(np.arange(16), np.arange(3), np.arange(kh),
                             np.arange(kw), indexing='ij')
  k_oihw = w[o * kh + yy, c * kw + xx]  # (16, 3, 4, 4)
  k_oihw = _np_tile(k_oihw, 0, 32) * np.sqrt(2 / (3 * kh * kw))
  want = np.einsum('oihw->hwio', k_oihw)
  for name, tree in (('per-shape', per_shape), ('traced', traced)):
    got = np.asarray(tree['conv_proj']['kernel'])
    assert got.shape == (4, 4, 3, 32), name
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=f'conv_proj kernel ({name})')

  # Matrices: (torch path, torch shape (out, in), decoded block rows, cols).
  layer = ('encoder_layer_0',)
  for path, (out_f, in_f), (r, c) in [
      (layer + ('mlp', 'fc1', 'kernel'), (64, 32), (16, 16)),
      (layer + ('mlp', 'fc2', 'kernel'), (32, 64), (16, 16)),
      (layer + ('self_attention', 'in_proj', 'kernel'), (96, 32), (16, 16)),
      (('head', 'kernel'), (10, 32), (10, 16))]:
    a, b = _factors(cfg, params, x, _node(plan, path), r, c)
    w = _np_tile(_np_tile(a @ b, 0, out_f), 1, in_f) * np.sqrt(2 / in_f)
    for name, tree in (('per-shape', per_shape), ('traced', traced)):
      got = tree
      for key in path:
        got = got[key]
      got = np.asarray(got)
      assert got.shape == (in_f, out_f), (path, name)
      np.testing.assert_allclose(got, w.T, rtol=1e-5, atol=1e-6,
                                 err_msg=f'{"/".join(path)} ({name})')


def test_position_embedding_write_back_matches_numpy():
  """ViT position embedding: the decoded [1, C, s, s] grid, token t = y*s + x
  at row 1 + t, after a class-token row 0.02 * N(0, 1) from key 0
  (docs/algorithm.md §5.3); embeddings are not rescaled.

  LoGAH keeps C whole, so the block is W = A @ B of 1*s rows and C*s columns
  with grid[c, y, x] = W[y, c*s + x].
  """
  cfg = CFG
  params, x, per_shape, traced = _decoded(cfg)
  plan = make_plan(cfg, VIT)
  s, c = 2, VIT.width
  a, b = _factors(cfg, params, x, _node(plan, ('pos_embedding',)), s, c * s)
  w = a @ b
  want = np.zeros((1, s * s + 1, c), np.float32)
  want[0, 0] = 0.02 * np.asarray(
      jax.random.normal(jax.random.key(0), (1, 1, c)))[0, 0]
  for y in range(s):
    for xx in range(s):
      want[0, 1 + y * s + xx] = w[y, np.arange(c) * s + xx]
  for name, tree in (('per-shape', per_shape), ('traced', traced)):
    got = np.asarray(tree['pos_embedding'])
    assert got.shape == (1, s * s + 1, c), name
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=f'pos_embedding ({name})')


def _np_widen(x, axis, size, period, chunks):
  """docs/algorithm.md §5.1 for a target wider than the GHN's training
  architectures: cut to the trained width's `period`, then each of its
  `chunks` equal parts repeated on its own up to size / chunks."""
  x = np.take(_np_tile(x, axis, period), np.arange(period), axis=axis)
  parts = np.split(x, chunks, axis=axis)
  return np.concatenate([_np_tile(p, axis, size // chunks) for p in parts],
                        axis=axis)


def test_widened_matrix_write_back_matches_numpy():
  """'widen' fill: a 32-wide ViT from a GHN trained up to width 16. The
  fused q, k, v projection repeats each of its three parts on its own, and
  so do fc1's rows and fc2's columns (the 4 x width MLP axis): each axis
  of torch's (out, in) follows its own plan, through the product that is
  written directly in Flax's transposed (in, out) layout."""
  # max_shape 128: blocks as large as the trained width's tensors, so that
  # the repeated parts differ (16-wide blocks would repeat alike).
  cfg = dataclasses.replace(CFG, trained_width=16, fill='widen',
                            fill_noise=0.0, max_shape=(128, 128, 16, 16),
                            max_ck=1024)
  params, x, per_shape, traced = _decoded(cfg)
  plan = make_plan(cfg, VIT)
  layer = ('encoder_layer_0',)
  checked = 0
  for path in (layer + ('self_attention', 'in_proj', 'kernel'),
               layer + ('mlp', 'fc1', 'kernel'),
               layer + ('mlp', 'fc2', 'kernel')):
    node_plan = next(p for p in plan.nodes
                     if any(s.slot.path == path for s in p.slots))
    sp = next(s for s in node_plan.slots if s.slot.path == path)
    req = node_plan.request
    a, b = _factors(cfg, params, x, node_plan.node, req.rows, req.cols)
    w = a @ b  # torch (out, in)
    for axis, size in enumerate(sp.slot.ref_shape):
      period, chunks = sp.widen[axis]
      w = _np_widen(w, axis, size, period, chunks) if period else _np_tile(
          w, axis, size)
      if chunks > 1:  # its parts differ: not one block repeated
        part = size // chunks
        first = lambda k, part=part, axis=axis: np.take(
            w, np.arange(k * part, k * part + period // chunks), axis=axis)
        assert not np.allclose(first(0), first(1)), path
        checked += 1
    want = (w * sp.scale).T  # Flax (in, out)
    for name, tree in (('per-shape', per_shape), ('traced', traced)):
      got = tree
      for key in path:
        got = got[key]
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6,
                                 err_msg=f'{"/".join(path)} ({name})')
  assert checked == 3  # each leaf has an axis repeated part by part
