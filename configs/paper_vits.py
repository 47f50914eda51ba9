r"""The paper's ViT settings: LoGAH (or GHN-3) on ViTs-1K with CIFAR-10/100.

The paper's recipe (docs/algorithm.md §6.2): AdamW lr 3e-4, weight decay
1e-2, clip 5, batch 64 with crop+flip augmentation, cosine schedule after a
5-epoch warm-up, 300 epochs of 781 steps (50,000 // 64); meta-batch m = 1
(Table 2) or 4 / 8 (ablation). Needs the tfds CIFAR sets under DATA_DIR/tfds (see BUILD.md).
Launch, e.g. LoGAH-Small, m=4, CIFAR-100, sharded over all local
accelerators:

  python -m logah_jax.main \
      --config=configs/paper_vits.py:dataset=cifar100,ghn=logah-small,m=4 \
      --workdir=$HOME/runs/logah_s_c100_m4

Variant keys: dataset (cifar10 | cifar100), ghn (logah-tiny, logah-small,
logah-base, logah-large, ghn3-tiny, ...), m (1, 2, 4, 8), epochs (300).
"""

from logah_jax import config_base

STEPS_PER_EPOCH = 50000 // 64  # CIFAR train set, batch 64


def get_config(arg: str | None = None):
  opts = config_base.parse_arg(arg, {'dataset': 'cifar10',
                                     'ghn': 'logah-tiny', 'm': 1,
                                     'epochs': 300})
  if opts['dataset'] not in ('cifar10', 'cifar100'):
    raise ValueError(f"configs/paper_vits.py dataset={opts['dataset']!r}: "
                     'use cifar10 or cifar100')
  c = config_base.ghn_training(
      ghn=opts['ghn'], space='vits-1k',
      data=config_base.data_section(opts['dataset'], batch_size=64,
                                    augment=True),
      lr=3e-4, num_steps=opts['epochs'] * STEPS_PER_EPOCH, m=opts['m'],
      warmup_steps=5 * STEPS_PER_EPOCH, pool_size=1000,
      every_steps=STEPS_PER_EPOCH)
  classes = 100 if opts['dataset'] == 'cifar100' else 10
  c.space.num_classes = classes
  c.ghn.num_classes = classes
  c.log_every_steps = 50
  # ViT-S/2 (paper App. C), never seen in training, evaluated after training.
  c.holdout = config_base.holdout_section(
      True, depth=12, width=384, heads=6, patch=2, split='test',
      batch_size=500)
  return c
