"""Fine-tuning every (init method, seed) of a comparison on one grid.

Each run is a resumable fine-tuning run in `<workdir>/runs/<label>/seed<k>`
with the compared runs' resumable keys (`finetuning.COMPARED_RESUMABLE_KEYS`:
all evaluated at the same steps), so an interrupted comparison continues
where it stopped. The comparison harness, the extrapolation curve and the
main job's demo share it.

A run whose training loss turns non-finite is a result, not a failure of
the comparison: it is recorded as diverged at that step with the evaluations
it made before, and the other runs go on. Such a seed has no final metric
and never reaches a target after its last evaluation (`compare_report`). A
rerun resumes it from its last checkpoint, where it diverges again.
"""

from __future__ import annotations

import copy
import dataclasses
import os

from logah_jax.train import finetuning
from logah_jax.train import loop
from logah_jax.train import report


def seed_config(finetune_config, method, seed: int,
                compilation_cache: str = ''):
  """The fine-tuning config of one compared (method, seed) run."""
  c = copy.deepcopy(finetune_config)
  with c.unlocked():
    c.seed = seed
    c.init.method = method.name
    c.compilation_cache = compilation_cache
  return c


def run_dir(workdir: str, label: str, seed: int) -> str:
  return os.path.join(workdir, 'runs', label, f'seed{seed}')


def check_runs(methods: dict, seeds, finetune_config, workdir: str,
               compilation_cache: str = '') -> None:
  """Refuses a workdir whose compared runs hold checkpoints of another
  config (another target, recipe or budget), before anything is trained or
  written: a rerun with a changed config would otherwise replace the saved
  inits and train the GHNs, and only then fail at the first run."""
  for label, method in methods.items():
    for seed in seeds:
      config = seed_config(finetune_config, method, seed, compilation_cache)
      loop.check_checkpoints(run_dir(workdir, label, seed), config.to_dict(),
                             finetuning.COMPARED_RESUMABLE_KEYS,
                             finetuning.LATER_KEYS)


@dataclasses.dataclass
class ComparedRuns:
  """What every (method, seed) run of a comparison gave.

  curves: {method: {seed: validation eval rows}}.
  tests: {method: {seed: the test read, or None (no test split, or
    diverged)}}.
  diverged: {method: {seed: the step whose loss was not finite}}, for the
    runs that diverged only.
  """
  curves: dict
  tests: dict
  diverged: dict


def finetune_each(methods: dict, seeds, finetune_config, workdir: str,
                  compilation_cache: str = '') -> ComparedRuns:
  """Fine-tunes every (method, seed).

  `methods` maps a label to an InitMethod; runs go to
  `<workdir>/runs/<label>/seed<k>` and resume (or are read back, the test
  read included) there. All are evaluated at the same steps: a resumed run
  may not change its validation interval (`COMPARED_RESUMABLE_KEYS`).
  """
  out = ComparedRuns({}, {}, {})
  for label, method in methods.items():
    report.say(f'=== init {label} ===')
    method.prepare()
    out.curves[label], out.tests[label] = {}, {}
    for seed in seeds:
      where = run_dir(workdir, label, seed)
      try:
        result = finetuning.finetune(
            seed_config(finetune_config, method, seed, compilation_cache),
            where, init=method, export_params=False,
            resumable_keys=finetuning.COMPARED_RESUMABLE_KEYS)
      except loop.NonFiniteLossError as e:
        report.say(f'{label}, seed {seed}: diverged ({e}). Recorded as '
                   'diverged; the comparison goes on.')
        rows = report.read_metrics(os.path.join(where, finetuning.EVAL_FILE))
        out.curves[label][seed] = [r for r in rows if r['step'] < e.step]
        out.tests[label][seed] = None
        out.diverged.setdefault(label, {})[seed] = e.step
        continue
      out.curves[label][seed] = result.evals
      out.tests[label][seed] = result.test
  return out
