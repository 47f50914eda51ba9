"""Process-wide JAX settings that entry points opt into (never on import)."""

from __future__ import annotations

import os
import subprocess

import jax

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'logah_jax', 'xla')


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
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
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
