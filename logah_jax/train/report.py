"""What a user sees during a run: parameter table, progress bar, JSONL, plot.

Only the main process prints or writes; the other processes of a multi-host
run get no-op versions so the training loop needs no `if` around them.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Iterable

import numpy as np
from tqdm import tqdm

from logah_jax import files
from logah_jax import parallel

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'training_curves.png'


def _group_counts(params, depth: int) -> list[tuple[str, tuple, int]]:
  """(path prefix, tensors, parameters) per subtree `depth` levels deep."""
  rows: dict[str, list] = {}

  def walk(tree, path):
    if isinstance(tree, dict):
      for k in tree:
        walk(tree[k], path + (str(k),))
      return
    key = '/'.join(path[:depth])
    row = rows.setdefault(key, [0, 0])
    row[0] += 1
    row[1] += int(np.prod(np.shape(tree)))
  walk(params, ())
  return [(k, v[0], v[1]) for k, v in rows.items()]


def param_table(params, title: str, depth: int = 2) -> str:
  """A text table of parameter counts per module (`depth` levels deep)."""
  rows = _group_counts(params, depth)
  total = sum(r[2] for r in rows)
  width = max([len(r[0]) for r in rows] + [len('total')])
  lines = [title, f'{"module":<{width}}  {"tensors":>7}  {"params":>12}  share']
  for name, tensors, count in rows:
    lines.append(f'{name:<{width}}  {tensors:>7}  {count:>12,}  '
                 f'{100 * count / max(total, 1):5.1f}%')
  lines.append(f'{"total":<{width}}  {sum(r[1] for r in rows):>7}  '
               f'{total:>12,}')
  return '\n'.join(lines)


def say(*lines: str) -> None:
  """Prints on the main process only (stdout, flushed)."""
  if parallel.is_main_process():
    print(*lines, sep='\n', flush=True)


class Progress:
  """A tqdm bar with step, loss, architectures/s and ETA (main process)."""

  def __init__(self, total: int, initial: int, desc: str):
    self._bar = None
    if parallel.is_main_process():
      self._bar = tqdm(total=total, initial=initial, desc=desc,
                       dynamic_ncols=True, file=sys.stdout,
                       mininterval=1.0, smoothing=0.1, unit='step')

  def update(self, n: int = 1, **postfix) -> None:
    if self._bar is not None:
      self._bar.set_postfix(postfix, refresh=False)
      self._bar.update(n)

  def write(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class MetricsLog:
  """Appends one JSON object per line to `<workdir>/metrics.jsonl`.

  On resume from step s, lines of steps > s (written after the checkpoint the
  run resumed from) are dropped, so the file describes one consistent run and
  holds every logged step once. That rewrite is atomic, and it also drops a
  last line cut by a kill mid-append.
  """

  def __init__(self, workdir: str, resume_step: int = 0,
               name: str = METRICS_FILE):
    self.path = os.path.join(workdir, name)
    self._main = parallel.is_main_process()
    if self._main and os.path.exists(self.path):
      files.write_jsonl(self.path, [r for r in read_metrics(self.path)
                                    if r.get('step', 0) <= resume_step])

  def write(self, row: dict) -> None:
    if self._main:
      with open(self.path, 'a') as f:
        f.write(json.dumps(row, sort_keys=True) + '\n')


def read_metrics(path: str) -> list[dict]:
  """The rows of a metrics.jsonl file (see `files.read_jsonl`)."""
  return files.read_jsonl(path)


def plot_curves(rows: Iterable[dict], path: str, keys: tuple[str, ...],
                title: str) -> str | None:
  """A PNG with one panel per metric key over steps; returns its path."""
  rows = [r for r in rows if 'step' in r]
  keys = [k for k in keys if any(k in r for r in rows)]
  if not rows or not keys or not parallel.is_main_process():
    return None
  cols = min(3, len(keys))
  nrows = math.ceil(len(keys) / cols)
  # Imported here: matplotlib adds about 0.5 s to every job's start.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(4.2 * cols, 3.2 * nrows))
  axes = fig.subplots(nrows, cols, squeeze=False)
  for ax, key in zip(axes.flat, keys):
    pts = [(r['step'], r[key]) for r in rows
           if key in r and r[key] is not None and math.isfinite(r[key])]
    if pts:
      ax.plot(*zip(*pts), lw=1.2)
    ax.set_title(key)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis('off')
  fig.suptitle(title)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  return path
