"""Fine-tuning every (init method, seed) of a comparison on one grid.

Each run is a resumable fine-tuning run in `<workdir>/runs/<label>/seed<k>`
with the compared runs' resumable keys (`finetuning.COMPARED_RESUMABLE_KEYS`:
all evaluated at the same steps), so an interrupted comparison continues
where it stopped. The comparison harness, the extrapolation curve and the
main job's demo share it.
"""

from __future__ import annotations

import copy
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


def finetune_all(methods: dict, seeds, finetune_config, workdir: str,
                 compilation_cache: str = '') -> dict:
  """Fine-tunes every (method, seed); returns {method: {seed: eval rows}}."""
  return finetune_each(methods, seeds, finetune_config, workdir,
                       compilation_cache)[0]


def finetune_each(methods: dict, seeds, finetune_config, workdir: str,
                  compilation_cache: str = '') -> tuple[dict, dict]:
  """Fine-tunes every (method, seed): ({method: {seed: eval rows}},
  {method: {seed: the test read, or None without a test split}}).

  `methods` maps a label to an InitMethod; runs go to
  `<workdir>/runs/<label>/seed<k>` and resume (or are read back, the test
  read included) there. All are evaluated at the same steps: a resumed run
  may not change its validation interval (`COMPARED_RESUMABLE_KEYS`).
  """
  curves, tests = {}, {}
  for label, method in methods.items():
    report.say(f'=== init {label} ===')
    method.prepare()
    curves[label], tests[label] = {}, {}
    for seed in seeds:
      result = finetuning.finetune(
          seed_config(finetune_config, method, seed, compilation_cache),
          run_dir(workdir, label, seed), init=method, export_params=False,
          resumable_keys=finetuning.COMPARED_RESUMABLE_KEYS)
      curves[label][seed] = result.evals
      tests[label][seed] = result.test
  return curves, tests
