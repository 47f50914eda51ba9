"""Parallelism: mesh and sharding rules (`mesh`) and multi-process start-up."""

from logah_jax.parallel.distributed import is_main_process
from logah_jax.parallel.distributed import maybe_initialize
from logah_jax.parallel.mesh import ARCH
from logah_jax.parallel.mesh import RULES
from logah_jax.parallel.mesh import DATA
from logah_jax.parallel.mesh import arch_groups
from logah_jax.parallel.mesh import data_sharded
from logah_jax.parallel.mesh import make_mesh
from logah_jax.parallel.mesh import param_shardings
from logah_jax.parallel.mesh import regroup
from logah_jax.parallel.mesh import replicated
from logah_jax.parallel.mesh import shard_batch
from logah_jax.parallel.mesh import stacked_sharding
from logah_jax.parallel.mesh import with_shardings
