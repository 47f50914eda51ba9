"""Training a GHN: the checked run, and the loop task that trains it.

`build_run(config)` reads a GHN-training ConfigDict once and checks every
field before any compilation, so a bad config fails in about a second with
one sentence naming the field. `train(run, workdir)` then needs no config:
it runs `loop.run_steps` with the GHN step (`ghn_step.GHNStep`).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import compiles
from logah_jax import ghn as ghn_lib
from logah_jax import parallel
from logah_jax.ghn import depth_sharing
from logah_jax.train import ghn_step
from logah_jax.train import loop
from logah_jax.train import report
from logah_jax.train.data_spec import check_data_matches
from logah_jax.train.sampler import ArchSampler
from logah_jax.validation import ConfigError, check_int

# Keys that may change when a run is resumed: they do not affect training.
RESUMABLE_KEYS = (*ckpt_lib.DEFAULT_IGNORE_KEYS, 'holdout', 'demo',
                  'compilation_cache', 'checkpoint.async_save', 'job',
                  'compute_dtype', 'remat', 'train.compile_workers',
                  'train.share_depths', 'train.quick_compile')
# Steps whose new architectures are compiled ahead on background threads.
COMPILE_AHEAD_STEPS = 8
CURVES = ('loss', 'ce', 'acc', 'reg', 'grad_norm', 'lr')


@dataclasses.dataclass(kw_only=True)
class GHNRun(loop.RunSettings):
  """Everything a GHN training run reads, checked (no device work yet)."""

  ghn_cfg: ghn_lib.GHNConfig
  family: str
  space: arch_lib.Space
  space_name: str
  sampler: ArchSampler
  gamma: float            # weight of the Frobenius regulariser
  compile_workers: int    # threads compiling upcoming architectures
  share_depths: bool      # one program per architecture up to depth
  quick_compile: bool     # quicker XLA compiles of those programs

  @property
  def title(self) -> str:
    return f'GHN training: {self.space_name} on {self.data.name}'

  def batch_rows(self, mesh) -> int:
    """Each architecture's batch is split over one arch group's devices."""
    return parallel.arch_groups(mesh)[0].shape[parallel.DATA]


@dataclasses.dataclass
class GHNTrainResult:
  step: int
  params: dict
  last: dict           # metrics of the last logged interval
  compiles: int        # XLA compilations during this process's training
  compile_seconds: float
  traces: dict         # per-program trace counts (body, arch, finish)
  seconds: float


def ghn_config(config) -> ghn_lib.GHNConfig:
  """The GHNConfig of `config.ghn` (every GHNConfig field, checked)."""
  try:
    return ghn_lib.from_dict(config.ghn.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.ghn: {e}') from e


def space_of(config) -> arch_lib.Space:
  fields = config.space.to_dict()
  name = fields.pop('name')
  fields.pop('family', None)
  heads = str(fields.get('heads', arch_lib.VIT_HEADS_RULE))
  if heads.isdigit():
    fields['heads'] = int(heads)
  try:
    space = arch_lib.make_space(name, **fields)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.space: {e}') from e
  # A config's space section holds every field of its space, so a new name
  # alone changes only the family and the label: refuse fields that are
  # more another named space's than this one's.
  def shared(named):
    return sum(getattr(space, f.name) == getattr(named, f.name)
               for f in dataclasses.fields(space) if f.name != 'family')
  closest = max(arch_lib.SPACES, key=lambda n: shared(arch_lib.SPACES[n]))
  if shared(arch_lib.SPACES[closest]) > shared(arch_lib.SPACES[name]):
    raise ConfigError(
        f'config.space.name={name!r} but the other config.space fields are '
        f"mostly those of {closest!r} (the config's space): the run would "
        f'draw the architectures of {closest!r} under the name {name!r}. Use '
        f'a config of {name!r} (configs/README.md lists them) or set its '
        'fields too')
  return space


def compile_workers(value) -> int:
  """config.train.compile_workers: 'auto' or a count >= 0, as an int or a
  string of digits (0: compile each architecture when first used).

  'auto' is 0 on CPU backends, where compiling ahead competes with the steps
  for the same cores (on 2 cores: the same first-pass time, 45% more memory;
  docs/performance.md), and one thread per host core, at most 8, on
  accelerators, whose host cores are idle while the device runs.
  """
  if value == 'auto':
    if jax.default_backend() == 'cpu':
      return 0
    return min(8, os.cpu_count() or 1)
  if isinstance(value, str):  # the config field is a string: 'auto' or '2'
    if not value.isdigit():
      raise ConfigError(f'config.train.compile_workers={value!r} must be '
                        "'auto' or an int >= 0")
    value = int(value)
  return check_int(value, 'config.train.compile_workers', 0)


def share_depths(value) -> bool:
  """config.train.share_depths: 'auto', 'true' or 'false' (or a bool).

  'auto' is true on CPU backends, where compiling a program (8-10 s for a
  GHN-training program on 2 cores) costs as much as tens of the main job's
  steps, and false on accelerators, where `compile_workers` compiles ahead
  and every step would pay for the skipped blocks (docs/performance.md).
  """
  return _auto_bool(value, 'share_depths',
                    lambda: jax.default_backend() == 'cpu')


def quick_compile(value, visits_per_program: float, family: str) -> bool:
  """config.train.quick_compile: 'auto' (default), 'true' or 'false' (or a
  bool).

  True compiles the per-architecture programs with
  `compiles.quick_compile_options()`: on GPUs without GEMM autotuning
  (compile time per new architecture on an H200 1.9 s instead of 4.0 s, for
  a 30% slower step), on CPUs with XLA's classic emitters and LLVM -O1
  (about 40% less compile time, GPT-2 steps about 7% slower, ViT steps
  up to 5%). 'auto' is true where that pays: when the run visits each
  program fewer times (`visits_per_program`: steps x m / programs) than
  `compiles.QUICK_COMPILE_PAYS_BELOW` gives for the backend and the
  targets' `family` (CPU: 60 for GPT-2, 450 for ViTs; GPU 1,400; never on
  TPUs). docs/performance.md.
  """
  return _auto_bool(value, 'quick_compile',
                    lambda: compiles.quick_compile_pays(visits_per_program,
                                                        family))


def _auto_bool(value, field: str, auto) -> bool:
  """A config.train switch: a bool, or 'auto' (`auto()`), 'true' or
  'false' in any case ('True' is the command line's spelling)."""
  if isinstance(value, bool):
    return value
  if value == 'auto':
    return auto()
  if isinstance(value, str) and value.lower() in ('true', 'false'):
    return value.lower() == 'true'
  raise ConfigError(f'config.train.{field}={value!r} must be '
                    "'auto', 'true' or 'false'")


def build_run(config) -> GHNRun:
  """Checks `config` and builds the host-side objects of a GHN run."""
  cfg = ghn_config(config)
  space = space_of(config)
  train = config.train
  m = check_int(train.m, 'config.train.m')
  settings = loop.settings(config, check_int(train.num_steps,
                                             'config.train.num_steps'))
  data = settings['data']
  if not 0 <= train.gamma < math.inf:  # NaN fails both comparisons
    raise ConfigError(f'config.train.gamma={train.gamma} must be a finite '
                      'number >= 0')
  if (data.info()['kind'] == 'image' and space.family == 'vit'
      and cfg.num_classes != space.num_classes):
    raise ConfigError(f'config.ghn.num_classes={cfg.num_classes} must equal '
                      f'the dataset classes {space.num_classes}')
  settings['data'] = check_data_matches(space, data)
  sampler = ArchSampler(space, m,
                        seed=check_int(train.arch_seed,
                                       'config.train.arch_seed', 0),
                        pool_size=check_int(train.pool_size,
                                            'config.train.pool_size', 0))
  # Every architecture training can draw (at most a few hundred host-side
  # plans, under a second): the decoder's limits bind at the widest, not
  # the deepest, so a partial check failed mid-run.
  for a in sampler.candidates():
    try:
      ghn_lib.check_archs(cfg, space.family, [a])
    except ValueError as e:
      raise ConfigError(f'config.ghn cannot predict {a.name}, an '
                        f'architecture of config.space: {e}') from e
  shared = share_depths(train.get('share_depths', 'auto'))
  visits = settings['num_steps'] * m / program_count(sampler, shared)
  run = GHNRun(ghn_cfg=cfg, family=space.family, space=space,
               space_name=config.space.name, sampler=sampler,
               gamma=float(train.gamma),
               compile_workers=compile_workers(
                   train.get('compile_workers', 'auto')),
               share_depths=shared,
               quick_compile=quick_compile(train.get('quick_compile',
                                                     'auto'), visits,
                                           space.family),
               **settings)
  mesh = run.mesh()  # a mesh or batch that does not fit fails now
  groups = dict(mesh.shape).get(parallel.ARCH, 1)
  if groups > m:  # architecture b runs on group b % groups
    raise ConfigError(f'config.mesh.arch={groups} exceeds config.train.m={m}'
                      f': each step trains {m} architecture(s), one per arch '
                      f'group, so {groups - m} group(s) would sit idle for '
                      'the whole run; use at most m groups')
  return run


def program_count(sampler: ArchSampler, shared: bool) -> int:
  """How many per-architecture programs a run over `sampler` compiles (per
  arch group): one per candidate, or per candidate's program architecture
  with depths shared."""
  candidates = sampler.candidates()
  if not shared:
    return len(set(candidates))
  depths = depth_sharing.program_depths(candidates)
  return len({depth_sharing.program_arch(a, depths) for a in candidates})


def train_ghn(config, workdir: str, *,
              stop_after_steps: int | None = None) -> GHNTrainResult:
  """Trains (or resumes) the GHN of `config` in `workdir` (see `train`)."""
  return train(build_run(config), workdir, stop_after_steps=stop_after_steps)


def train(run: GHNRun, workdir: str, *,
          stop_after_steps: int | None = None) -> GHNTrainResult:
  """Trains (or resumes) the GHN of `run` in `workdir`.

  Args:
    run: from `build_run`.
    workdir: holds checkpoints/ (orbax, with config.json), metrics.jsonl and
      the training-curves PNG.
    stop_after_steps: run at most this many steps in this call, then
      checkpoint and return (time-sliced or pre-emptible jobs; tests).

  Raises:
    ConfigError: a bad mesh, or a workdir of another config (before any
      compilation).
    NonFiniteLossError: a NaN/Inf loss; the step is named, nothing is saved.
  """
  clock = loop.Clock()
  mesh = run.mesh()
  loader = run.data.loader(run.seed, jax.process_index(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)  # after the data is found
  with loop.open_checkpoints(workdir, run.checkpoint, run.config,
                             RESUMABLE_KEYS) as mngr:
    stepper = ghn_step.GHNStep(
        run.ghn_cfg, run.family, run.tx, mesh, m=run.sampler.m,
        n_pad=run.sampler.node_bucket(run.ghn_cfg.cutoff), gamma=run.gamma,
        label_smoothing=run.label_smoothing, compute=run.compute,
        compile_workers=run.compile_workers,
        share_depths=run.sampler.candidates() if run.share_depths else (),
        compiler_options=(compiles.quick_compile_options()
                          if run.quick_compile else None))
    programs = program_count(run.sampler, run.share_depths)
    params_abstract = jax.eval_shape(
        lambda: ghn_lib.init(run.ghn_cfg, run.family, run.seed))
    state, start, window = loop.restore(
        mngr, stepper.abstract_state(params_abstract), loader)
    if state is None:
      state = stepper.init_state(ghn_lib.init(run.ghn_cfg, run.family,
                                              run.seed))
    report.say(
        report.param_table(state.params, f'GHN {run.ghn_cfg.decoder} '
                           f'(hid {run.ghn_cfg.hid}, {run.family} targets)'),
        f'space {run.space_name}: {run.sampler.distinct_archs()} distinct '
        f'architectures in {programs} programs '
        f'({"depths shared" if run.share_depths else "one each"}; compile '
        f'bound x {len(stepper.groups)} arch groups), '
        f'node bucket {stepper.n_pad}; m={run.sampler.m}, batch '
        f'{run.data.batch_size}, mesh {dict(mesh.shape)}; '
        f'{run.compile_workers} threads compiling ahead; '
        f'{run.num_steps * run.sampler.m / programs:.0f} visits per program'
        f'{", quick compile" if stepper.compiler_options else ""}',
        f'targets: {run.compute.describe(scan=True)}; Graphormer '
        f'{run.ghn_cfg.dtype}',
        f'resuming at step {start}' if start else 'starting at step 0')
    end = run.num_steps
    if stop_after_steps is not None:
      end = min(end, start + stop_after_steps)
    try:
      state, last = loop.run_steps(
          _task(run, stepper, loader, end), state, start=start, end=end,
          loader=loader, mngr=mngr, workdir=workdir, clock=clock,
          window=window)
    finally:
      stepper.close()
  c = clock.compiles()
  return GHNTrainResult(step=end, params=state.params, last=last,
                        compiles=c.count, compile_seconds=c.seconds,
                        traces=compiles.trace_counts(ghn_step.TRACE_GROUP),
                        seconds=clock.seconds())


def _task(run: GHNRun, stepper, loader, end: int) -> loop.Task:
  """The loop's task; `end` bounds compiling ahead to the steps this call
  runs (a run stopped early compiles nothing it will not use)."""
  sampler = run.sampler

  def step(state, index):
    ahead = range(index + 1, min(index + 1 + COMPILE_AHEAD_STEPS, end))
    upcoming = [sampler.at(i) for i in ahead] if run.compile_workers else ()
    return stepper(state, sampler.at(index), next(loader), upcoming)

  return loop.Task(
      name='GHN training', step=step, schedule=run.schedule,
      num_steps=run.num_steps, log_every=run.log_every,
      save_every=run.checkpoint.every_steps,
      units_per_step=sampler.m, rate_key='arch_per_s', curves=CURVES,
      title=run.title,
      detail=lambda index: (f' (architectures '
                            f'{[a.name for a in sampler.at(index)]})'),
      extra=lambda done: {'sampler': {
          'seed': sampler.seed, 'pool_size': sampler.pool_size,
          'm': sampler.m, 'next_step': done}})
