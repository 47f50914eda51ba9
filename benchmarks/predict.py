"""Speed and memory of parameter prediction, against the original PyTorch code.

Each target runs in a fresh process (as the reference figures were taken), so
peak RSS and the cold-process time (imports, GHN init, graph, compilation and
prediction) are those of a user's one-off `predict` call. Also printed: the
first call (graph + compile + predict) and the steady state (median of 3).

    .venv/bin/python benchmarks/predict.py                  # all targets
    .venv/bin/python benchmarks/predict.py --targets gpt2-large-untied
    .venv/bin/python benchmarks/predict.py --targets gpt2-large-untied --from-saved
    .venv/bin/python benchmarks/predict.py --targets gpt2-large-untied --from-saved --fill decoder

`--from-saved` measures what a user of a trained GHN runs: a first process
saves an untrained GHN as GHN training saves it (on GPTs-1K or ViTs-1K), and
the measured process restores it with `ghn.load` instead of initialising one
(`init_s` is then the restore). The GHN then knows the widest architecture of
its pool, so targets wider than that are filled as `ghn.load` fills them.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from logah_jax import host_memory

_START = time.perf_counter()

# The original PyTorch LoGAH (LoGAH-Tiny, torch 2.13 CPU), measured on a 2-core
# machine of the same kind: end-to-end seconds (build model + graph + predict)
# and peak RSS (GiB).
ORIGINAL = {
    'gpt2-small-untied': (6.60, 2.93),
    'gpt2-large-untied': (29.28, 8.58),
    'vit-b/2': (2.04, 2.22),
}
TARGETS = ('gpt2-large-untied', 'gpt2-large', 'gpt2-small-untied', 'vit-b/2')


def _arch(name):
  from logah_jax import arch  # pylint: disable=g-import-not-at-top
  # The reference ViT-B/2 figures were taken with 100 classes (CIFAR-100).
  return arch.named(name, num_classes=100) if name.startswith('vit') else (
      arch.named(name))


def save_ghn(directory: str, name: str, ghn_name: str) -> None:
  """An untrained GHN for `name`'s family, saved as GHN training saves it."""
  from logah_jax import checkpoint, config_base, ghn  # pylint: disable=g-import-not-at-top
  family = _arch(name).family
  space = 'gpts-1k' if family == 'gpt2' else 'vits-1k'
  data = config_base.data_section(
      'wikitext103' if family == 'gpt2' else 'cifar100', batch_size=8)
  config = config_base.ghn_training(ghn=ghn_name, space=space, data=data,
                                    lr=1e-4, num_steps=1)
  cfg = ghn.from_dict(config.ghn.to_dict())
  with checkpoint.CheckpointManager(
      os.path.join(directory, 'checkpoints'), async_save=False,
      config=config.to_dict()) as mngr:
    mngr.save(1, {'params': ghn.init(cfg, family, 0)}, extra={'step': 1},
              force=True)


def run_one(name: str, ghn_name: str, repeats: int,
            saved: str | None = None, fill: str | None = None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from logah_jax import arch, ghn, runtime  # pylint: disable=g-import-not-at-top
  runtime.enable_compilation_cache()  # the directory comes from the parent
  t_import = time.perf_counter() - _START
  cfg = _arch(name)
  t0 = time.perf_counter()
  if saved:  # a trained GHN's user: restore, no init
    loaded = ghn.load(saved, fill=fill)
    ghn_cfg, params = loaded.cfg, jax.block_until_ready(loaded.params)
  else:
    ghn_cfg = ghn.named(ghn_name)
    params = jax.block_until_ready(ghn.init(ghn_cfg, cfg.family, seed=0))
  t_init = time.perf_counter() - t0
  t0 = time.perf_counter()
  pred = jax.block_until_ready(ghn.predict(ghn_cfg, params, cfg))
  first = time.perf_counter() - t0
  cold = time.perf_counter() - _START
  single_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  del pred
  steady = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    pred = jax.block_until_ready(ghn.predict(ghn_cfg, params, cfg))
    steady.append(time.perf_counter() - t0)
    del pred
  return {
      'target': name, 'params': arch.num_params(cfg),
      'device': jax.devices()[0].device_kind, 'import_s': t_import,
      'first_s': first, 'steady_s': statistics.median(steady), 'cold_s': cold,
      'init_s': t_init, 'cold_without_init_s': cold - t_init,
      'from_saved': bool(saved), 'fill': ghn_cfg.fill,
      'trained_width': ghn_cfg.trained_width,
      'peak_rss_gib': single_rss,  # one prediction, as the reference
      'peak_rss_repeats_gib': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20,
      'traces': ghn.trace_counts(),
  }


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--targets', nargs='*', default=list(TARGETS))
  parser.add_argument('--ghn', default='logah-tiny')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--from-saved', action='store_true',
                      help='restore a saved GHN instead of initialising one')
  parser.add_argument('--fill', choices=('decoder', 'tile', 'widen'),
                      help="with --from-saved: ghn.load's fill (default: the "
                      "saved GHN's, 'widen')")
  parser.add_argument('--one', help=argparse.SUPPRESS)
  parser.add_argument('--saved', help=argparse.SUPPRESS)
  parser.add_argument('--save', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error('--repeats must be at least 1 (steady is their median)')
  if args.fill and not (args.from_saved or args.saved):
    parser.error('--fill needs --from-saved (a freshly initialised GHN has '
                 'no trained width to fill past)')
  if args.save:
    save_ghn(args.save, args.one, args.ghn)
    return
  if args.one:
    from logah_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.set_xla_flag_defaults()  # as the entry point sets them
    print(json.dumps(run_one(args.one, args.ghn, args.repeats, args.saved,
                             args.fill)))
    return
  rows = []
  for name in args.targets:
    with tempfile.TemporaryDirectory() as tmp:
      cache = os.path.join(tmp, 'xla')
      root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      env = {**os.environ, 'LOGAH_JAX_CACHE_DIR': cache,
             'PYTHONPATH': os.pathsep.join(
                 [root] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
      extra = []
      if args.from_saved:  # saved by its own process, with its own cache
        saved = os.path.join(tmp, 'ghn')
        subprocess.run(
            [sys.executable, __file__, '--save', saved, '--one', name,
             '--ghn', args.ghn], check=True, capture_output=True,
            env={**env, 'LOGAH_JAX_CACHE_DIR': os.path.join(tmp, 'xla-save')})
        extra = ['--saved', saved] + (['--fill', args.fill] if args.fill
                                      else [])
      runs = []
      for _ in range(2):  # empty compilation cache, then warm
        out = subprocess.run(
            [sys.executable, __file__, '--one', name, '--ghn', args.ghn,
             '--repeats', str(args.repeats), *extra],
            check=False, capture_output=True, text=True, env=env)
        if out.returncode:
          sys.exit(f'{name} failed:\n{out.stderr[-3000:]}')
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    row = runs[0]
    row['warm_cold_s'] = runs[1]['cold_s']
    row['warm_first_s'] = runs[1]['first_s']
    rows.append(row)
  how = ('restored with ghn.load (fill ' + rows[0]['fill'] + ', trained '
         f'width {rows[0]["trained_width"]})' if args.from_saved
         else 'initialised')
  print(f'{args.ghn} ({how}) predicting on {rows[0]["device"]}; original = '
        'the PyTorch LoGAH on a 2-core CPU (end-to-end)')
  head = (f'{"target":<19}{"params":>9}{"init s":>8}{"first s":>9}'
          f'{"steady s":>10}'
          f'{"cold s":>8}{"cold*":>7}{"RSS GiB":>9}{"RSS/fp32":>9}'
          f'{"orig s":>8}{"x first":>9}{"x steady":>9}{"x cold":>8}{"x cold*":>8}'
          f'{"orig RSS":>9}')
  print(head)
  for r in rows:
    fp32_gib = r['params'] * 4 / 2**30
    line = (f'{r["target"]:<19}{r["params"] / 1e6:>8.1f}M{r["init_s"]:>8.2f}'
            f'{r["first_s"]:>9.2f}'
            f'{r["steady_s"]:>10.3f}{r["cold_s"]:>8.2f}{r["warm_cold_s"]:>7.2f}'
            f'{r["peak_rss_gib"]:>9.2f}{r["peak_rss_gib"] / fp32_gib:>9.2f}')
    if r['target'] in ORIGINAL:
      orig_s, orig_rss = ORIGINAL[r['target']]
      line += (f'{orig_s:>8.2f}{orig_s / r["first_s"]:>9.1f}'
               f'{orig_s / r["steady_s"]:>9.1f}{orig_s / r["cold_s"]:>8.1f}'
               f'{orig_s / r["warm_cold_s"]:>8.1f}'
               f'{orig_rss:>9.2f}')
    print(line)
  print('init: initialising (or restoring) the GHN; '
        'first: graph + compile + predict in a new process; steady: median '
        'of repeats; cold: the whole process (imports, GHN init or restore, compile, '
        'predict) with an empty compilation cache, cold*: the same with the '
        'cache a previous process left. x = original s / ours. RSS/fp32 = peak RSS over the fp32 size of the prediction.')


if __name__ == '__main__':
  main()
