r"""The extrapolation curve, text: LoGAH-Tiny trained on GPT-2s no wider than
32, predicting GPT-2s 1x-4x as wide (32-128) and twice as deep (depth 8),
each fill against random init, 3 seeds, fine-tuned on Shakespeare (bytes)
with curves on its validation split.

GHN: 600 AdamW steps (m = 2, 16 x 128 byte tokens) on a pool of 16 GPT-2s of
a narrow `gpts-cpu` (depth 2 at width 24-32, depth 3 at 16-32, depth 4 at
16-24; 4 heads, untied). Targets: head size 16. Fine-tuning: 100 AdamW
steps (lr 5e-4, 10 warm-up, cosine, weight decay 0.05, clip 1), batch
16 x 64 tokens, evaluated every 10 steps on 32 validation blocks of 64.
Results: docs/results.md.

  python -m logah_jax.main --config=configs/extrapolation_gpts.py \
      --workdir=/tmp/extrapolation_gpts

Variants: ':smoke' (2 widths, 1 seed, a few steps; tests).
"""

from logah_jax import config_base

# Depth traded against width, as in GPTs-1K, at a trained width of 32.
NARROW_RULES = ((2, 2, 24, 32, 8), (3, 3, 16, 32, 8), (4, 4, 16, 24, 8))


def get_config(arg: str | None = None):
  variant = config_base.parse_arg(arg, {'variant': 'full'})['variant']
  if variant not in ('full', 'smoke'):
    raise ValueError(f"configs/extrapolation_gpts.py variant {variant!r}: "
                     "use '' or 'smoke'")
  smoke = variant == 'smoke'
  data = config_base.data_section('shakespeare', batch_size=16,
                                  tokenizer='bytes', block_size=128)
  ghn = config_base.ghn_training(
      ghn='logah-tiny', space='gpts-cpu', data=data, lr=3e-4,
      num_steps=4 if smoke else 600, m=2, warmup_steps=1 if smoke else 50,
      pool_size=2 if smoke else 16, every_steps=500)
  ghn.space.width_rules = NARROW_RULES
  steps = 4 if smoke else 100
  ft = config_base.finetuning(
      arch='(set per target)', data=config_base.data_section(
          'shakespeare', batch_size=16, tokenizer='bytes', block_size=64),
      optim=config_base.optim_section(5e-4, warmup_steps=1 if smoke else 10,
                                      weight_decay=5e-2, clip_norm=1.0),
      num_steps=steps, eval_split='validation',
      eval_every_steps=2 if smoke else 10, every_steps=steps)
  ft.eval.batch_size = 16
  ft.eval.max_batches = 2
  ft.log_every_steps = 2 if smoke else 50
  return config_base.extrapolation(
      ghn_train=ghn, finetune=ft, seeds=1 if smoke else 3,
      width_multiples='1,2' if smoke else '1,1.5,2,3,4', head_size=16)
