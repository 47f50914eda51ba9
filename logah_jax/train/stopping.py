"""Stopping a run at a step boundary on SIGINT or SIGTERM, in every process.

One process: the entry point's signal handler calls `interrupt`. Outside the
training loop that raises `Interrupted` at once; inside it the signal is only
noted (orbax swallows a KeyboardInterrupt raised while it waits for a save),
and the loop asks `requested()` at every step boundary.

Several processes (`jax.distributed`): each step and each save is collective,
so every process has to stop at the same step, although a scheduler's
pre-emption notice (SIGTERM) may reach one host, or all of them at different
moments. JAX's preemption service installs its own SIGTERM handler when the
job starts (Python's never runs), tells the other processes, and they agree
on the next step that all of them can still reach; `requested()` asks it
(`multihost_utils.reached_preemption_sync_point`) with a count of the step
boundaries passed in this process, which is the same sequence in every
process. A SIGINT that Python notes inside the loop is relayed to the service
as a SIGTERM to this process, so it stops the whole job the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal

import jax
from jax.experimental import multihost_utils


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM: the run stopped at a step boundary (or in start-up)."""


_state = {'deferred': False, 'pending': None, 'boundaries': 0}


def job_wide() -> bool:
  """Whether JAX's preemption service decides the stop for every process."""
  return (jax.distributed.is_initialized()
          and bool(jax.config.jax_enable_preemption_service))


def interrupt(name: str) -> None:
  """A signal handler's action: stop now, or at the next step boundary."""
  if not _state['deferred']:
    raise Interrupted(name)
  _state['pending'] = name
  if job_wide() and name != 'SIGTERM':
    # the service's handler takes it and tells the other processes
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def deferred():
  """Inside: signals are noted, and `requested()` says when to stop."""
  _state.update(deferred=True, pending=None)
  try:
    yield
  finally:
    _state['deferred'] = False


def requested() -> str | None:
  """At a step boundary: the signal to stop for now, or None.

  In a multi-process job every process must call this at every boundary
  (it is how they agree on one).
  """
  if not job_wide():
    return _state['pending']
  _state['boundaries'] += 1
  if multihost_utils.reached_preemption_sync_point(_state['boundaries']):
    return _state['pending'] or 'SIGTERM'
  return None


def left_over() -> str | None:
  """After the loop: a signal that arrived during its last step.

  In a multi-process job the service carries it to the next loop's first
  boundary instead, where every process stops together.
  """
  return None if job_wide() else _state['pending']
