"""Fine-tuning a target from any init: the checked run and its loop task.

The same loop as GHN training (`loop.py`): the config is checked before any
compilation, a workdir of another config is refused, a run resumes bit-exactly
from its latest checkpoint, a NaN/Inf loss stops the run with the last good
checkpoint intact. The evaluation split (a validation split: the curves and
anything chosen from them) is scored at step 0 (the init itself), every
`eval.every_steps` and at the end; those rows go to eval.jsonl, training rows
to metrics.jsonl. The test split (`eval.test_split`, '' = none) is read once,
after the last step, into test.json; a completed run called again reads that
file back instead of evaluating again. A completed run exports its params
to `final_params` (the layout of a saved init, with the architecture in its
metadata), so a fine-tuned model can be restored anywhere or grown from.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import files
from logah_jax import inits
from logah_jax import models
from logah_jax import parallel
from logah_jax.train import evaluate as eval_lib
from logah_jax.train import finetune_step
from logah_jax.train import loop
from logah_jax.train import report
from logah_jax.train.data_spec import check_data_matches
from logah_jax.validation import ConfigError, check_int, check_step

RESUMABLE_KEYS = (*ckpt_lib.DEFAULT_IGNORE_KEYS, 'compilation_cache',
                  'checkpoint.async_save', 'job', 'fsdp_min_mb',
                  'compute_dtype', 'remat',
                  # which steps the validation curve is taken at
                  'eval.every_steps',
                  # read after the last step: they never change the training
                  'eval.test_split', 'eval.test_max_batches')
# Keys newer than some workdirs, with the value their absence meant: the
# checkpoints of a workdir from before `scan_blocks` hold per-block params.
LATER_KEYS = {'scan_blocks': False}
# Runs compared with each other (compare, extrapolate, the main job) must be
# evaluated at the same steps: their validation interval may not change.
COMPARED_RESUMABLE_KEYS = tuple(k for k in RESUMABLE_KEYS
                                if k != 'eval.every_steps')
EVAL_FILE = 'eval.jsonl'
TEST_FILE = 'test.json'  # the one read of the test split, after the last step
FINAL_PARAMS = 'final_params'  # a completed run's params (save_params layout)
CURVES = ('loss', 'acc', 'eval_loss', 'eval_accuracy', 'eval_perplexity', 'lr')


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """Which split is scored, how often, and on how many batches."""

  split: str
  every_steps: int    # 0: only at the start and the end
  batch_size: int
  max_batches: int    # 0: the whole split
  test_split: str = ''      # '' = no test read
  test_max_batches: int = 0  # 0: the whole test split


@dataclasses.dataclass(kw_only=True)
class FinetuneRun(loop.RunSettings):
  """Everything a fine-tuning run reads, checked (no device work yet)."""

  arch: arch_lib.ArchConfig
  init: inits.InitMethod
  optimizer: str          # what the start-up lines print, e.g. 'adamw lr 0.001'
  eval: EvalOptions
  param_sharding: str
  fsdp_min_mb: float
  scan_blocks: bool = False  # blocks stacked, run as one scan

  @property
  def title(self) -> str:
    return (f'fine-tuning {self.arch.name} on {self.data.name} from '
            f'{self.init.name}')


@dataclasses.dataclass
class FinetuneResult:
  step: int
  params: dict
  evals: list          # every eval row of the run (also those before resume)
  last: dict           # metrics of the last logged interval
  compiles: int        # XLA compilations during this call
  seconds: float
  # The test split's one read after the last step ({'split', 'step',
  # 'max_batches', 'loss', 'accuracy' or 'perplexity', ...}); None when the
  # run has no test split or has not reached its last step.
  test: dict | None = None


def target_arch(config) -> arch_lib.ArchConfig:
  try:
    return arch_lib.parse(config.arch)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.arch: {e}') from e


def init_method(config) -> inits.InitMethod:
  """The InitMethod of `config.init` (GHN methods read a trained workdir)."""
  i = config.init
  step = check_step(i.ghn_step, 'config.init.ghn_step')
  if i.method not in inits.GHN_METHODS and (i.ghn_workdir or step is not None):
    raise ConfigError(
        f'config.init.ghn_workdir / ghn_step are set but config.init.method='
        f'{i.method!r} reads no GHN; set the method to one of '
        f'{inits.GHN_METHODS} or leave them unset')
  try:
    return inits.make(i.method, ghn_workdir=i.ghn_workdir, ghn_step=step)
  except ValueError as e:
    raise ConfigError(f'config.init: {e}') from e


def build_run(config, init: inits.InitMethod | None = None) -> FinetuneRun:
  """Checks every field a fine-tuning run reads; ConfigError names a bad one.

  `init` replaces `config.init` (the comparison harness hands over methods
  it prepared); `config.init.method` should still name it, for config.json.
  """
  arch = target_arch(config)
  settings = loop.settings(config, check_int(config.train.num_steps,
                                             'config.train.num_steps'))
  data = settings['data'] = check_data_matches(arch, settings['data'],
                                               prefix='config.arch')
  evaluation = eval_options(config.eval, data)
  if config.param_sharding not in parallel.RULES:
    raise ConfigError(f'config.param_sharding={config.param_sharding!r} must '
                      f'be one of {parallel.RULES}')
  fsdp_min_mb = config.get('fsdp_min_mb', 4.0)
  if isinstance(fsdp_min_mb, bool) or not (
      isinstance(fsdp_min_mb, (int, float)) and fsdp_min_mb >= 0):
    raise ConfigError(f'config.fsdp_min_mb={fsdp_min_mb!r} must be a number '
                      '>= 0')
  # The checkpoints hold the layout it picks, so it may not change on resume.
  scan_blocks = config.get('scan_blocks', False)
  if not isinstance(scan_blocks, bool):
    raise ConfigError(f'config.scan_blocks={scan_blocks!r} must be true or '
                      'false')
  run = FinetuneRun(arch=arch, init=init or init_method(config),
                    optimizer=f'{config.optim.name} lr {config.optim.lr}',
                    eval=evaluation, param_sharding=config.param_sharding,
                    fsdp_min_mb=float(fsdp_min_mb), scan_blocks=scan_blocks,
                    **settings)
  run.mesh()  # a mesh or batch that does not fit fails now
  return run


def eval_options(ev, data) -> EvalOptions:
  """The checked `config.eval` section: the evaluation split must differ from
  the training split, the test split (read once, for the final number) from
  both."""
  data.check_split(ev.split, 'config.eval.split')
  if data.trains_on(ev.split):
    raise ConfigError(f'config.eval.split={ev.split!r} is also '
                      f'config.data.split ({data.split!r}): the curves would '
                      'be read on the training data; use a validation split')
  test_split = ev.get('test_split', '')
  if not isinstance(test_split, str):
    raise ConfigError(f'config.eval.test_split={test_split!r} must be a '
                      "split name or '' (none)")
  if test_split:
    data.check_split(test_split, 'config.eval.test_split')
    for read, field in ((test_split == ev.split, 'config.eval.split'),
                        (data.trains_on(test_split), 'config.data.split')):
      if read:
        raise ConfigError(
            f'config.eval.test_split={test_split!r} is also {field}: the '
            "test split is read once at the end; use another split or ''")
  return EvalOptions(
      split=ev.split,
      every_steps=check_int(ev.every_steps, 'config.eval.every_steps', 0),
      batch_size=check_int(ev.batch_size, 'config.eval.batch_size'),
      max_batches=check_int(ev.max_batches, 'config.eval.max_batches', 0),
      test_split=test_split,
      test_max_batches=check_int(ev.get('test_max_batches', 0),
                                 'config.eval.test_max_batches', 0))


def finetune(config, workdir: str, *, init: inits.InitMethod | None = None,
             stop_after_steps: int | None = None, export_params: bool = True,
             resumable_keys=RESUMABLE_KEYS) -> FinetuneResult:
  """Fine-tunes (or resumes) a config's target: `train(build_run(...))`."""
  return train(build_run(config, init), workdir,
               stop_after_steps=stop_after_steps, export_params=export_params,
               resumable_keys=resumable_keys)


def train(run: FinetuneRun, workdir: str, *,
          stop_after_steps: int | None = None, export_params: bool = True,
          resumable_keys=RESUMABLE_KEYS) -> FinetuneResult:
  """Fine-tunes (or resumes) `run.arch` from `run.init` in `workdir`.

  The init is called only when the run starts from step 0 (a resumed run
  restores its params). `stop_after_steps`: run at most this many steps in
  this call. `export_params`: a run that completes writes `final_params`.
  `resumable_keys`: the config keys that may differ from the workdir's
  (`COMPARED_RESUMABLE_KEYS` for runs compared with each other).
  """
  clock = loop.Clock()
  mesh = run.mesh()
  loader = run.data.loader(run.seed, jax.process_index(), jax.process_count())
  eval_source = run.data.source(run.eval.split)
  # Opened now, read once at the end: missing test data fails before step 0.
  test_source = (run.data.source(run.eval.test_split) if run.eval.test_split
                 else None)
  # A fresh run checks its init (a wrong architecture, NaN values, a GHN of
  # another family) before it writes anything, so a corrected command is not
  # refused as another config; a resumed run never calls the init.
  params = (None if os.path.exists(loop.checkpoint_dir(workdir))
            else run.init(run.arch, run.seed))
  os.makedirs(workdir, exist_ok=True)
  with loop.open_checkpoints(workdir, run.checkpoint, run.config,
                             resumable_keys, LATER_KEYS) as mngr:
    stepper = finetune_step.FinetuneStep(
        run.arch, run.tx, mesh, param_rule=run.param_sharding,
        fsdp_min_mb=run.fsdp_min_mb,
        label_smoothing=run.label_smoothing, compute=run.compute,
        scan_blocks=run.scan_blocks)
    state, start, window = loop.restore(mngr, stepper.abstract_state(), loader)
    if state is None:
      state = stepper.init_state(run.init(run.arch, run.seed)
                                 if params is None else params)
    params = None  # the state holds them now
    report.say(
        report.param_table(models.abstract_params(run.arch),
                           f'{run.arch.name} '
                           f'({arch_lib.num_params(run.arch):,} params), '
                           f'init {run.init.name}'),
        f'{run.data.name}: batch {run.data.batch_size}, {run.num_steps} '
        f'steps, {run.optimizer}; eval on {run.eval.split} every '
        f'{run.eval.every_steps or "-"} steps' + (
            f'; {run.eval.test_split} read once after the last step'
            if run.eval.test_split else ''),
        run.compute.describe(scan=run.scan_blocks),
        f'resuming at step {start}' if start else 'starting at step 0')
    # A fresh run drops every old eval row (an attempt that died before its
    # first checkpoint may have written the step-0 row already).
    eval_log = report.MetricsLog(workdir, resume_step=start if start else -1,
                                 name=EVAL_FILE)
    if start < run.num_steps:  # a test read belongs to a finished run only
      _drop_test(workdir)

    def evaluate(done, params):  # the state's layout, stacked or not
      row = eval_lib.evaluate(run.arch, params, eval_source,
                              batch_size=run.eval.batch_size,
                              max_batches=run.eval.max_batches,
                              scan=run.scan_blocks)
      row = {'step': done, **{f'eval_{k}': v for k, v in row.items()}}
      eval_log.write(row)
      return row

    def eval_due(done):
      every = run.eval.every_steps
      return bool(every and done % every == 0) or done == run.num_steps

    if start == 0:
      evaluate(0, state.params)
    end = run.num_steps if stop_after_steps is None else min(
        run.num_steps, start + stop_after_steps)
    state, last = loop.run_steps(
        loop.Task(name='fine-tuning',
                  step=lambda state, _: stepper(state, next(loader)),
                  schedule=run.schedule, num_steps=run.num_steps,
                  log_every=run.log_every,
                  save_every=run.checkpoint.every_steps,
                  units_per_step=run.data.batch_size,
                  rate_key='examples_per_s', curves=CURVES, title=run.title,
                  plot_files=(EVAL_FILE,), hook_at=eval_due,
                  hook=lambda done, state, bar: bar.write(
                      _eval_line(evaluate(done, state.params)))),
        state, start=start, end=end, loader=loader, mngr=mngr,
        workdir=workdir, clock=clock, window=window)
  params = stepper.reference_params(state.params)  # per-block, for export
  if export_params and end == run.num_steps:
    ckpt_lib.save_params(
        os.path.join(workdir, FINAL_PARAMS), params, overwrite=True,
        metadata={'arch': arch_lib.to_dict(run.arch),
                  'arch_name': run.arch.name, 'family': run.arch.family,
                  'method': 'finetuned', 'init': run.init.name,
                  'steps': run.num_steps, 'data': run.data.name,
                  'batch_size': run.data.batch_size,
                  'block_size': run.data.block_size, 'seed': run.seed})
  test = None
  if run.eval.test_split and end == run.num_steps:
    test = _test_once(run, workdir, state.params, test_source)
  evals = report.read_metrics(os.path.join(workdir, EVAL_FILE))
  return FinetuneResult(step=end, params=params, evals=evals,
                        last=last, compiles=clock.compiles().count,
                        seconds=clock.seconds(), test=test)


def read_test(workdir: str) -> dict | None:
  """The run's stored test read (test.json), or None."""
  path = os.path.join(workdir, TEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
  except ValueError:
    return None  # written atomically, so damaged from outside: read again
  return stored if isinstance(stored, dict) else None


def _drop_test(workdir: str) -> None:
  if parallel.is_main_process() and os.path.exists(
      os.path.join(workdir, TEST_FILE)):
    os.remove(os.path.join(workdir, TEST_FILE))


def _test_once(run: FinetuneRun, workdir: str, params, source) -> dict:
  """The test split (`source`) scored once with the final params (the
  state's layout), or read back from test.json when this finished run
  already scored the same split."""
  ev = run.eval
  stored = read_test(workdir)
  if stored and (stored.get('split'), stored.get('max_batches'),
                 stored.get('step')) == (ev.test_split, ev.test_max_batches,
                                         run.num_steps):
    return stored
  row = eval_lib.evaluate(run.arch, params, source,
                          batch_size=ev.batch_size,
                          max_batches=ev.test_max_batches,
                          scan=run.scan_blocks)
  test = {'split': ev.test_split, 'step': run.num_steps,
          'max_batches': ev.test_max_batches, **row}
  if parallel.is_main_process():
    files.write_json(os.path.join(workdir, TEST_FILE), test, indent=2,
                     sort_keys=True)
  report.say(f'test split {ev.test_split}, read once after step '
             f'{run.num_steps}: {_scores(row)}')
  return test


def _eval_line(row: dict) -> str:
  return f'step {row["step"]}: eval ' + _scores(
      {k[len('eval_'):]: v for k, v in row.items() if k.startswith('eval_')})


def _scores(row: dict) -> str:
  """'loss 0.4321, accuracy 85.00%' (or perplexity) of an evaluate() row."""
  metric = ('accuracy', 100 * row['accuracy'], '%') if (
      'accuracy' in row) else ('perplexity', row['perplexity'], '')
  return (f'loss {row["loss"]:.4f}, {metric[0]} '
          f'{metric[1]:.2f}{metric[2]}')
