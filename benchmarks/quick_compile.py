"""Quick compile (`train.quick_compile`) against XLA's default, side by side.

For one architecture of `benchmarks/ghn_program.py` (LoGAH-Tiny, random
init), each of `--processes` fresh processes lowers GHN training's program
once, compiles it with the default options and with
`compiles.quick_compile_options()` (the order alternating between
processes, so neither always compiles first), then runs the two executables
alternately. Prints the XLA compile seconds (mean over processes) and the
run seconds (min and median over all runs) of each.

    .venv/bin/python benchmarks/quick_compile.py --family gpt
    .venv/bin/python benchmarks/quick_compile.py --family vit --repeats 2
    .venv/bin/python benchmarks/quick_compile.py --family vit-cpu --repeats 30
"""

import argparse
import json
import statistics
import sys
import time

from train_ghn import child_result  # the benchmarks' child-process runner

from logah_jax import host_memory

OPTIONS = ('default', 'quick')


def child(family: str, depth: int | None, repeats: int, quick_first: bool):
  import jax  # pylint: disable=g-import-not-at-top
  from logah_jax import compiles, config_base, ghn, parallel  # pylint: disable=g-import-not-at-top
  from logah_jax.arch import batching  # pylint: disable=g-import-not-at-top
  from logah_jax.train import ghn_step, optim  # pylint: disable=g-import-not-at-top
  from ghn_program import _arch, _batch  # pylint: disable=g-import-not-at-top
  depth = depth or {'vit': 8, 'gpt': 7, 'vit-cpu': 4}[family]
  arch, batch = _arch(family, depth), _batch(family)
  kind = 'gpt2' if family == 'gpt' else 'vit'
  cfg = ghn.named('logah-tiny', num_classes=10 if family == 'vit-cpu' else 100)
  params = ghn.init(cfg, kind, 0)
  n_pad = batching.bucket_size(ghn.num_nodes(cfg, arch))
  tx, _ = optim.make_optimizer(config_base.optim_section(1e-4), 10**6)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  step = ghn_step.GHNStep(cfg, kind, tx, mesh, m=1, n_pad=n_pad)
  x = ghn.node_embeddings(cfg, params, [arch], n_pad)[0]
  call = (params['decoder'], x, batch)
  # pylint: disable=protected-access  (the very program GHN training runs)
  lowered = step._compile_arch(arch, 0).lower(*call)
  options = {'default': None, 'quick': compiles.quick_compile_options()}
  order = OPTIONS[::-1] if quick_first else OPTIONS
  out = {}
  for name in order:
    t0 = time.perf_counter()
    compiled = lowered.compile(compiler_options=options[name])
    out[name] = {'compile': time.perf_counter() - t0, 'runs': []}
    jax.block_until_ready(compiled(*call))
    out[name]['program'] = compiled
  for _ in range(repeats):
    for name in order:
      t0 = time.perf_counter()
      jax.block_until_ready(out[name]['program'](*call))
      out[name]['runs'].append(time.perf_counter() - t0)
  for name in order:
    del out[name]['program']
  return out


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--family', choices=('vit', 'gpt', 'vit-cpu'), default='gpt')
  p.add_argument('--depth', type=int, default=None)
  p.add_argument('--processes', type=int, default=4)
  p.add_argument('--repeats', type=int, default=10,
                 help='runs of each program per process')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--quick-first', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print('RESULT ' + json.dumps(child(args.family, args.depth, args.repeats,
                                       args.quick_first)), flush=True)
    return
  results = []
  for i in range(args.processes):
    cmd = [sys.executable, __file__, '--child', '--family', args.family,
           '--repeats', str(args.repeats)] + (
               ['--depth', str(args.depth)] if args.depth else []) + (
                   ['--quick-first'] if i % 2 else [])
    results.append(child_result(cmd, f'process {i}'))
    print(json.dumps(results[-1]), flush=True)
  print(f'{args.family}: {args.processes} processes, {args.repeats} runs '
        'of each program per process')
  print('| options | XLA compile s: mean (each process) | '
        'run s: min / median |')
  print('|---|---|---|')
  base = None  # the default's compile mean and median run
  for name in OPTIONS:
    comp = [r[name]['compile'] for r in results]
    runs = [t for r in results for t in r[name]['runs']]
    mean, median = statistics.mean(comp), statistics.median(runs)
    if base is None:
      base, changes = (mean, median), ('', '')
    else:
      changes = (f' ({mean / base[0] - 1:+.0%})',
                 f' ({median / base[1] - 1:+.0%})')
    print(f"| {name} | {mean:.2f}{changes[0]} "
          f"({', '.join(f'{c:.2f}' for c in comp)}) | "
          f'{min(runs):.4f} / {median:.4f}{changes[1]} |')


if __name__ == '__main__':
  main()
