"""Computational graphs of target networks, built from explicit templates.

The original LoGAH code traces a PyTorch forward pass and filters the autograd
graph. We do not trace: the graphs of the two families are fixed by their
configs, so they are written down directly (docs/algorithm.md §1) and checked
against the measured node/edge counts in tests. Every parameter-carrying node
names the leaves of the Flax params pytree it owns (`Slot`), together with the
reference (PyTorch / Hugging Face) layout the hypernetwork predicts and the axes
permutation that turns that layout into the Flax one.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import jraph
import numpy as np
from scipy.sparse import csgraph, csr_matrix

from logah_jax.arch.configs import ArchConfig, GPT2Config, ViTConfig
from logah_jax.validation import check_int

# Index = row of the op-type embedding table, in the ppuda order
# (docs/algorithm.md §1).
OP_TYPES = ('max_pool', 'avg_pool', 'sep_conv', 'dil_conv', 'conv', 'msa',
            'cse', 'sum', 'concat', 'input', 'bias', 'bn', 'ln', 'pos_enc',
            'glob_avg')
OP_INDEX = {op: i for i, op in enumerate(OP_TYPES)}

ROLES = ('weight', 'bias', 'norm_scale', 'norm_bias', 'embedding',
         'pos_embedding')

_LINEAR = (1, 0)        # torch nn.Linear (out, in) -> flax Dense (in, out)
_CONV = (2, 3, 1, 0)    # torch Conv2d OIHW -> flax Conv HWIO

_VIT_UNPREDICTED = (
    (('class_token',), 'not in the reference graph; kept at the torchvision '
                       'init (zeros)'),)


@dataclasses.dataclass(frozen=True)
class Slot:
  """One leaf of the target's params pytree, as owned by a graph node.

  The GHN predicts `ref_shape` (the reference layout, so that its shape
  features match the original code); `to_flax` moves it into the Flax layout.
  """

  path: tuple[str, ...]
  role: str
  ref_shape: tuple[int, ...]
  to_flax: tuple[int, ...] | None = None

  @property
  def flax_shape(self) -> tuple[int, ...]:
    if self.to_flax is None:
      return self.ref_shape
    return tuple(self.ref_shape[a] for a in self.to_flax)

  def to_flax_layout(self, x):
    """A reference-layout array `x` rearranged into the Flax leaf's layout."""
    return x if self.to_flax is None else jnp.transpose(x, self.to_flax)


@dataclasses.dataclass(frozen=True)
class Node:
  """One operation of the graph; parameter-free ops have no slots."""

  name: str
  op: str
  shape: tuple[int, ...] | None
  slots: tuple[Slot, ...] = ()
  is_classifier: bool = False
  is_residual_proj: bool = False


def shape_to_4d(shape: tuple[int, ...] | None) -> tuple[int, int, int, int]:
  """The 4-D form of a stored tensor shape seen by the encoder.

  docs/algorithm.md §2.
  """
  if shape is None:
    return (0, 0, 0, 0)
  if len(shape) == 1:
    return (shape[0], 1, 1, 1)
  if len(shape) == 2:
    return (shape[0], shape[1], 1, 1)
  if len(shape) == 3:
    if shape[0] == 1 and shape[1] > 1 and shape[2] > 1:  # ViT pos-emb
      s = math.isqrt(shape[1])
      return (1, shape[2], s, s)
    return (shape[0], shape[1], shape[2], 1)
  if len(shape) == 4:
    return tuple(shape)
  raise ValueError(f'shape={shape} has rank {len(shape)}; expected 1 to 4.')


def _readonly(x: np.ndarray) -> np.ndarray:
  x.setflags(write=False)  # graphs are cached and shared between callers
  return x


@dataclasses.dataclass(frozen=True, eq=False)
class ArchGraph:
  """A target network as a DAG in topological order, node 0 = input.

  `dist` is the distance matrix of docs/algorithm.md §1: 1 on direct edges
  i->j, the shortest directed path length l for 2 <= l <= cutoff, else 0
  (diagonal 0).
  """

  cfg: ArchConfig
  nodes: tuple[Node, ...]
  senders: np.ndarray
  receivers: np.ndarray
  op_ids: np.ndarray
  shapes4d: np.ndarray
  dist: np.ndarray
  in_degree: np.ndarray
  out_degree: np.ndarray
  input_dist: np.ndarray
  graph: jraph.GraphsTuple
  unpredicted: tuple[tuple[tuple[str, ...], str], ...]
  cutoff: int

  @property
  def n_nodes(self) -> int:
    return len(self.nodes)

  @property
  def n_edges(self) -> int:
    return int(self.senders.shape[0])

  def owned_paths(self) -> tuple[tuple[str, ...], ...]:
    """Every params path some node predicts, in node order."""
    return tuple(s.path for n in self.nodes for s in n.slots)


class _Builder:
  """Appends nodes in topological order and records their direct edges."""

  def __init__(self):
    self.nodes: list[Node] = []
    self.edges: list[tuple[int, int]] = []

  def add(self, name, op, shape=None, slots=(), inputs=(), **flags) -> int:
    idx = len(self.nodes)
    for src in inputs:
      if not 0 <= src < idx:
        raise AssertionError(f'edge {src}->{idx} ({name}) is not topological')
      self.edges.append((src, idx))
    self.nodes.append(Node(name, op, None if shape is None else tuple(shape),
                           tuple(slots), **flags))
    return idx

  def linear(self, name, path, out_f, in_f, src, **flags):
    """torch nn.Linear weight then bias: two chained nodes sharing `flags`."""
    w = self.add(f'{name}.weight', 'conv', (out_f, in_f),
                 [Slot(path + ('kernel',), 'weight', (out_f, in_f), _LINEAR)],
                 [src], **flags)
    return self.add(f'{name}.bias', 'bias', (out_f,),
                    [Slot(path + ('bias',), 'bias', (out_f,))], [w], **flags)

  def conv1d(self, name, path, in_f, out_f, src, **flags):
    """HF Conv1D weight (stored (in, out), as Flax) then bias; `flags` mark
    the weight only (GPT-2 scales the residual projection weights)."""
    w = self.add(f'{name}.weight', 'conv', (in_f, out_f),
                 [Slot(path + ('kernel',), 'weight', (in_f, out_f))], [src],
                 **flags)
    return self.add(f'{name}.bias', 'bias', (out_f,),
                    [Slot(path + ('bias',), 'bias', (out_f,))], [w])

  def layer_norm(self, name, path, width, src):
    """One `ln` node owning both the scale and the bias.

    docs/algorithm.md §1.
    """
    return self.add(f'{name}.weight', 'ln', (width,), [
        Slot(path + ('scale',), 'norm_scale', (width,)),
        Slot(path + ('bias',), 'norm_bias', (width,))], [src])


def _vit_nodes(cfg: ViTConfig) -> _Builder:
  b, c, p = _Builder(), cfg.width, cfg.patch
  inp = b.add('input', 'input')
  w = b.add('conv_proj.weight', 'conv', (c, cfg.channels, p, p),
            [Slot(('conv_proj', 'kernel'), 'weight', (c, cfg.channels, p, p),
                  _CONV)], [inp])
  bias = b.add('conv_proj.bias', 'bias', (c,),
               [Slot(('conv_proj', 'bias'), 'bias', (c,))], [w])
  pos_shape = (1, cfg.seq_len, c)
  pos = b.add('encoder.pos_embedding', 'pos_enc', pos_shape,
              [Slot(('pos_embedding',), 'pos_embedding', pos_shape)])
  prev = b.add('encoder.add_pos', 'sum', inputs=[bias, pos])
  for i in range(cfg.depth):
    name, path = f'encoder.layers.encoder_layer_{i}', (f'encoder_layer_{i}',)
    att = path + ('self_attention',)
    ln1 = b.layer_norm(f'{name}.ln_1', path + ('ln_1',), c, prev)
    w = b.add(f'{name}.self_attention.in_proj_weight', 'conv', (3 * c, c),
              [Slot(att + ('in_proj', 'kernel'), 'weight', (3 * c, c),
                    _LINEAR)], [ln1])
    bias = b.add(f'{name}.self_attention.in_proj_bias', 'bias', (3 * c,),
                 [Slot(att + ('in_proj', 'bias'), 'bias', (3 * c,))], [w])
    out = b.linear(f'{name}.self_attention.out_proj', att + ('out_proj',),
                   c, c, bias)
    sum_a = b.add(f'{name}.add_attn', 'sum', inputs=[prev, out])
    ln2 = b.layer_norm(f'{name}.ln_2', path + ('ln_2',), c, sum_a)
    mlp = path + ('mlp',)
    hid = b.linear(f'{name}.mlp.0', mlp + ('fc1',), cfg.mlp_dim, c, ln2)
    out = b.linear(f'{name}.mlp.3', mlp + ('fc2',), c, cfg.mlp_dim, hid)
    prev = b.add(f'{name}.add_mlp', 'sum', inputs=[sum_a, out])
  ln = b.layer_norm('encoder.ln', ('ln',), c, prev)
  b.linear('heads.head', ('head',), cfg.num_classes, c, ln,
           is_classifier=True)
  return b


def _gpt2_nodes(cfg: GPT2Config) -> _Builder:
  b, d, v = _Builder(), cfg.width, cfg.vocab_size
  inp = b.add('input', 'input')
  if cfg.tie_embeddings:
    # The reference sees the shared tensor once, as the lm_head Linear
    # weight (type conv), feeding the embedding sum (docs/algorithm.md §1).
    tok = b.add('lm_head.weight', 'conv', (v, d),
                [Slot(('wte', 'embedding'), 'weight', (v, d))], [inp])
  else:
    tok = b.add('transformer.wte.weight', 'pos_enc', (v, d),
                [Slot(('wte', 'embedding'), 'embedding', (v, d))], [inp])
  pos = b.add('transformer.wpe.weight', 'pos_enc', (cfg.n_positions, d),
              [Slot(('wpe', 'embedding'), 'embedding',
                    (cfg.n_positions, d))], [inp])
  if not cfg.tie_embeddings:
    # Dangling: fed by the input only, no outgoing edge.
    b.add('lm_head.weight', 'conv', (v, d),
          [Slot(('lm_head', 'kernel'), 'weight', (v, d), _LINEAR)], [inp])
  prev = b.add('transformer.add_embed', 'sum', inputs=[tok, pos])
  for i in range(cfg.depth):
    name, path = f'transformer.h.{i}', (f'h_{i}',)
    ln1 = b.layer_norm(f'{name}.ln_1', path + ('ln_1',), d, prev)
    qkv = b.conv1d(f'{name}.attn.c_attn', path + ('attn', 'c_attn'), d,
                   3 * d, ln1)
    msa = b.add(f'{name}.attn.softmax', 'msa', inputs=[qkv])
    out = b.conv1d(f'{name}.attn.c_proj', path + ('attn', 'c_proj'), d, d,
                   msa, is_residual_proj=True)
    sum_a = b.add(f'{name}.add_attn', 'sum', inputs=[prev, out])
    ln2 = b.layer_norm(f'{name}.ln_2', path + ('ln_2',), d, sum_a)
    hid = b.conv1d(f'{name}.mlp.c_fc', path + ('mlp', 'c_fc'), d, 4 * d, ln2)
    out = b.conv1d(f'{name}.mlp.c_proj', path + ('mlp', 'c_proj'), 4 * d, d,
                   hid, is_residual_proj=True)
    prev = b.add(f'{name}.add_mlp', 'sum', inputs=[sum_a, out])
  b.layer_norm('transformer.ln_f', ('ln_f',), d, prev)
  return b


def _distances(n: int, senders: np.ndarray, receivers: np.ndarray,
               cutoff: int) -> np.ndarray:
  """All-pairs shortest directed path lengths, 0 where none within cutoff."""
  adj = csr_matrix((np.ones(len(senders), np.int8), (senders, receivers)),
                   shape=(n, n))
  sp = csgraph.shortest_path(adj, method='D', directed=True, unweighted=True)
  sp[~np.isfinite(sp) | (sp > cutoff)] = 0
  return sp.astype(np.int16)


@functools.lru_cache(maxsize=256)
def _build(cfg: ArchConfig, cutoff: int) -> ArchGraph:
  """Uncached graph construction; `to_graph` validates and caches."""
  b = _vit_nodes(cfg) if isinstance(cfg, ViTConfig) else _gpt2_nodes(cfg)
  nodes, n = tuple(b.nodes), len(b.nodes)
  edges = np.asarray(b.edges, np.int32).reshape(-1, 2)
  senders, receivers = edges[:, 0].copy(), edges[:, 1].copy()
  op_ids = np.asarray([OP_INDEX[nd.op] for nd in nodes], np.int32)
  shapes4d = np.asarray([shape_to_4d(nd.shape) for nd in nodes], np.int64)
  dist = _distances(n, senders, receivers, cutoff)
  in_degree = np.bincount(receivers, minlength=n).astype(np.int32)
  out_degree = np.bincount(senders, minlength=n).astype(np.int32)
  input_dist = dist[0].astype(np.int32)
  arrays = [_readonly(a) for a in (senders, receivers, op_ids, shapes4d, dist,
                                   in_degree, out_degree, input_dist)]
  senders, receivers, op_ids, shapes4d = arrays[:4]
  graph = jraph.GraphsTuple(
      nodes={'op': op_ids, 'shape': shapes4d}, edges=None, senders=senders,
      receivers=receivers, globals=None, n_node=np.array([n], np.int32),
      n_edge=np.array([len(senders)], np.int32))
  unpredicted = _VIT_UNPREDICTED if isinstance(cfg, ViTConfig) else ()
  return ArchGraph(cfg=cfg, nodes=nodes, senders=senders, receivers=receivers,
                   op_ids=op_ids, shapes4d=shapes4d, dist=arrays[4],
                   in_degree=arrays[5], out_degree=arrays[6],
                   input_dist=arrays[7], graph=graph, unpredicted=unpredicted,
                   cutoff=cutoff)


def to_graph(cfg: ArchConfig, cutoff: int = 250) -> ArchGraph:
  """The graph of `cfg` with virtual edges up to `cutoff` hops (cached).

  One cutoff is used for training and evaluation alike (see
  docs/algorithm.md §8); the returned arrays are read-only because the graph
  is shared via the cache.
  """
  if not isinstance(cfg, (ViTConfig, GPT2Config)):
    raise ValueError(f'to_graph: config type {type(cfg).__name__} is unknown; '
                     'expected ViTConfig or GPT2Config.')
  return _build(cfg, check_int(cutoff, 'to_graph: cutoff'))
