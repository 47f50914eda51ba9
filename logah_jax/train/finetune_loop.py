"""Fine-tuning a target from any init: resume, step, evaluate, log, save.

The same behaviour as GHN training (train/ghn_loop.py): the config is checked
before any compilation, a workdir of another config is refused, a run resumes
bit-exactly from its latest checkpoint (the data order is a pure function of
(seed, step), and the loader position is in the checkpoint), a NaN/Inf loss
stops the run with the last good checkpoint intact. The held-out split is
evaluated at step 0 (the init itself), every `eval.every_steps` and at the
end; those rows go to eval.jsonl, training rows to metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import data as data_lib
from logah_jax import inits
from logah_jax import parallel
from logah_jax.train import compiles
from logah_jax.train import evaluate as eval_lib
from logah_jax.train import finetune_step
from logah_jax.train import ghn_setup
from logah_jax.train import ghn_step
from logah_jax.train import optim
from logah_jax.train import report
from logah_jax.train.ghn_loop import NonFiniteLossError

RESUMABLE_KEYS = ckpt_lib.DEFAULT_IGNORE_KEYS + (
    'compilation_cache', 'checkpoint.async_save', 'job')
EVAL_FILE = 'eval.jsonl'
_CURVES = ('loss', 'acc', 'eval_loss', 'eval_accuracy', 'eval_perplexity',
           'lr')


@dataclasses.dataclass
class FinetuneRun:
  """The checked, host-side pieces of a fine-tuning run."""

  arch: arch_lib.ArchConfig
  num_steps: int
  tx: object
  schedule: object


@dataclasses.dataclass
class FinetuneResult:
  step: int
  params: dict
  evals: list          # every eval row of the run (also those before resume)
  last: dict           # metrics of the last logged interval
  compiles: int        # XLA compilations during this call
  seconds: float


def target_arch(config) -> arch_lib.ArchConfig:
  try:
    return arch_lib.parse(config.arch)
  except (TypeError, ValueError) as e:
    raise ValueError(f'config.arch: {e}') from e


def build_run(config) -> FinetuneRun:
  """Checks every field a fine-tuning run reads; raises ValueError naming it."""
  arch = target_arch(config)
  ghn_setup.check_data_matches(arch, config.data, prefix='config.arch')
  num_steps = ghn_setup.check_int(config.train.num_steps,
                                  'config.train.num_steps')
  ghn_setup.check_int(config.data.batch_size, 'config.data.batch_size')
  if not 0 <= config.train.label_smoothing < 1:
    raise ValueError(f'config.train.label_smoothing='
                     f'{config.train.label_smoothing} must be in [0, 1)')
  ev = config.eval
  ghn_setup.check_int(ev.every_steps, 'config.eval.every_steps', 0)
  ghn_setup.check_int(ev.max_batches, 'config.eval.max_batches', 0)
  ghn_setup.check_int(ev.batch_size, 'config.eval.batch_size')
  splits = data_lib.describe(config.data.name, config.data.get(
      'tokenizer', 'gpt2'))['splits']
  if ev.split not in splits:
    raise ValueError(f'config.eval.split={ev.split!r} is not a split of '
                     f'{config.data.name}: {splits}')
  if config.param_sharding not in parallel.RULES:
    raise ValueError(f'config.param_sharding={config.param_sharding!r} must '
                     f'be one of {parallel.RULES}')
  tx, schedule = optim.make_optimizer(config.optim, num_steps,
                                      prefix='config.optim')
  return FinetuneRun(arch=arch, num_steps=num_steps, tx=tx, schedule=schedule)


def init_method(config) -> inits.InitMethod:
  """The InitMethod of `config.init` (GHN methods use a trained workdir)."""
  i = config.init
  try:
    return inits.make(i.method, ghn_workdir=i.ghn_workdir,
                      ghn_step=None if i.ghn_step < 0 else i.ghn_step)
  except ValueError as e:
    raise ValueError(f'config.init: {e}') from e


def finetune(config, workdir: str, *, init: inits.InitMethod | None = None,
             stop_after_steps: int | None = None) -> FinetuneResult:
  """Fine-tunes (or resumes) `config.arch` in `workdir`.

  Args:
    init: the init method; default `init_method(config)`. Called only when
      the run starts from step 0 (a resumed run restores its params).
    stop_after_steps: run at most this many steps in this call.
  """
  run = build_run(config)
  method = init or init_method(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(dict(config.mesh))
  if config.data.batch_size % mesh.shape[parallel.DATA]:
    raise ValueError(f'config.data.batch_size={config.data.batch_size} is not '
                     f'divisible by the {mesh.shape[parallel.DATA]} devices of '
                     f"the mesh's '{parallel.DATA}' axis")
  ckpt = config.checkpoint
  with ckpt_lib.CheckpointManager(
      ghn_setup.checkpoint_dir(workdir), max_to_keep=ckpt.keep,
      save_interval_steps=ckpt.every_steps, async_save=ckpt.async_save,
      config=config.to_dict(), ignore_keys=RESUMABLE_KEYS) as mngr:
    return _finetune(config, run, method, mesh, mngr, workdir,
                     stop_after_steps)


def _finetune(config, run, method, mesh, mngr, workdir, stop_after_steps):
  timer, before = report.Timer(), compiles.snapshot()
  d = config.data
  loader = data_lib.Loader(ghn_setup.data_source(config), d.batch_size,
                           seed=config.seed, augment=d.augment,
                           shard_index=jax.process_index(),
                           shard_count=jax.process_count())
  eval_source = ghn_setup.data_source(config, config.eval.split)
  stepper = finetune_step.FinetuneStep(
      run.arch, run.tx, mesh, param_rule=config.param_sharding,
      label_smoothing=config.train.label_smoothing)
  start = mngr.latest_step() or 0
  if start:
    state, extra = mngr.restore(abstract_state=stepper.abstract_state())
    loader.restore(extra['loader'])
  else:
    method.prepare()
    state = stepper.init_state(method(run.arch, config.seed))
  report.say(
      report.param_table(state.params, f'{run.arch.name} '
                         f'({arch_lib.num_params(run.arch):,} params), init '
                         f'{method.name}'),
      f'{config.data.name}: batch {d.batch_size}, {run.num_steps} steps, '
      f'{config.optim.name} lr {config.optim.lr}; eval on '
      f'{config.eval.split} every {config.eval.every_steps or "-"} steps',
      f'resuming at step {start}' if start else 'starting at step 0')
  log = report.MetricsLog(workdir, resume_step=start)
  # A fresh run drops every old eval row (an attempt that died before its
  # first checkpoint may have written the step-0 row already).
  eval_log = report.MetricsLog(workdir, resume_step=start if start else -1,
                               name=EVAL_FILE)

  def evaluate(step, params):
    row = eval_lib.evaluate(run.arch, params, eval_source,
                            batch_size=config.eval.batch_size,
                            max_batches=config.eval.max_batches)
    row = {'step': step, **{f'eval_{k}': v for k, v in row.items()}}
    eval_log.write(row)
    return row

  if start == 0:
    evaluate(0, state.params)
  end = run.num_steps if stop_after_steps is None else min(
      run.num_steps, start + stop_after_steps)
  bar = report.Progress(run.num_steps, start, 'fine-tune')
  window, last = [], {}
  try:
    for step in range(start, end):
      state, metrics = stepper(state, next(loader))
      m = ghn_step.host_metrics(metrics)
      done = step + 1
      if not m['finite']:
        raise NonFiniteLossError(
            f'fine-tuning step {done}: loss {m["loss"]}, gradient norm '
            f'{m["grad_norm"]}; stopped without applying it. The last good '
            f'checkpoint (step {mngr.latest_step()}) is intact.')
      window.append(m)
      bar.update(1, loss=f'{m["loss"]:.4f}')
      if done % config.log_every_steps == 0 or done == end:
        c = compiles.snapshot() - before
        last = {k: float(np.mean([w[k] for w in window]))
                for k in ('loss', 'acc', 'grad_norm')}
        last.update(step=done, lr=float(run.schedule(step)),
                    compiles=c.count)
        log.write(last)
        window = []
      every = config.eval.every_steps
      if (every and done % every == 0) or done == run.num_steps:
        row = evaluate(done, state.params)
        bar.write(_eval_line(row))
      mngr.save(done, state, extra={'step': done, 'loader': loader.state()},
                force=done == end)
  finally:
    bar.close()
    mngr.wait_until_finished()
  evals = report.read_metrics(os.path.join(workdir, EVAL_FILE))
  _plot(workdir, run.arch, config, evals)
  return FinetuneResult(step=end, params=state.params, evals=evals,
                        last=last, compiles=(compiles.snapshot() - before
                                             ).count, seconds=timer.lap())


def _eval_line(row: dict) -> str:
  metric = ('accuracy', 100 * row['eval_accuracy'], '%') if (
      'eval_accuracy' in row) else ('perplexity', row['eval_perplexity'], '')
  return (f'step {row["step"]}: eval loss {row["eval_loss"]:.4f}, '
          f'{metric[0]} {metric[1]:.2f}{metric[2]}')


def _plot(workdir, arch, config, evals) -> None:
  path = os.path.join(workdir, report.METRICS_FILE)
  rows = report.read_metrics(path) if os.path.exists(path) else []
  report.plot_curves(rows + evals, os.path.join(workdir, report.PLOT_FILE),
                     _CURVES, f'fine-tuning {arch.name} on {config.data.name}'
                     f' from {config.init.method}')
