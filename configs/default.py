r"""The main job: LoGAH-Tiny on small ViTs and Fashion-MNIST, on a CPU.

Trains LoGAH-Tiny for 800 steps on a pool of 1,000 ViTs drawn from
`vits-cpu` with patch 7 (21 distinct: depth 2-4, width 32-96, 28x28
grayscale), then predicts a held-out ViT wider and deeper than any of them
(depth 6, width 192, 12 heads, patch 7: 2.7M parameters, 2x the widest and
1.5x the deepest training architecture, against at most 240K parameters in
training), with the default 'widen' fill for the widths past 96
(docs/extrapolation.md). It reports that ViT's Fashion-MNIST test accuracy
and loss with the predicted parameters and no training (beside random
init), saves the predicted init as an orbax checkpoint in
WORKDIR/predicted_init, and ends with the comparison: the ViT fine-tuned for
100 steps from the predicted init and from random init, same budget, curves
on the validation split (the last 5,000 training images) and the test split
read once at the end, with a table and a plot in WORKDIR/demo. Measured
figures and wall time: README.md.

  python -m logah_jax.main --config=configs/default.py --workdir=/tmp/logah_demo

Variants: ':smoke' runs 6 steps on a 2-architecture pool and predicts a
depth-4, width-128 ViT (tests, CI).
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
      lr=3e-4, num_steps=6 if smoke else 800, m=1,
      warmup_steps=2 if smoke else 100, pool_size=2 if smoke else 1000,
      every_steps=3 if smoke else 200)
  # Patch 7 only, as the held-out ViT: 21 distinct architectures instead of
  # 42, so that the whole pool compiles within the job's 10 minutes.
  c.space.patches = (7,)
  # The smoke run's held-out ViT is smaller but still past the pool's widths.
  c.holdout = config_base.holdout_section(
      True, depth=4 if smoke else 6, width=128 if smoke else 192,
      heads=8 if smoke else 12, patch=7, split='test', batch_size=500,
      max_batches=1 if smoke else 0)
  c.demo = config_base.demo_section(
      True, eval_split='validation', num_steps=2 if smoke else 100, eval_every_steps=1 if smoke else 25,
      eval_max_batches=1 if smoke else 2, warmup_steps=1 if smoke else 10)
  c.log_every_steps = 2 if smoke else 25
  return c
