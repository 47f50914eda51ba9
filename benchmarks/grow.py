r"""Growth at real sizes: seconds and peak memory per method, and one LiGO step.

  .venv/bin/python benchmarks/grow.py                 # both pairs, all methods
  .venv/bin/python benchmarks/grow.py --pairs=gpt2 --ligo_seq_len=128

Pairs: GPT-2-S (124M) -> GPT-2-M (355M), tied; ViT-S/16 -> ViT-B/16. Each
case runs in a fresh process so its peak RSS is its own: the source params
(drawn with the reference init; the sizes, not the values, set the cost),
then the method, timed to the last byte with `block_until_ready`. Printed
beside the fp32 size of the large model, the floor of any method that
materialises it. The LiGO case is one training step of the operator (jitted
value-and-grad of the large model's loss, AdamW update): its compile and its
second call, at batch `--ligo_batch` (GPT-2 sequences of `--ligo_seq_len`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

from logah_jax import host_memory

_PAIRS = flags.DEFINE_list('pairs', ['gpt2', 'vit'], 'gpt2 and/or vit.')
_METHODS = flags.DEFINE_list(
    'methods', ['stack', 'interpolate', 'net2net', 'bert2bert', 'ligo'],
    'Methods to run (ligo: one operator step).')
_LIGO_BATCH = flags.DEFINE_integer('ligo_batch', 1, 'Batch of the LiGO step.')
_LIGO_SEQ = flags.DEFINE_integer('ligo_seq_len', 256,
                                 'GPT-2 tokens per sequence in the LiGO step.')
_SHARING = flags.DEFINE_string('sharing', 'layer', 'LiGO operator sharing.')
_CASE = flags.DEFINE_string('case', '', 'internal: run one case as JSON.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable as a script from anywhere
PAIRS = {'gpt2': ('gpt2-small', 'gpt2-medium'), 'vit': ('vit-s/16', 'vit-b/16')}


def _peak_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _run_case(pair: str, method: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from logah_jax import arch, growth, models  # pylint: disable=g-import-not-at-top
  from logah_jax.growth import ligo  # pylint: disable=g-import-not-at-top
  from logah_jax.train import ligo_training  # pylint: disable=g-import-not-at-top
  small, large = (arch.parse(n) for n in PAIRS[pair])
  params = jax.block_until_ready(models.init_params(small, jax.random.key(0)))
  base = _peak_gb()
  out = {'pair': f'{small.name} -> {large.name}', 'method': method,
         'source_gb': base}
  start = time.perf_counter()
  if method != 'ligo':
    grown = growth.grow(method, params, small, large, key=jax.random.key(1))
    jax.block_until_ready(grown)
    out['seconds'] = time.perf_counter() - start
  else:
    op = ligo.init_operator(small, large, key=jax.random.key(1),
                            sharing=_SHARING.value)
    tx = optax.adamw(1e-4, weight_decay=0.0)
    opt_state = tx.init(op)
    b = _LIGO_BATCH.value
    if large.family == 'vit':
      batch = {'image': jax.numpy.zeros((b, large.image_size,
                                         large.image_size, large.channels)),
               'label': jax.numpy.zeros((b,), jax.numpy.int32)}
    else:
      batch = {'tokens': jax.numpy.zeros((b, _LIGO_SEQ.value + 1),
                                         jax.numpy.int32)}

    @jax.jit
    def step(op, opt_state, params, batch):
      (loss, _), grads = jax.value_and_grad(
          ligo_training.objective, has_aux=True)(op, params, batch, small,
                                                 large)
      updates, opt_state = tx.update(grads, opt_state, op)
      return optax.apply_updates(op, updates), opt_state, loss

    compiled = step.lower(op, opt_state, params, batch).compile()
    out['compile_seconds'] = time.perf_counter() - start
    op, opt_state, loss = jax.block_until_ready(
        compiled(op, opt_state, params, batch))
    start = time.perf_counter()
    op, opt_state, loss = jax.block_until_ready(
        compiled(op, opt_state, params, batch))
    out['seconds'] = time.perf_counter() - start
    out['operator_params'] = ligo.num_params(small, large, _SHARING.value)
    out['loss'] = float(loss)
  out['peak_gb'] = _peak_gb()
  out['large_fp32_gb'] = arch.num_params(large) * 4 / 2**30
  return out


def main(argv):
  del argv
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  if _CASE.value:
    pair, method = _CASE.value.split(':')
    print('RESULT ' + json.dumps(_run_case(pair, method)))
    return
  print(f'{"pair":<72} {"method":<12} {"s":>7} {"compile s":>9} '
        f'{"peak RSS GB":>11} {"large fp32 GB":>13}')
  for pair in _PAIRS.value:
    for method in _METHODS.value:
      cmd = [sys.executable, __file__, f'--case={pair}:{method}',
             f'--ligo_batch={_LIGO_BATCH.value}',
             f'--ligo_seq_len={_LIGO_SEQ.value}', f'--sharing={_SHARING.value}']
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if proc.returncode or not lines:
        print(f'{pair} {method}: failed (exit {proc.returncode})\n'
              f'{proc.stderr[-2000:]}')
        continue
      r = json.loads(lines[-1][len('RESULT '):])
      extra = (f'   operator {r["operator_params"]:,} params'
               if 'operator_params' in r else '')
      print(f'{r["pair"]:<72} {method:<12} {r["seconds"]:7.2f} '
            f'{r.get("compile_seconds", 0):9.1f} {r["peak_gb"]:11.2f} '
            f'{r["large_fp32_gb"]:13.2f}{extra}', flush=True)


if __name__ == '__main__':
  app.run(main)
