"""Compile accounting: XLA compilations and jit traces in this process.

`snapshot()` counts every backend compilation (every jit, eager ops
included) through `jax.monitoring`, so a run can log the count and a test can
assert that steady-state steps compile nothing. `count_trace(name)` is called
from inside the Python function of a jitted program, so it runs once per
trace; `trace_counts(prefix)` tells which programs traced how often (GHN
prediction, each GHN-training program, the fine-tuning step).

`quick_compile_options()`: the XLA options of programs that are compiled
often and run briefly (GHN training's per-architecture programs).
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import jax

_EVENT = '/jax/core/compile/backend_compile_duration'

# XLA's CPU compiler with its classic loop emitters instead of the MLIR
# fusion emitters, and LLVM at -O1 instead of -O3 for the code it generates
# (matmuls call precompiled libraries either way). On a 2-core CPU a
# GHN-training program compiled in about 40% less time; GPT-2 steps ran
# 7-10% slower (the classic emitters transpose the logits' gradient
# slowly), ViT steps 0-5% slower; docs/performance.md.
QUICK_CPU_COMPILE = {'xla_cpu_use_fusion_emitters': False,
                     'xla_backend_optimization_level': 1}
# XLA's GPU compiler without GEMM autotuning: each matmul takes the
# configuration XLA's heuristics pick instead of timing candidates. On an
# H200 the GPT-2 order of benchmarks/train_ghn.py (8 threads compiling ahead)
# took 1.9 s per new architecture instead of 4.0 s, for a steady step of
# 13.0 ms instead of 10.0 ms (the option set for the whole process);
# docs/performance.md.
QUICK_GPU_COMPILE = {'xla_gpu_autotune_level': 0}
# Visits per program (steps that run it) below which quick compile pays,
# by (backend, target family): compile seconds saved per program over step
# seconds lost per visit. CPU, GPT-2: 1.2-1.3 s saved, 0.005-0.02 s lost
# per visit (benchmarks/quick_compile.py, two runs, after Dense layers began
# multiplying row matrices: the older emitters had run the transposed copy
# of the logits' gradient slowly; before that, 1.2-1.4 s and 0.06-0.07 s,
# and earlier 2.2 and 0.04 s). CPU, ViT: the main job's 12 programs
# compiled in 3.0 s less each, and its 800 steps, run from a warm cache,
# took 6 ms longer each (about 5%): even at about 475 visits; its program
# alone later: 2.55 s saved, 6 ms lost, about 430; later still 2.03 s and
# 4.4 ms, about 460. GPU: 2.1 s saved, 1.5 ms lost (H200, GPT-2, m = 2),
# also used for ViTs. TPUs have no quick options.
QUICK_COMPILE_PAYS_BELOW = {('cpu', 'gpt2'): 60, ('cpu', 'vit'): 450,
                            ('gpu', 'gpt2'): 1400, ('gpu', 'vit'): 1400}


def quick_compile_options(backend: str | None = None) -> dict | None:
  """`jax.jit(compiler_options=...)` for quicker compiles on `backend`
  (default: JAX's); None where there is nothing to gain (TPUs)."""
  backend = backend or jax.default_backend()
  if backend == 'cpu':
    return dict(QUICK_CPU_COMPILE)
  if backend == 'gpu':
    return dict(QUICK_GPU_COMPILE)
  return None


def quick_compile_pays(visits_per_program: float, family: str,
                       backend: str | None = None) -> bool:
  """Whether `family`'s programs, run about `visits_per_program` times
  each, compile and run sooner in all with `quick_compile_options()` on
  `backend` (default: JAX's)."""
  backend = backend or jax.default_backend()
  return visits_per_program < QUICK_COMPILE_PAYS_BELOW.get((backend, family),
                                                           0)


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
