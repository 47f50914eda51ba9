"""The GHN training loop: resume, step, log, checkpoint, stop on NaN.

A run's position is (step, optimizer state, GHN params) in the orbax state
plus the loader position in the checkpoint's JSON extra. The architectures of
a step and the data augmentation are pure functions of (seed, step), so
restoring the step restores every source of randomness: a resumed run makes
exactly the updates an uninterrupted one makes.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from logah_jax import checkpoint as ckpt_lib
from logah_jax import data as data_lib
from logah_jax import ghn as ghn_lib
from logah_jax import parallel
from logah_jax.train import compiles
from logah_jax.train import ghn_setup
from logah_jax.train import ghn_step
from logah_jax.train import report

# Keys that may change when a run is resumed: they do not affect training.
RESUMABLE_KEYS = ckpt_lib.DEFAULT_IGNORE_KEYS + (
    'holdout', 'demo', 'compilation_cache', 'checkpoint.async_save', 'job')
_CURVES = ('loss', 'ce', 'acc', 'reg', 'grad_norm', 'lr')


class NonFiniteLossError(FloatingPointError):
  """Training met a NaN/Inf loss; the last good checkpoint is untouched."""


@dataclasses.dataclass
class GHNTrainResult:
  step: int
  params: dict
  last: dict           # metrics of the last logged interval
  compiles: int        # XLA compilations during this process's training
  compile_seconds: float
  traces: dict         # per-program trace counts (body, arch, finish)
  seconds: float


def _make_loader(config, shard_index: int, shard_count: int):
  d = config.data
  return data_lib.Loader(ghn_setup.data_source(config), d.batch_size,
                         seed=config.seed, augment=d.augment,
                         shard_index=shard_index, shard_count=shard_count)


def _restore(mngr, stepper, params_abstract, loader):
  """(state, start step) from the latest checkpoint, or (None, 0)."""
  if mngr.latest_step() is None:
    return None, 0
  state, extra = mngr.restore(abstract_state=stepper.abstract_state(
      params_abstract))
  loader.restore(extra['loader'])
  start = int(extra['step'])
  if int(state.step) != start:
    raise ValueError(f'{mngr.directory}: checkpoint step {start} holds a '
                     f'state of step {int(state.step)}')
  return state, start


def _extra(step: int, loader, sampler) -> dict:
  return {'step': step, 'loader': loader.state(),
          'sampler': {'seed': sampler.seed, 'pool_size': sampler.pool_size,
                      'm': sampler.m, 'next_step': step}}


def train_ghn(config, workdir: str, *,
              stop_after_steps: int | None = None) -> GHNTrainResult:
  """Trains (or resumes) the GHN of `config` in `workdir`.

  Args:
    config: a GHN-training ConfigDict (see configs/).
    workdir: holds checkpoints/ (orbax, with config.json), metrics.jsonl and
      the training-curves PNG.
    stop_after_steps: run at most this many steps in this call, then
      checkpoint and return (time-sliced or pre-emptible jobs; tests).

  Raises:
    ValueError: a bad config, or a workdir of another config (before any
      compilation).
    NonFiniteLossError: a NaN/Inf loss; the step is named, nothing is saved.
  """
  run = ghn_setup.build_run(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(dict(config.mesh))
  ghn_step.batch_rows_check(config.data.batch_size, mesh)
  loader = _make_loader(config, jax.process_index(), jax.process_count())
  ckpt = config.checkpoint
  mngr = ckpt_lib.CheckpointManager(
      ghn_setup.checkpoint_dir(workdir), max_to_keep=ckpt.keep,
      save_interval_steps=ckpt.every_steps, async_save=ckpt.async_save,
      config=config.to_dict(), ignore_keys=RESUMABLE_KEYS)
  try:
    return _train(config, run, mesh, loader, mngr, workdir, stop_after_steps)
  finally:
    mngr.close()


def _train(config, run, mesh, loader, mngr, workdir, stop_after_steps):
  total, timer = report.Timer(), report.Timer()
  stepper = ghn_step.GHNStep(
      run.ghn_cfg, run.family, run.tx, mesh, m=run.sampler.m,
      n_pad=run.sampler.node_bucket(run.ghn_cfg.cutoff),
      gamma=config.train.gamma, label_smoothing=config.train.label_smoothing)
  before = compiles.snapshot()
  params_abstract = jax.eval_shape(
      lambda: ghn_lib.init(run.ghn_cfg, run.family, config.seed))
  state, start = _restore(mngr, stepper, params_abstract, loader)
  if state is None:
    state = stepper.init_state(ghn_lib.init(run.ghn_cfg, run.family,
                                            config.seed))
  report.say(
      report.param_table(state.params, f'GHN {run.ghn_cfg.decoder} '
                         f'(hid {run.ghn_cfg.hid}, {run.family} targets)'),
      f'space {config.space.name}: {run.sampler.distinct_archs()} distinct '
      f'architectures (compile bound x {len(stepper.groups)} arch groups), '
      f'node bucket {stepper.n_pad}; m={run.sampler.m}, batch '
      f'{config.data.batch_size}, mesh {dict(mesh.shape)}',
      f'resuming at step {start}' if start else 'starting at step 0')
  log = report.MetricsLog(workdir, resume_step=start)
  end = run.num_steps
  if stop_after_steps is not None:
    end = min(end, start + stop_after_steps)
  bar = report.Progress(run.num_steps, start, 'GHN')
  rate = _Rate(run.sampler.m)
  window, last = [], {}
  try:
    for step in range(start, end):
      archs = run.sampler.at(step)
      state, metrics = stepper(state, archs, next(loader))
      m = ghn_step.host_metrics(metrics)
      if not m['finite']:
        raise NonFiniteLossError(
            f'GHN training step {step + 1}: loss {m["loss"]}, gradient norm '
            f'{m["grad_norm"]} (architectures {[a.name for a in archs]}); '
            f'stopped without applying it. The last good checkpoint '
            f'(step {mngr.latest_step()}) is intact.')
      window.append(m)
      done = step + 1
      if step == start:
        c = compiles.snapshot() - before
        bar.write(f'start-up and first step: {timer.lap():.1f} s wall, '
                  f'{c.count} compilations, {c.seconds:.1f} s compiling')
      rate.tick(first=step == start)
      bar.update(1, loss=f'{m["loss"]:.4f}', arch_s=f'{rate.value():.2f}')
      if done % config.log_every_steps == 0 or done == end:
        last = _log_row(window, done, run, rate, before)
        log.write(last)
        window = []
      mngr.save(done, state, extra=_extra(done, loader, run.sampler),
                force=done == end)
  finally:
    bar.close()
    mngr.wait_until_finished()
  _plot(workdir, config)
  c = compiles.snapshot() - before
  return GHNTrainResult(step=end, params=state.params, last=last,
                        compiles=c.count, compile_seconds=c.seconds,
                        traces=ghn_step.trace_counts(),
                        seconds=total.lap())


class _Rate:
  """Architectures per second since the end of the first step of a call.

  The first step is left out (it is mostly compilation, reported apart);
  later compilations of newly seen architectures are included.
  """

  def __init__(self, m: int):
    self.m, self.steps, self.t0 = m, 0, None

  def tick(self, first: bool) -> None:
    if first or self.t0 is None:
      self.t0 = time.perf_counter()
    else:
      self.steps += 1

  def value(self) -> float:
    if not self.steps:
      return 0.0
    return self.steps * self.m / (time.perf_counter() - self.t0)


def _log_row(window, step, run, rate, before) -> dict:
  row = {k: float(np.mean([w[k] for w in window]))
         for k in ('loss', 'ce', 'reg', 'acc', 'grad_norm')}
  c = compiles.snapshot() - before
  row.update(step=step, lr=float(run.schedule(step - 1)),
             arch_per_s=rate.value(),
             compiles=c.count, compile_s=round(c.seconds, 3))
  return row


def _plot(workdir: str, config) -> None:
  path = os.path.join(workdir, report.METRICS_FILE)
  if os.path.exists(path):
    report.plot_curves(report.read_metrics(path),
                       os.path.join(workdir, report.PLOT_FILE), _CURVES,
                       f'GHN training: {config.space.name} on '
                       f'{config.data.name}')
