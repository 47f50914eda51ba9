"""The one training loop: resume, step, stop on NaN, log, checkpoint, plot.

GHN training (`ghn_training.py`) and fine-tuning (`finetuning.py`) both run
`run_steps` with a `Task` that says what differs: the compiled step, the
error detail of a bad step, an evaluation hook, extra checkpoint fields.

The host never waits on a step it does not need: step i's metrics are
fetched after step i+1 has been dispatched, so the device always has the next
step queued. The loop waits only at steps that read them or the state: a
metrics row, a checkpoint, an evaluation, the last step. A non-finite step is
therefore noticed one step late at most; its update was not applied (the
step is guarded) and no checkpoint can have been written after it, because
every save first settles every earlier step.

A run's position is the orbax state (step, params, optimizer state) plus the
loader position in the checkpoint's JSON extra. Everything random about a step
(data order, augmentation, a GHN step's architectures) is a pure function of
(seed, step), so a resumed run makes exactly the updates an uninterrupted one
makes, and `metrics.jsonl` is trimmed back to the step it resumed from.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from logah_jax import checkpoint as ckpt_lib
from logah_jax import compiles
from logah_jax import parallel
from logah_jax.train import compute as compute_lib
from logah_jax.train import optim
from logah_jax.train import report
from logah_jax.train import stopping
from logah_jax.train.data_spec import DataSpec
from logah_jax.validation import ConfigError, InputNotFoundError, check_int
from logah_jax.validation import check_seed

CHECKPOINT_DIR = 'checkpoints'
# The checkpoint extra's field for the metrics of steps not yet in a row.
WINDOW_KEY = 'unlogged_metrics'


class NonFiniteLossError(FloatingPointError):
  """Training met a NaN/Inf loss; the last good checkpoint is untouched.

  `step`: the (1-based) step whose loss or gradient norm was not finite;
  its update was not applied.
  """

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


# The stop on a signal lives in `stopping`; these names are the loop's API.
Interrupted = stopping.Interrupted
interrupt = stopping.interrupt


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
  """How often a run saves, how many steps it keeps, and whether async."""

  every_steps: int
  keep: int
  async_save: bool

  @classmethod
  def from_config(cls, section,
                  prefix: str = 'config.checkpoint') -> 'CheckpointOptions':
    return cls(every_steps=check_int(section.every_steps,
                                     f'{prefix}.every_steps'),
               keep=check_int(section.keep, f'{prefix}.keep'),
               async_save=bool(section.async_save))


@dataclasses.dataclass(kw_only=True)
class RunSettings:
  """What every run reads besides its own model: the base of its run object.

  `config` is the run's whole ConfigDict as a dict, stored as config.json
  beside the checkpoints; a resumed run must match it.
  """

  num_steps: int
  tx: Any
  schedule: Callable
  label_smoothing: float
  seed: int
  data: DataSpec
  mesh_axes: dict
  checkpoint: CheckpointOptions
  log_every: int
  config: dict
  compute: compute_lib.Compute

  def batch_rows(self, mesh) -> int:
    """How many devices of `mesh` split one global batch."""
    return mesh.shape[parallel.DATA]

  def mesh(self):
    """The run's mesh; ConfigError when config.mesh does not fit the
    devices or config.data.batch_size does not split over it. The builders
    call it once to check, before anything is trained or written."""
    return make_mesh(self.mesh_axes, self.data.batch_size, self.batch_rows)


def settings(config, num_steps: int) -> dict:
  """The checked `RunSettings` fields of a GHN-training or fine-tuning config.

  Reads config.data, .optim, .train.label_smoothing, .seed, .mesh,
  .checkpoint, .log_every_steps, .compute_dtype and .remat; ConfigError
  names a bad field.
  """
  smoothing = config.train.label_smoothing
  if not 0 <= smoothing < 1:
    raise ConfigError(f'config.train.label_smoothing={smoothing} must be in '
                      '[0, 1)')
  tx, schedule = optim.make_optimizer(config.optim, num_steps,
                                      prefix='config.optim')
  return dict(
      num_steps=num_steps, tx=tx, schedule=schedule,
      label_smoothing=float(smoothing),
      seed=check_seed(config.seed, 'config.seed'),
      data=DataSpec.from_config(config.data), mesh_axes=dict(config.mesh),
      checkpoint=CheckpointOptions.from_config(config.checkpoint),
      log_every=check_int(config.log_every_steps, 'config.log_every_steps'),
      config=config.to_dict(), compute=compute_lib.from_config(config))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def open_checkpoints(workdir: str, options: CheckpointOptions, config: dict,
                     resumable_keys, later_keys=None
                     ) -> ckpt_lib.CheckpointManager:
  """The run's checkpoint manager; refuses a workdir of another config
  (`later_keys`: `ckpt_lib.CheckpointManager`'s defaults of keys newer than
  some workdirs)."""
  return ckpt_lib.CheckpointManager(
      checkpoint_dir(workdir), max_to_keep=options.keep,
      save_interval_steps=options.every_steps, async_save=options.async_save,
      config=config, ignore_keys=resumable_keys, later_keys=later_keys)


def check_checkpoints(workdir: str, config: dict, resumable_keys,
                      later_keys=None) -> None:
  """What `open_checkpoints` refuses, found without writing anything."""
  ckpt_lib.check_config(checkpoint_dir(workdir), config, resumable_keys,
                        later_keys)


def make_mesh(axes: dict, batch_size: int, data_axis_size=None):
  """The run's mesh; ConfigError when the global batch cannot be split.

  `data_axis_size(mesh)` is how many devices split one batch (default the
  mesh's 'data' axis; GHN training passes one arch group's).
  """
  try:
    mesh = parallel.make_mesh(axes)
    rows = (data_axis_size or (lambda m: m.shape[parallel.DATA]))(mesh)
  except ValueError as e:
    raise ConfigError(f'config.mesh: {e}') from e
  if batch_size % rows:
    raise ConfigError(f'config.data.batch_size={batch_size} is not divisible '
                      f"by the {rows} devices of the mesh's '{parallel.DATA}' "
                      'axis')
  return mesh


def host_metrics(metrics) -> dict[str, float]:
  """Device metrics -> python floats (one transfer)."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def restore(mngr, abstract_state, loader):
  """(state, start step, window) from the newest intact checkpoint, or
  (None, 0, []).

  `window`: the metrics of the steps after the last metrics row, which a
  run stopped between two rows (`stop_after_steps`) saved with its
  checkpoint; `run_steps` takes them back so that the next row is the one
  an uninterrupted run logs. Damaged steps are moved aside with a warning
  (`CheckpointManager.restore`); when none is intact the run starts again
  from step 0.
  """
  if mngr.latest_step() is None:
    return None, 0, []
  try:
    state, extra = mngr.restore(abstract_state=abstract_state, repair=True)
  except InputNotFoundError as e:
    logging.warning('%s; starting again from step 0', e)
    return None, 0, []
  loader.restore(extra['loader'])
  start = int(extra['step'])
  if int(state.step) != start:
    raise ConfigError(f'{mngr.directory}: checkpoint step {start} holds a '
                      f'state of step {int(state.step)}')
  return state, start, list(extra.get(WINDOW_KEY, []))


class Clock:
  """Wall time and XLA compilations since a run started (in this process)."""

  def __init__(self):
    self._t0, self._before = time.perf_counter(), compiles.snapshot()

  def seconds(self) -> float:
    return time.perf_counter() - self._t0

  def compiles(self) -> compiles.Compiles:
    return compiles.snapshot() - self._before


@dataclasses.dataclass
class Task:
  """What one kind of run adds to the loop.

  Attributes:
    name: 'GHN training' or 'fine-tuning' (progress bar, errors).
    step: (state, step index) -> (state, device metrics with 'loss',
      'grad_norm' and 'finite'); it draws its own batch.
    schedule: the learning rate at a step (logged).
    num_steps: the run's length (the progress bar's total).
    log_every: a metrics row every this many steps (and at each periodic
      checkpoint and the run's last step; a call that stops between two
      rows keeps the open row in its checkpoint, `run_steps`).
    save_every: the checkpoint interval (the manager saves only there).
    units_per_step, rate_key: the throughput logged, e.g. m architectures
      per step as 'arch_per_s'.
    curves, title: what `training_curves.png` shows.
    plot_files: more JSONL files in the workdir plotted with the metrics.
    detail: step -> text added to the error of a non-finite step.
    hook, hook_at: `hook(steps done, state, progress bar)` runs (on a
      settled step) when `hook_at(steps done)`, e.g. an evaluation.
    extra: steps done -> JSON fields saved with the checkpoint (besides the
      step and the loader position).
  """

  name: str
  step: Callable[[Any, int], tuple]
  schedule: Callable
  num_steps: int
  log_every: int
  save_every: int
  units_per_step: int
  rate_key: str
  curves: tuple
  title: str
  plot_files: tuple = ()
  detail: Callable[[int], str] = lambda step: ''
  hook: Callable | None = None
  hook_at: Callable[[int], bool] = lambda done: False
  extra: Callable[[int], dict] = lambda done: {}


def run_steps(task: Task, state, *, start: int, end: int, loader, mngr,
              workdir: str, clock: Clock, window=()):
  """Steps [start, end) of `task`; returns (state, last metrics row).

  A checkpoint closes a metrics row, except where the run stops between
  two rows (`end` short of the run's length and off both intervals): that
  checkpoint carries the steps of the open row instead, and a run resumed
  from it passes them back as `window` (from `restore`).

  A signal (`interrupt`) stops the run at the next step boundary, after a
  checkpoint of the steps done since the last one, so that the same command
  resumes where it stopped.

  Raises:
    NonFiniteLossError: a step's loss or gradient norm was not finite; that
      update was not applied and no checkpoint of it is written.
    Interrupted: a signal arrived.
  """
  log = report.MetricsLog(workdir, resume_step=start)
  bar = report.Progress(task.num_steps, start, task.name)
  rate = _Rate(task.units_per_step)
  lr_at = jax.jit(task.schedule)  # one program, not one per eager op
  window, last, pending = list(window), {}, None

  def settle(step, device_metrics):
    """Fetches a step's metrics; stops the run if they are not finite."""
    metrics = host_metrics(device_metrics)
    if not metrics['finite']:
      good = mngr.latest_step()
      kept = (f'The last good checkpoint (step {good}) is intact.'
              if good is not None else 'No checkpoint had been written yet.')
      raise NonFiniteLossError(
          f'{task.name} step {step + 1}: loss {metrics["loss"]}, gradient '
          f'norm {metrics["grad_norm"]}{task.detail(step)}; stopped without '
          f'applying it. {kept}', step=step + 1)
    window.append(metrics)
    if step == start:
      c = clock.compiles()
      bar.write(f'start-up and first step: {clock.seconds():.1f} s wall, '
                f'{c.count} compilations, {c.seconds:.1f} s compiling')
    rate.tick(first=step == start)
    bar.update(1, loss=f'{metrics["loss"]:.4f}',
               **{task.rate_key: f'{rate.value():.2f}'})

  def save(done: int, force: bool) -> None:
    extra = {'step': done, 'loader': loader.state(), **task.extra(done)}
    if window:  # stopped between two rows: their steps so far
      extra[WINDOW_KEY] = window
    if mngr.save(done, state, extra=extra, force=force):
      saved.append(done)

  saved = []
  with stopping.deferred():
    try:
      for step in range(start, end):
        stop = stopping.requested()
        if stop:  # keep the steps done since the last checkpoint
          if pending is not None:
            settle(*pending)  # a non-finite step stops the run unsaved
            pending = None
          if step > start and saved[-1:] != [step]:
            save(step, force=True)
          raise Interrupted(stop)
        state, device_metrics = task.step(state, step)
        if pending is not None:  # the previous step, now that it is queued
          settle(*pending)
        pending = step, device_metrics
        done = step + 1
        periodic = done % task.save_every == 0 or done == task.num_steps
        # a periodic checkpoint also closes a metrics row: a run resumed from
        # it then logs the same rows as one never stopped
        logs = periodic or done % task.log_every == 0
        saves = periodic or done == end
        hooks = task.hook is not None and task.hook_at(done)
        if not (logs or saves or hooks):
          continue
        settle(*pending)
        pending = None
        if logs:
          last = _log_row(window, done, task, rate, clock, lr_at)
          log.write(last)
          window = []
        if hooks:
          task.hook(done, state, bar)
        if saves:
          save(done, force=done == end)
    finally:
      bar.close()
      mngr.wait_until_finished()
  if stopping.left_over():  # it came during the last step, which is saved
    raise Interrupted(stopping.left_over())
  _plot(workdir, task)
  return state, last


class _Rate:
  """Units per second since the end of the first step of a call.

  The first step is left out (it is mostly compilation, reported apart);
  later compilations (say, of newly seen architectures) are included.
  """

  def __init__(self, per_step: int):
    self.per_step, self.steps, self.t0 = per_step, 0, None

  def tick(self, first: bool) -> None:
    if first or self.t0 is None:
      self.t0 = time.perf_counter()
    else:
      self.steps += 1

  def value(self) -> float:
    if not self.steps:
      return 0.0
    return self.steps * self.per_step / (time.perf_counter() - self.t0)


def _log_row(window, done, task, rate, clock, lr_at) -> dict:
  """Means of the window's metrics, the lr (`lr_at`, the jitted schedule),
  throughput and compilations."""
  keys = [k for k in window[0] if k != 'finite']
  row = {k: float(np.mean([w[k] for w in window])) for k in keys}
  c = clock.compiles()
  row.update(step=done, lr=float(lr_at(done - 1)),
             compiles=c.count, compile_s=round(c.seconds, 3))
  row[task.rate_key] = rate.value()
  return row


def _plot(workdir: str, task: Task) -> None:
  rows = []
  for name in (report.METRICS_FILE,) + tuple(task.plot_files):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      rows += report.read_metrics(path)
  report.plot_curves(rows, os.path.join(workdir, report.PLOT_FILE),
                     task.curves, task.title)
