"""Inits as checkpoints: save any method's params, and the predict job.

A saved init is `save_params`'s layout (`{'params': ...}` plus JSON
metadata), so a user restores it with orbax and Flax alone (README). The
metadata names the architecture, the method and, for a prediction, which GHN
checkpoint produced it, and the code version.
"""

from __future__ import annotations

import os

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import files
from logah_jax import ghn as ghn_lib
from logah_jax import runtime
from logah_jax.inits import ghn_prediction
from logah_jax.inits.base import InitMethod
from logah_jax.validation import ConfigError, OutputExistsError, check_step


def metadata(method: InitMethod, arch, seed: int) -> dict:
  described = method.describe(arch)
  return {'arch': arch_lib.to_dict(arch), 'arch_name': arch.name,
          'family': arch.family, 'method': method.name, 'seed': seed,
          **{k: v for k, v in described.items() if k != 'method'},
          'code_version': runtime.code_version()}


def save_init(method: InitMethod, arch, seed: int, directory: str, *,
              overwrite: bool = False, params=None) -> str:
  """Saves `method(arch, seed)` (or the given `params`) at `directory`."""
  if params is None:
    params = method(arch, seed)
  ckpt_lib.save_params(directory, params, overwrite=overwrite,
                       metadata=metadata(method, arch, seed))
  return directory


def check_output(workdir: str, overwrite: bool) -> None:
  """Refuses a non-empty output unless overwrite (before any work); an
  empty directory the user made is fine, and left as it is until saved."""
  if os.path.isdir(workdir) and not os.listdir(workdir):
    return
  if os.path.exists(workdir) and not overwrite:
    raise OutputExistsError(f'--workdir={workdir} already exists; pass '
                            '--config.overwrite=True to replace it')


def data_notes(arch, run_config: dict) -> list[str]:
  """What a ViT target's input and output take from data the GHN never saw:
  a prediction still fills every tensor (each is decoded like any other of
  its shape), but a classifier of other classes, or a patch embedding of
  other channels, was not learned for that data."""
  if arch.family != 'vit':
    return []
  space = run_config.get('space', {})
  data = run_config.get('data', {}).get('name', 'its data')
  notes = []
  for field, tensor in (('num_classes', 'classifier head'),
                        ('channels', 'patch embedding'),
                        ('image_size', 'position embedding')):
    trained = space.get(field)
    if trained is not None and int(trained) != getattr(arch, field):
      notes.append(f'config.arch has {field}={getattr(arch, field)} but the '
                   f'GHN trained on {data} targets with {field}={trained}: '
                   f'the {tensor} is predicted for a shape the GHN never '
                   'trained on.')
  return notes


def run_predict(config, workdir: str) -> dict:
  """The 'predict' job: GHN in config.ghn_workdir -> init for config.arch."""
  try:
    arch = arch_lib.parse(config.arch)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.arch: {e}') from e
  if not config.ghn_workdir:
    raise ConfigError('config.ghn_workdir is empty: give the workdir of a '
                      'GHN training run')
  fill = config.get('fill', '') or None
  if fill is not None and fill not in ghn_lib.FILLS:
    raise ConfigError(f'config.fill={fill!r} must be one of {ghn_lib.FILLS} '
                      "or '' (the GHN's own)")
  check_output(workdir, config.overwrite)
  files.check_apart(workdir, '--workdir',
                    ((config.ghn_workdir, 'config.ghn_workdir'),))
  step = check_step(config.ghn_step, 'config.ghn_step')
  method = ghn_prediction.GHNPrediction.from_workdir(config.ghn_workdir, step,
                                                     fill=fill)
  trained = method.trained
  if trained.family != arch.family:
    raise ConfigError(f'config.arch={config.arch!r} is a {arch.family} but '
                      f'the GHN in {config.ghn_workdir} predicts '
                      f'{trained.family} models')
  try:
    ghn_lib.check_archs(trained.cfg, arch.family, [arch])
  except ValueError as e:
    raise ConfigError(f'config.arch: {e}') from e
  name = method.name
  for note in data_notes(arch, trained.run_config):
    print(f'note: {note}')
  save_init(method, arch, 0, workdir, overwrite=config.overwrite)
  print(f'{name} init of {arch.name} ({arch_lib.num_params(arch):,} params) '
        f'from the GHN at step {trained.step} saved to {workdir}')
  return {'directory': workdir, 'arch': arch.name, 'method': name,
          'ghn_step': trained.step}
