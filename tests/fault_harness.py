"""Kill a run with SIGKILL at random moments, restart it, compare the result.

`run_with_kills` starts the same command again and again, killing each
attempt at a random moment (or the moment an asynchronous checkpoint save is
in flight), then lets the last attempt finish. `compare_runs` checks that the
result equals an uninterrupted run's: parameters bit for bit, and every
logged step in metrics.jsonl / eval.jsonl exactly once with the same values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Printed (flushed) once a run has restored its state, before the first step.
_STARTED = re.compile(r'(starting|resuming) at step \d+')
# Values that depend on wall time or on the process, not on the run.
TIMING_KEYS = frozenset({'compiles', 'compile_s', 'examples_per_s',
                         'arch_per_s'})


def env(cache_dir: str | None = None) -> dict:
  """A CPU environment for the child processes (one device, like a user)."""
  e = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  e.update(PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  if cache_dir:
    e['LOGAH_JAX_CACHE_DIR'] = cache_dir
  return e


def command(config: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, '-m', 'logah_jax.main', f'--config={config}',
          f'--workdir={workdir}', *overrides]


@dataclasses.dataclass
class Attempt:
  killed: bool
  seconds: float
  during_save: bool   # the kill left a '*.orbax-checkpoint-tmp*' step
  start_step: int     # newest checkpoint step when the attempt started


@dataclasses.dataclass
class Timing:
  total_s: float
  startup_s: float


def run_once(argv, environ, log_path, workdir: str | None = None) -> Timing:
  """Runs to completion; returns its wall time and its start-up time.

  Start-up (imports, data, compilation) lasts until the first metrics row of
  `workdir` appears; without a workdir, half the wall time.
  """
  metrics = os.path.join(workdir, 'metrics.jsonl') if workdir else None
  startup = None
  with open(log_path, 'a') as log:
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=environ, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    while proc.poll() is None:
      if (startup is None and metrics and os.path.exists(metrics)
          and os.path.getsize(metrics)):
        startup = time.monotonic() - t0
      time.sleep(0.01)
    total = time.monotonic() - t0
  if proc.returncode:
    raise AssertionError(f'{argv} exited with {proc.returncode}; see '
                         f'{log_path}')
  return Timing(total, startup or total / 2)


def _steps(checkpoint_dir: str) -> list[int]:
  try:
    return sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit())
  except FileNotFoundError:
    return []


def _saving(checkpoint_dir: str) -> set[str]:
  """The temporary steps of saves in flight (or cut short by a kill)."""
  try:
    return {n for n in os.listdir(checkpoint_dir) if 'orbax-checkpoint-tmp' in n}
  except FileNotFoundError:
    return set()


def _read(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()


def _last_logged(metrics_path: str) -> int:
  """The step of the last complete row of metrics.jsonl (0 if none)."""
  try:
    with open(metrics_path) as f:
      lines = f.read().split('\n')[:-1]  # the text after the last newline
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError):
      continue
  return 0


def run_with_kills(argv, environ, workdir: str, *, kills: int, seed: int,
                   timing: Timing, total_steps: int, log_path: str,
                   save_every: int = 3) -> list[Attempt]:
  """Kills `kills` attempts of `argv` (SIGKILL), then runs it to the end.

  Every `save_every`-th attempt is killed the moment a checkpoint save is in
  flight; of the others, one in four during start-up (a random time before
  the run has restored its state) and the rest a random few milliseconds
  after a random step was logged. An attempt that finishes before its kill ends the kills
  early (the caller counts them).
  """
  rng = random.Random(seed)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  metrics = os.path.join(workdir, 'metrics.jsonl')
  startup_s = None  # seconds to the 'starting/resuming at step' line
  attempts = []
  for i in range(kills):
    steps = _steps(checkpoint_dir)
    start = steps[-1] if steps else 0
    logged = _last_logged(metrics)
    mode = ('save' if i % save_every == save_every - 1 else
            'step' if startup_s is None else
            'startup' if rng.random() < 0.25 or logged >= total_steps - 1
            else 'step')
    target = rng.randint(logged + 1, total_steps - 1) if mode == 'step' else 0
    kill_at = rng.uniform(0.2, 1.0) * (startup_s or 0)
    stale = _saving(checkpoint_dir)  # left by the previous kill
    out = f'{log_path}.{i}'
    with open(out, 'w') as log:
      t0 = time.monotonic()
      proc = subprocess.Popen(argv, env=environ, stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT)
      started = None
      while proc.poll() is None:
        elapsed = time.monotonic() - t0
        if started is None and _STARTED.search(_read(out)):
          started = elapsed
        if mode == 'startup' and (elapsed > kill_at or started):
          break
        if mode == 'save' and _saving(checkpoint_dir) - stale:
          break
        if mode == 'step' and started and _last_logged(metrics) >= target:
          time.sleep(rng.uniform(0, 0.05))
          break
        if elapsed > 3 * timing.total_s:
          raise AssertionError(f'attempt {i} ({mode}) hangs; see {out}')
        time.sleep(0.001 if mode == 'save' else 0.005)
      if started is not None:
        startup_s = min(started, startup_s or started)
      if proc.poll() is not None:
        if proc.returncode:
          raise AssertionError(f'attempt {i} exited with {proc.returncode}; '
                               f'see {out}')
        attempts.append(Attempt(False, time.monotonic() - t0, False, start))
        return attempts
      proc.kill()
      proc.wait()
      # a save cut short leaves its temporary step behind (until restart)
      attempts.append(Attempt(True, time.monotonic() - t0,
                              bool(_saving(checkpoint_dir) - stale), start))
  run_once(argv, environ, log_path)
  return attempts


def _rows(path: str) -> list[dict]:
  from logah_jax import files  # pylint: disable=g-import-not-at-top
  return files.read_jsonl(path) if os.path.exists(path) else []


def compare_logs(reference_dir: str, killed_dir: str, name: str) -> int:
  """Every step of `name` once in both, with equal values; returns rows."""
  ref = _rows(os.path.join(reference_dir, name))
  got = _rows(os.path.join(killed_dir, name))
  steps = [r['step'] for r in got]
  assert len(steps) == len(set(steps)), f'{name}: repeated steps {steps}'
  assert steps == [r['step'] for r in ref], (name, steps)
  for a, b in zip(ref, got):
    keys = set(a) - TIMING_KEYS
    assert keys == set(b) - TIMING_KEYS, (name, a, b)
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, (name, a, b)
  return len(got)


def assert_trees_equal(a, b) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
  paths_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in paths_a] == [p for p, _ in paths_b]
  for (path, x), (_, y) in zip(paths_a, paths_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert x.tobytes() == y.tobytes(), f'{jax.tree_util.keystr(path)} differs'


def summary(attempts: list[Attempt]) -> str:
  killed = [a for a in attempts if a.killed]
  return (f'{len(killed)} SIGKILLs ({sum(a.during_save for a in killed)} '
          'during an async checkpoint save), resumed from steps '
          f'{[a.start_step for a in attempts]}')
