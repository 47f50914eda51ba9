"""Will it fit? Per-device memory of a training step, from XLA, with no device.

Each step is compiled ahead of time against abstract inputs
(ShapeDtypeStructs carrying their shardings) on a fake CPU mesh of N devices,
and XLA's memory analysis of the compiled per-device program gives the bytes
one device needs. Nothing is allocated or run, so 64 fake devices fit on a
laptop; each device count is a fresh process, because the fake device count
is fixed when jax starts.

Two models:

* `gpt2`: fine-tuning GPT-2-L (`finetune_step.FinetuneStep`, FSDP params,
  AdamW + clipping as `configs/finetune.py` builds it), T = 1024. Peak =
  argument + output - alias + temp of the one jitted step.
* `ghn`: GHN training of `configs/paper_vits.py` (LoGAH-L on ViTs-1K,
  CIFAR-100). `ghn_step.GHNStep` is three jitted programs called in turn, so
  the step's peak is the largest of three phases, each its program's own
  argument + output - alias + temp plus the buffers the step holds alive
  outside it (the state, the m node blocks, the batch, the gradients of the
  architectures already done); see `ghn_rows`.

    PYTHONPATH=. .venv/bin/python benchmarks/memory.py gpt2 --devices 8
    PYTHONPATH=. .venv/bin/python benchmarks/memory.py gpt2 --devices 64 \
        --per_device 1 2 --depths 2 4   # extrapolated in depth, see gpt2_rows
    PYTHONPATH=. .venv/bin/python benchmarks/memory.py ghn --devices 8 64

Each prints a markdown table; `--json FILE` keeps the rows and `--rows FILE
...` prints the table of saved rows again without compiling.

CPU compiler caveat: GPU and TPU compilers schedule and fuse differently,
so the figures are estimates of what the accelerators need. The programs
are traced with the attention that GPUs and TPUs run in float32 (XLA's,
which stores the T x T probabilities), not the CPUs' own
(`models.attention`, which stores none); `--attention-as cpu` analyses the
CPUs' programs instead.
"""

# jax is imported inside functions: the fake device count must be in
# XLA_FLAGS before jax starts, and the parent process never starts it.
# pylint: disable=g-import-not-at-top

import argparse
import json
import math
import os
import subprocess
import sys
import time

GIB = 2**30
DEVICE_GIB = (16, 40, 80)


def _stats(compiled) -> dict:
  """Bytes of a compiled program's memory analysis, and its peak."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f'{k}_size_in_bytes'))
         for k in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  out['peak'] = (out['argument'] + out['output'] - out['alias'] + out['temp']
                 + out['generated_code'])
  return out


def _per_device_bytes(tree) -> int:
  """Bytes one device holds of abstract arrays carrying shardings."""
  import jax
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def _emit(row: dict):
  """One result to the parent (stdout), and progress to the terminal."""
  print('ROW ' + json.dumps(row), flush=True)
  print(f"  {row['devices']} devices, batch {row['batch']}: peak "
        f"{row['peak'] / GIB:.2f} GiB ({row['compile_s']:.0f} s)",
        file=sys.stderr, flush=True)


# ------------------------------------------------------------------ GPT-2-L

def gpt2_rows(args, n: int):
  """One row per per-device batch: FinetuneStep compiled on abstract inputs.

  With `--depths d1 d2 ...` the full-depth model is not compiled: the same
  model at those depths is, and every byte count is extrapolated to the full
  depth by a least-squares line in depth. The stack is unrolled, so each
  block adds the same saved activations and the same parameter shards; on 8
  devices depths 2 and 4 predict the compiled 36-block GPT-2-L within 2%.
  It exists because the CPU compiler needs more than 15 minutes for the full
  GPT-2-L step on 64 fake devices (about 2 on 8).
  """
  from logah_jax import arch as arch_lib
  from logah_jax.arch.configs import replace_fields
  arch = arch_lib.parse(args.arch)
  for per_device in args.per_device:
    t0 = time.perf_counter()
    if not args.depths:
      stats, state = _gpt2_stats(args, arch, n, per_device)
      how = 'compiled'
    else:
      fits = [_gpt2_stats(args, replace_fields(arch, depth=d), n, per_device)
              for d in args.depths]
      stats = {k: _line_at(args.depths, [f[0][k] for f in fits], arch.depth)
               for k in fits[0][0]}
      state = _line_at(args.depths, [f[1] for f in fits], arch.depth)
      how = 'depths ' + ','.join(map(str, args.depths))
    if args.scan_blocks:
      how += ', blocks scanned'
    _emit(dict(stats, devices=n, per_device=per_device, batch=per_device * n,
               state=state, what=args.arch, how=how,
               compile_s=time.perf_counter() - t0))


def _line_at(xs, ys, x) -> int:
  """The least-squares line through (xs, ys), evaluated at x."""
  mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
  slope = (sum((a - mx) * (b - my) for a, b in zip(xs, ys))
           / sum((a - mx) ** 2 for a in xs))
  return int(round(my + slope * (x - mx)))


def _gpt2_stats(args, arch, n: int, per_device: int):
  """(memory stats, per-device state bytes) of one compiled fine-tuning step."""
  import jax
  import jax.numpy as jnp
  from logah_jax import config_base, parallel
  from logah_jax.train import finetune_step, optim
  # The optimizer of configs/finetune.py: AdamW, weight decay, clip 1.
  tx, _ = optim.make_optimizer(config_base.optim_section(
      1e-4, warmup_steps=10, weight_decay=5e-2, clip_norm=1.0), 1000)
  mesh = parallel.make_mesh({parallel.DATA: -1})
  stepper = finetune_step.FinetuneStep(arch, tx, mesh, param_rule=args.rule,
                                       scan_blocks=args.scan_blocks)
  state = stepper.abstract_state()
  batch = {'tokens': jax.ShapeDtypeStruct(
      (per_device * n, args.seq_len + 1), jnp.int32,
      sharding=parallel.data_sharded(mesh))}
  # pylint: disable-next=protected-access  (the very program training runs)
  stats = _stats(stepper._step.lower(state, batch).compile())
  return stats, _per_device_bytes(state)


# ---------------------------------------------------------- GHN training

def _paper_run(args, batch_size: int, m: int):
  """The GHNRun of configs/paper_vits.py, as `main.py` would build it."""
  import importlib.util
  from logah_jax.train import ghn_training
  spec = importlib.util.spec_from_file_location('paper_vits', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f'ghn={args.ghn},m={m},dataset={args.dataset}')
  config.data.batch_size = batch_size
  return ghn_training.build_run(config)


def _candidates(run, how_many: int) -> list:
  """Architectures of the run's pool most likely to need the most memory.

  A ViT's saved activations per example grow like depth x T x (~17 width +
  2 heads x T) floats (T tokens; the second term is the attention scores), so
  the top `how_many` by that proxy, plus the pool's largest target (most
  params, what the decoder writes) and `sampler.deepest()` (most graph
  nodes), are compiled and the worst one is kept.
  """
  from logah_jax.arch import counts
  pool = run.sampler.candidates()

  def activations(a):
    t = a.seq_len
    return a.depth * t * (17 * a.width + 2 * a.heads * t)
  picked = sorted(pool, key=activations, reverse=True)[:how_many]
  picked.append(max(pool, key=counts.num_params))
  picked.append(run.sampler.deepest()[0])
  return list(dict.fromkeys(picked))


def ghn_rows(args, n: int):
  """One row per (m, batch): the largest phase of a GHNStep step.

  Per device (everything is replicated except the batch, split over 'data'):
    body:   state + inputs + out(body) + temp(body)
    arch:   state + inputs + xs + batch + m x out(arch) + temp(arch)
            (the last of the m architectures: the m - 1 before it keep their
            gradients alive until `finish`; all m are taken to be the worst)
    finish: peak(finish) + xs + batch (its arguments are the state, inputs and
            the m gradients; the new state aliases the donated one)
  where peak(p) = argument + output - alias + temp of program p.
  """
  import jax
  from logah_jax import arch as arch_lib
  from logah_jax import ghn as ghn_lib
  from logah_jax import parallel
  from logah_jax.train import flops, ghn_step
  worst = None  # chosen once per process, at its first (m, batch)
  arch_memo = {}  # (arch, batch) -> (stats, out_info) of its program
  for m in args.m:
    for batch_size in args.batch:
      if batch_size % n:
        print(f'skip batch {batch_size}: not divisible by {n} devices',
              file=sys.stderr)
        continue
      run = _paper_run(args, batch_size, m)
      mesh = run.mesh()
      stepper = ghn_step.GHNStep(
          run.ghn_cfg, run.family, run.tx, mesh, m=m,
          n_pad=run.sampler.node_bucket(run.ghn_cfg.cutoff), gamma=run.gamma,
          label_smoothing=run.label_smoothing)
      rep = parallel.replicated(mesh)
      params = parallel.with_shardings(jax.eval_shape(
          lambda run=run: ghn_lib.init(run.ghn_cfg, run.family, run.seed)),
          rep)
      state = stepper.abstract_state(params)
      group = stepper.groups[0]  # the arch groups' meshes are all alike
      batch = parallel.with_shardings(
          flops.abstract_batch(run.sampler.deepest()[0], batch_size),
          parallel.data_sharded(group))
      t0 = time.perf_counter()
      # pylint: disable=protected-access  (the very programs training runs)
      if worst is None and args.target:
        worst = arch_lib.parse(args.target)
      if worst is None:
        scored = []
        for a in _candidates(run, args.candidates):
          lowered = _arch_lowered(stepper, a, params, batch, group)
          stats = _stats(lowered.compile())
          arch_memo[a, batch_size] = (stats, lowered.out_info)
          print(f'  candidate {a.name}: arch program peak '
                f'{stats["peak"] / GIB:.2f} GiB', file=sys.stderr, flush=True)
          scored.append((stats['peak'], a))
        worst = max(scored, key=lambda pa: pa[0])[1]
      arch = worst
      inputs = parallel.with_shardings(ghn_lib.make_inputs(  # numpy, small
          run.ghn_cfg, run.family, [arch] * m, stepper.n_pad), rep)
      body = stepper._body.lower(params['body'], inputs)
      xs = parallel.with_shardings(body.out_info, rep)
      body = _stats(body.compile())
      if (arch, batch_size) not in arch_memo:  # its program ignores m
        lowered = _arch_lowered(stepper, arch, params, batch, group)
        arch_memo[arch, batch_size] = (_stats(lowered.compile()),
                                       lowered.out_info)
      archp, out_info = arch_memo[arch, batch_size]
      g_dec, g_x, aux = (parallel.with_shardings(o, rep) for o in out_info)
      finish = _stats(stepper._finish.lower(
          state, inputs, (g_x,) * m, (g_dec,) * m, (aux,) * m).compile())
      # pylint: enable=protected-access
      s_bytes, in_bytes = _per_device_bytes(state), _per_device_bytes(inputs)
      xs_bytes, b_bytes = _per_device_bytes(xs), _per_device_bytes(batch)
      phases = {
          'body': s_bytes + in_bytes + body['output'] + body['temp'],
          'arch': (s_bytes + in_bytes + xs_bytes + b_bytes
                   + m * archp['output'] + archp['temp']),
          'finish': finish['peak'] + xs_bytes + b_bytes,
      }
      phase = max(phases, key=phases.get)
      _emit(dict(devices=n, per_device=batch_size // n, batch=batch_size, m=m,
                 what=arch.name, state=s_bytes, phase=phase,
                 peak=phases[phase], phases=phases,
                 temp={'body': body['temp'], 'arch': archp['temp'],
                       'finish': finish['temp']},
                 compile_s=time.perf_counter() - t0))


def _arch_lowered(stepper, arch, params, batch, group):
  """One architecture's program (decoder, target fwd+bwd) on abstract inputs."""
  import jax
  import jax.numpy as jnp
  from logah_jax import parallel
  rep = parallel.replicated(group)
  x_nd = jax.ShapeDtypeStruct((stepper.n_pad, stepper.cfg.hid), jnp.float32,
                              sharding=rep)
  decoder = parallel.with_shardings(params['decoder'], rep)
  # pylint: disable-next=protected-access
  return stepper._arch_program(arch, 0).lower(decoder, x_nd, batch)


# ------------------------------------------------------------------ driver

def _child(args):
  n = args.child
  import jax
  from logah_jax.models import layers
  if jax.device_count() != n:
    sys.exit(f'asked for {n} fake devices, jax sees {jax.device_count()}')
  with layers.attention_as_on(args.attention_as):
    (gpt2_rows if args.model == 'gpt2' else ghn_rows)(args, n)


def _run_count(argv: list[str], n: int) -> list[dict]:
  """Runs this script for `n` fake CPU devices in a fresh process."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={n}'))
  t0 = time.perf_counter()
  out = subprocess.run([sys.executable, __file__, *argv, '--child', str(n)],
                       env=env, stdout=subprocess.PIPE, text=True, check=False)
  rows = [json.loads(l[4:]) for l in out.stdout.splitlines()
          if l.startswith('ROW ')]
  print(f'{n} devices: {len(rows)} rows in {time.perf_counter() - t0:.0f} s',
        file=sys.stderr, flush=True)
  if out.returncode:
    sys.exit(f'{n} devices failed (exit {out.returncode})')
  return rows


def _fits(peak: int, headroom: float) -> list[str]:
  return ['yes' if peak <= headroom * g * GIB else 'no' for g in DEVICE_GIB]


def table(rows: list[dict], model: str, headroom: float) -> str:
  """Markdown: one row per configuration, with a fit mark per device size."""
  fits = ' | '.join(f'{g} GiB' for g in DEVICE_GIB)
  if model == 'gpt2':
    lines = [f'| devices | batch / device | global batch | state GiB | '
             f'temp GiB | peak GiB | {fits} | how |',
             '|---|---|---|---|---|---|' + '---|' * (len(DEVICE_GIB) + 1)]
    for r in rows:
      lines.append(
          f"| {r['devices']} | {r['per_device']} | {r['batch']} | "
          f"{r['state'] / GIB:.2f} | {r['temp'] / GIB:.2f} | "
          f"{r['peak'] / GIB:.2f} | " + ' | '.join(_fits(r['peak'], headroom))
          + f" | {r.get('how', 'compiled')} |")
  else:
    lines = [f'| devices | m | batch (/ device) | state GiB | body / arch / '
             f'finish GiB | peak GiB | {fits} |',
             '|---|---|---|---|---|---|' + '---|' * len(DEVICE_GIB)]
    for r in rows:
      p = r['phases']
      lines.append(
          f"| {r['devices']} | {r['m']} | {r['batch']} ({r['per_device']}) | "
          f"{r['state'] / GIB:.2f} | {p['body'] / GIB:.2f} / "
          f"{p['arch'] / GIB:.2f} / {p['finish'] / GIB:.2f} | "
          f"{r['peak'] / GIB:.2f} | " + ' | '.join(_fits(r['peak'], headroom))
          + ' |')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('model', choices=('gpt2', 'ghn'))
  p.add_argument('--devices', type=int, nargs='+', default=[8],
                 help='fake device counts, one process each')
  p.add_argument('--headroom', type=float, default=0.9,
                 help='fits when peak <= this fraction of the device memory')
  p.add_argument('--attention-as', default='gpu', choices=('gpu', 'tpu', 'cpu'),
                 help='trace attention as this backend picks it (float32: '
                      "XLA's on GPUs and TPUs)")
  p.add_argument('--json', help='also write the rows to this file')
  p.add_argument('--rows', nargs='+',
                 help='print the table of rows saved by --json; no compiling')
  g = p.add_argument_group('gpt2')
  g.add_argument('--arch', default='gpt2-large')
  g.add_argument('--seq_len', type=int, default=1024)
  g.add_argument('--per_device', type=int, nargs='+', default=[1, 2, 4, 8])
  g.add_argument('--rule', default='fsdp', choices=('fsdp', 'replicate'))
  g.add_argument('--scan_blocks', action='store_true',
                 help='blocks stacked and run as one scan (config.scan_blocks)')
  g.add_argument('--depths', type=int, nargs='*', default=[],
                 help='compile these depths and extrapolate to the full one')
  g = p.add_argument_group('ghn')
  g.add_argument('--config', default='configs/paper_vits.py')
  g.add_argument('--ghn', default='logah-large')
  g.add_argument('--dataset', default='cifar100')
  g.add_argument('--batch', type=int, nargs='+', default=[64, 128, 256])
  g.add_argument('--m', type=int, nargs='+', default=[1, 4])
  g.add_argument('--candidates', type=int, default=2,
                 help='architectures compiled (by the activation proxy) '
                      'before the worst one is kept')
  g.add_argument('--target', default='',
                 help='skip that search: this architecture (arch.parse spec)')
  p.add_argument('--child', type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    _child(args)
    return
  rows = []
  if args.rows:
    for path in args.rows:
      with open(path) as f:
        rows += json.load(f)
  else:
    for n in args.devices:
      rows += _run_count(sys.argv[1:], n)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  if args.model == 'ghn' and rows:
    print(f'GHN step of {args.config} ({args.ghn}, {args.dataset}); worst '
          f'architecture {rows[0]["what"]}; phases per device (see ghn_rows)')
  elif rows:
    print(f'{args.arch} fine-tuning step, T={args.seq_len}, {args.rule} '
          'params, float32, AdamW')
  print(f'fits: peak <= {args.headroom:.0%} of the device memory; CPU '
        'compiler on a fake mesh')
  print(table(rows, args.model, args.headroom))


if __name__ == '__main__':
  main()
