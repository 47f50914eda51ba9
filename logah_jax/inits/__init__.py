"""Every way to initialise a target, behind one interface (`InitMethod`).

  method = inits.make('logah', ghn_workdir=DIR)   # or 'random', ...
  method.prepare()                                 # load once (optional)
  params = method(arch, seed)                      # checked params pytree

A method only loads what it needs: a GHN method reads a GHN trained earlier,
a growth method a small model (and LiGO its operator) trained earlier; none
trains anything (nothing here imports logah_jax.train). Adding a method
means one module with an InitMethod subclass and one entry in `make`.
"""

from logah_jax import growth
from logah_jax.inits.base import InitMethod
from logah_jax.inits.from_checkpoint import CheckpointInit
from logah_jax.inits.ghn_prediction import GHNPrediction, VARIANTS
from logah_jax.inits.grown import GrowthInit
from logah_jax.inits.orthogonal import OrthogonalInit
from logah_jax.inits.random import RandomInit
from logah_jax.validation import ConfigError

SIMPLE = {'random': RandomInit, 'orthogonal': OrthogonalInit}
GHN_METHODS = tuple(VARIANTS)
GROWTH_METHODS = growth.METHODS
METHODS = tuple(SIMPLE) + GHN_METHODS + GROWTH_METHODS
CHECKPOINT_PREFIX = 'checkpoint:'


def make(spec: str, *, ghn_workdir: str = '', ghn_step: int | None = None,
         ghn_fill: str | None = None, ghn_fill_noise: float | None = None,
         source: str = '', operator: str = '',
         growth_options: dict | None = None) -> InitMethod:
  """The init method named `spec` (one of METHODS, or 'checkpoint:DIR').

  GHN methods need `ghn_workdir`, the workdir of a trained GHN (`ghn_step`:
  its checkpoint step, None = the latest; `ghn_fill`: how a target wider
  than the GHN's training architectures is filled, `ghn_fill_noise` the
  noise of 'widen'). Growth methods need `source`, a
  small model's params directory (ligo also `operator`, its trained operator;
  `growth_options` go to the closed-form methods).
  """
  if spec in SIMPLE:
    return SIMPLE[spec]()
  if spec.startswith(CHECKPOINT_PREFIX):
    directory = spec[len(CHECKPOINT_PREFIX):]
    if not directory:
      raise ConfigError("init 'checkpoint:' needs a directory: "
                        "'checkpoint:/path/to/init'")
    return CheckpointInit(directory)
  if spec in VARIANTS:
    if not ghn_workdir:
      raise ConfigError(f'init method {spec!r} needs a GHN workdir')
    return GHNPrediction(spec, ghn_workdir, step=ghn_step, fill=ghn_fill,
                         fill_noise=ghn_fill_noise)
  if spec in GROWTH_METHODS:
    if not source:
      raise ConfigError(f'init method {spec!r} needs a source (a small '
                        "model's params directory)")
    options = {k: v for k, v in (growth_options or {}).items()
               if k in growth.OPTIONS[spec] and k != 'operator'}
    return GrowthInit(spec, source, operator=operator, options=options)
  raise ConfigError(f'init method {spec!r} is unknown; use one of {METHODS} '
                    f"or '{CHECKPOINT_PREFIX}DIR'")


__all__ = ['CHECKPOINT_PREFIX', 'CheckpointInit', 'GHNPrediction',
           'GHN_METHODS', 'GROWTH_METHODS', 'GrowthInit', 'InitMethod',
           'METHODS', 'OrthogonalInit', 'RandomInit', 'VARIANTS', 'make']
