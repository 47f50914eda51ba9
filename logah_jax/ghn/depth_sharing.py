"""One GHN-training program for every depth of an architecture.

Architectures that differ only in depth decode the same kinds of tensors
and run the same block: their programs differ in the number of blocks, in
which rows of the node embeddings each tensor is decoded from, and in the
fan-in scale of the residual projections (which depends on depth). So an
architecture of depth d <= D can run the program of its depth-D version
(its "program architecture"), given three numbers the program takes as
inputs instead of constants (its "layout"):

- node_rows: for each parameter node of the depth-D plan, the row of the
  architecture's own node embeddings to decode it from (blocks d..D-1, which
  the architecture does not have, read block 0's rows);
- slot_scales: for each tensor of the depth-D plan, the architecture's own
  fan-in scale;
- depth: d. The target runs its first d blocks (`layers.run_blocks`), the
  others are skipped by a conditional and get zero gradients, and the
  regulariser counts the first d blocks only.

Loss and gradients equal those of the architecture's own program; the extra
cost is decoding D - d blocks that are then dropped. GHN training pads each
architecture to the deepest depth its other fields take in the run's
candidates, so memory never exceeds what the deepest of them needs anyway.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

import numpy as np

from logah_jax import models
from logah_jax.ghn import plan as plan_lib
from logah_jax.ghn.config import GHNConfig


def _without_depth(arch):
  return dataclasses.replace(arch, depth=1)


def program_depths(archs: Iterable) -> dict:
  """{architecture with depth 1: the deepest depth among `archs`}."""
  out: dict = {}
  for a in archs:
    key = _without_depth(a)
    out[key] = max(out.get(key, 0), a.depth)
  return out


def program_arch(arch, depths: dict):
  """The architecture whose program `arch` runs: its version at the depth
  `depths` gives its other fields (`arch` itself when none, or deeper)."""
  depth = depths.get(_without_depth(arch), arch.depth)
  return arch if depth <= arch.depth else dataclasses.replace(arch,
                                                              depth=depth)


def _block_translation(arch, program):
  """Block name of `program` -> the block name of `arch` it reads."""
  mine, theirs = models.block_names(arch), models.block_names(program)
  return {name: mine[i if i < arch.depth else 0]
          for i, name in enumerate(theirs)}


def _recipe(sp: plan_lib.SlotPlan) -> plan_lib.SlotPlan:
  """A slot plan without what a layout supplies (path and scale)."""
  return dataclasses.replace(sp, slot=dataclasses.replace(sp.slot, path=()),
                             scale=0.0)


@functools.lru_cache(maxsize=4096)
def layout(cfg: GHNConfig, arch, program) -> tuple[np.ndarray, np.ndarray,
                                                   np.int32]:
  """(node_rows [P] int32, slot_scales [S] float32, depth) of `arch` for the
  plan of `program` (`program_arch`); see the module docstring.

  Raises ValueError when the two plans differ in more than those numbers.
  """
  if _without_depth(arch) != _without_depth(program) or (
      arch.depth > program.depth):
    raise ValueError(f'{arch.name} cannot run the program of {program.name}')
  own = plan_lib.make_plan(cfg, arch)
  by_path = {sp.slot.path: (p, sp) for p in own.nodes for sp in p.slots}
  translate = _block_translation(arch, program)
  rows, scales = [], []
  for p in plan_lib.make_plan(cfg, program).nodes:
    mine = None
    for sp in p.slots:
      path = (translate.get(sp.slot.path[0], sp.slot.path[0]),
              *sp.slot.path[1:])
      node, own_sp = by_path[path]
      if mine is None:
        mine = node
      if (node is not mine or node.request != p.request or
          node.key != p.key or _recipe(own_sp) != _recipe(sp)):
        raise ValueError(f'{arch.name} and {program.name} decode '
                         f'{"/".join(path)} differently')
      scales.append(own_sp.scale)
    rows.append(mine.node)
  return (np.asarray(rows, np.int32), np.asarray(scales, np.float32),
          np.int32(arch.depth))
