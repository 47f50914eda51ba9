r"""The extrapolation curve, vision: LoGAH-Tiny trained on ViTs no wider than
32, predicting ViTs 1x-4x as wide (32-128) and twice as deep (depth 8),
each fill against random init, 3 seeds, fine-tuned on Fashion-MNIST with
curves on the validation split (the last 5,000 training images).

GHN: 1,000 AdamW steps on a pool of 16 ViTs of a narrow `vits-cpu` (depth 2
at width 24-32, depth 3 at 16-32, depth 4 at 16-24, patch 4 or 7). Targets:
patch 7, head size 16. Fine-tuning: 100 AdamW steps (lr 5e-4, 10 warm-up,
cosine, weight decay 0.05, clip 1), batch 64, evaluated every 10 steps on
1,000 validation images. Results: docs/results.md.

  python -m logah_jax.main --config=configs/extrapolation_vits.py \
      --workdir=/tmp/extrapolation_vits

Variants: ':smoke' (2 widths, 1 seed, a few steps; tests); ':main_ghn' uses
the main job's GHN (configs/default.py: trained width 96, depth 4) for the
target 2x wider and 2x deeper (width 192, depth 8), with `decoder` and
`widen`; point --config.ghn_workdir at the main job's workdir to reuse its
GHN (it is trained there otherwise):

  python -m logah_jax.main --config=configs/extrapolation_vits.py:main_ghn \
      --config.ghn_workdir=/tmp/logah_demo --workdir=/tmp/extrapolation_main
"""

import importlib.util
import os

from logah_jax import config_base

# Depth traded against width, as in ViTs-1K, at a trained width of 32.
NARROW_RULES = ((2, 2, 24, 32, 8), (3, 3, 16, 32, 8), (4, 4, 16, 24, 8))


def get_config(arg: str | None = None):
  variant = config_base.parse_arg(arg, {'variant': 'full'})['variant']
  if variant not in ('full', 'smoke', 'main_ghn'):
    raise ValueError(f"configs/extrapolation_vits.py variant {variant!r}: "
                     "use '', 'smoke' or 'main_ghn'")
  smoke = variant == 'smoke'
  ghn = config_base.ghn_training(
      ghn='logah-tiny', space='vits-cpu',
      data=config_base.data_section('fashion_mnist', batch_size=64),
      lr=3e-4, num_steps=4 if smoke else 1000, m=1,
      warmup_steps=1 if smoke else 100, pool_size=2 if smoke else 16,
      every_steps=500)
  ghn.space.width_rules = NARROW_RULES
  steps = 4 if smoke else 100
  ft = config_base.finetuning(
      arch='(set per target)',
      data=config_base.data_section('fashion_mnist', batch_size=64),
      optim=config_base.optim_section(5e-4, warmup_steps=1 if smoke else 10,
                                      weight_decay=5e-2, clip_norm=1.0),
      num_steps=steps, eval_every_steps=2 if smoke else 10,
      eval_split='validation', every_steps=steps)
  ft.eval.batch_size = 50 if smoke else 500
  ft.eval.max_batches = 2
  ft.log_every_steps = 2 if smoke else 50
  if variant == 'main_ghn':
    return config_base.extrapolation(
        ghn_train=_main_job_config(), finetune=ft, seeds=3,
        width_multiples='2', head_size=16, patch=7, fills='decoder,widen')
  return config_base.extrapolation(
      ghn_train=ghn, finetune=ft, seeds=1 if smoke else 3,
      width_multiples='1,2' if smoke else '1,1.5,2,3,4', head_size=16,
      patch=7)


def _main_job_config():
  """configs/default.py's GHN training, so that its workdir can be reused."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  spec = importlib.util.spec_from_file_location('_default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
