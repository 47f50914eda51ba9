"""The hardware's reference figures for the benchmarks: dense peak TFLOP/s
by device, for MFU, and a plain matmul timed in the same process, for the
fraction of the machine a step reaches (the CPU's stand-in for MFU)."""

import statistics
import time

# Dense (no sparsity) peak TFLOP/s: (bfloat16, float32). float32 matmuls on
# these GPUs run as TF32 under XLA's default precision, hence the TF32 peak.
# Keyed by a substring of jax.devices()[0].device_kind; the longest matching
# key wins ('H100 PCIe' before 'H100'). TPUs have no float32 matmul unit: no
# float32 peak (pass --peak-tflops).
PEAK_TFLOPS = {
    'H100 PCIe': (756.0, 378.0),
    'H100': (989.0, 494.0),   # SXM
    'H200': (989.0, 494.0),
    'A100': (312.0, 156.0),
    'TPU v4': (275.0, None),
    'TPU v5 lite': (197.0, None),
    'TPU v5e': (197.0, None),
    'TPU v5p': (459.0, None),
    'TPU v6 lite': (918.0, None),
    'TPU v6e': (918.0, None),
}


def peak_tflops(device_kind: str, dtype_name: str):
  """The dense peak of `device_kind` in `dtype_name`, or None if unknown."""
  keys = sorted((k for k in PEAK_TFLOPS if k.lower() in device_kind.lower()),
                key=len, reverse=True)
  if not keys:
    return None
  bf16, fp32 = PEAK_TFLOPS[keys[0]]
  return bf16 if dtype_name == 'bfloat16' else fp32


def matmul_timer(n: int = 2048, dtype=None):
  """A compiled n x n x n matmul `a @ b` (2 n^3 FLOPs) on the default device:
  returns a function that runs it once, blocked, and returns its seconds.

  Timing it between the steps of another program samples the machine at
  the same moments as those steps, which matters on a machine whose speed
  drifts. dtype default float32; compiles and warms up here.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.float32 if dtype is None else dtype
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, b))

  def seconds() -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    return time.perf_counter() - t0
  return seconds


def matmul_flops_per_s(n: int = 2048, dtype=None, repeats: int = 5) -> float:
  """FLOP/s of a jitted n x n x n matmul `a @ b` (2 n^3 FLOPs per call).

  The median of `repeats` timed calls, each blocked, after one warm-up call
  (which compiles). On the default device; `dtype` default float32.
  """
  seconds = matmul_timer(n, dtype)
  return 2.0 * n**3 / statistics.median(seconds() for _ in range(repeats))

