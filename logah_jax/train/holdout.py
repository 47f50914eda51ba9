"""After GHN training: predict a held-out, larger target and score it.

The main job's result: the held-out architecture's metric with predicted
parameters and no training, beside the same architecture with random (the
references' default) init, and the predicted init saved as an orbax
checkpoint that any Flax user can restore.
"""

from __future__ import annotations

import os

import jax

from logah_jax import arch as arch_lib
from logah_jax import config_base
from logah_jax import files
from logah_jax import ghn as ghn_lib
from logah_jax import inits
from logah_jax import models
from logah_jax.inits import save as init_save
from logah_jax.train import evaluate as eval_lib
from logah_jax.train import ghn_training
from logah_jax.train import report
from logah_jax.validation import ConfigError, check_int, check_seed

PREDICTED_DIR = 'predicted_init'
RESULT_FILE = 'holdout.json'


def holdout_arch(config):
  """The ArchConfig of `config.holdout.arch` in the space's family/shapes."""
  space = ghn_training.space_of(config)
  a = config.holdout.arch
  if space.family == 'vit':
    return arch_lib.ViTConfig(
        depth=a.depth, width=a.width, heads=a.heads,
        mlp_dim=a.mlp_dim or space.mlp_ratio * a.width, patch=a.patch,
        image_size=space.image_size, channels=space.channels,
        num_classes=space.num_classes)
  if a.mlp_dim not in (0, 4 * a.width):
    raise ConfigError(f'mlp_dim={a.mlp_dim}: a GPT-2 block has an MLP of '
                      '4 x width; leave it 0')
  if a.patch != config_base.holdout_section().arch.patch:
    raise ConfigError(f'patch={a.patch}: a GPT-2 has no patches; leave it '
                      'unset')
  return arch_lib.GPT2Config(
      depth=a.depth, width=a.width, heads=a.heads,
      vocab_size=space.vocab_size, n_positions=space.n_positions,
      tie_embeddings=space.tie_embeddings)


def check_holdout(config, run: ghn_training.GHNRun) -> None:
  """Raises ConfigError for a held-out target that can't be built or
  predicted, or a split it can't be scored on (the GHN's training split), and
  InputNotFoundError for missing data.

  Called before training, so a typo in `config.holdout` or a missing file
  does not surface only after the GHN has trained.
  """
  try:
    target = holdout_arch(config)
    ghn_lib.check_archs(run.ghn_cfg, target.family, [target])
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.holdout.arch: {e}') from e
  h = config.holdout
  run.data.check_split(h.split, 'config.holdout.split')
  if run.data.trains_on(h.split):
    raise ConfigError(f'config.holdout.split={h.split!r} is also '
                      f'config.data.split ({run.data.split!r}): the GHN '
                      'trains on it; score the prediction on another split')
  check_int(h.batch_size, 'config.holdout.batch_size')
  check_int(h.max_batches, 'config.holdout.max_batches', 0)
  check_seed(h.seed, 'config.holdout.seed')
  run.data.source(h.split)  # missing data fails now, not after training


def run_holdout(config, run: ghn_training.GHNRun, workdir: str) -> dict:
  """Predicts, evaluates and saves the held-out target; returns the result.

  `run` is the checked GHN run of `config` that trained in `workdir`.
  """
  h = config.holdout
  target = holdout_arch(config)
  source = run.data.source(h.split)
  method = inits.GHNPrediction.from_workdir(workdir)
  trained = method.trained
  largest = max(arch_lib.num_params(a) for a in run.sampler.candidates())
  predicted = method(target, h.seed)
  random = models.init_params(target, jax.random.key(h.seed))
  rows = {}
  for name, params in (('LoGAH prediction' if trained.cfg.decoder ==
                        'lowrank' else 'GHN-3 prediction', predicted),
                       ('random init', random)):
    rows[name] = eval_lib.evaluate(target, params, source,
                                   batch_size=h.batch_size,
                                   max_batches=h.max_batches)
  out_dir = os.path.join(workdir, PREDICTED_DIR)
  init_save.save_init(method, target, h.seed, out_dir, overwrite=True,
                      params=predicted)
  result = {'arch': target.name, 'num_params': arch_lib.num_params(target),
            'largest_training_params': largest,
            'split': f'{config.data.name}/{h.split}', 'results': rows,
            'predicted_init': out_dir, 'ghn_step': trained.step}
  files.write_json(os.path.join(workdir, RESULT_FILE), result, indent=2)
  report.say(format_result(result))
  return result


def format_result(result: dict) -> str:
  """The Markdown table the main job prints."""
  rows = result['results']
  metric = 'accuracy' if any('accuracy' in r for r in rows.values()) else (
      'perplexity')
  lines = [f"Held-out {result['arch']} ({result['num_params']:,} params; "
           f"largest training architecture {result['largest_training_params']:,})"
           f", no training, on {result['split']}:", '',
           f'| init | {metric} | loss |', '|---|---|---|']
  for name, r in rows.items():
    value = (f"{100 * r['accuracy']:.2f}%" if metric == 'accuracy'
             else f"{r['perplexity']:.2f}")
    lines.append(f"| {name} | {value} | {r['loss']:.4f} |")
  lines.append('')
  lines.append(f"Predicted init saved to {result['predicted_init']}")
  return '\n'.join(lines)
