"""What one GHN-training program is made of: compile and run time by part.

For one architecture of `benchmarks/train_ghn.py` (LoGAH-Tiny, random init),
each part of the per-architecture program is compiled and run on its own,
as the program computes it (a GPT-2's repeating vocabulary matrices decoded
as their first period, one period of its logits: `ghn.tiled_periods`): the
decoder and write-back (forward + backward), the target (forward + backward
on its decoded params), the regulariser,
the whole program with scanned blocks (also compiled with the quick CPU
options of `train.quick_compile`), and the whole program unrolled (whose
XLA FLOP count is the real one: a scan's body is counted once). Then the
architecture at a shallower depth runs in its own program and in the
program of the deeper one (depth sharing, `train.share_depths`), side by
side in one process.
A plain float32 matmul measured in the same process gives the scale.

    .venv/bin/python benchmarks/ghn_program.py --family gpt
    .venv/bin/python benchmarks/ghn_program.py --family vit --shallow 4
    .venv/bin/python benchmarks/ghn_program.py --family vit-cpu --shallow 2
"""

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from logah_jax import host_memory
from logah_jax import arch as arch_lib
from logah_jax import compiles
from logah_jax import config_base
from logah_jax import ghn
from logah_jax import models
from logah_jax import parallel
from logah_jax.arch import batching
from logah_jax.models import layers
from logah_jax.train import ghn_step
from logah_jax.train import objective
from logah_jax.train import optim

from reference import matmul_flops_per_s  # the other benchmarks' reference


def _arch(family: str, depth: int):
  if family == 'vit-cpu':  # a ViT of the main job's space (vits-cpu)
    return arch_lib.ViTConfig(depth=depth, width=64, heads=4, mlp_dim=256,
                              patch=7, image_size=28, channels=1,
                              num_classes=10)
  if family == 'vit':  # the first ViT of train_ghn.py, and its batch
    return arch_lib.ViTConfig(depth=depth, width=224, heads=4, mlp_dim=896,
                              patch=2, image_size=32, channels=3,
                              num_classes=100)
  return arch_lib.GPT2Config(depth=depth, width=112, heads=8, vocab_size=50257,
                             n_positions=1024, tie_embeddings=False)


def _batch(family: str, gpt_batch: tuple[int, int] = (2, 256)):
  rng = np.random.default_rng(0)
  if family == 'vit-cpu':  # the main job's batch of 64 Fashion-MNIST images
    return {'image': rng.normal(size=(64, 28, 28, 1)).astype(np.float32),
            'label': rng.integers(0, 10, 64).astype(np.int32)}
  if family == 'vit':
    return {'image': rng.normal(size=(64, 32, 32, 3)).astype(np.float32),
            'label': rng.integers(0, 100, 64).astype(np.int32)}
  rows, tokens = gpt_batch  # +1: inputs and next-token targets
  return {'tokens': rng.integers(0, 50257, (rows, tokens + 1)).astype(
      np.int32)}


def _measure(fn, *args, repeats: int = 3) -> dict:
  """trace+lower s, compile s, min and median run s, XLA FLOPs, HLO lines,
  and the compiled program's fusions (the kernels XLA emits, each compiled
  on its own: compile time grows with their number)."""
  t0 = time.perf_counter()
  lowered = (fn if hasattr(fn, 'lower') else jax.jit(fn)).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - t)
  return {'lower': t1 - t0, 'compile': t2 - t1, 'run': min(runs),
          'median': statistics.median(runs),
          'flops': lowered.cost_analysis().get('flops', 0.0),
          'lines': lowered.as_text().count('\n'),
          'fusions': len(re.findall(r'^\s*(?:ROOT )?%\S+ = .*? fusion\(',
                                    compiled.as_text(), re.M))}


def _row(name: str, m: dict, flops: float | None = None) -> str:
  flops = m['flops'] if flops is None else flops
  return (f"| {name} | {m['lower']:.2f} | {m['compile']:.2f} | "
          f"{m['run']:.3f} | {m['median']:.3f} | {m['lines']} | "
          f"{m['fusions']} | "
          f"{flops / m['run'] / 1e9:.1f} |")


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--family', choices=('vit', 'gpt', 'vit-cpu'),
                 default='gpt', help="vit-cpu: the main job's kind of ViT")
  p.add_argument('--depth', type=int, default=None,
                 help='default: 8 (ViT), 7 (GPT) as in train_ghn.py, 4 '
                      '(vit-cpu)')
  p.add_argument('--shallow', type=int, default=3,
                 help='depth run in its own and in the deeper program')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--gpt-batch', default='2x256',
                 help="GPT-2 sequences x tokens (train_ghn.py's 2x256; the "
                      "paper's GPTs-1K recipe: 6x1024)")
  args = p.parse_args()
  family = 'gpt2' if args.family == 'gpt' else 'vit'
  depth = args.depth or {'vit': 8, 'gpt': 7, 'vit-cpu': 4}[args.family]
  try:
    gpt_batch = tuple(int(v) for v in args.gpt_batch.split('x'))
  except ValueError:
    gpt_batch = ()
  if len(gpt_batch) != 2 or min(gpt_batch) < 1 or gpt_batch[1] > 1024:
    p.error(f'--gpt-batch={args.gpt_batch!r}: expected ROWSxTOKENS, '
            'tokens at most 1024 (the positions)')
  arch, batch = _arch(args.family, depth), _batch(args.family, gpt_batch)
  cfg = ghn.named('logah-tiny',
                  num_classes=10 if args.family == 'vit-cpu' else 100)
  params = ghn.init(cfg, family, 0)
  n_pad = batching.bucket_size(ghn.num_nodes(cfg, arch))
  x = ghn.node_embeddings(cfg, params, [arch], n_pad)[0]
  n = ghn.num_nodes(cfg, arch)
  dec_params = params['decoder']
  # As the program decodes: a GPT-2's repeating vocabulary matrices as their
  # first period (`ghn.tiled_periods`).
  periods, period, embedding_period, copies = ghn_step.vocabulary_terms(
      cfg, arch)
  decode = ghn.decode_function(cfg, arch, stacked=True,
                               first_period=bool(periods))
  target_params = jax.jit(decode)(dec_params, x[:n])

  def decode_loss(p, xx):
    return sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(decode(p, xx)))


  def target_loss(tp):  # remat as in the program (`layers.scanned_remat`)
    return objective.task_loss(arch, tp, batch, scan=True,
                               remat=layers.scanned_remat(False),
                               vocab_period=period,
                               embedding_period=embedding_period)[0]

  def target_loss_unrolled(tp):
    return objective.task_loss(arch, tp, batch, vocab_period=period,
                               embedding_period=embedding_period)[0]

  # The scanned target's count has its block once: count the unrolled one.
  target_flops = jax.jit(jax.value_and_grad(target_loss_unrolled)).lower(
      models.unstack_blocks(arch, target_params)).cost_analysis()['flops']

  tx, _ = optim.make_optimizer(config_base.optim_section(1e-4), 10**6)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  step = ghn_step.GHNStep(cfg, family, tx, mesh, m=1, n_pad=n_pad)
  # pylint: disable=protected-access  (the very programs GHN training runs)
  whole = _measure(step._compile_arch(arch, 0), dec_params, x, batch)
  quick = _measure(ghn_step.GHNStep(
      cfg, family, tx, mesh, m=1, n_pad=n_pad,
      compiler_options=compiles.quick_compile_options())._compile_arch(
          arch, 0), dec_params, x, batch)
  unrolled = _measure(step._compile_arch(arch, 0, scan=False), dec_params, x,
                      batch, repeats=1)
  parts = [
      ('decoder + write-back, fwd+bwd',
       _measure(jax.value_and_grad(decode_loss, argnums=(0, 1)), dec_params,
                x[:n])),
      ('target, fwd+bwd', _measure(jax.value_and_grad(target_loss),
                                   target_params)),
      ('regulariser, fwd+bwd',
       _measure(jax.value_and_grad(
           lambda tp: objective.frobenius_sum(tp, copies=copies)),
                target_params)),
      ('whole program (scanned blocks)', whole),
      ('whole program (scanned blocks), quick compile', quick),
      ('whole program (unrolled)', unrolled)]
  matmul = matmul_flops_per_s()
  print(f'{arch.name}, LoGAH-Tiny, {jax.devices()[0].device_kind}')
  print('| part | trace+lower s | compile s | run s (min) | run s (median) | '
        'HLO lines | fusions | GFLOP/s |')
  print('|---|---|---|---|---|---|---|---|')
  for name, m in parts:
    # A scan's body is counted once: scanned programs get unrolled counts.
    flops = {'t': target_flops, 'w': unrolled['flops']}.get(name[0])
    print(_row(name, m, flops))
  print(f"whole program: {unrolled['flops'] / 1e9:.1f} GFLOP, "
        f"{unrolled['flops'] / whole['run'] / matmul:.1%} of a float32 "
        f'2048^3 matmul ({matmul / 1e9:.1f} GFLOP/s, median of 5)')

  # Depth sharing: the shallow architecture in its own program and in the
  # program of `arch`, timed alternately.
  shallow = _arch(args.family, args.shallow)
  x_s = ghn.node_embeddings(cfg, params, [shallow], n_pad)[0]
  own = ghn_step.GHNStep(cfg, family, tx, mesh, m=1, n_pad=n_pad)
  shared = ghn_step.GHNStep(cfg, family, tx, mesh, m=1, n_pad=n_pad,
                            share_depths=[arch, shallow])
  runs = {}
  for name, s in ((f'depth {args.shallow}, its own program', own),
                  (f'depth {args.shallow}, the depth-{depth} program',
                   shared)):
    call = [dec_params, x_s, batch] + ([s._layout(shallow, 0)]
                                       if s.shared else [])
    program = s._compile_arch(s.program_arch(shallow), 0)
    t0 = time.perf_counter()
    compiled = program.lower(*call).compile()
    runs[name] = (time.perf_counter() - t0, compiled, call, [])
    jax.block_until_ready(compiled(*call))
  # pylint: enable=protected-access
  for _ in range(args.repeats):
    for _, compiled, call, times in runs.values():
      t = time.perf_counter()
      jax.block_until_ready(compiled(*call))
      times.append(time.perf_counter() - t)
  print('| program | lower+compile s | run s (min) | run s (median) |')
  print('|---|---|---|---|')
  for name, (seconds, _, _, times) in runs.items():
    print(f'| {name} | {seconds:.2f} | {min(times):.3f} | '
          f'{statistics.median(times):.3f} |')


if __name__ == '__main__':
  main()
