r"""Vision comparison: every init method x 3 seeds on a ViT wider and deeper
than any GHN training architecture, fine-tuned on Fashion-MNIST.

GHNs: LoGAH-Tiny (and its transposed factorisation, and GHN-3-Tiny) trained
as in configs/default.py on a pool of 16 draws (13 distinct architectures)
of `vits-cpu` (depth 2-4, width 32-96). Target: ViT depth 6, width 128, 8 heads, patch 4 (1.2M params).
Fine-tuning: 150 AdamW steps, batch 64, on the 'train' split (the first
55,000 training images), evaluated every 25 steps on the first 1,000 images
of 'validation' (the last 5,000 training images: the curves, steps to
RandInit's final); the 10,000 test images are read once per run, after the
last step (the test column). Results and commands: docs/results.md.

  python -m logah_jax.main --config=configs/compare_vits.py \
      --workdir=/tmp/compare_vits

Variants: ':smoke' (2 methods x 2 seeds, a few steps; tests).
"""

import copy

from logah_jax import config_base

TARGET = ('vit:depth=6,width=128,heads=8,patch=4,image_size=28,channels=1,'
          'num_classes=10')

# The growth methods' source: half the target's depth and width, same head
# size, pretrained with the target's recipe for SOURCE_STEPS steps.
SOURCE = ('vit:depth=3,width=64,heads=4,patch=4,image_size=28,channels=1,'
          'num_classes=10')
SOURCE_STEPS = 300


def get_config(arg: str | None = None):
  variant = config_base.parse_arg(arg, {'variant': 'full'})['variant']
  if variant not in ('full', 'smoke'):
    raise ValueError(f"configs/compare_vits.py variant {variant!r}: use '' "
                     "or 'smoke'")
  smoke = variant == 'smoke'
  ghn = config_base.ghn_training(
      ghn='logah-tiny', space='vits-cpu',
      data=config_base.data_section('fashion_mnist', batch_size=64),
      lr=3e-4, num_steps=4 if smoke else 1000, m=1,
      warmup_steps=1 if smoke else 100, pool_size=2 if smoke else 16,
      every_steps=500)
  steps = 4 if smoke else 150
  ft = config_base.finetuning(
      arch=TARGET, data=config_base.data_section('fashion_mnist',
                                                 batch_size=64),
      optim=config_base.optim_section(5e-4, warmup_steps=1 if smoke else 15,
                                      weight_decay=5e-2, clip_norm=1.0),
      num_steps=steps, eval_split='validation', test_split='test',
      eval_every_steps=2 if smoke else 25, every_steps=steps)
  ft.eval.max_batches = 2
  ft.eval.test_max_batches = 1 if smoke else 0  # 0: the whole test split
  ft.log_every_steps = 2 if smoke else 25
  source = copy.deepcopy(ft)
  source.arch = SOURCE
  source.train.num_steps = 4 if smoke else SOURCE_STEPS
  source.checkpoint.every_steps = source.train.num_steps
  source.eval.every_steps = 0
  source.eval.test_split = ''  # the source is not a result: no test read
  c = config_base.comparison(ghn_train=ghn, finetune=ft, seeds=2 if smoke
                             else 3, source=source,
                             ligo_steps=4 if smoke else 100)
  if smoke:
    c.methods = 'random,logah'
    c.finetune.eval.batch_size = 50
  return c
