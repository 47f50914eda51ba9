"""The 'grow' job: a saved small model -> an init for a larger target.

Checks everything first (source, target, method, output), trains LiGO's
operator when the method is `ligo` (resumable, in `config.ligo_workdir`,
default `<workdir>-ligo`), then saves the grown init at the workdir in the
layout of a predicted init, so the same restore code reads either.
"""

from __future__ import annotations

import copy
import os

import ml_collections

from logah_jax import arch as arch_lib
from logah_jax import files
from logah_jax import growth
from logah_jax import inits
from logah_jax.inits import growth_source
from logah_jax.inits import save as init_save
from logah_jax.train import ligo_training
from logah_jax.validation import ConfigError, sub_config


def ligo_run_config(config) -> ml_collections.ConfigDict:
  """The operator run's config: the target, data and `config.ligo`'s recipe
  (its builder's errors name fields through
  `ligo_training.LIGO_SECTION_FIELDS`)."""
  c = ml_collections.ConfigDict()
  c.job = 'ligo'
  c.seed = config.seed
  c.arch = config.arch
  c.data = copy.deepcopy(config.data)
  c.optim = copy.deepcopy(config.ligo.optim)
  c.train = ml_collections.ConfigDict(dict(
      num_steps=config.ligo.num_steps, label_smoothing=0.0))
  c.mesh = copy.deepcopy(config.mesh)
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=config.ligo.num_steps, keep=2, async_save=True))
  c.log_every_steps = config.log_every_steps
  c.compilation_cache = config.compilation_cache
  c.compute_dtype = config.compute_dtype
  c.remat = config.remat
  c.ligo = {k: config.ligo[k] for k in ('init', 'sharing', 'split_noise')}
  return c


def run_grow(config, workdir: str) -> dict:
  """Grows `config.source` into `config.arch` with `config.method`."""
  try:
    growth.check_method(config.method)
  except ConfigError as e:
    raise ConfigError(f'config.method: {e}') from e
  try:
    large = arch_lib.parse(config.arch)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.arch: {e}') from e
  try:
    small = growth_source.source_arch(config.source)
  except ConfigError as e:
    raise ConfigError(f'config.source: {e}') from e
  try:
    growth.check_pair(small, large)
  except ConfigError as e:  # the pair is wrong, not the source alone
    raise ConfigError(f'config.arch (grown from config.source): {e}') from e
  init_save.check_output(workdir, config.overwrite)
  files.check_apart(workdir, '--workdir', ((config.source, 'config.source'),))
  operator = ''
  if config.method == 'ligo':
    workdir = os.path.abspath(workdir)  # 'out/' must not give 'out/-ligo'
    ligo_dir = os.path.abspath(config.ligo_workdir or f'{workdir}-ligo')
    files.check_writable_dir(ligo_dir, 'config.ligo_workdir')
    # The operator's run may not share a folder with the output (saving the
    # init would refuse it, or with overwrite delete it, after training) or
    # with the source (its checkpoints would land inside the source's).
    files.check_apart(ligo_dir, 'config.ligo_workdir',
                      ((workdir, 'the output (--workdir)'),
                       (config.source, 'config.source')))
    with sub_config('config', ligo_training.LIGO_SECTION_FIELDS,
                    context='config.ligo'):
      run = ligo_training.build_run(ligo_run_config(config), config.source,
                                    small)
    operator = ligo_training.train(run, ligo_dir)
  method = inits.make(config.method, source=config.source, operator=operator,
                      growth_options={'split_noise': config.growth.split_noise,
                                      'mode': config.growth.bert2bert_mode})
  init_save.save_init(method, large, config.seed, workdir,
                      overwrite=config.overwrite)
  print(f'{config.method} init of {large.name} '
        f'({arch_lib.num_params(large):,} params) grown from {small.name} '
        f'({config.source}) saved to {workdir}')
  return {'directory': workdir, 'arch': large.name, 'method': config.method,
          'source': config.source, 'operator': operator}
