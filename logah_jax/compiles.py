"""Compile accounting: XLA compilations and jit traces in this process.

`snapshot()` counts every backend compilation (every jit, eager ops
included) through `jax.monitoring`, so a run can log the count and a test can
assert that steady-state steps compile nothing. `count_trace(name)` is called
from inside the Python function of a jitted program, so it runs once per
trace; `trace_counts(prefix)` tells which programs traced how often (GHN
prediction, each GHN-training program, the fine-tuning step).
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import jax

_EVENT = '/jax/core/compile/backend_compile_duration'


@dataclasses.dataclass(frozen=True)
class Compiles:
  count: int
  seconds: float

  def __sub__(self, other: 'Compiles') -> 'Compiles':
    return Compiles(self.count - other.count, self.seconds - other.seconds)


_lock = threading.Lock()
_total = [0, 0.0]
_traces: collections.Counter = collections.Counter()


def _listener(event: str, duration: float, **_) -> None:
  if event == _EVENT:
    with _lock:
      _total[0] += 1
      _total[1] += duration


jax.monitoring.register_event_duration_secs_listener(_listener)


def snapshot() -> Compiles:
  """Compilations (and their seconds) since the process started."""
  with _lock:
    return Compiles(_total[0], _total[1])


def count_trace(name: str) -> None:
  """Records one trace of the program `name` ('<group>.<program>')."""
  with _lock:
    _traces[name] += 1


def trace_counts(prefix: str = '') -> dict[str, int]:
  """Traces per program so far; with `prefix`, that group's, prefix removed.

  `trace_counts('ghn_step')` -> {'body': 1, 'arch': 4, 'finish': 1}.
  """
  with _lock:
    items = dict(_traces)
  if not prefix:
    return items
  head = prefix + '.'
  return {k[len(head):]: v for k, v in items.items() if k.startswith(head)}
