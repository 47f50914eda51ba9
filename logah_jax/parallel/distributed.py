"""Multi-process start-up: `jax.distributed.initialize`, only when asked.

`jax.distributed.initialize()` raises on a single CPU/GPU host without a
coordinator, so it is gated by `LOGAH_JAX_DISTRIBUTED=1`, which the pod and
multi-node launch scripts set. TPU VMs (and SLURM) discover the coordinator,
process count and id by themselves; for multi-node GPUs without SLURM pass them
in `LOGAH_COORDINATOR` (host:port), `LOGAH_NUM_PROCESSES`, `LOGAH_PROCESS_ID`.
`LOGAH_INIT_TIMEOUT_S` bounds the wait for the other processes.

CPU processes exchange data through gloo (JAX's CPU collectives), so several
processes on one machine, each with some CPU devices and a localhost
coordinator, run the same code path as a TPU pod or a multi-node GPU job;
the tests use exactly that.
"""

import os
from typing import Mapping

from absl import logging
import jax

from logah_jax.validation import ConfigError

FLAG = 'LOGAH_JAX_DISTRIBUTED'
_INT_VARS = {'LOGAH_NUM_PROCESSES': 'num_processes',
             'LOGAH_PROCESS_ID': 'process_id',
             'LOGAH_INIT_TIMEOUT_S': 'initialization_timeout'}


def _init_kwargs(env: Mapping[str, str]) -> dict:
  kwargs = {}
  if env.get('LOGAH_COORDINATOR'):
    kwargs['coordinator_address'] = env['LOGAH_COORDINATOR']
  for var, arg in _INT_VARS.items():
    if env.get(var, '') != '':
      try:
        kwargs[arg] = int(env[var])
      except ValueError:
        raise ConfigError(f'{var}={env[var]!r} is not an integer') from None
  return kwargs


def maybe_initialize(env: Mapping[str, str] = os.environ) -> bool:
  """Joins the multi-process job if `LOGAH_JAX_DISTRIBUTED=1`.

  Call before any other JAX work (the first computation fixes the backend).
  Safe to call twice.

  Returns:
    True if JAX runs distributed (initialized now or before), else False.
  """
  if jax.distributed.is_initialized():
    logging.info('jax.distributed is already initialized')
  elif env.get(FLAG, '0') != '1':
    logging.info('%s is not 1: running as a single process', FLAG)
    return False
  else:
    kwargs = _init_kwargs(env)
    # Only the CPU backend reads this; without it CPU programs that span
    # processes cannot run their collectives.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    logging.info('jax.distributed.initialize(%s)', kwargs)
    jax.distributed.initialize(**kwargs)
  print(f'process {jax.process_index()} of {jax.process_count()}, '
        f'{jax.local_device_count()} local / {jax.device_count()} global '
        'devices', flush=True)
  return True


def is_main_process() -> bool:
  """Process 0 writes logs and metrics; all processes save checkpoints."""
  return jax.process_index() == 0
