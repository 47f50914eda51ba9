"""Per-leaf checksums: NumPy on the host against the compiled device program.

Every save and restore checksums each array (logah_jax/checksums.py). Arrays
the host holds (NumPy, jax arrays on CPU devices) are summed with NumPy;
this prints that path beside the device program it replaced on CPUs, on the
same trees in one process: a LoGAH-Tiny GHN (what a restore checks) and one
large leaf (GPT-2-L's 64M-entry embedding). Both give the same values.

    .venv/bin/python benchmarks/checksums.py
"""

import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable as a script from anywhere

from logah_jax import host_memory
from logah_jax import checksums, ghn, runtime


def _device_sums(tree):
  leaves = jax.tree.leaves(tree)
  return [int(s) for s in jax.device_get(checksums._sums(leaves))]  # pylint: disable=protected-access


def _timed(fn, tree, repeats=3):
  t0 = time.perf_counter()
  first = fn(tree)
  first_s = time.perf_counter() - t0
  steady = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(tree)
    steady.append(time.perf_counter() - t0)
  return first, first_s, sorted(steady)[len(steady) // 2]


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  runtime.set_xla_flag_defaults()
  trees = {
      'LoGAH-Tiny GHN (GPT-2)': ghn.init(ghn.named('logah-tiny'), 'gpt2', 0),
      'one 50257 x 1280 leaf': {'wte': jax.random.normal(
          jax.random.key(0), (50257, 1280))},
  }
  print(f'{jax.devices()[0].device_kind}; seconds: first call / median of 3')
  print(f'{"tree":26s} {"leaves":>6s} {"entries":>10s} '
        f'{"device program":>18s} {"NumPy on host":>16s}  same')
  for name, tree in trees.items():
    leaves = jax.tree.leaves(tree)
    entries = sum(int(np.prod(x.shape)) for x in leaves)
    dev, dev_first, dev_steady = _timed(_device_sums, tree)
    host, host_first, host_steady = _timed(
        lambda t: list(checksums.tree_checksums(t).values()), tree)
    print(f'{name:26s} {len(leaves):6d} {entries:10d} '
          f'{dev_first:8.3f} / {dev_steady:6.3f}  {host_first:6.3f} / '
          f'{host_steady:6.3f}  {dev == host}')


if __name__ == '__main__':
  main()
