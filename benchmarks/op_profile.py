"""Where a profiled step's device time goes, from a jax.profiler trace.

Reads the Chrome trace (`*.trace.json.gz`) that `jax.profiler.trace` writes
(e.g. `benchmarks/finetune.py --profile-dir DIR`), needs nothing beyond the
standard library, and prints per trace: the device busy time per step (the
union of kernel intervals) against the wall span, the time by kind of kernel
(matmul, attention, everything else) and the top kernels by total time.

    python benchmarks/op_profile.py DIR [--steps 3] [--top 25]

On a GPU the kernels are the events of the '/device:GPU:N' process; on a CPU,
the XLA ops of the host's XLA threads (less telling: ops run on a thread pool).
"""

import argparse
import collections
import gzip
import json
import pathlib
import re

# On CPUs XLA hands dots to YNNPACK/XNNPACK as library fusions (a dot with
# the elementwise work fused around it), named ynn_fusion.N / xnn_fusion.N.
MATMUL = re.compile(
    r'gemm|cublas|cutlass|xmma|sm\d+_|dot|matmul|nvjet|[xy]nn_fusion', re.I)
ATTENTION = re.compile(r'cudnn|fmha|flash|attention', re.I)


def kind_of(name: str) -> str:
  if ATTENTION.search(name):
    return 'attention'
  if MATMUL.search(name):
    return 'matmul'
  return 'other'


def busy_us(intervals) -> float:
  """Length of the union of [start, end) intervals."""
  total, end = 0.0, None
  for s, e in sorted(intervals):
    if end is None or s > end:
      total += e - s
      end = e
    elif e > end:
      total += e - end
      end = e
  return total


def device_events(trace: dict):
  """(place, [(name, ts, dur, is_call)]) of the device kernels, else of the
  host's XLA ops (is_call: False for an op's tail, counted in time only)."""
  events = trace['traceEvents']
  procs = {e['pid']: e['args']['name'] for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  threads = {(e['pid'], e['tid']): e['args']['name'] for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  device = [pid for pid, n in procs.items() if re.search(r'GPU|TPU', n)]
  if device:
    pid = sorted(device)[0]
    # Kernel events live on stream threads; skip the XLA-op/module summary
    # lines that some versions add beside them.
    keep = lambda e: (e['pid'] == pid and not re.search(
        r'XLA Modules|XLA Ops|Steps|Framework|Source',
        threads.get((e['pid'], e['tid']), '')))
    place = procs[pid]
  else:
    # The XLA ops of the host's threads, without the thunk executor's event
    # that encloses them; an op's 'end: NAME' tail counts as NAME.
    keep = lambda e: ('XLAEigen' in threads.get((e['pid'], e['tid']), '')
                      and e['name'] != 'ThunkExecutor::Execute')
    place = 'host XLA threads'
  return place, [(e['name'].removeprefix('end: '), e['ts'], e.get('dur', 0.0),
                  not e['name'].startswith('end: '))
                 for e in events if e.get('ph') == 'X' and keep(e)]


def report(path: pathlib.Path, steps: int, top: int) -> str:
  with gzip.open(path) as f:
    trace = json.load(f)
  place, ev = device_events(trace)
  if not ev:
    return f'{path}: no device events'
  start = min(t for _, t, _, _ in ev)
  end = max(t + d for _, t, d, _ in ev)
  busy = busy_us([(t, t + d) for _, t, d, _ in ev])
  by_name = collections.defaultdict(lambda: [0, 0.0])
  by_kind = collections.Counter()
  for name, _, dur, is_call in ev:
    by_name[name][0] += is_call
    by_name[name][1] += dur
    by_kind[kind_of(name)] += dur
  summed = sum(by_kind.values())
  run = next((q.parent.name for q in path.parents if q.name == 'plugins'),
             path.name)
  lines = [f'## {run}',
           f'{place}: {sum(c for *_, c in ev)} events; per step ({steps} '
           f'steps): wall span {(end - start) / steps / 1e3:.2f} ms, busy '
           f'{busy / steps / 1e3:.2f} ms ({busy / (end - start):.1%} of the '
           'span)',
           'by kind (summed kernel time): ' + ', '.join(
               f'{k} {v / steps / 1e3:.2f} ms ({v / summed:.1%})'
               for k, v in by_kind.most_common()),
           '', '| kernel | kind | calls/step | ms/step | share |',
           '|---|---|---|---|---|']
  ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
  for name, (count, dur) in ranked:
    short = name if len(name) <= 90 else name[:87] + '...'
    lines.append(f'| `{short}` | {kind_of(name)} | {count / steps:.3g} | '
                 f'{dur / steps / 1e3:.3f} | {dur / summed:.1%} |')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('dir', help='a --profile-dir, or one trace file')
  p.add_argument('--steps', type=int, default=3,
                 help='steps in each trace (finetune.py traces 3)')
  p.add_argument('--top', type=int, default=25)
  args = p.parse_args()
  root = pathlib.Path(args.dir)
  paths = [root] if root.is_file() else sorted(root.rglob('*.trace.json.gz'))
  if not paths:
    raise SystemExit(f'no *.trace.json.gz under {root}')
  for path in paths:
    print(report(path, args.steps, args.top), '\n')


if __name__ == '__main__':
  main()
