"""jax.random's draws from plain threefry keys and from `prng.fused_threefry`.

Both give the same values (tests/test_prng.py); this prints what each costs,
side by side in one process: the first call (compile and run) and the median
of the timed runs, for a batch of normal draws and for a target's full random
init. The init rows: Flax's init of the whole model as one program with the
key as given (`plain`) and with the fused key (`fused`), and
`models.init_params` (`per block`: the same values, one program per distinct
block, tests/test_block_init.py).

    .venv/bin/python benchmarks/random_draws.py
    .venv/bin/python benchmarks/random_draws.py --target gpt2-large-untied
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from logah_jax import host_memory
from logah_jax import arch, models, prng


def _timed(fn, repeats: int):
  """(first call s, median s of `repeats` more); fn(i) -> array."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(0))
  first = time.perf_counter() - t0
  runs = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(i + 1))
    runs.append(time.perf_counter() - t0)
  return first, float(np.median(runs))


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--normals', type=int, default=10_485_760,
                      help='size of the normal draw')
  parser.add_argument('--target', default='gpt2-medium',
                      help="an architecture name; '' skips the init rows")
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  key = lambda i: jax.random.fold_in(jax.random.key(0), i)
  rows = []
  shape = (args.normals,)
  for name, wrap in (('plain', lambda k: k), ('fused', prng.fused_threefry)):
    draw = jax.jit(lambda i, wrap=wrap: jax.random.normal(wrap(key(i)), shape,
                                                          jnp.float32))
    rows.append((f'{args.normals / 1e6:.1f}M normals', name,
                 *_timed(draw, args.repeats)))
  if args.target:
    cfg = arch.named(args.target)
    model, x = models.build(cfg), models.dummy_input(cfg)
    plain = jax.jit(lambda k: model.init(k, x)['params'])
    fused = jax.jit(lambda k: model.init(prng.fused_threefry(k), x)['params'])
    for name, init in (('plain', plain), ('fused', fused),
                       ('per block', lambda k: models.init_params(cfg, k))):
      rows.append((f'init {cfg.name} ({arch.num_params(cfg) / 1e6:.0f}M)',
                   name, *_timed(lambda i, init=init: init(key(i)),
                                 args.repeats)))
  print(f'{"what":<52}{"how":>10}{"first s":>9}{"median s":>10}')
  for what, name, first, median in rows:
    print(f'{what:<52}{name:>10}{first:>9.2f}{median:>10.3f}')
  print('first: compile + run; median: of the runs after it. Same values '
        'either way.')


if __name__ == '__main__':
  main()
