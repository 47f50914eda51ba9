"""What to decode for each node of an architecture, decided on the host.

For one (GHN config, architecture) pair this computes, from integers only:
each parameter node's decoding key (docs/algorithm.md §4.1), the part of
the decoded block its tensors need (rows and columns, so nothing else is
computed), and for each of its slots how the block becomes the Flax leaf:
slicing and tiling (§5.1), normalisation (§5.2) and the layout change. Nodes
with identical requests are grouped so that the decoder runs once per group.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from logah_jax.arch import configs
from logah_jax.arch import graph as graph_lib
from logah_jax.ghn.config import GHNConfig
from logah_jax.ghn.vocab import min_size


@dataclasses.dataclass(frozen=True)
class SlotPlan:
  """How one leaf is made from its node's decoded block.

  kind: 'matrix' (2-D), 'conv' (4-D kernel), 'pos' (ViT position embedding) or
    'vector' (1-D, `row` 0 = weights, 1 = biases of the decoded 2 x c block).
  norm: 'fan_in' (times `scale`), 'sigmoid', 'tanh' or 'none'.
  widen: for a target wider than the GHN's training architectures (fill
    'tile' or 'widen'), per reference axis (period, chunks): the axis is
    decoded at `period` (its size at the trained width) and repeated to the
    target size, each of `chunks` equal parts on its own; period 0: as
    decoded. Empty: no axis is widened.
  noise: std of the noise added to repeated entries, relative to the leaf's.
  """

  slot: graph_lib.Slot
  kind: str
  row: int = 0
  norm: str = 'none'
  scale: float = 1.0
  widen: tuple[tuple[int, int], ...] = ()
  noise: float = 0.0


@dataclasses.dataclass(frozen=True)
class Request:
  """One decoder call shape, shared by a group of nodes.

  mode: 'matrix' [rows, cols], 'conv' [rows*kh, cols*kw] viewed as 4-D,
    'vector' [2, c], 'classifier' and 'classifier_bias' (full-rank only).
  """

  mode: str
  rows: int
  cols: int
  kh: int = 1
  kw: int = 1


@dataclasses.dataclass(frozen=True)
class NodePlan:
  """A parameter node: its decoding key, request and slots.

  The key is the one the original code groups by (docs/algorithm.md §4.1).
  """

  node: int
  key: tuple[int, ...]
  request: Request
  slots: tuple[SlotPlan, ...]


@dataclasses.dataclass(frozen=True)
class ArchPlan:
  graph: graph_lib.ArchGraph
  nodes: tuple[NodePlan, ...]

  def groups(self) -> dict[Request, tuple[NodePlan, ...]]:
    out: dict[Request, list[NodePlan]] = {}
    for p in self.nodes:
      out.setdefault(p.request, []).append(p)
    return {k: tuple(v) for k, v in out.items()}


def _norm(cfg: GHNConfig, node: graph_lib.Node, slot: graph_lib.Slot,
          depth: int) -> tuple[str, float]:
  if not cfg.normalize:
    return 'none', 1.0
  if slot.role == 'norm_scale':
    return 'sigmoid', 1.0
  if slot.role in ('bias', 'norm_bias'):
    return 'tanh', 1.0
  if slot.role in ('embedding', 'pos_embedding'):
    return 'none', 1.0  # the original never rescales embeddings
  shape = slot.ref_shape
  # The original's gain: 1 for depthwise-like 4-D kernels, else 2 (ReLU).
  beta = 1.0 if len(shape) == 4 and (shape[1] == 1 or shape[2] < shape[3]) else 2.0
  scale = math.sqrt(beta / math.prod(shape[1:]))  # numel(p[0]), as [C]
  if node.is_residual_proj:
    scale /= math.sqrt(2 * depth)
  return 'fan_in', scale


def _input_axis(slot: graph_lib.Slot) -> int | None:
  """The axis a kernel's fan-in runs along in the reference layout: 0 for
  [in, out] kernels stored as Flax has them (HF Conv1D), else 1 ([out, in,
  ...]); None for lookups (embeddings), which no input is summed over."""
  if slot.path[-1] == 'embedding' or len(slot.ref_shape) < 2:
    return None
  return 0 if slot.to_flax is None else 1


def _widened(cfg: GHNConfig, sp: SlotPlan, target: graph_lib.Slot,
             widths: tuple[int, int]) -> SlotPlan:
  """`sp`, planned for the slot at the trained width, widened to `target`.

  'widen' repeats each of the equal parts of a fused axis (q, k, v of an
  attention input) separately and adds noise; both fills divide a kernel by
  how often its input is repeated, so that the fan-in normalisation holds
  for repeated (equal) inputs and a wider copy of a network computes what
  the network computes.
  """
  width, trained = widths
  axes = []
  for t, p in zip(target.ref_shape, sp.slot.ref_shape):
    if t == p:
      axes.append((0, 1))
      continue
    fused = t // width if t % width == 0 else 0
    chunks = fused if (cfg.fill == 'widen' and fused and
                       p == fused * trained) else 1
    axes.append((p, chunks))
  scale = sp.scale
  axis = _input_axis(target)
  if sp.norm == 'fan_in' and axis is not None and axes[axis][0]:
    scale *= axes[axis][0] / target.ref_shape[axis]
  noise = cfg.fill_noise if (cfg.fill == 'widen' and sp.kind != 'vector') \
      else 0.0
  return dataclasses.replace(sp, slot=target, scale=scale, widen=tuple(axes),
                             noise=noise)


def _node_plan(cfg: GHNConfig, index: int, node: graph_lib.Node,
               depth: int, proxy=None) -> NodePlan:
  """The plan of one node; `proxy`: (node at the trained width, (target
  width, trained width)) when the node is decoded at the trained width."""
  mc, mi, ms = cfg.max_shape[0], cfg.max_shape[1], cfg.max_shape[2]
  full = cfg.decoder == 'fullrank'
  target_node = node
  if proxy is not None:
    node, widths = proxy
    if node.shape == target_node.shape:
      proxy = None
  shape = node.shape
  slots = []
  if len(shape) == 1:  # norm weights + biases, or a bias: decoded as 2 x c
    c = min_size(shape[0], mc)
    mode = 'classifier_bias' if (node.is_classifier and full) else 'vector'
    if mode == 'classifier_bias':
      c = cfg.num_classes
    elif full:
      c = cfg.hid  # GHN-3's 1-D decoder always emits 2 x hid
    request = Request(mode, 2, c)
    key = (min_size(shape[0], mc), -1 if node.is_classifier else 0)
    for slot in node.slots:
      row = 0 if slot.role == 'norm_scale' else 1
      norm, scale = _norm(cfg, node, slot, depth)
      slots.append(SlotPlan(slot, 'vector', row, norm, scale))
  elif len(shape) == 2:
    t0, t1 = shape
    key = (min_size(t0, mc), min_size(t1, mi))
    key = key if node.is_classifier else key + (1, 1)
    if node.is_classifier and full:
      request = Request('classifier', cfg.num_classes, min(t1, mi))
    else:
      k0, k1 = min_size(t0, mc), min_size(t1, mi)
      request = Request('matrix', min(t0, k0), min(t1, k1))
    for slot in node.slots:
      norm, scale = _norm(cfg, node, slot, depth)
      slots.append(SlotPlan(slot, 'matrix', 0, norm, scale))
  elif len(shape) == 3:  # the ViT position embedding (1, S + 1, C)
    if shape[0] != 1 or math.isqrt(shape[1] - 1) ** 2 != shape[1] - 1:
      raise ValueError(f'node {node.name}: the decoder cannot place 3-D shape '
                       f'{shape}; only (1, S + 1, C) with a square S.')
    s, c = math.isqrt(shape[1] - 1), shape[2]
    key = (1, c, s, s)
    cols = min(c, mi) if full else c  # the low-rank decoder keeps C whole
    request = Request('conv', 1, cols, s, s)
    for slot in node.slots:
      slots.append(SlotPlan(slot, 'pos', 0, *_norm(cfg, node, slot, depth)))
  elif len(shape) == 4:
    t0, t1, th, tw = shape
    k0, k1 = min_size(t0, mc), min_size(t1, mi)
    # GHN-3 decodes at most max_shape's 16x16 pixels and the write-back
    # resizes larger kernels; LoGAH's low-rank decoder emits the whole
    # (rows * h) x (cols * w) kernel (bounded by max_ck, checked below).
    kh, kw = (min(th, ms), min(tw, cfg.max_shape[3])) if full else (th, tw)
    key = (k0, k1, th, tw)
    request = Request('conv', min(t0, k0), min(t1, k1), kh, kw)
    for slot in node.slots:
      norm, scale = _norm(cfg, node, slot, depth)
      slots.append(SlotPlan(slot, 'conv', 0, norm, scale))
  else:
    raise ValueError(f'node {node.name}: shape {shape} has rank {len(shape)}.')
  if not full:
    rows, cols = request.rows * request.kh, request.cols * request.kw
    if request.mode == 'vector':
      rows, cols = 2 * request.cols, 1
    if max(rows, cols) > cfg.max_ck:
      raise ValueError(f'node {node.name}: shape {shape} needs a {rows}x{cols}'
                       f' block, more than GHNConfig.max_ck={cfg.max_ck}.')
  if proxy is not None:
    slots = [_widened(cfg, sp, t, widths)
             for sp, t in zip(slots, target_node.slots)]
  return NodePlan(index, key, request, tuple(slots))


def _proxy_nodes(cfg: GHNConfig, arch, g: graph_lib.ArchGraph):
  """The nodes of `arch` at the GHN's trained width, when `cfg.fill`
  decodes a wider target there (docs/extrapolation.md); else None."""
  trained = cfg.trained_width
  if cfg.fill == 'decoder' or not trained or arch.width <= trained:
    return None
  proxy = graph_lib.to_graph(configs.at_width(arch, trained),
                             cutoff=cfg.cutoff)
  names = [n.name for n in g.nodes]
  if [n.name for n in proxy.nodes] != names:
    raise ValueError(f'{arch.name} and its trained-width version have '
                     'different graphs')
  return [(n, (arch.width, trained)) for n in proxy.nodes]


@functools.lru_cache(maxsize=4096)
def make_plan(cfg: GHNConfig, arch) -> ArchPlan:
  """The decode plan of `arch` for GHN `cfg` (cached: pure integer work)."""
  g = graph_lib.to_graph(arch, cutoff=cfg.cutoff)
  proxies = _proxy_nodes(cfg, arch, g) or [None] * len(g.nodes)
  nodes = tuple(_node_plan(cfg, i, n, arch.depth, proxies[i])
                for i, n in enumerate(g.nodes) if n.slots)
  return ArchPlan(g, nodes)


def tiled_periods(cfg: GHNConfig, arch) -> dict[tuple[str, str], int]:
  """{(module, param): period} of a GPT-2's predicted (vocab, width)
  matrices that repeat exactly over the vocabulary: the embedding `wte`,
  and `lm_head` when untied.

  LoGAH decodes such a matrix as a block of at most `min_size(vocab)` rows
  and tiles it (docs/algorithm.md §5.1): row i is row i mod period, unless
  a `widen` fill adds position-dependent noise. A matrix that one block
  covers, or that does not repeat exactly, is absent. GHN training then
  decodes the first period only (`first_periods`): the logits
  (`objective.task_loss`), the embedding lookup (`GPT2`'s
  `embedding_period`) and the regulariser (`objective.frobenius_sum`) need
  no more.
  """
  if cfg.decoder != 'lowrank' or not isinstance(arch, configs.GPT2Config):
    return {}
  out = {}
  for node in make_plan(cfg, arch).nodes:
    for sp in node.slots:
      if sp.slot.path not in (('wte', 'embedding'), ('lm_head', 'kernel')):
        continue
      vocab = sp.slot.ref_shape[0]  # (vocab, width) in the reference layout
      period = node.request.rows
      plain = not sp.noise and not (sp.widen and sp.widen[0][0])
      if (node.request.mode == 'matrix' and sp.kind == 'matrix' and plain
          and period < vocab):
        out[sp.slot.path] = period
  return out


def first_periods(plan: ArchPlan, periods: dict) -> ArchPlan:
  """`plan` with each matrix of `periods` (`tiled_periods`) written as its
  first period only, (period, width) in the reference layout: exactly the
  leading rows of the full leaf, which repeats them."""
  def cut(sp: SlotPlan) -> SlotPlan:
    if sp.slot.path not in periods:
      return sp
    shape = (periods[sp.slot.path],) + tuple(sp.slot.ref_shape[1:])
    return dataclasses.replace(
        sp, slot=dataclasses.replace(sp.slot, ref_shape=shape))
  return dataclasses.replace(plan, nodes=tuple(
      dataclasses.replace(n, slots=tuple(cut(sp) for sp in n.slots))
      for n in plan.nodes))


def vocab_period(cfg: GHNConfig, arch) -> int:
  """The period with which a GPT-2's predicted output layer (the tied
  embedding, or `lm_head`) repeats over the vocabulary, or 0 when it does
  not repeat exactly (`tiled_periods`)."""
  if not isinstance(arch, configs.GPT2Config):
    return 0
  path = ('wte', 'embedding') if arch.tie_embeddings else ('lm_head',
                                                           'kernel')
  return tiled_periods(cfg, arch).get(path, 0)
