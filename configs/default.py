r"""The main job: LoGAH-Tiny on small ViTs and Fashion-MNIST, on a CPU.

Trains LoGAH-Tiny on `vits-cpu` (ViTs of depth 2-4, width 32-96, patch 4 or 7
on 28x28 grayscale images), then predicts the parameters of a held-out ViT
deeper and larger than any training architecture (depth 6, width 96: 679K
parameters against at most 240K in training), reports its Fashion-MNIST test
accuracy with the predicted parameters and no training (beside random init
for scale), saves the predicted init as an orbax checkpoint in
WORKDIR/predicted_init, and ends with the comparison: that ViT fine-tuned for
100 steps from the predicted init and from random init, same budget, with a
table and a plot in WORKDIR/demo. On 2 CPU cores with an empty compilation
cache the GHN part measured 6.5 minutes (3 of them compiling the 42
architectures); the demo's two fine-tunes took 49 s each on a CPU shared
with another job, so expect about 8 minutes in all.

  python -m logah_jax.main --config=configs/default.py --workdir=/tmp/logah_demo

Variants: ':smoke' runs 6 steps on a 3-architecture pool (tests, CI).
"""

from logah_jax import config_base


def get_config(arg: str | None = None):
  variant = config_base.parse_arg(arg, {'variant': 'full'})['variant']
  if variant not in ('full', 'smoke'):
    raise ValueError(f"configs/default.py variant {variant!r}: use '' or "
                     "'smoke'")
  smoke = variant == 'smoke'
  c = config_base.ghn_training(
      ghn='logah-tiny', space='vits-cpu',
      data=config_base.data_section('fashion_mnist', batch_size=64),
      lr=3e-4, num_steps=6 if smoke else 1000, m=1,
      warmup_steps=2 if smoke else 100, pool_size=3 if smoke else 1000,
      every_steps=3 if smoke else 250)
  c.holdout = config_base.holdout_section(
      True, depth=6, width=96, heads=6, patch=4, split='test',
      batch_size=500, max_batches=1 if smoke else 0)
  c.demo = config_base.demo_section(
      True, num_steps=2 if smoke else 100, eval_every_steps=1 if smoke else 25,
      eval_max_batches=1 if smoke else 2, warmup_steps=1 if smoke else 10)
  c.log_every_steps = 2 if smoke else 25
  return c
