"""Speed and memory of a GHN training step, against the original PyTorch code.

The same architectures and orders as the reference run of the original code:
LoGAH-Tiny, random init, AdamW, clip 5, regulariser 3e-5; 20 ViTs-1K
architectures (patch 2, 32 px, 100 classes) with a batch of 64 random images
at m = 1 and m = 4, and GPT-2s (8 heads, vocabulary 50257) with a batch of
2 x 256 random tokens at m = 2. Each run is a fresh process (peak RSS is that
run's). The steps run twice: the first pass compiles each architecture once
(its seconds are printed apart), the second pass over the same order is the
steady state (median s/step and architectures/s).

Compile s per program: the seconds that jax.monitoring reports for tracing,
lowering and XLA-compiling each `arch` program of `GHNStep` (one per
architecture unless depths are shared) in the first pass; mean, median and
max over the run's programs. (The body and finish programs, compiled once
per run, are in the total only.) As a check, the JSON line also has the
wall-time estimate: a first-pass step minus the same step in the steady
state, over the programs new in it (steps after the first).

With `--compile-workers N`, each first-pass step hands the next steps'
architectures to the step's N compile threads (as GHN training does with
`train.compile_workers`). The per-program seconds above then overlap; what
the run pays is the first pass's wall time, printed whole and as "first pass
- steady, per arch": the first pass minus its steps at the steady rate, over
the distinct architectures.

With `--share-depths`, architectures that differ only in depth run one
program, that of the deepest of them in the order (`train.share_depths`,
the CPU default of GHN training): the per-program seconds are then over the
programs, and "compile s per arch" spreads their sum over the distinct
architectures. The steady state then includes the padded steps' cost.

With `--quick-compile`, the `arch` programs are compiled with
`compiles.quick_compile_options()`, as GHN training does with
`train.quick_compile=true`.

TFLOP/s: XLA's count of the programs a step runs (body, one `arch` program
per architecture, finish; lowered on abstract inputs as
`train.flops.ghn_training_flops` does, all ops counted) summed over the
steady-state steps, over their summed seconds; x matmul: each steady step's
FLOP/s as a fraction of a plain float32 matmul (`benchmarks/reference.py`'s
`matmul_timer`, 2048^3 on CPU) timed right after that step, the median over
the steps [min-max]. Timing the two side by side keeps the fraction steady
on a machine whose speed drifts.

    .venv/bin/python benchmarks/train_ghn.py                  # all three
    .venv/bin/python benchmarks/train_ghn.py --runs vit-m4
    .venv/bin/python benchmarks/train_ghn.py --runs gpt-m2 --compile-workers 2
    .venv/bin/python benchmarks/train_ghn.py --runs gpt-m2 --share-depths
    .venv/bin/python benchmarks/train_ghn.py --runs gpt-m2 --quick-compile
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time

from reference import matmul_timer

from logah_jax import host_memory

# The original LoGAH on the same kind of machine (2 vCPU, torch CPU, fp32):
# (s/step median, architectures/s, peak RSS GiB).
ORIGINAL = {'vit-m1': (6.92, 0.144, 4.11), 'vit-m4': (22.26, 0.180, 10.58),
            'gpt-m2': (3.39, 0.590, 3.34)}

# depth, width, heads of the reference's 20 ViTs (MLP = 4 x width).
VITS = [(8, 224, 4), (4, 352, 8), (3, 384, 6), (8, 256, 4), (5, 384, 12),
        (5, 384, 3), (7, 192, 3), (4, 288, 12), (9, 160, 8), (8, 160, 8),
        (7, 160, 4), (8, 224, 8), (4, 256, 4), (6, 160, 8), (7, 128, 8),
        (7, 192, 3), (8, 224, 8), (3, 512, 8), (5, 320, 8), (9, 160, 8)]
VIT_M1 = [[i] for i in (18, 11, 15, 18, 7, 12, 18, 5, 6, 2, 15, 19, 0, 17, 9,
                        0, 18, 2, 1, 8, 2)]
VIT_M4 = [[18, 1, 19, 8], [11, 1, 18, 17], [15, 13, 12, 5], [18, 0, 13, 2],
          [7, 1, 2, 19], [12, 6, 10, 8], [18, 14, 6, 4], [5, 18, 13, 16],
          [6, 1, 5, 9], [2, 16, 15, 17], [15, 13, 3, 10]]
GPT_M2 = [[(7, 112), (3, 200)], [(6, 96), (4, 152)], [(8, 88), (7, 128)],
          [(9, 136), (3, 256)], [(4, 176), (9, 136)], [(4, 168), (4, 168)],
          [(3, 248), (7, 96)], [(3, 200), (8, 72)], [(5, 152), (3, 184)]]
RUNS = ('vit-m1', 'vit-m4', 'gpt-m2')


def _steps(run: str):
  from logah_jax import arch  # pylint: disable=g-import-not-at-top
  if run.startswith('vit'):
    vits = [arch.ViTConfig(depth=d, width=w, heads=h, mlp_dim=4 * w, patch=2,
                           image_size=32, channels=3, num_classes=100)
            for d, w, h in VITS]
    order = VIT_M1 if run == 'vit-m1' else VIT_M4
    return [[vits[i] for i in step] for step in order]
  return [[arch.GPT2Config(depth=d, width=w, heads=8, vocab_size=50257,
                           n_positions=1024, tie_embeddings=False)
           for d, w in step] for step in GPT_M2]


def child_result(cmd: list[str], what: str) -> dict:
  """Runs a benchmark's child process; its 'RESULT {json}' line, parsed.

  Exits naming `what`, with the end of the child's stderr, if it failed.
  """
  out = subprocess.run(cmd, capture_output=True, text=True)
  line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
  if out.returncode or not line:
    sys.exit(f'{what} failed:\n{out.stderr[-3000:]}')
  return json.loads(line[0][7:])


# The jax.monitoring events of one compilation. Each names the program: its
# Python function's name when tracing, the module's ('jit(program)', or
# 'jit_program' in older jax) when lowering and compiling; GHNStep's
# per-architecture program is the function `program`.
_TRACE = '/jax/core/compile/jaxpr_trace_duration'
_LOWER = '/jax/core/compile/jaxpr_to_mlir_module_duration'
_XLA = '/jax/core/compile/backend_compile_duration'
_EVENTS = (_TRACE, _LOWER, _XLA)


def _program_name(fun_name) -> str:
  name = str(fun_name)
  if name.startswith('jit(') and name.endswith(')'):
    return name[4:-1]
  return name[4:] if name.startswith('jit_') else name


class _ArchCompiles:
  """Trace + lower + XLA seconds of each `arch` program compiled.

  Events are paired per thread: with `--compile-workers`, programs compile
  side by side and their events arrive interleaved, but each thread traces,
  lowers and compiles one program after the other.
  """

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.events = {}  # thread id -> {event: [seconds, ...]}
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, fun_name=None, **_):
    if event in _EVENTS and _program_name(fun_name) == 'program':
      mine = self.events.setdefault(threading.get_ident(),
                                    {e: [] for e in _EVENTS})
      mine[event].append(duration)

  def seconds(self) -> list[float]:
    out = []
    for events in self.events.values():
      n = len(events[_XLA])
      if any(len(v) != n for v in events.values()):
        raise RuntimeError(f'unmatched compile events: '
                           f'{ {e: len(v) for e, v in events.items()} }')
      out += [sum(v) for v in zip(*events.values())]
    return out


def _step_flops(step, state, steps, batch) -> list[float]:
  """XLA's FLOPs of each step of `steps` (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  from logah_jax import ghn  # pylint: disable=g-import-not-at-top
  from logah_jax.train import flops  # pylint: disable=g-import-not-at-top
  abstract = lambda t: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
  params = abstract(state.params)
  inputs = abstract(ghn.make_inputs(step.cfg, step.family, steps[0],
                                    step.n_pad))
  # pylint: disable=protected-access  (the very programs the step runs)
  body = step._body.lower(params['body'], inputs)
  x_nd = body.out_info[0]
  arch_flops, aux = {}, None
  for arch in {a for s in steps for a in s}:
    # unrolled: XLA counts a scanned loop's body once, not once per block
    lowered = step._compile_arch(arch, 0, scan=False).lower(
        params['decoder'], x_nd, abstract(batch))
    aux = lowered.out_info[2]
    arch_flops[arch] = flops.lowered_flops(lowered)
  finish = step._finish.lower(
      step.abstract_state(params), inputs, (x_nd,) * step.m,
      (params['decoder'],) * step.m, (aux,) * step.m)
  # pylint: enable=protected-access
  fixed = flops.lowered_flops(body) + flops.lowered_flops(finish)
  return [fixed + sum(arch_flops[a] for a in s) for s in steps]


def run_one(run: str, ghn_name: str, compile_workers: int = 0,
            share_depths: bool = False, quick_compile: bool = False) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from logah_jax import compiles, config_base, ghn, parallel  # pylint: disable=g-import-not-at-top
  from logah_jax.arch import batching  # pylint: disable=g-import-not-at-top
  from logah_jax.train import ghn_step, ghn_training, loop, optim  # pylint: disable=g-import-not-at-top
  steps = _steps(run)
  family = steps[0][0].family
  cfg = ghn.named(ghn_name, num_classes=100)
  rng = np.random.default_rng(0)
  if family == 'vit':
    batch = {'image': rng.normal(size=(64, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 100, 64).astype(np.int32)}
  else:
    batch = {'tokens': rng.integers(0, 50257, (2, 257)).astype(np.int32)}
  lr = 3e-4 if family == 'vit' else 1e-4
  tx, _ = optim.make_optimizer(config_base.optim_section(lr), 10**6)
  n_pad = batching.bucket_size(max(ghn.num_nodes(cfg, a) for s in steps
                                   for a in s))
  mesh = parallel.make_mesh({'data': -1})
  step = ghn_step.GHNStep(cfg, family, tx, mesh, m=len(steps[0]),
                          n_pad=n_pad, compile_workers=compile_workers,
                          share_depths=([a for s in steps for a in s]
                                        if share_depths else ()),
                          compiler_options=(compiles.quick_compile_options()
                                            if quick_compile else None))
  state = step.init_state(ghn.init(cfg, family, 0))
  jax.block_until_ready(state)
  matmul_n = 2048 if jax.default_backend() == 'cpu' else 8192
  matmul_seconds = matmul_timer(matmul_n)  # compiled before counting
  arch_compiles = _ArchCompiles()
  before = compiles.snapshot()
  first_times, new_programs, seen, made = [], [], set(), set()
  first_start = time.perf_counter()
  for i, archs in enumerate(steps):  # first pass: compiles every arch once
    seen |= set(archs)
    programs_now = {step.program_arch(a) for a in archs}
    new_programs.append(len(programs_now - made))
    made |= programs_now
    t0 = time.perf_counter()
    upcoming = steps[i + 1:i + 1 + ghn_training.COMPILE_AHEAD_STEPS]
    state, metrics = step(state, archs, batch,
                          upcoming if compile_workers else ())
    loop.host_metrics(metrics)
    first_times.append(time.perf_counter() - t0)
    print(f'first pass step {len(first_times)}/{len(steps)}: '
          f'{new_programs[-1]} new programs, {first_times[-1]:.1f} s',
          file=sys.stderr, flush=True)
  first_pass = time.perf_counter() - first_start
  step.close()
  compiled = compiles.snapshot() - before
  per_arch = arch_compiles.seconds()
  assert len(per_arch) == len(made), (len(per_arch), len(made))
  times, matmul_times = [], []
  for archs in steps[1:]:  # steady state: same order, nothing to compile
    t0 = time.perf_counter()
    state, metrics = step(state, archs, batch)
    loop.host_metrics(metrics)
    times.append(time.perf_counter() - t0)
    matmul_times.append(matmul_seconds())  # the reference, at the same time
  assert (compiles.snapshot() - before).count == compiled.count, 'recompiled'
  s_step = statistics.median(times)
  # Wall-time check of the per-architecture compile seconds: steps after the
  # first (which also compiles body and finish) that compiled new programs.
  wall = [(f - s) / n for f, s, n in zip(first_times[1:], times,
                                         new_programs[1:]) if n]
  result = {
      'run': run, 'm': len(steps[0]), 's_step': s_step,
      'min': min(times), 'max': max(times),
      'arch_s': len(steps[0]) / s_step, 'compile_s': compiled.seconds,
      'compiles': compiled.count, 'first_pass_s': first_pass,
      'compile_workers': compile_workers, 'share_depths': share_depths,
      'quick_compile': quick_compile,
      'programs': len(made), 'distinct_archs': len(seen),
      'arch_compile_per_arch_s': sum(per_arch) / len(seen),
      'first_pass_s_per_arch': first_pass / len(seen),
      # the first pass beyond running its steps at the steady rate
      'first_pass_extra_s_per_arch': (first_pass - s_step * len(steps))
                                     / len(seen),
      'arch_compile_mean_s': statistics.mean(per_arch),
      'arch_compile_median_s': statistics.median(per_arch),
      'arch_compile_max_s': max(per_arch),
      'arch_compile_s': per_arch,
      'arch_compile_wall_mean_s': statistics.mean(wall) if wall else None,
      'device': str(jax.devices()[0].device_kind),
      'n_devices': jax.device_count()}
  # The FLOP count below lowers every architecture's unrolled program again
  # (over a minute on a GPU host): the timings come out first.
  print('TIMINGS ' + json.dumps(result), file=sys.stderr, flush=True)
  step_flops = _step_flops(step, state, steps[1:], batch)
  flops_s = sum(step_flops) / sum(times)
  matmul_flops = 2.0 * matmul_n**3
  # Each step's FLOP/s over the matmul's timed right after it: a drift in
  # the machine's speed moves both.
  fractions = [(f / t) / (matmul_flops / m)
               for f, t, m in zip(step_flops, times, matmul_times)]
  return dict(
      result, step_gflop=statistics.mean(step_flops) / 1e9,
      tflops=flops_s / 1e12,
      matmul_f32_tflops=matmul_flops / statistics.median(matmul_times) / 1e12,
      frac_matmul_f32=statistics.median(fractions),
      frac_matmul_f32_range=[min(fractions), max(fractions)],
      rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--runs', nargs='+', default=list(RUNS), choices=RUNS)
  p.add_argument('--ghn', default='logah-tiny')
  p.add_argument('--compile-workers', type=int, default=0,
                 help='threads compiling upcoming architectures (GHNStep)')
  p.add_argument('--share-depths', action='store_true',
                 help='one program per architecture up to depth '
                      '(train.share_depths)')
  p.add_argument('--quick-compile', action='store_true',
                 help='compile the arch programs with '
                      'compiles.quick_compile_options() (train.quick_compile)')
  p.add_argument('--child', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    from logah_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.set_xla_flag_defaults()  # as the entry point sets them
    print('RESULT ' + json.dumps(run_one(args.child, args.ghn,
                                         args.compile_workers,
                                         args.share_depths,
                                         args.quick_compile)), flush=True)
    return
  rows = []
  for run in args.runs:
    rows.append(child_result(
        [sys.executable, __file__, '--child', run, '--ghn', args.ghn,
         '--compile-workers', str(args.compile_workers)]
        + (['--share-depths'] if args.share_depths else [])
        + (['--quick-compile'] if args.quick_compile else []), run))
    print(json.dumps(rows[-1]), flush=True)
  print(f'GHN training step, {args.ghn}, {rows[0]["device"]} x '
        f'{rows[0]["n_devices"]}, {args.compile_workers} threads compiling '
        f"ahead, depths {'shared' if args.share_depths else 'not shared'}"
        f"{', quick compile' if args.quick_compile else ''}; "
        'steady state = median over the order\'s steps after each '
        'architecture compiled once')
  print('| run | s/step [min-max] | arch/s | compile s (count) | '
        'compile s/program mean/median/max (programs) | '
        'compile s per arch (archs) | first pass s | '
        'first pass - steady, per arch s | '
        'TFLOP/s | x f32 matmul | '
        'peak RSS GiB | original s/step | arch/s | GiB | x arch/s | '
        'x memory |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    o_step, o_rate, o_rss = ORIGINAL[r['run']]
    print(f"| {r['run']} | {r['s_step']:.3f} [{r['min']:.2f}-{r['max']:.2f}] "
          f"| {r['arch_s']:.3f} | {r['compile_s']:.1f} ({r['compiles']}) | "
          f"{r['arch_compile_mean_s']:.1f}/{r['arch_compile_median_s']:.1f}/"
          f"{r['arch_compile_max_s']:.1f} ({r['programs']}) | "
          f"{r['arch_compile_per_arch_s']:.1f} ({r['distinct_archs']}) | "
          f"{r['first_pass_s']:.1f} | "
          f"{r['first_pass_extra_s_per_arch']:.1f} | "
          f"{r['tflops']:.3g} | {r['frac_matmul_f32']:.1%} "
          f"[{r['frac_matmul_f32_range'][0]:.0%}-"
          f"{r['frac_matmul_f32_range'][1]:.0%}] | "
          f"{r['rss_gib']:.2f} | {o_step} | {o_rate} | {o_rss} | "
          f"{r['arch_s'] / o_rate:.2f} | {r['rss_gib'] / o_rss:.2f} |")
  print('compile s/program: trace + lower + XLA seconds of each new '
        'program in the first pass; per arch: their sum over the distinct '
        "architectures; TFLOP/s: XLA's FLOPs of "
        'the steady-state steps over their seconds; x f32 matmul: each '
        "step's FLOP/s over a float32 matmul's timed right after it, "
        'median [min-max].')


if __name__ == '__main__':
  main()
