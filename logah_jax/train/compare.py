"""The comparison harness: init methods x seeds, one target, one budget.

Each GHN method trains its GHN once (in `<ghn_root>/<method>`, resumed or
skipped when complete) with the same recipe and data; every (method, seed)
run is a resumable fine-tuning run in `<workdir>/runs/<method>/seed<k>`, so
an interrupted comparison continues where it stopped. The result is
compare.json, compare.md (final metric mean ± std over seeds, the metric at
step 0, the steps each method needs to reach RandInit's final metric) and
compare.png (curves with ±1 std bands).
"""

from __future__ import annotations

import copy
import json
import os

from logah_jax import inits
from logah_jax.inits import save as init_save
from logah_jax.train import compare_report
from logah_jax.train import finetune_loop
from logah_jax.train import ghn_setup
from logah_jax.train import report

RESULT_JSON, RESULT_MD, RESULT_PNG = ('compare.json', 'compare.md',
                                      'compare.png')


def methods_of(config) -> list[str]:
  names = [m.strip() for m in config.methods.split(',') if m.strip()]
  if not names:
    raise ValueError('config.methods is empty')
  for name in names:
    if name not in inits.METHODS:
      raise ValueError(f'config.methods: {name!r} is not one of '
                       f'{inits.METHODS}')
  if len(set(names)) != len(names):
    raise ValueError(f'config.methods={config.methods!r} repeats a method')
  return names


def _seeds(config) -> list[int]:
  n = config.seeds
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'config.seeds={n!r} must be an int >= 1')
  return list(range(n))


def _plan(config, workdir):
  """Checks everything (no training yet) and builds the init methods."""
  names, seeds = methods_of(config), _seeds(config)
  run = finetune_loop.build_run(config.finetune)
  ghn_root = config.ghn_workdir or os.path.join(workdir, 'ghn')
  methods = {}
  for name in names:
    train_config = None
    if name in inits.GHN_METHODS:
      train_config = inits.training_config(config.ghn_train, name,
                                           config.ghn3_name)
      ghn_run = ghn_setup.build_run(train_config)
      if ghn_run.family != run.arch.family:
        raise ValueError(f'config.ghn_train trains {ghn_run.family} GHNs but '
                         f'the target {run.arch.name} is a {run.arch.family}')
      from logah_jax import ghn as ghn_lib  # pylint: disable=g-import-not-at-top
      ghn_lib.check_archs(ghn_run.ghn_cfg, run.arch.family, [run.arch])
    methods[name] = inits.make(name, ghn_workdir=os.path.join(ghn_root, name),
                               ghn_train_config=train_config)
  return run, methods, seeds


def finetune_all(methods: dict, seeds, finetune_config, workdir: str,
                 compilation_cache: str = '') -> dict:
  """Fine-tunes every (method, seed); returns {method: {seed: eval rows}}.

  `methods` maps a label to an InitMethod; runs go to
  `<workdir>/runs/<label>/seed<k>` and resume (or are read back) there.
  """
  curves = {}
  for label, method in methods.items():
    report.say(f'=== init {label} ===')
    method.prepare()
    curves[label] = {}
    for seed in seeds:
      c = copy.deepcopy(finetune_config)
      with c.unlocked():
        c.seed = seed
        c.init.method = method.name
        c.compilation_cache = compilation_cache
      result = finetune_loop.finetune(
          c, os.path.join(workdir, 'runs', label, f'seed{seed}'),
          init=method)
      curves[label][seed] = result.evals
  return curves


def write_results(curves: dict, summary: dict, workdir: str) -> str:
  """compare.json, compare.md and compare.png; returns the Markdown table."""
  with open(os.path.join(workdir, RESULT_JSON), 'w') as f:
    json.dump(summary, f, indent=2)
  table = compare_report.markdown(summary)
  with open(os.path.join(workdir, RESULT_MD), 'w') as f:
    f.write(table + '\n')
  compare_report.plot(curves, summary, os.path.join(workdir, RESULT_PNG))
  report.say(table, f'Curves: {os.path.join(workdir, RESULT_PNG)}')
  return table


def run_compare(config, workdir: str) -> dict:
  """Runs (or resumes) the whole comparison; returns the summary."""
  run, methods, seeds = _plan(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  for name, method in methods.items():
    if method.deterministic:  # keep the prediction a user can restore
      method.prepare()
      init_save.save_init(method, run.arch, 0,
                          os.path.join(workdir, 'inits', name),
                          overwrite=True)
  curves = finetune_all(methods, seeds, config.finetune, workdir,
                        config.compilation_cache)
  summary = compare_report.summarize(
      curves, family=run.arch.family, num_steps=run.num_steps,
      baseline='random')
  summary.update(target=run.arch.name, data=config.finetune.data.name,
                 split=config.finetune.eval.split, seeds=seeds,
                 methods=list(methods),
                 describe={n: m.describe() for n, m in methods.items()})
  write_results(curves, summary, workdir)
  return summary
