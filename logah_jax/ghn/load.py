"""`load(workdir)`: a trained GHN back from a training workdir, no config file.

A GHN training run stores its whole config as checkpoints/config.json beside
the orbax steps (see train/ghn_training.py). That is enough to rebuild the
GHNConfig and the target family, and to read the GHN params alone out of the
latest (or a chosen) step.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from logah_jax import arch as arch_lib
from logah_jax import checkpoint
from logah_jax.ghn import api
from logah_jax.ghn.config import GHNConfig, from_dict
from logah_jax.validation import ConfigError, InputNotFoundError

_CHECKPOINTS, _CONFIG = 'checkpoints', 'config.json'


@dataclasses.dataclass(frozen=True)
class TrainedGHN:
  """A GHN ready to predict: config, params and where they came from."""

  cfg: GHNConfig
  family: str
  params: Any
  step: int
  directory: str
  run_config: dict

  def predict(self, archs):
    """Predicted params of one ArchConfig (or a list of them)."""
    return api.predict(self.cfg, self.params, archs)

  def describe(self) -> dict:
    """JSON-able provenance, for the metadata of a predicted init."""
    return {'ghn': dataclasses.asdict(self.cfg), 'family': self.family,
            'step': self.step, 'checkpoint_dir': self.directory,
            'space': self.run_config.get('space', {}).get('name'),
            'dataset': self.run_config.get('data', {}).get('name')}


def _checkpoint_dir(workdir: str) -> str:
  nested = os.path.join(workdir, _CHECKPOINTS)
  if os.path.exists(os.path.join(nested, _CONFIG)):
    return nested
  if os.path.exists(os.path.join(workdir, _CONFIG)):
    return workdir
  raise InputNotFoundError(f'{workdir} holds no GHN training run: no '
                           f'{os.path.join(nested, _CONFIG)}')


def trained_width(run_config: dict) -> int:
  """The largest width among the architectures a GHN run trained on: its
  pool (`arch.sample(space, pool_size, arch_seed)`) or, with pool_size 0,
  its whole space."""
  fields = dict(run_config['space'])
  name = fields.pop('name')
  fields.pop('family', None)
  if str(fields.get('heads', '')).isdigit():
    fields['heads'] = int(fields['heads'])
  space = arch_lib.make_space(name, **fields)
  train = run_config.get('train', {})
  pool_size = int(train.get('pool_size', 0))
  if not pool_size:
    return max(space.widths())
  pool = arch_lib.sample(space, pool_size, int(train.get('arch_seed', 0)))
  return max(a.width for a in pool)


def load(workdir: str, step: int | None = None, fill: str | None = None,
         fill_noise: float | None = None) -> TrainedGHN:
  """The GHN trained in `workdir` (its checkpoints/ folder), at `step`.

  Its config's `trained_width` is the run's largest training width; `fill`
  and `fill_noise` (default: the config's) say how a wider target is filled.

  Raises:
    FileNotFoundError: no training run or no checkpoint there.
    ValueError: the stored config or params do not describe a GHN.
  """
  directory = _checkpoint_dir(workdir)
  with open(os.path.join(directory, _CONFIG)) as f:
    run_config = json.load(f)
  try:
    cfg = from_dict(run_config['ghn'])
    space = run_config['space']
    family = arch_lib.make_space(space['name']).family
    if not cfg.trained_width:
      cfg = dataclasses.replace(cfg, trained_width=trained_width(run_config))
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f'{directory}/{_CONFIG} does not describe a GHN '
                      f'training run: {e}') from e
  # the caller's choices, checked (and blamed) apart from the stored config
  overrides = {k: v for k, v in (('fill', fill), ('fill_noise', fill_noise))
               if v is not None}
  if overrides:
    try:
      cfg = dataclasses.replace(cfg, **overrides)
    except ValueError as e:
      given = ', '.join(f'{k}={v!r}' for k, v in overrides.items())
      raise ConfigError(f'ghn.load({workdir!r}, {given}): {e}') from e
  with checkpoint.CheckpointManager(directory, async_save=False,
                                    read_only=True) as mngr:
    state, _ = mngr.restore(step)
    step = mngr.restored_step
  if not isinstance(state, dict) or 'params' not in state:
    raise ConfigError(f'{directory}: step {step} holds no GHN params')
  params = state['params']
  expected = jax.eval_shape(lambda: api.init(cfg, family, 0))
  if (jax.tree.structure(expected) != jax.tree.structure(params) or any(
      e.shape != p.shape
      for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params)))):
    raise ConfigError(f'{directory}: the stored GHN params do not match '
                      f'{cfg} for family {family!r}')
  return TrainedGHN(cfg=cfg, family=family, params=params, step=int(step),
                    directory=directory, run_config=run_config)
