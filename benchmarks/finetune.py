"""Throughput of a fine-tuning step: GPT-2 small/medium/large and ViT-B/16.

Runs the project's own training step (`train.finetune_step.FinetuneStep`:
forward, backward, AdamW with global-norm clipping at 1, the guarded update)
on a random batch that is placed on the devices once, so the input pipeline
is not measured. Each (target, dtype) runs in a fresh process: one target's
memory does not carry into the next, and one that fails (out of memory, say)
is a row with its error instead of the end of the benchmark.

Per run: the first call (trace + lower + XLA compile + one step; compile s =
first call - the median step), `--warmup` steps, then `--steps` timed steps,
each blocked on (median s/step: the per-step latency), then `--steps` more
back to back with one block at the end (b2b, their mean), then 2 x `--steps`
back to back the same way. A run of steps dispatched back to back starts
with the device idle while the host prepares the first one; the difference
of the two runs over `--steps` cancels that start-up and gives the steady
time per step of a long training loop (steady; start-up s: what remains of
the first run, b2b x steps - steady x steps). Tokens/s is B x T per step for
GPT-2 (T = --seq-len), images/s for ViT.

FLOPs convention (`logah_jax.train.flops`): a multiply-add is 2 FLOPs, only
matmul-like work is counted (dense layers, the patch conv, attention's two
batched matmuls over the full T x T matrix, the LM head), and a training step
is 3 x the forward (backward = 2 x forward); the optimizer update and the
elementwise ops are not counted, nor the recomputation that --remat adds.
Also printed: XLA's own count of the lowered step (all ops, remat included;
with --scan-blocks, that of the same step with its blocks unrolled, because
XLA counts a loop's body once) and its ratio to the analytic one, and for
GPT-2 the per-token formula 6 (12 L d^2 + V d) + 12 L d T (L depth, d width,
V vocabulary, T sequence).
Model TFLOP/s = analytic FLOPs / median s/step; MFU = that / the dense peak
of the device in the step's dtype (`reference.PEAK_TFLOPS`, or
--peak-tflops: a float32 step is measured against the TF32 peak); MFU b2b
and MFU steady use the b2b and steady s/step instead. Every
device also times a plain matmul right after each blocked step (float32
2048^3 on CPU, float32 and bfloat16 8192^3 on GPU/TPU): the median over
those steps of the step's FLOP/s over the matmul's is the CPU's stand-in
for MFU, steady on a machine whose speed drifts.

    .venv/bin/python benchmarks/finetune.py                    # all targets
    .venv/bin/python benchmarks/finetune.py --targets gpt2-small \\
        --dtype float32 bfloat16 --batch gpt2-small=16
    .venv/bin/python benchmarks/finetune.py --targets gpt2-large --remat \\
        --json-out /tmp/finetune.json
    # blocks stacked and scanned (config.scan_blocks) beside unrolled ones:
    .venv/bin/python benchmarks/finetune.py --targets gpt2-medium \\
        --scan-blocks both
    # a small smoke run on a CPU:
    .venv/bin/python benchmarks/finetune.py --targets gpt2-small \\
        --batch gpt2-small=1 --seq-len 64 --steps 2 --warmup 1
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from reference import matmul_timer
from reference import peak_tflops

from logah_jax import host_memory

TARGETS = ('gpt2-small', 'gpt2-medium', 'gpt2-large', 'vit-b/16')
DEFAULT_BATCH = {'gpt2': 8, 'vit': 64}


def _batch_sizes(specs):
  """--batch values: 'N' (every target) or 'target=N' -> (default, {t: N})."""
  default, per = None, {}
  for spec in specs or []:
    name, sep, value = spec.rpartition('=')
    if sep:
      per[name] = int(value)
    else:
      default = int(value)
  return default, per


def per_token_formula_flops(arch, seq_len: int) -> float:
  """6 (12 L d^2 + V d) + 12 L d T: GPT-2 training FLOPs per token."""
  l, d = arch.depth, arch.width
  return 6.0 * (12 * l * d * d + arch.vocab_size * d) + 12.0 * l * d * seq_len


def run_one(name: str, dtype_arg: str, batch_size: int, seq_len: int,
            remat: bool, steps: int, warmup: int, peak_arg,
            profile_dir=None, scan_blocks: bool = False) -> dict:
  """One (target, dtype) in this process; returns the result row."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from logah_jax import arch as arch_lib, compiles, config_base, models, parallel  # pylint: disable=g-import-not-at-top
  from logah_jax.train import finetune_step, flops, optim  # pylint: disable=g-import-not-at-top
  from logah_jax.train.compute import Compute, resolve_dtype  # pylint: disable=g-import-not-at-top

  cfg = arch_lib.named(name)
  dtype = resolve_dtype(dtype_arg, prefix='--dtype')
  dtype_name = jnp.dtype(dtype).name
  device_kind = str(jax.devices()[0].device_kind)
  backend = jax.default_backend()
  is_gpt2 = cfg.family == 'gpt2'
  t = seq_len if is_gpt2 else cfg.seq_len
  row = {'target': name, 'dtype': dtype_name, 'remat': remat,
         'scan_blocks': scan_blocks,
         'batch': batch_size, 'seq_len': t, 'params': arch_lib.num_params(cfg),
         'device': device_kind, 'backend': backend,
         'n_devices': jax.device_count(), 'jax': jax.__version__}

  tx, _ = optim.make_optimizer(config_base.optim_section(  # configs/finetune
      1e-4, warmup_steps=50, weight_decay=5e-2, clip_norm=1.0), 10**6,
                               prefix='finetune.optim')
  mesh = parallel.make_mesh({parallel.DATA: -1})
  compute = Compute(dtype, remat)
  stepper = finetune_step.FinetuneStep(cfg, tx, mesh, compute=compute,
                                       scan_blocks=scan_blocks)
  state = stepper.init_state(models.init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(0)
  if is_gpt2:
    host = {'tokens': rng.integers(0, cfg.vocab_size, (batch_size, t + 1),
                                   dtype=np.int32)}
  else:
    s = cfg.image_size
    host = {'image': rng.normal(size=(batch_size, s, s, cfg.channels)
                                ).astype(np.float32),
            'label': rng.integers(0, cfg.num_classes, batch_size,
                                  dtype=np.int32)}
  batch = jax.block_until_ready(parallel.shard_batch(mesh, host))
  jax.block_until_ready(state)

  # The matmul references, timed after each blocked step (compiled first,
  # so that they do not count as the step's recompiles).
  on_cpu = backend == 'cpu'
  mm_n = 2048 if on_cpu else 8192
  mm_timers = {'f32': matmul_timer(mm_n, jnp.float32)}
  if not on_cpu:
    mm_timers['bf16'] = matmul_timer(mm_n, jnp.bfloat16)
  mm_times = {k: [] for k in mm_timers}

  before = compiles.snapshot()
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(stepper(state, batch))
  first_call = time.perf_counter() - t0
  compiled = compiles.snapshot() - before
  for _ in range(warmup):
    state, metrics = jax.block_until_ready(stepper(state, batch))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(stepper(state, batch))
    times.append(time.perf_counter() - t0)
    for k, timer in mm_timers.items():
      mm_times[k].append(timer())
  runs = []  # seconds of `steps`, then 2 x `steps`, back to back
  for n in (steps, 2 * steps):
    t0 = time.perf_counter()
    for _ in range(n):
      state, metrics = stepper(state, batch)
    jax.block_until_ready((state, metrics))
    runs.append(time.perf_counter() - t0)
  run_1, run_2 = runs
  back_to_back = run_1 / steps
  # None where noise makes the longer run no longer than the shorter one
  steady = (run_2 - run_1) / steps if run_2 > run_1 else None
  if profile_dir:  # a device trace of 3 back-to-back steps (op_profile.py)
    with jax.profiler.trace(profile_dir):
      for _ in range(3):
        state, metrics = stepper(state, batch)
      jax.block_until_ready((state, metrics))
  loss = float(metrics['loss'])
  recompiled = (compiles.snapshot() - before).count - compiled.count

  # XLA's count of the step as lowered, before optimisation: on GPUs the
  # compiled program's count leaves out the matmuls that became cuBLAS or
  # cuDNN calls (an H100 reported 0.19-0.52 x the analytic FLOPs).
  # XLA counts a loop's body once, so scanned blocks are counted in the same
  # step with its blocks unrolled, lowered on abstract values (no compile).
  counted = (finetune_step.FinetuneStep(cfg, tx, mesh, compute=compute)
             if scan_blocks else stepper)
  # pylint: disable=protected-access
  lowered = counted._step.lower(counted.abstract_state(), batch)
  # pylint: enable=protected-access
  xla = flops.lowered_flops(lowered)
  mem = None
  stats = getattr(jax.devices()[0], 'memory_stats', lambda: None)()
  if stats and 'peak_bytes_in_use' in stats:
    mem = stats['peak_bytes_in_use'] / 2**30
  del state, metrics, batch

  s_step = statistics.median(times)
  analytic = flops.train_step_flops(cfg, batch_size, t if is_gpt2 else None)
  achieved = analytic / s_step
  peak = peak_arg if peak_arg else peak_tflops(device_kind, dtype_name)
  mm_flops = 2.0 * mm_n**3

  def matmul_stats(kind):
    """(median matmul FLOP/s, median over the blocked steps of the step's
    FLOP/s over the matmul's timed right after it), or (None, None)."""
    if kind not in mm_times:
      return None, None
    fractions = [(analytic / t) / (mm_flops / m)
                 for t, m in zip(times, mm_times[kind])]
    return (mm_flops / statistics.median(mm_times[kind]),
            statistics.median(fractions))
  mm_f32, frac_f32 = matmul_stats('f32')
  mm_bf16, frac_bf16 = matmul_stats('bf16')
  row.update({
      's_step': s_step, 'min': min(times), 'max': max(times),
      's_step_back_to_back': back_to_back,
      'items_s': batch_size * (t if is_gpt2 else 1) / s_step,
      'items_s_back_to_back': batch_size * (t if is_gpt2 else 1) / back_to_back,
      's_step_steady': steady,
      'startup_s': run_1 - steps * steady if steady else None,
      'items_s_steady': (batch_size * (t if is_gpt2 else 1) / steady
                         if steady else None),
      'unit': 'tokens/s' if is_gpt2 else 'images/s',
      'first_call_s': first_call, 'compile_s': first_call - s_step,
      'xla_compile_s': compiled.seconds, 'compiles': compiled.count,
      'recompiles': recompiled, 'loss': loss,
      'flops_analytic': analytic, 'flops_xla': xla,
      'analytic_over_xla': analytic / xla if xla else None,
      'flops_per_token_formula': (per_token_formula_flops(cfg, t) * batch_size * t
                      if is_gpt2 else None),
      'tflops': achieved / 1e12, 'peak_tflops': peak,
      'mfu': achieved / (peak * 1e12) if peak else None,
      'mfu_back_to_back': (analytic / back_to_back / (peak * 1e12)
                           if peak else None),
      'mfu_steady': (analytic / steady / (peak * 1e12)
                     if peak and steady else None),
      'matmul_f32_tflops': mm_f32 / 1e12,
      'frac_matmul_f32': frac_f32,
      'matmul_bf16_tflops': mm_bf16 / 1e12 if mm_bf16 else None,
      'frac_matmul_bf16': frac_bf16,
      'peak_device_gib': mem,
      'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 2**20,
  })
  if row['flops_per_token_formula']:
    row['per_token_formula_over_analytic'] = row['flops_per_token_formula'] / analytic
  return row


def _fmt(x, spec, none='-'):
  return none if x is None else format(x, spec)


def _table(rows) -> str:
  lines = [
      '| target | dtype | B | T | s/step [min-max] | s/step b2b | '
      's/step steady | start-up s | items/s | items/s b2b | items/s steady | '
      'compile s | TFLOP/s | MFU | MFU b2b | MFU steady | x f32 matmul | '
      'x bf16 matmul | analytic/XLA | per-token formula/analytic | peak GiB |',
      '|' + '---|' * 21]
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r['target']}"
                   f"{' scanned' if r.get('scan_blocks') else ''} | "
                   f"{r['dtype']} | {r.get('batch', '-')} "
                   f"| {r.get('seq_len', '-')} | error: {r['error']} |"
                   + ' |' * 16)
      continue
    gib = r['peak_device_gib'] if r['peak_device_gib'] is not None else (
        r['peak_rss_gib'])
    lines.append(
        f"| {r['target']}{' remat' if r['remat'] else ''}"
        f"{' scanned' if r.get('scan_blocks') else ''} | {r['dtype']} | "
        f"{r['batch']} | {r['seq_len']} | {r['s_step']:.4g} "
        f"[{r['min']:.3g}-{r['max']:.3g}] | {r['s_step_back_to_back']:.4g} | "
        f"{_fmt(r['s_step_steady'], '.4g')} | "
        f"{_fmt(r['startup_s'], '.3g')} | {r['items_s']:.4g} {r['unit']} | "
        f"{r['items_s_back_to_back']:.4g} | "
        f"{_fmt(r['items_s_steady'], '.4g')} | {r['compile_s']:.1f} | "
        f"{r['tflops']:.3g} | {_fmt(r['mfu'], '.1%')} | "
        f"{_fmt(r['mfu_back_to_back'], '.1%')} | "
        f"{_fmt(r['mfu_steady'], '.1%')} | "
        f"{r['frac_matmul_f32']:.1%} | {_fmt(r['frac_matmul_bf16'], '.1%')} | "
        f"{_fmt(r['analytic_over_xla'], '.3f')} | "
        f"{_fmt(r.get('per_token_formula_over_analytic'), '.3f')} | {gib:.2f} |")
  return '\n'.join(lines)


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--targets', nargs='+', default=list(TARGETS),
                 help='names for logah_jax.arch.named (default: %(default)s)')
  p.add_argument('--batch', nargs='*', metavar='[TARGET=]N',
                 help='batch size for every target, or per target '
                 f'(default: GPT-2 {DEFAULT_BATCH["gpt2"]}, ViT '
                 f'{DEFAULT_BATCH["vit"]})')
  p.add_argument('--seq-len', type=int, default=1024,
                 help='GPT-2 tokens per example (default %(default)s)')
  p.add_argument('--dtype', nargs='+', default=['auto'],
                 choices=('auto', 'float32', 'bfloat16'),
                 help='compute dtype(s), each a separate run; auto = '
                 'bfloat16 on GPU/TPU, float32 on CPU')
  p.add_argument('--remat', action='store_true',
                 help='rematerialise each block')
  p.add_argument('--scan-blocks', choices=('off', 'on', 'both'),
                 default='off', help='blocks stacked and run as one scan '
                 "(config.scan_blocks); 'both': a run each way")
  p.add_argument('--steps', type=int, default=8, help='timed steps')
  p.add_argument('--warmup', type=int, default=2,
                 help='untimed steps after the first call')
  p.add_argument('--peak-tflops', type=float, default=None,
                 help='peak for MFU, every dtype (default: reference.PEAK_TFLOPS '
                 'of the detected device in the step dtype)')
  p.add_argument('--json-out', help='also write all results to this file')
  p.add_argument('--profile-dir', help='also write a profiler trace of 3 '
                 'steps per run under DIR/TARGET-DTYPE (read it with '
                 'benchmarks/op_profile.py)')
  p.add_argument('--timeout', type=float, default=None,
                 help='seconds per (target, dtype, scan) process')
  p.add_argument('--one', nargs=4,
                 metavar=('TARGET', 'DTYPE', 'BATCH', 'SCAN'),
                 help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one:
    from logah_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.set_xla_flag_defaults()  # as the entry point sets them
    name, dtype, batch, scan = args.one
    scan = scan == 'on'
    try:
      profile = (os.path.join(args.profile_dir,
                              f"{name.replace('/', '_')}-{dtype}"
                              + ('-scan' if scan else ''))
                 if args.profile_dir else None)
      row = run_one(name, dtype, int(batch), args.seq_len, args.remat,
                    args.steps, args.warmup, args.peak_tflops, profile,
                    scan_blocks=scan)
    except Exception as e:  # pylint: disable=broad-except
      row = {'target': name, 'dtype': dtype, 'batch': int(batch),
             'scan_blocks': scan,
             'error': (f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
                       if str(e) else type(e).__name__).replace('|', '/')}
    print('RESULT ' + json.dumps(row), flush=True)
    return

  default, per = _batch_sizes(args.batch)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [root] + [q for q in [os.environ.get('PYTHONPATH')] if q])}
  rows = []
  for name in args.targets:
    family = 'vit' if name.startswith('vit') else 'gpt2'
    b = per.get(name, default or DEFAULT_BATCH[family])
    scans = ('off', 'on') if args.scan_blocks == 'both' else (
        args.scan_blocks,)
    for dtype, scan in [(d, s) for d in args.dtype for s in scans]:
      cmd = [sys.executable, __file__, '--one', name, dtype, str(b), scan,
             '--seq-len', str(args.seq_len), '--steps', str(args.steps),
             '--warmup', str(args.warmup)]
      if args.remat:
        cmd.append('--remat')
      if args.peak_tflops:
        cmd += ['--peak-tflops', str(args.peak_tflops)]
      if args.profile_dir:
        cmd += ['--profile-dir', args.profile_dir]
      try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             check=False, timeout=args.timeout)
        line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
        if line:
          row = json.loads(line[-1][len('RESULT '):])
        else:  # killed (the OOM killer, a crash in XLA): no row was printed
          tail = [l for l in out.stderr.splitlines() if l.strip()][-1:]
          row = {'target': name, 'dtype': dtype, 'batch': b,
                 'scan_blocks': scan == 'on',
                 'error': (f'exit {out.returncode}: '
                           + (tail[0][:300] if tail else 'no output')
                           ).replace('|', '/')}
          print(out.stderr[-3000:], file=sys.stderr)
      except subprocess.TimeoutExpired:
        row = {'target': name, 'dtype': dtype, 'batch': b,
               'scan_blocks': scan == 'on',
               'error': f'timed out after {args.timeout} s'}
      print(json.dumps(row), flush=True)
      rows.append(row)
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(rows, f, indent=1)
  ok = [r for r in rows if 'error' not in r]
  if ok:
    r = ok[0]
    print(f"\nFine-tuning step on {r['device']} x {r['n_devices']} "
          f"({r['backend']}), jax {r['jax']}; {args.steps} timed steps after "
          f"{args.warmup} warm-up")
  print(_table(rows))
  print('s/step: median, each step blocked; b2b: mean of back-to-back steps, '
        'one block at the end; steady: (time of 2 x steps back to back - time '
        'of steps back to back) / steps, without the start-up of a run from '
        "an idle device (start-up s; '-' where noise made the longer run no "
        "longer). TFLOP/s: analytic matmul FLOPs (3 x forward) "
        '/ median s/step; MFU against the dense peak of the dtype (MFU '
        'b2b, MFU steady, items/s b2b and steady: at those s/step); x f32/bf16 '
        "matmul: each blocked step's TFLOP/s over a plain float32/bfloat16 "
        'matmul timed right after it, median (bf16 on GPU/TPU only). '
        'compile s: first call - median step. analytic/XLA < 1: XLA also '
        'counts elementwise ops (and remat recomputation). peak GiB: device '
        'peak where reported, else process RSS.')


if __name__ == '__main__':
  main()
