"""How glibc's malloc serves XLA's CPU buffers, set when the process starts.

XLA's CPU runtime allocates every run's buffers with malloc and frees them
after the run. glibc serves the large ones from fresh mappings (so does each
worker thread's arena past 64 MiB) and unmaps them on free, so every step
faults its whole working set in again, 4 KiB at a time: a GHN-training step
of a GPT-2 spent over a quarter of its CPU time in the kernel
(docs/performance.md, "Host memory on CPUs"). Two remedies, as glibc
tunables:

- huge pages (`glibc.malloc.hugetlb=1`: malloc asks the kernel for
  transparent huge pages), the default: a fault brings in 2 MiB, not 4 KiB
  (a test program's repeated run: 97 faults instead of 18,443);
- reuse (also one arena, no mmap, no trimming): freed memory stays mapped and
  a repeated step faults nothing, the fastest steady step of a GPT-2's GHN
  training, but XLA's compiler threads then share one arena and compile
  about a third slower, the process keeps its peak memory until it exits,
  and a program whose blocks do not fit the holes left by the last run
  grows the heap instead (a large ViT's program: 2.5 times the memory and
  a slower step). Opt-in, for programs where it was measured to pay.

glibc reads its tunables once, at exec, so an entry point re-executes itself
with GLIBC_TUNABLES extended, before it imports JAX (`reexec_with_tunables`).
Where JAX may run on a GPU or TPU (host memory is not the step's there) and
off glibc, nothing changes. `LOGAH_JAX_MALLOC`: `auto` (default, huge pages),
`reuse`, or `system` (glibc's defaults). Standard library only: this runs
before anything heavy is imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

ENV = 'LOGAH_JAX_MALLOC'
CHOICES = ('auto', 'reuse', 'system')
HUGE_PAGES = {'glibc.malloc.hugetlb': '1'}
REUSE = {'glibc.malloc.arena_max': '1', 'glibc.malloc.mmap_max': '0',
         'glibc.malloc.trim_threshold': str(2**62)}


def choice(environ=None) -> str:
  """The checked value of LOGAH_JAX_MALLOC ('auto' when unset)."""
  environ = os.environ if environ is None else environ
  value = environ.get(ENV, '').strip().lower() or 'auto'
  if value not in CHOICES:
    raise ValueError(f'{ENV}={environ[ENV]!r}: expected one of '
                     f'{", ".join(CHOICES)}')
  return value


def tunables(environ=None) -> dict[str, str]:
  """The glibc tunables this process should run with ({} for none)."""
  environ = os.environ if environ is None else environ
  wanted = choice(environ)
  if wanted == 'system' or not _glibc() or _may_use_accelerator(environ):
    return {}
  return dict(HUGE_PAGES, **(REUSE if wanted == 'reuse' else {}))


def with_tunables(environ=None) -> dict[str, str]:
  """A copy of `environ` whose GLIBC_TUNABLES also holds `tunables()`; a
  tunable the user set keeps the user's value."""
  environ = dict(os.environ if environ is None else environ)
  entries = [e for e in environ.get('GLIBC_TUNABLES', '').split(':') if e]
  have = {e.split('=')[0] for e in entries}
  entries += [f'{k}={v}' for k, v in tunables(environ).items()
              if k not in have]
  if entries:
    environ['GLIBC_TUNABLES'] = ':'.join(entries)
  return environ


def describe(environ=None) -> str:
  """One line for the log: what malloc runs with, and how to change it."""
  environ = os.environ if environ is None else environ
  wanted = tunables(environ)
  if not wanted:
    return ''
  have = dict(e.split('=', 1) for e in
              environ.get('GLIBC_TUNABLES', '').split(':') if '=' in e)
  return (f'host malloc: {":".join(f"{k}={have.get(k)}" for k in wanted)} '
          f'({ENV}={choice(environ)}; auto, reuse or system)')


def reexec_with_tunables() -> None:
  """Re-executes this process (same interpreter, arguments and PID) with
  `with_tunables()`, unless it already runs with them. Call it first thing
  in an entry point: whatever ran before is run again."""
  env = with_tunables()
  if env.get('GLIBC_TUNABLES', '') == os.environ.get('GLIBC_TUNABLES', ''):
    return
  if os.environ.get('LOGAH_JAX_REEXECUTED'):
    return  # glibc dropped the variable: never loop
  env['LOGAH_JAX_REEXECUTED'] = '1'
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _may_use_accelerator(environ) -> bool:
  """JAX_PLATFORMS names a GPU or TPU, or (unset) a GPU or TPU plugin is
  installed."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  if importlib.metadata.entry_points(group='jax_plugins'):
    return True  # jax-cuda*-plugin and its kind register here
  return any(importlib.util.find_spec(name) is not None
             for name in ('libtpu', 'jax_plugins'))


def _glibc() -> bool:
  if not sys.platform.startswith('linux'):
    return False
  try:
    return (os.confstr('CS_GNU_LIBC_VERSION') or '').startswith('glibc')
  except (ValueError, OSError):
    return False  # musl
