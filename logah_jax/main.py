r"""Entry point: one config file, one workdir.

  python -m logah_jax.main --config=configs/default.py --workdir=/tmp/run
  python -m logah_jax.main --config=configs/paper_vits.py:dataset=cifar100,m=4 \
      --workdir=$HOME/runs/x --config.ghn.rank=64

The config is locked: an override of a key that does not exist is an error.
A config that cannot work (a bad value, a missing dataset or GHN, an output
that exists, a workdir that is a file) is reported as one line `error: ...`
with exit code 2, before any expensive work (docs/errors.md lists them). So
are the failures that can only show up later: a non-finite loss (the last
good checkpoint stays), a full disk, an interrupt (SIGINT or SIGTERM; the
run saves the steps since its last checkpoint first, in every process of a
multi-process job at the same step, and the same command resumes).
Any other exception is a bug and shows its traceback.
`config.job` picks what runs:
  train_ghn  trains (or resumes) a GHN in the workdir; with
             `config.holdout.enabled` it then predicts and scores a held-out
             target, saves its predicted init and, with `config.demo`,
             fine-tunes it beside random init (configs/default.py).
  predict    predicts one architecture with a trained GHN and saves the init
             as an orbax checkpoint (configs/predict.py).
  grow       grows a saved small model into a larger target (stacking,
             interpolation, Net2Net, bert2BERT or LiGO) and saves the init
             the same way (configs/grow.py).
  finetune   fine-tunes one target from one init (configs/finetune.py).
  compare    init methods x seeds on one target and budget (configs/compare_*).
  extrapolate  the GHN's predictions for targets 1x-4x wider and 2x deeper
             than its training architectures, each fill against random init
             (configs/extrapolation_*.py).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys

if __name__ == '__main__':  # glibc reads its tunables at exec: before JAX
  from logah_jax import host_memory  # pylint: disable=g-import-not-at-top
  try:
    host_memory.reexec_with_tunables()
  except ValueError as bad_env:
    sys.stderr.write(f'error: {bad_env}\n')
    sys.exit(2)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
from ml_collections import config_flags

from logah_jax import files
from logah_jax import parallel
from logah_jax import runtime
from logah_jax.inits import save
from logah_jax.train import compare
from logah_jax.train import demo as demo_lib
from logah_jax.train import extrapolation
from logah_jax.train import finetuning
from logah_jax.train import ghn_training
from logah_jax.train import grow_job
from logah_jax.train import holdout
from logah_jax.train import loop
from logah_jax.validation import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, metrics and plots.')
flags.mark_flags_as_required(['config', 'workdir'])

JOBS = ('train_ghn', 'predict', 'grow', 'finetune', 'compare', 'extrapolate')
# OS errors that mean "the output cannot be written", not a bug.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                 errno.EACCES, errno.EPERM)


def run(config, workdir: str) -> dict:
  """Runs `config.job` in `workdir` (also callable from Python and tests)."""
  if config.job not in JOBS:
    raise ConfigError(f'config.job={config.job!r} is not one of {JOBS}')
  files.check_writable_dir(workdir, '--workdir')
  parallel.maybe_initialize()
  if config.compilation_cache != 'off':
    runtime.enable_compilation_cache(config.compilation_cache or None)
  if config.job == 'predict':
    return {'predict': save.run_predict(config, workdir)}
  if config.job == 'grow':
    return {'grow': grow_job.run_grow(config, workdir)}
  if config.job == 'finetune':
    return {'finetune': finetuning.finetune(config, workdir)}
  if config.job == 'compare':
    return {'compare': compare.run_compare(config, workdir)}
  if config.job == 'extrapolate':
    return {'extrapolate': extrapolation.run_extrapolation(config, workdir)}
  demo = config.get('demo') and config.demo.enabled
  if demo and not config.holdout.enabled:
    raise ConfigError('config.demo.enabled needs config.holdout.enabled (the '
                      'demo fine-tunes the held-out target)')
  run = ghn_training.build_run(config)
  if config.holdout.enabled:
    holdout.check_holdout(config, run)
  if demo:
    try:  # fail before training, naming the section
      demo_run = finetuning.build_run(demo_lib.demo_config(config))
    except ConfigError as e:
      raise ConfigError(f'config.demo: {e}') from e
    compare.open_data(compare.run_reads('config.demo', demo_run))
    demo_lib.check_demo(config, workdir)
  result = {'train': ghn_training.train(run, workdir)}
  if config.holdout.enabled:
    result['holdout'] = holdout.run_holdout(config, run, workdir)
  if demo:
    result['demo'] = demo_lib.run_demo(config, workdir)
  return result


def _fail(message: str) -> None:
  """One line on stderr, exit code 2: what the user must change."""
  # One write, newline included: print() writes the text and the newline
  # separately, and orbax's logging threads can write in between.
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, but a bad flag is one line and exit code 2."""
  try:
    argv = flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(':'):  # a config file raised
      _fail(f'{lines[0]} {lines[-1]}')
    _fail(lines[0] if lines else type(e).__name__)
  except Exception as e:  # pylint: disable=broad-except
    # config_flags: an unknown key, a bad override, a config file that raised
    _fail(f'--config: {type(e).__name__}: {str(e).splitlines()[0]}')
  try:
    _CONFIG.value.get('job')  # config_flags defers a file's load error
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _fail(f'--config={flags.FLAGS["config"].serialize().split("=", 1)[-1]}'
          f': {lines[-1] if lines else e}')
  return argv


_OS_ERROR_CODE = re.compile(r"os_error_code=\W?(\d+)")
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')


def _write_failure(e: BaseException) -> str | None:
  """The one-line reason if `e` (or its cause) says a write failed.

  orbax's array writes go through tensorstore, which reports a full disk as
  a ValueError carrying `os_error_code=28`, not as an OSError.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
      return f'{e.filename or "an output"}: {e.strerror}'
    code = _OS_ERROR_CODE.search(str(e))
    if code and int(code.group(1)) in _WRITE_ERRNOS:
      path = _LOCAL_FILE.search(str(e))
      return (f'{path.group(1) if path else "an output"}: '
              f'{os.strerror(int(code.group(1)))}')
    e = e.__cause__ or e.__context__
  return None


def _interrupt(signum, frame):
  del frame
  loop.interrupt(signal.Signals(signum).name)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every file at INFO
    logging.set_verbosity(logging.WARNING)
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _interrupt)
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  try:
    run(_CONFIG.value, workdir)
  except ConfigError as e:
    # A bad config, dataset or workdir: one sentence, no traceback.
    _fail(str(e))
  except loop.NonFiniteLossError as e:
    _fail(str(e))
  except KeyboardInterrupt as e:
    _fail(f'interrupted ({str(e) or "SIGINT"}); run the same command again to '
          f'resume from {workdir}')
  except Exception as e:  # pylint: disable=broad-except
    reason = _write_failure(e)
    if reason is None:
      raise
    _fail(f'cannot write {reason}; the last complete checkpoint and outputs '
          'are intact')


if __name__ == '__main__':
  runtime.set_xla_flag_defaults()  # before the config or anything starts JAX
  _MALLOC = host_memory.describe()
  if _MALLOC:
    print(_MALLOC, flush=True)
  try:
    app.run(main, flags_parser=parse_flags)
  except SystemExit as exit_:
    if exit_.code != 2:
      raise
    # Our one line is out and every output is closed: leave without the
    # interpreter shutdown, where orbax's idle threads may print noise.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)
