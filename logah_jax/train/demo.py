"""The end of the main job: the held-out target fine-tuned briefly from its
predicted init and from random init, on the same budget, with a table and a
plot (the comparison harness on two methods and one seed).

Both train on the GHN's training split; the curves are read on
`config.demo.eval_split` (validation) and the held-out split
(`config.holdout.split`, the test split) once per run after the last step,
for the table's test column. A demo whose eval_split is the held-out split
itself (the curves on test) reads no separate test.
"""

from __future__ import annotations

import os

from logah_jax import arch as arch_lib
from logah_jax import config_base
from logah_jax import data as data_lib
from logah_jax import inits
from logah_jax.train import compare
from logah_jax.train import compare_report
from logah_jax.train import compared_runs
from logah_jax.train import holdout
from logah_jax.train.data_spec import DataSpec
from logah_jax.validation import ConfigError

DEMO_DIR = 'demo'


def demo_config(config):
  """The fine-tuning config of the demo, from `config.demo` and the run's."""
  d = config.demo
  target = holdout.holdout_arch(config)
  data = config.data  # the GHN's training split, without augmentation
  eval_split = d.get('eval_split', 'validation')
  splits = data_lib.describe(data.name, data.tokenizer)['splits']
  if eval_split not in splits or DataSpec.from_config(data).trains_on(
      eval_split):
    raise ConfigError(
        f'config.demo.eval_split={eval_split!r} must be a split of '
        f'{data.name} {splits} other than the training split '
        f'config.data.split={data.split!r}')
  ft = config_base.finetuning(
      arch=arch_lib.to_spec(target), data=config_base.data_section(
          data.name, batch_size=d.batch_size, split=data.split,
          tokenizer=data.tokenizer, block_size=data.block_size),
      optim=config_base.optim_section(d.lr, warmup_steps=d.warmup_steps,
                                      weight_decay=5e-2, clip_norm=1.0),
      num_steps=d.num_steps, eval_split=eval_split,
      eval_every_steps=d.eval_every_steps, every_steps=d.num_steps)
  ft.data.data_dir = config.data.data_dir
  ft.eval.batch_size = config.holdout.batch_size
  ft.eval.max_batches = d.eval_max_batches
  if config.holdout.split != ft.eval.split:
    ft.eval.test_split = config.holdout.split
    ft.eval.test_max_batches = config.holdout.max_batches
  ft.log_every_steps = max(1, d.num_steps // 10)
  return ft


def demo_methods(config, workdir: str) -> dict:
  """{label: InitMethod}: the held-out prediction and random init."""
  predicted = inits.make(
      inits.CHECKPOINT_PREFIX + os.path.join(workdir, holdout.PREDICTED_DIR))
  label = 'LoGAH' if config.ghn.decoder == 'lowrank' else 'GHN-3'
  return {f'{label} init': predicted, 'random init': inits.make('random')}


def check_demo(config, workdir: str) -> None:
  """Before the GHN trains: a demo folder of an earlier run holds runs of
  the same target and recipe (else the held-out outputs would be replaced
  first, and only then the demo refuse its folder)."""
  compared_runs.check_runs(demo_methods(config, workdir), [config.seed],
                           demo_config(config),
                           os.path.join(workdir, DEMO_DIR),
                           config.compilation_cache)


def run_demo(config, workdir: str) -> dict:
  """Fine-tunes the held-out target from both inits; returns the summary."""
  ft = demo_config(config)
  out = os.path.join(workdir, DEMO_DIR)
  os.makedirs(out, exist_ok=True)
  methods = demo_methods(config, workdir)
  runs = compared_runs.finetune_each(methods, [config.seed], ft, out,
                                     config.compilation_cache)
  target = holdout.holdout_arch(config)
  summary = compare_report.summarize(
      runs.curves, family=target.family, num_steps=ft.train.num_steps,
      baseline='random init',
      tests=runs.tests if ft.eval.test_split else None,
      diverged=runs.diverged)
  summary.update(target=target.name, data=config.data.name,
                 split=ft.eval.split, seeds=[config.seed],
                 methods=list(methods))
  compare.write_results(runs.curves, summary, out)
  return summary
