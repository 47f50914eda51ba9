"""Architecture graphs (docs/algorithm.md §1-§3) and their dense batching."""

import collections
import importlib.util

import jax
import numpy as np
import pytest

from logah_jax import arch
from logah_jax.arch import graph as graph_lib

SPACES = ('vits-1k', 'vits-1k-imagenet', 'gpts-1k', 'vits-cpu', 'gpts-cpu')
SEED = 0
# The models package is written alongside; a namespace package (no
# __init__.py yet) has no origin.
_MODELS_SPEC = importlib.util.find_spec('logah_jax.models')
_HAVE_MODELS = _MODELS_SPEC is not None and _MODELS_SPEC.origin is not None


def _sampled(space, n=200):
  return sorted(set(arch.sample(space, n, SEED)), key=lambda c: c.name)


# ---------------------------------------------------------------- templates

# Counts of the original code's graphs (docs/algorithm.md §1). GPT-2 edge
# counts follow from its template: 5 (untied) / 4 (tied) stem edges, 15 per
# block, 1 into ln_f.
COUNTS = {
    'vit-s/2': (152, 175), 'vit-s/16': (152, 175), 'vit-b/2': (152, 175),
    'vit-b/16': (152, 175), 'vit-l/2': (296, 343), 'vit-l/16': (296, 343),
    'gpt2-small-untied': (162, 186), 'gpt2-small': (161, 185),
    'gpt2-medium': (317, 365), 'gpt2-large': (473, 545),
}


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_named_node_and_edge_counts(name):
  g = arch.to_graph(arch.named(name))
  assert (g.n_nodes, g.n_edges) == COUNTS[name]
  assert g.graph.n_node.tolist() == [g.n_nodes]
  assert g.graph.n_edge.tolist() == [g.n_edges]


@pytest.mark.parametrize('name, expected', [
    ('vit-b/16', dict(conv=50, bias=50, ln=25, sum=25, pos_enc=1, input=1)),
    ('gpt2-small', dict(conv=49, bias=48, ln=25, sum=25, msa=12, pos_enc=1,
                        input=1)),
    ('gpt2-small-untied', dict(conv=49, bias=48, ln=25, sum=25, msa=12,
                               pos_enc=2, input=1)),
])
def test_op_type_counts(name, expected):
  g = arch.to_graph(arch.named(name))
  assert collections.Counter(n.op for n in g.nodes) == expected
  assert [arch.OP_TYPES[i] for i in g.op_ids] == [n.op for n in g.nodes]


@pytest.mark.parametrize('space', SPACES)
def test_sampled_node_count_formulas(space):
  for cfg in _sampled(space):
    g = arch.to_graph(cfg)
    if cfg.family == 'vit':
      assert (g.n_nodes, g.n_edges) == (12 * cfg.depth + 8, 14 * cfg.depth + 7)
    else:
      tied = int(cfg.tie_embeddings)
      assert (g.n_nodes, g.n_edges) == (13 * cfg.depth + 6 - tied,
                                        15 * cfg.depth + 6 - tied)


def test_op_table_is_the_ppuda_order():
  assert len(arch.OP_TYPES) == 15
  assert arch.OP_INDEX['conv'] == 4 and arch.OP_INDEX['input'] == 9
  assert arch.OP_INDEX['pos_enc'] == 13 and arch.OP_INDEX['glob_avg'] == 14


@pytest.mark.parametrize('name', ['vit-s/2', 'gpt2-small', 'gpt2-small-untied'])
def test_structure_of_the_ends(name):
  cfg = arch.named(name)
  g = arch.to_graph(cfg)
  assert g.nodes[0].op == 'input' and g.nodes[0].shape is None
  assert np.all(g.senders < g.receivers)  # topological order
  assert len(set(n.name for n in g.nodes)) == g.n_nodes
  classifiers = [n.name for n in g.nodes if n.is_classifier]
  residual = [n.name for n in g.nodes if n.is_residual_proj]
  if cfg.family == 'vit':
    assert classifiers == ['heads.head.weight', 'heads.head.bias']
    assert [n.name for n in g.nodes[-2:]] == classifiers
    assert residual == []
  else:
    assert classifiers == [] and g.nodes[-1].name == 'transformer.ln_f.weight'
    assert len(residual) == 2 * cfg.depth
    assert all(r.endswith('c_proj.weight') for r in residual)
    assert 'transformer.h.3.attn.c_proj.weight' in residual


def test_lm_head_node_tied_and_untied():
  tied = arch.to_graph(arch.named('gpt2-small'))
  untied = arch.to_graph(arch.named('gpt2-small-untied'))
  idx = {n.name: i for i, n in enumerate(untied.nodes)}
  head = idx['lm_head.weight']
  assert untied.nodes[head].op == 'conv'
  assert untied.in_degree[head] == 1 and untied.out_degree[head] == 0
  assert untied.dist[0, head] == 1 and not untied.dist[head].any()
  tidx = {n.name: i for i, n in enumerate(tied.nodes)}
  assert 'transformer.wte.weight' not in tidx
  shared = tied.nodes[tidx['lm_head.weight']]
  assert shared.op == 'conv' and shared.shape == (50257, 768)
  assert [s.path for s in shared.slots] == [('wte', 'embedding')]
  assert shared.slots[0].to_flax is None
  add = tidx['transformer.add_embed']
  assert tied.dist[tidx['lm_head.weight'], add] == 1
  assert tied.dist[tidx['transformer.wpe.weight'], add] == 1


# ---------------------------------------------------------------- distances


def _bfs_dist(n, senders, receivers, cutoff):
  """Independent reference: BFS from every node over the direct edges."""
  succ = [[] for _ in range(n)]
  for s, r in zip(senders.tolist(), receivers.tolist()):
    succ[s].append(r)
  out = np.zeros((n, n), np.int64)
  for src in range(n):
    seen, frontier, depth = {src}, [src], 0
    while frontier and depth < cutoff:
      depth += 1
      nxt = []
      for u in frontier:
        for v in succ[u]:
          if v not in seen:
            seen.add(v)
            nxt.append(v)
            out[src, v] = depth
      frontier = nxt
  return out


@pytest.mark.parametrize('name, cutoff', [
    ('vit-s/2', 250), ('gpt2-small-untied', 250), ('gpt2-small', 7),
    ('vit-l/16', 50), ('vit-s/16', 3)])
def test_dist_matches_bfs(name, cutoff):
  g = arch.to_graph(arch.named(name), cutoff=cutoff)
  assert g.dist.dtype == np.int16 and g.cutoff == cutoff
  np.testing.assert_array_equal(
      g.dist, _bfs_dist(g.n_nodes, g.senders, g.receivers, cutoff))
  assert not np.tril(g.dist).any()  # upper-triangular, zero diagonal
  direct = np.zeros_like(g.dist, bool)
  direct[g.senders, g.receivers] = True
  np.testing.assert_array_equal(g.dist == 1, direct)
  assert g.dist.max() <= cutoff


def test_max_path_lengths_and_cutoff_truncation():
  # docs/algorithm.md §1: ViT-S max shortest path 32, ViT-L 56 (cut by
  # cutoff 50).
  assert arch.to_graph(arch.named('vit-s/2')).dist.max() == 32
  full = arch.to_graph(arch.named('vit-l/16'))
  cut = arch.to_graph(arch.named('vit-l/16'), cutoff=50)
  assert full.dist.max() == 56 and cut.dist.max() == 50
  long = full.dist > 50
  assert long.any() and not cut.dist[long].any()
  np.testing.assert_array_equal(cut.dist[~long], full.dist[~long])


def test_degrees_and_input_distance():
  g = arch.to_graph(arch.named('vit-s/2'))
  np.testing.assert_array_equal(g.in_degree, np.bincount(g.receivers,
                                                         minlength=152))
  np.testing.assert_array_equal(g.out_degree, (g.dist == 1).sum(1))
  np.testing.assert_array_equal(g.in_degree, (g.dist == 1).sum(0))
  assert g.in_degree.dtype == np.int32 and g.input_dist.dtype == np.int32
  np.testing.assert_array_equal(g.input_dist, g.dist[0])
  ops = [n.op for n in g.nodes]
  assert all(g.in_degree[i] == 2 for i, op in enumerate(ops) if op == 'sum')
  pos = ops.index('pos_enc')
  assert g.in_degree[pos] == 0 and g.input_dist[pos] == 0
  assert g.out_degree[-1] == 0 and g.input_dist[-1] == 30
  gpt = arch.to_graph(arch.named('gpt2-small-untied'))
  assert gpt.out_degree[0] == 3 and gpt.input_dist[1] == gpt.input_dist[2] == 1


def test_shapes4d():
  assert graph_lib.shape_to_4d(None) == (0, 0, 0, 0)
  assert graph_lib.shape_to_4d((7,)) == (7, 1, 1, 1)
  assert graph_lib.shape_to_4d((5, 6)) == (5, 6, 1, 1)
  assert graph_lib.shape_to_4d((2, 3, 4)) == (2, 3, 4, 1)
  assert graph_lib.shape_to_4d((1, 1, 4)) == (1, 1, 4, 1)
  assert graph_lib.shape_to_4d((8, 3, 2, 2)) == (8, 3, 2, 2)
  for name, width, side in [('vit-s/2', 384, 16), ('vit-b/16', 768, 14)]:
    cfg = arch.named(name)
    g = arch.to_graph(cfg)
    by_name = {n.name: i for i, n in enumerate(g.nodes)}
    pos = by_name['encoder.pos_embedding']
    assert g.nodes[pos].shape == (1, side**2 + 1, width)
    assert g.shapes4d[pos].tolist() == [1, width, side, side]
    assert g.shapes4d[0].tolist() == [0, 0, 0, 0]
    qkv = by_name['encoder.layers.encoder_layer_0.self_attention.'
                  'in_proj_weight']
    assert g.shapes4d[qkv].tolist() == [3 * width, width, 1, 1]
    assert g.shapes4d[1].tolist() == [width, 3, cfg.patch, cfg.patch]
  gpt = arch.to_graph(arch.named('gpt2-small'))
  idx = {n.name: i for i, n in enumerate(gpt.nodes)}
  assert gpt.shapes4d[idx['transformer.h.0.attn.c_attn.weight']].tolist() == [
      768, 2304, 1, 1]  # HF Conv1D enters as (in, out)
  np.testing.assert_array_equal(gpt.graph.nodes['shape'], gpt.shapes4d)
  np.testing.assert_array_equal(gpt.graph.nodes['op'], gpt.op_ids)


# ---------------------------------------------------------------- ownership


def _expected_params(cfg):
  """The fixed Flax params layout, as abstract leaves (used until the models
  package exists, and to pin that layout independently of it)."""
  leaf = lambda *s: jax.ShapeDtypeStruct(s, np.float32)
  dense = lambda i, o, bias=True: (
      {'kernel': leaf(i, o), 'bias': leaf(o)} if bias else
      {'kernel': leaf(i, o)})
  norm = lambda c: {'scale': leaf(c), 'bias': leaf(c)}
  if cfg.family == 'vit':
    c, p = cfg.width, cfg.patch
    tree = {'conv_proj': {'kernel': leaf(p, p, cfg.channels, c),
                          'bias': leaf(c)},
            'class_token': leaf(1, 1, c),
            'pos_embedding': leaf(1, cfg.seq_len, c),
            'ln': norm(c), 'head': dense(c, cfg.num_classes)}
    for i in range(cfg.depth):
      tree[f'encoder_layer_{i}'] = {
          'ln_1': norm(c), 'ln_2': norm(c),
          'self_attention': {'in_proj': dense(c, 3 * c),
                             'out_proj': dense(c, c)},
          'mlp': {'fc1': dense(c, cfg.mlp_dim), 'fc2': dense(cfg.mlp_dim, c)}}
    return tree
  d, v = cfg.width, cfg.vocab_size
  tree = {'wte': {'embedding': leaf(v, d)},
          'wpe': {'embedding': leaf(cfg.n_positions, d)}, 'ln_f': norm(d)}
  if not cfg.tie_embeddings:
    tree['lm_head'] = dense(d, v, bias=False)
  for i in range(cfg.depth):
    tree[f'h_{i}'] = {
        'ln_1': norm(d), 'ln_2': norm(d),
        'attn': {'c_attn': dense(d, 3 * d), 'c_proj': dense(d, d)},
        'mlp': {'c_fc': dense(d, 4 * d), 'c_proj': dense(4 * d, d)}}
  return tree


def _leaf_shapes(tree):
  return {tuple(k.key for k in path): tuple(x.shape)
          for path, x in jax.tree.leaves_with_path(tree)}


def _check_ownership(cfg, params):
  g = arch.to_graph(cfg)
  leaves = _leaf_shapes(params)
  owned = g.owned_paths()
  assert len(owned) == len(set(owned)), 'a leaf is owned twice'
  unpredicted = [p for p, _ in g.unpredicted]
  assert set(owned).isdisjoint(unpredicted)
  assert sorted(owned + tuple(unpredicted)) == sorted(leaves)
  for node in g.nodes:
    for slot in node.slots:
      assert slot.flax_shape == leaves[slot.path], (node.name, slot)
      assert slot.role in graph_lib.ROLES
    if node.slots:
      assert node.shape == node.slots[0].ref_shape
    if node.op == 'ln':
      assert [s.role for s in node.slots] == ['norm_scale', 'norm_bias']


def _all_configs():
  named = [arch.named(n) for n in arch.names()]
  return sorted(set(named + [c for s in SPACES for c in _sampled(s)]),
                key=lambda c: c.name)


def test_ownership_against_the_fixed_layout():
  for cfg in _all_configs():
    _check_ownership(cfg, _expected_params(cfg))


@pytest.mark.slow  # traces every named model, GPT-2-L included (~100 s)
@pytest.mark.skipif(not _HAVE_MODELS, reason='logah_jax.models not there yet')
def test_ownership_against_models_abstract_params():
  from logah_jax import models  # pylint: disable=g-import-not-at-top
  for cfg in _all_configs():
    _check_ownership(cfg, models.abstract_params(cfg))


def test_vit_class_token_is_the_only_unpredicted_leaf():
  assert [p for p, _ in arch.to_graph(arch.named('vit-s/2')).unpredicted] == [
      ('class_token',)]
  assert arch.to_graph(arch.named('gpt2-small')).unpredicted == ()


def test_slot_to_flax_layout():
  g = arch.to_graph(arch.named('vit-s/2'))
  conv = g.nodes[1].slots[0]
  assert conv.ref_shape == (384, 3, 2, 2) and conv.to_flax == (2, 3, 1, 0)
  x = np.arange(384 * 12, dtype=np.float32).reshape(384, 3, 2, 2)
  y = conv.to_flax_layout(x)
  assert y.shape == (2, 2, 3, 384) and y[1, 0, 2, 5] == x[5, 2, 1, 0]
  bias = g.nodes[2].slots[0]
  assert bias.to_flax is None and bias.to_flax_layout(x) is x


def test_errors_and_caching():
  with pytest.raises(ValueError, match='dict'):
    arch.to_graph({'depth': 2})
  with pytest.raises(ValueError, match='cutoff'):
    arch.to_graph(arch.named('vit-s/2'), cutoff=0)
  cfg = arch.named('gpt2-small')
  assert arch.to_graph(cfg) is arch.to_graph(cfg, cutoff=250)
  with pytest.raises(ValueError):
    arch.to_graph(cfg).dist[0, 1] = 5  # cached arrays are read-only


# ---------------------------------------------------------------- batching


def test_bucket_size():
  assert [arch.bucket_size(n) for n in (1, 64, 65, 152, 296, 473, 512)] == [
      64, 64, 128, 256, 512, 512, 512]
  assert arch.bucket_size(513) == 768 and arch.bucket_size(1000) == 1024
  with pytest.raises(ValueError, match='n='):
    arch.bucket_size(0)


def test_batch_graphs_pads_and_masks():
  graphs = [arch.to_graph(c) for c in
            (arch.named('vit-s/2'), arch.sample('gpts-cpu', 1, SEED)[0])]
  batch = arch.batch_graphs(graphs)
  n = [g.n_nodes for g in graphs]
  assert batch.n_pad == 256 and batch.batch_size == 2
  assert batch.op_ids.shape == (2, 256) and batch.shapes4d.shape == (2, 256, 4)
  assert batch.dist.shape == (2, 256, 256)
  for field in ('op_ids', 'shapes4d', 'dist', 'in_degree', 'out_degree',
                'input_dist', 'n_nodes'):
    assert getattr(batch, field).dtype == np.int32, field
  assert batch.node_mask.dtype == bool
  assert batch.n_nodes.tolist() == n
  for i, g in enumerate(graphs):
    k = n[i]
    assert batch.node_mask[i].sum() == k and batch.node_mask[i, :k].all()
    np.testing.assert_array_equal(batch.dist[i, :k, :k], g.dist)
    np.testing.assert_array_equal(batch.shapes4d[i, :k], g.shapes4d)
    np.testing.assert_array_equal(batch.op_ids[i, :k], g.op_ids)
    np.testing.assert_array_equal(batch.input_dist[i, :k], g.input_dist)
    np.testing.assert_array_equal(batch.in_degree[i, :k], g.in_degree)
    np.testing.assert_array_equal(batch.out_degree[i, :k], g.out_degree)
    for arr in (batch.op_ids, batch.shapes4d, batch.in_degree,
                batch.out_degree, batch.input_dist, batch.node_mask):
      assert not arr[i, k:].any()
    assert not batch.dist[i, k:].any() and not batch.dist[i, :, k:].any()
  # A pytree: it goes through jax.tree functions and into jit.
  assert len(jax.tree.leaves(batch)) == 8
  total = jax.jit(lambda b: b.node_mask.sum())(batch)
  assert int(total) == sum(n)


def test_batch_graphs_explicit_n_pad_and_errors():
  g = arch.to_graph(arch.named('gpt2-small'))
  assert arch.batch_graphs([g], n_pad=200).dist.shape == (1, 200, 200)
  assert arch.batch_graphs([g, g]).n_pad == 256
  with pytest.raises(ValueError, match='n_pad=100'):
    arch.batch_graphs([g], n_pad=100)
  with pytest.raises(ValueError, match='empty'):
    arch.batch_graphs([])
