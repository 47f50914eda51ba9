"""Process-wide settings: the XLA flag defaults of the entry points."""

import os
import subprocess
import sys

from logah_jax import runtime


def test_flag_defaults_are_added_once_and_never_override_the_user():
  env = {}
  assert runtime.set_xla_flag_defaults(env) == ' '.join(
      runtime.XLA_FLAG_DEFAULTS)
  assert runtime.set_xla_flag_defaults(env) == ' '.join(
      runtime.XLA_FLAG_DEFAULTS)  # idempotent
  user = {'XLA_FLAGS': '--xla_gpu_enable_triton_gemm=true --xla_dump_to=/x'}
  out = runtime.set_xla_flag_defaults(user).split()
  assert out == ['--xla_gpu_enable_triton_gemm=true', '--xla_dump_to=/x']


def test_the_defaults_start_a_cpu_backend():
  """XLA aborts the process on an unknown flag: this CPU build knows them."""
  env = dict(os.environ, XLA_FLAGS=' '.join(runtime.XLA_FLAG_DEFAULTS))
  out = subprocess.run(
      [sys.executable, '-c', 'import jax.numpy as jnp; print(jnp.ones(3).sum())'],
      env=env, capture_output=True, text=True, check=False)
  assert out.returncode == 0 and out.stdout.strip() == '3.0', out.stderr
