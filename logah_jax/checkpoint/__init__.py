"""Checkpoints: the only package in logah_jax that imports orbax.

orbax changes its API often; keeping every call in this package means a new orbax
version touches one place. Two kinds of checkpoint live here:

* Training checkpoints (`CheckpointManager`): one directory of steps, each with
  an item 'state' (the pytree, orbax's standard layout, arrays uncompressed)
  and an item 'extra' (JSON: the step, the data-loader position, the
  architecture sampler's position; random draws derive from the seed and
  the step), plus `config.json` at the top, so a resumed run cannot silently
  continue under another config.
* Predicted inits (`save_params` / `restore_params`): one directory with the
  item 'params' holding `{'params': params}` in orbax's standard layout
  (uncompressed) and the item 'metadata' (JSON: ArchConfig, GHN checkpoint,
  code version). Users restore it with orbax and flax alone, into any sharding:

    import json, jax, orbax.checkpoint as ocp
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)  # {'params':..}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # or Named
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        abstract)
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(f'{path}/params', abstract)
    metadata = json.load(open(f'{path}/metadata/metadata'))
    logits = model.apply(variables, x)

orbax quirks handled here (orbax-checkpoint 0.12.8):
* A numpy scalar leaf (`np.int32(3)`) saves but fails on restore ("Unsupported
  type"): we save numpy scalars as 0-d arrays (they come back as such).
* `item_names` and `max_to_keep` are documented as deprecated: we use a
  handler registry and the `LatestN` preservation policy.
* A restore without a target reuses the saved sharding file, which breaks on
  another device count: we always restore into an explicit target.
* Typed PRNG keys are stored as their key data (metadata shape + (2,)).
* Steps are written to `<step>.orbax-checkpoint-tmp` and renamed once complete,
  so a crash never exposes a half-written step; `cleanup_tmp_directories`
  removes the leftover when the next manager opens the directory.
* orbax restores garbled array files without complaint, so each step's JSON
  extra and each init's metadata carry per-leaf checksums (`checksums.py`)
  that every restore recomputes. A training run whose newest step is damaged
  (truncated, missing or garbled files) warns, moves the step to
  `<directory>/corrupt/` and resumes from the newest good one.
"""
from logah_jax.checkpoint.common import CORRUPT_DIR
from logah_jax.checkpoint.common import CorruptCheckpointError
from logah_jax.checkpoint.manager import CONFIG_FILE
from logah_jax.checkpoint.manager import CheckpointManager
from logah_jax.checkpoint.manager import check_config
from logah_jax.checkpoint.manager import DEFAULT_IGNORE_KEYS
from logah_jax.checkpoint.params import read_metadata
from logah_jax.checkpoint.params import restore_params
from logah_jax.checkpoint.params import save_params
