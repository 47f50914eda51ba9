"""The widen fill's noise: what one noisy leaf program costs, per generator.

One 1,280 x 5,120 leaf written as the product of rank-32 factors, plus
normal noise, compiled and run in one process for each generator: the
product alone, jax.random's normal from a fused threefry key (the fill's
earlier noise), the counter hash with XLA's `erf_inv`, and
`prng.counter_normal` (the fill's noise now; its own erfinv). Prints the
XLA compile seconds and the minimum and median of the timed runs.

    .venv/bin/python benchmarks/widen_noise.py
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable as a script from anywhere

from logah_jax import host_memory
from logah_jax import prng

SHAPE = (1280, 5120)


NOISES = {
    'product only': None,
    'jax.random.normal, fused threefry key': lambda k: jax.random.normal(
        prng.fused_threefry(jax.random.fold_in(jax.random.key(1), k)), SHAPE),
    'counter hash + XLA erf_inv': lambda k: np.float32(np.sqrt(2.0)) * (
        jax.lax.erf_inv(prng.counter_uniform(1, k, SHAPE))),
    'prng.counter_normal': lambda k: prng.counter_normal(1, k, SHAPE),
}


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=15)
  args = parser.parse_args()
  a = jax.random.normal(jax.random.key(0), (SHAPE[0], 32))
  b = jax.random.normal(jax.random.key(1), (32, SHAPE[1]))
  print(f'{"noise":40s}{"compile s":>11}{"min ms":>9}{"median ms":>11}')
  for name, noise in NOISES.items():
    def leaf(a, b, k, noise=noise):
      x = a @ b
      return x if noise is None else x + 0.01 * noise(k)
    t0 = time.perf_counter()
    compiled = jax.jit(leaf).lower(a, b, np.int32(3)).compile()
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(a, b, np.int32(3)))
      runs.append(time.perf_counter() - t0)
    print(f'{name:40s}{compile_s:>11.3f}{1e3 * min(runs):>9.1f}'
          f'{1e3 * float(np.median(runs)):>11.1f}')


if __name__ == '__main__':
  main()
