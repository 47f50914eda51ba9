"""Process-wide JAX settings that entry points opt into (never on import)."""

from __future__ import annotations

import os
import subprocess

import jax

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'logah_jax', 'xla')

# XLA flags the entry points set unless the user's XLA_FLAGS names them.
# Triton GEMM fusions off: on an H100, cuBLAS took a GPT-2-Medium bf16
# training step from 55.8 to 50.9 ms and its compile from 33 to 23 s
# (docs/performance.md). The flags only concern GPUs; CPU XLA accepts them.
XLA_FLAG_DEFAULTS = ('--xla_gpu_enable_triton_gemm=false',)


def set_xla_flag_defaults(environ=None) -> str:
  """Adds XLA_FLAG_DEFAULTS to XLA_FLAGS, keeping any value the user gave.

  XLA reads XLA_FLAGS once, when JAX first starts a backend: call this at the
  top of an entry point, before any array is made. Returns the new value.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get('XLA_FLAGS', '').split()
  names = {f.split('=')[0] for f in flags}
  flags += [f for f in XLA_FLAG_DEFAULTS if f.split('=')[0] not in names]
  environ['XLA_FLAGS'] = ' '.join(flags)
  return environ['XLA_FLAGS']


def enable_compilation_cache(directory: str | None = None) -> str:
  """Persist compiled XLA programs so a new process skips recompiling.

  Predicting GPT-2-Large compiles for seconds on a CPU; with the cache a
  second process reuses the executables. Directory: the argument, else
  $LOGAH_JAX_CACHE_DIR, else ~/.cache/logah_jax/xla.
  """
  directory = os.path.expanduser(
      directory or os.environ.get('LOGAH_JAX_CACHE_DIR') or DEFAULT_CACHE_DIR)
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  # 0.1 s, not jax's 1 s: prediction on a CPU compiles dozens of programs of
  # 0.1-0.5 s each (per tensor shape); cached, a GPT-2-Large widen prediction's
  # second cold process took 10.7 s instead of 16.0 (docs/performance.md).
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def code_version() -> str:
  """The git commit of the code (or 'unknown' outside a checkout)."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=here,
                         capture_output=True, text=True, timeout=10,
                         check=True)
    return out.stdout.strip() or 'unknown'
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
