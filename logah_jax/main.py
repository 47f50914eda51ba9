r"""Entry point: one config file, one workdir.

  python -m logah_jax.main --config=configs/default.py --workdir=/tmp/run
  python -m logah_jax.main --config=configs/paper_vits.py:dataset=cifar100,m=4 \
      --workdir=$HOME/runs/x --config.ghn.rank=64

The config is locked: an override of a key that does not exist is an error.
A config that cannot work (a bad value, a missing dataset or GHN, an output
that exists) is reported as one line `error: ...` with exit code 2, before any
expensive work; any other exception is a bug and shows its traceback.
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
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from logah_jax import parallel
from logah_jax import runtime
from logah_jax.inits import save
from logah_jax.train import compare
from logah_jax.train import demo as demo_lib
from logah_jax.train import finetuning
from logah_jax.train import ghn_training
from logah_jax.train import grow_job
from logah_jax.train import holdout
from logah_jax.validation import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints, metrics and plots.')
flags.mark_flags_as_required(['config', 'workdir'])

JOBS = ('train_ghn', 'predict', 'grow', 'finetune', 'compare')


def run(config, workdir: str) -> dict:
  """Runs `config.job` in `workdir` (also callable from Python and tests)."""
  if config.job not in JOBS:
    raise ConfigError(f'config.job={config.job!r} is not one of {JOBS}')
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
  demo = config.get('demo') and config.demo.enabled
  if demo and not config.holdout.enabled:
    raise ConfigError('config.demo.enabled needs config.holdout.enabled (the '
                      'demo fine-tunes the held-out target)')
  run = ghn_training.build_run(config)
  if config.holdout.enabled:
    holdout.check_holdout(config, run)
  if demo:
    try:  # fail before training, naming the section
      finetuning.build_run(demo_lib.demo_config(config))
    except ConfigError as e:
      raise ConfigError(f'config.demo: {e}') from e
  result = {'train': ghn_training.train(run, workdir)}
  if config.holdout.enabled:
    result['holdout'] = holdout.run_holdout(config, run, workdir)
  if demo:
    result['demo'] = demo_lib.run_demo(config, workdir)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every file at INFO
    logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  try:
    run(_CONFIG.value, workdir)
  except ConfigError as e:
    # A bad config, dataset or workdir: one sentence, no traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
