"""Dense, padded batches of architecture graphs for the Graphormer.

The Graphormer attends over all node pairs, so it runs on dense `[B, N, N]`
distance matrices rather than on edge lists. Padding every batch to one of a
few fixed node counts keeps the number of distinct input shapes (and therefore
of XLA compilations) small while architectures of different depths are mixed.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import numpy as np

from logah_jax.arch.graph import ArchGraph
from logah_jax.validation import check_int

NODE_BUCKETS = (64, 128, 256, 512)
_BEYOND = 256  # past the last bucket, pad to a multiple of this


def bucket_size(n: int) -> int:
  """The padded node count for a graph of `n` nodes.

  The smallest bucket that holds `n`; past 512 the next multiple of 256, so
  even very deep targets add only a few extra shapes.
  """
  check_int(n, 'bucket_size: n')
  for bucket in NODE_BUCKETS:
    if n <= bucket:
      return bucket
  return -(-int(n) // _BEYOND) * _BEYOND


@flax.struct.dataclass
class DenseGraphBatch:
  """B graphs padded to N nodes; padded entries are 0 / False.

  A registered pytree, so it can be passed straight into jitted functions.
  """

  op_ids: np.ndarray       # [B, N] int32, row of the op-type table
  shapes4d: np.ndarray     # [B, N, 4] int32, docs/algorithm.md §2
  dist: np.ndarray         # [B, N, N] int32, docs/algorithm.md §1
  node_mask: np.ndarray    # [B, N] bool, True on real nodes
  in_degree: np.ndarray    # [B, N] int32, direct edges only
  out_degree: np.ndarray   # [B, N] int32, direct edges only
  input_dist: np.ndarray   # [B, N] int32, = dist[:, 0]
  n_nodes: np.ndarray      # [B] int32

  @property
  def batch_size(self) -> int:
    return self.op_ids.shape[0]

  @property
  def n_pad(self) -> int:
    return self.op_ids.shape[1]


def batch_graphs(graphs: Sequence[ArchGraph],
                 n_pad: int | None = None) -> DenseGraphBatch:
  """Stacks `graphs` into one dense batch padded to `n_pad` nodes.

  Args:
    graphs: the graphs, in the order of the batch axis.
    n_pad: padded node count; defaults to `bucket_size` of the largest graph.

  Returns:
    A DenseGraphBatch of host numpy arrays.
  """
  graphs = list(graphs)
  if not graphs:
    raise ValueError('batch_graphs: graphs is empty.')
  largest = max(g.n_nodes for g in graphs)
  if n_pad is None:
    n_pad = bucket_size(largest)
  else:
    check_int(n_pad, 'batch_graphs: n_pad')
  for i, g in enumerate(graphs):
    if g.n_nodes > n_pad:
      raise ValueError(
          f'batch_graphs: graph {i} ({g.cfg.name}) has {g.n_nodes} nodes, '
          f'more than n_pad={n_pad}.')
  b = len(graphs)
  op_ids = np.zeros((b, n_pad), np.int32)
  shapes4d = np.zeros((b, n_pad, 4), np.int32)
  dist = np.zeros((b, n_pad, n_pad), np.int32)
  node_mask = np.zeros((b, n_pad), bool)
  in_degree = np.zeros((b, n_pad), np.int32)
  out_degree = np.zeros((b, n_pad), np.int32)
  input_dist = np.zeros((b, n_pad), np.int32)
  n_nodes = np.zeros((b,), np.int32)
  for i, g in enumerate(graphs):
    n = g.n_nodes
    op_ids[i, :n] = g.op_ids
    shapes4d[i, :n] = g.shapes4d
    dist[i, :n, :n] = g.dist
    node_mask[i, :n] = True
    in_degree[i, :n] = g.in_degree
    out_degree[i, :n] = g.out_degree
    input_dist[i, :n] = g.input_dist
    n_nodes[i] = n
  return DenseGraphBatch(op_ids=op_ids, shapes4d=shapes4d, dist=dist,
                         node_mask=node_mask, in_degree=in_degree,
                         out_degree=out_degree, input_dist=input_dist,
                         n_nodes=n_nodes)
