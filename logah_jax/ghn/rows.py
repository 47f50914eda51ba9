"""Static row selections and width classes for the traced decoder.

A per-architecture program reads many fixed sets of rows: a request group's
nodes, a recipe's rows of its group's output, a stacked leaf's rows. Read as
gathers, their gradients are scatters, which XLA's CPU backend compiles and
runs as loops of their own; `take_rows` reads them as a few (strided)
slices instead, whose gradients are pads. `width_classes` splits the
requests that share one product of the decoder's last layer into a few
products, each only as wide as its widest member reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def runs(rows: list[int]) -> list[tuple[int, int, int]]:
  """`rows` as (start, stop, step) runs of evenly spaced, increasing rows,
  each as long as it goes, left to right."""
  out, i = [], 0
  while i < len(rows):
    step = rows[i + 1] - rows[i] if i + 1 < len(rows) else 1
    j = i + 1
    while step > 0 and j < len(rows) and rows[j] - rows[j - 1] == step:
      j += 1
    out.append((rows[i], rows[j - 1] + 1, step if j > i + 1 else 1))
    i = j
  return out


def take_rows(x, rows, max_runs: int = 3):
  """`x[rows]` for static `rows`: slices, strided if need be, where they are
  at most `max_runs` runs of evenly spaced rows (a recipe's nodes and
  leaves are one per block, evenly spaced), else a gather."""
  rows = [int(r) for r in rows]
  if rows == list(range(x.shape[0])):
    return x
  parts = runs(rows)
  if len(parts) > max_runs:
    return x[np.asarray(rows, np.int32)]
  parts = [jax.lax.slice_in_dim(x, start, stop, stride=step)
           for start, stop, step in parts]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def width_classes(items: list[tuple[int, int]],
                  max_classes: int) -> list[list[int]]:
  """Split `items`, (width, rows) pairs, into at most `max_classes` classes
  with the least total rows x (widest width of its class): the cost of one
  product per class, each as wide as its widest member. Returns the
  classes' item indices, widest class first, each widest item first.

  Some optimal split is always a run of the items sorted by width (give
  every item to the narrowest class wide enough for it), so a dynamic
  programme over those runs finds it.
  """
  if max_classes < 1:
    raise ValueError(f'max_classes must be >= 1, got {max_classes}')
  order = sorted(range(len(items)), key=lambda i: (-items[i][0], i))
  n = len(order)
  rows_to = np.cumsum([0] + [items[i][1] for i in order])
  cost = lambda i, j: items[order[i]][0] * int(rows_to[j] - rows_to[i])
  # best[k][j]: the least cost of the first j sorted items in k classes.
  inf = float('inf')
  best = [[0.0] + [inf] * n]
  cut = [[0] * (n + 1)]
  for k in range(1, min(max_classes, n) + 1):
    row, at = [inf] * (n + 1), [0] * (n + 1)
    for j in range(1, n + 1):
      for i in range(k - 1, j):
        c = best[k - 1][i] + cost(i, j)
        if c < row[j]:
          row[j], at[j] = c, i
    best.append(row)
    cut.append(at)
  k = min(range(1, len(best)), key=lambda k: (best[k][n], k)) if n else 0
  classes, j = [], n
  while k > 0:
    i = cut[k][j]
    classes.append([order[m] for m in range(i, j)])
    j, k = i, k - 1
  return classes[::-1]
