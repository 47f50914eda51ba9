"""Learning LiGO's growth operator: the large model's task loss, source frozen.

The trainable params are the operator only (`growth.ligo`); the small model's
params are an argument of the compiled step behind `stop_gradient`, so no
gradient reaches them and they are not baked into the program as constants.
The run is the shared loop (`loop.run_steps`): checked config, resumable
checkpoints, one compiled step for the whole run, a NaN/Inf stop with the
last good checkpoint intact. When the run completes, the operator is saved
at `<workdir>/operator` (`checkpoint.save_params` layout) with the source and
target in its metadata, where the `ligo` init method reads it.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import compiles
from logah_jax import growth
from logah_jax import parallel
from logah_jax.growth import ligo
from logah_jax.inits import growth_source
from logah_jax.train import loop
from logah_jax.train import objective as objective_lib
from logah_jax.train import report
from logah_jax.train import state as state_lib
from logah_jax.train.compute import Compute
from logah_jax.train.data_spec import check_data_matches
from logah_jax.validation import ConfigError, check_int

TRACE_NAME = 'ligo_step.update'  # compiles.trace_counts() key
OPERATOR_DIR = 'operator'
RESUMABLE_KEYS = (*ckpt_lib.DEFAULT_IGNORE_KEYS, 'compilation_cache',
                  'checkpoint.async_save', 'job', 'compute_dtype', 'remat')
CURVES = ('loss', 'acc', 'grad_norm', 'lr')
# The operator run's fields that the grow and compare jobs take from their
# `config.ligo` section: its builder's path -> the user's (for
# `validation.sub_config`, so that errors name the field the user set).
LIGO_SECTION_FIELDS = {'config.train.num_steps': 'config.ligo.num_steps',
                       'config.checkpoint.every_steps': 'config.ligo.num_steps',
                       'config.optim': 'config.ligo.optim'}


@dataclasses.dataclass(kw_only=True)
class LigoRun(loop.RunSettings):
  """A checked LiGO operator run (no device work yet)."""

  small: arch_lib.ArchConfig
  large: arch_lib.ArchConfig
  source: str          # the small model's params directory
  scheme: str          # the closed-form method the operator starts as
  sharing: str
  split_noise: float

  @property
  def title(self) -> str:
    return (f'LiGO operator {self.small.name} -> {self.large.name} on '
            f'{self.data.name}')


def operator_dir(workdir: str) -> str:
  return os.path.join(workdir, OPERATOR_DIR)


def build_run(config, source: str, small=None) -> LigoRun:
  """Checks a LiGO config (`configs/grow.py`'s `ligo` section layout).

  `config` is a fine-tuning-shaped ConfigDict of the large target
  (`arch`, `data`, `optim`, `train`, `mesh`, `checkpoint`, ...) with a `ligo`
  section (init, sharing, split_noise); `source` the small params directory,
  whose architecture `small` (default: read from its metadata) must be able to
  grow into the target.
  """
  try:
    large = arch_lib.parse(config.arch)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.arch: {e}') from e
  if small is None:
    small = growth_source.source_arch(source)
  growth.check_pair(small, large)
  section = config.ligo
  if section.init not in ligo.INIT_SCHEMES:
    raise ConfigError(f'config.ligo.init={section.init!r} must be one of '
                      f'{ligo.INIT_SCHEMES}')
  if section.sharing not in ligo.SHARING:
    raise ConfigError(f'config.ligo.sharing={section.sharing!r} must be one '
                      f'of {ligo.SHARING}')
  if not 0.0 <= section.split_noise < 1.0:
    raise ConfigError(f'config.ligo.split_noise={section.split_noise} must '
                      'be in [0, 1)')
  settings = loop.settings(config, check_int(config.train.num_steps,
                                             'config.train.num_steps'))
  # The operator is trained on this source's params: a workdir of another
  # source (or another source architecture) must not be resumed or reused.
  source = os.path.abspath(source)
  settings['config'] = dict(settings['config'], source={
      'path': source, 'arch': arch_lib.to_dict(small)})
  settings['data'] = check_data_matches(large, settings['data'],
                                        prefix='config.arch')
  run = LigoRun(small=small, large=large, source=source,
                scheme=section.init, sharing=section.sharing,
                split_noise=float(section.split_noise), **settings)
  run.mesh()  # a mesh or batch that does not fit fails now
  return run


def objective(operator, small_params, batch, small, large,
              label_smoothing: float = 0.0, compute: Compute = Compute()):
  """(loss, accuracy) of the grown model; differentiable in `operator` only.

  The growth products run in float32 (the operator and the small params are
  float32); the large model's forward runs in `compute.dtype`, with its
  blocks rematerialised under `compute.remat`, as in fine-tuning.
  """
  params = ligo.grow_params(operator, jax.lax.stop_gradient(small_params),
                            small, large)
  loss, logits, targets = objective_lib.task_loss(
      large, params, batch, label_smoothing, dtype=compute.dtype,
      remat=compute.remat)
  return loss, objective_lib.correct(logits, targets) / targets.size


class LigoStep:
  """Callable `(state, small_params, batch) -> (state, metrics)`, one program.

  Operator and source params are replicated; the batch is split over the
  mesh's 'data' axis, as in fine-tuning.
  """

  def __init__(self, run: LigoRun, mesh):
    self.run, self.mesh = run, mesh
    rep = parallel.replicated(mesh)
    self._step = jax.jit(
        self._update, donate_argnums=0,
        in_shardings=(rep, rep, parallel.data_sharded(mesh)),
        out_shardings=(rep, rep))

  def init_state(self, operator) -> state_lib.TrainState:
    rep = parallel.replicated(self.mesh)
    return state_lib.fresh_on(self.run.tx, operator, rep, rep)

  def abstract_state(self) -> state_lib.TrainState:
    run = self.run
    abstract = jax.eval_shape(
        lambda op: state_lib.fresh(run.tx, op),
        ligo.abstract_operator(run.small, run.large, run.sharing))
    rep = parallel.replicated(self.mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
        abstract)

  def _update(self, state, small_params, batch):
    compiles.count_trace(TRACE_NAME)
    run = self.run
    (loss, acc), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params, small_params, batch, run.small, run.large,
        run.label_smoothing, run.compute)
    state, metrics = state_lib.guarded_update(state, grads, loss, run.tx)
    return state, dict(metrics, acc=acc)

  def __call__(self, state, small_params, batch):
    return self._step(state, small_params,
                      parallel.shard_batch(self.mesh, batch))


def _check_operator_source(out: str, run: LigoRun) -> None:
  """Refuses a finished operator grown from another source or pair."""
  meta = ckpt_lib.read_metadata(out)
  have = (meta.get('source'), meta.get('small'), meta.get('large'))
  want = (run.source, arch_lib.to_dict(run.small), arch_lib.to_dict(run.large))
  if have != want:
    raise ConfigError(
        f'{out} holds a LiGO operator trained from {have[0]} '
        f'({have[1] and arch_lib.from_dict(have[1]).name}), not from '
        f'{run.source} ({run.small.name}) for {run.large.name}: give another '
        'config.ligo_workdir')


def train(run: LigoRun, workdir: str, *,
          stop_after_steps: int | None = None) -> str | None:
  """Trains (or resumes, or skips when done) the operator; returns its dir.

  `stop_after_steps`: run at most this many steps in this call; a call that
  stops before the run's last step saves a checkpoint but no operator yet,
  and returns None.
  """
  out = operator_dir(workdir)
  clock = loop.Clock()
  mesh = run.mesh()
  done = os.path.isdir(out)  # then it needs neither the source nor the data
  small_params = loader = None
  if not done:  # read both before writing anything (a missing dataset or a
    # bad source leaves no workdir that would refuse the corrected command)
    small_params = jax.device_put(
        growth_source.load_params(run.source, run.small),
        parallel.replicated(mesh))
    loader = run.data.loader(run.seed, jax.process_index(),
                             jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  with loop.open_checkpoints(workdir, run.checkpoint, run.config,
                             RESUMABLE_KEYS) as mngr:  # refuses other configs
    if done:
      _check_operator_source(out, run)
      report.say(f'LiGO operator already trained: {out}')
      return out
    stepper = LigoStep(run, mesh)
    state, start, window = loop.restore(mngr, stepper.abstract_state(), loader)
    if state is None:
      state = stepper.init_state(ligo.init_operator(
          run.small, run.large, key=jax.random.key(run.seed),
          scheme=run.scheme, sharing=run.sharing,
          split_noise=run.split_noise))
    size = ligo.num_params(run.small, run.large, run.sharing)
    report.say(
        f'{run.title}: operator of {size:,} params ({run.sharing} sharing), '
        f'starting as {run.scheme}; '
        f'{run.num_steps} steps, batch {run.data.batch_size}; large model: '
        f'{run.compute.describe()}',
        f'resuming at step {start}' if start else 'starting at step 0')
    end = run.num_steps if stop_after_steps is None else min(
        run.num_steps, start + stop_after_steps)
    state, _ = loop.run_steps(
        loop.Task(name='LiGO operator',
                  step=lambda state, _: stepper(state, small_params,
                                                next(loader)),
                  schedule=run.schedule, num_steps=run.num_steps,
                  log_every=run.log_every,
                  save_every=run.checkpoint.every_steps,
                  units_per_step=run.data.batch_size,
                  rate_key='examples_per_s', curves=CURVES, title=run.title,
                  plot_files=()),
        state, start=start, end=end, loader=loader, mngr=mngr,
        workdir=workdir, clock=clock, window=window)
  if end < run.num_steps:
    return None
  ckpt_lib.save_params(out, state.params, metadata={
      'kind': 'ligo-operator', 'source': run.source,
      'small': arch_lib.to_dict(run.small),
      'large': arch_lib.to_dict(run.large), 'sharing': run.sharing,
      'init': run.scheme, 'steps': run.num_steps})
  return out
