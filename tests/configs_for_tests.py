"""Small configs for tests, derived from the real config files."""

import importlib.util
import os

from logah_jax import config_base
from logah_jax import ghn
from logah_jax.arch import GPT2Config, ViTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(name: str, arg: str | None = None):
  """get_config(arg) of configs/<name>.py, as main.py would call it."""
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def smoke():
  """configs/default.py:smoke on 2 one-block ViTs (widths 32, 48), m=2,
  batch 8, no holdout: each distinct architecture costs a compilation."""
  c = load_config_file('default', 'smoke')
  c.space.width_rules = ((1, 1, 32, 48, 16),)
  c.space.heads = '4'
  c.space.patches = (7,)
  c.train.m = 2
  c.train.pool_size = 4
  c.data.batch_size = 8
  c.holdout.enabled = False
  c.demo.enabled = False
  c.compilation_cache = 'off'
  return c


def save_untrained_ghn(path, config, step: int, ghn_overrides=None,
                       family: str = 'vit'):
  """An untrained GHN of `config`, saved where and how GHN training saves it
  (checkpoints/config.json with the run's config, a step holding
  {'params': ...}): for tests of what reads a run, without training one."""
  from logah_jax import checkpoint, ghn  # pylint: disable=g-import-not-at-top
  if ghn_overrides:
    config.ghn.update(ghn_overrides)
  cfg = ghn.from_dict(config.ghn.to_dict())
  with checkpoint.CheckpointManager(
      os.path.join(path, 'checkpoints'), async_save=False,
      config=config.to_dict()) as mngr:
    mngr.save(step, {'params': ghn.init(cfg, family, 0)},
              extra={'step': step}, force=True)


def optim_section():
  return config_base.optim_section(3e-4, warmup_steps=2)


TINY_VIT = ('vit:depth=1,width=32,heads=4,patch=7,image_size=28,channels=1,'
            'num_classes=10')


def finetune_smoke(arch: str = TINY_VIT, steps: int = 6):
  """configs/finetune.py:smoke on a one-block ViT, batch 8, eval on 50."""
  c = load_config_file('finetune', 'smoke')
  c.arch = arch
  c.data.batch_size = 8
  c.train.num_steps = steps
  c.eval.batch_size = 50
  c.eval.every_steps = 2
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = False
  c.compilation_cache = 'off'
  return c


def random_params(cfg, seed=0, std=0.3):
  """Non-default params: every leaf N(0, std^2), LN scales around 1, so no
  layout or mapping test passes by accident."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from logah_jax import models  # pylint: disable=g-import-not-at-top
  abstract = models.abstract_params(cfg)
  paths, treedef = jax.tree.flatten_with_path(abstract)
  keys = jax.random.split(jax.random.key(seed), len(paths))
  leaves = []
  for (path, leaf), key in zip(paths, keys):
    x = std * jax.random.normal(key, leaf.shape, jnp.float32)
    leaves.append(1.0 + x if path[-1].key == 'scale' else x)
  return jax.tree.unflatten(treedef, leaves)


# Small GHNs for fast tests. SMALL_GHN's max_ck fits ViTs-1K position
# embeddings.
SMALL_GHN = ghn.GHNConfig(hid=32, layers=2, heads=4, rank=8,
                          max_shape=(128, 128, 16, 16), max_ck=8192)
SMALL_GHN3 = ghn.GHNConfig(decoder='fullrank', hid=32, layers=2, heads=4,
                           max_shape=(32, 32, 16, 16), num_classes=10)

# Small targets for model tests.
SMALL_VIT = ViTConfig(depth=2, width=24, heads=3, mlp_dim=48, patch=4,
                      image_size=8, channels=3, num_classes=5)
SMALL_GPT = GPT2Config(depth=2, width=16, heads=2, vocab_size=37,
                       n_positions=12, tie_embeddings=True)
SMALL_GPT_UNTIED = GPT2Config(depth=2, width=16, heads=2, vocab_size=37,
                              n_positions=12, tie_embeddings=False)
