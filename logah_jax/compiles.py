"""Counts XLA compilations in this process (every jit, eager op included).

JAX reports each backend compilation through `jax.monitoring`; one listener,
registered on import, adds them up. Training logs the count so a user sees it
stop growing once every architecture has been compiled, and tests assert it.
"""

from __future__ import annotations

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
