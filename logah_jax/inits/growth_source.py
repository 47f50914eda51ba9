"""Reading what growth starts from: a small model's params and a LiGO operator.

A source is any directory in `checkpoint.save_params`'s layout whose metadata
names its architecture: the `final_params` a completed fine-tuning run
writes, a saved init, a grown init. The architecture comes from the metadata,
so a user never restates it (and cannot restate it wrongly).
"""

from __future__ import annotations

from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import models
from logah_jax.growth import ligo
from logah_jax.validation import ConfigError


def source_arch(directory: str) -> arch_lib.ArchConfig:
  """The architecture a params directory's metadata names."""
  if not directory:
    raise ConfigError('the growth source is empty: give a params directory, '
                      'e.g. the final_params of a fine-tuning workdir')
  metadata = ckpt_lib.read_metadata(directory)
  if 'arch' not in metadata:
    raise ConfigError(f'{directory}: its metadata names no architecture '
                      "('arch'); is it a params checkpoint of this project?")
  try:
    return arch_lib.from_dict(metadata['arch'])
  except (TypeError, ValueError) as e:
    raise ConfigError(f'{directory}: metadata arch: {e}') from e


def load_params(directory: str, arch):
  """The source params, checked against `arch`'s tree before reading."""
  return ckpt_lib.restore_params(directory,
                                 abstract_params=models.abstract_params(arch))


def load_operator(directory: str, small, large) -> tuple[dict, dict]:
  """(operator, metadata) of a trained LiGO operator for small -> large."""
  metadata = ckpt_lib.read_metadata(directory)
  if metadata.get('kind') != 'ligo-operator':
    raise ConfigError(f'{directory} is not a LiGO operator (metadata kind '
                      f"{metadata.get('kind')!r})")
  for key, want in (('small', small), ('large', large)):
    have = arch_lib.from_dict(metadata[key])
    if have != want:
      raise ConfigError(f'{directory}: the operator grows {key} '
                        f'{have.name}, not {want.name}')
  operator = ckpt_lib.restore_params(
      directory, abstract_params=ligo.abstract_operator(
          small, large, metadata['sharing']))
  return operator, metadata
