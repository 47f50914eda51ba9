r"""LoGAH-Tiny on small GPT-2s and the Shakespeare plays, on a CPU.

`gpts-cpu` (GPT-2s of depth 2-4, width 32-96, 4 heads, untied) with the byte
tokenizer (vocabulary 256) and 128-token blocks; validation and test are whole
held-out plays. The held-out target is a depth-6, width-96 GPT-2, evaluated
(loss and perplexity on the validation plays) with predicted and random params.

  python -m logah_jax.main --config=configs/shakespeare_gpts.py \
      --workdir=/tmp/logah_shakespeare

Variants: ':bpe' uses the GPT-2 BPE tokenizer (vocabulary 50257, much slower
on a CPU); ':smoke' runs 6 steps (tests).
"""

from logah_jax import config_base


def get_config(arg: str | None = None):
  opts = config_base.parse_arg(arg, {'variant': 'bytes'})
  variant = opts['variant']
  if variant not in ('bytes', 'bpe', 'smoke'):
    raise ValueError(f"configs/shakespeare_gpts.py variant {variant!r}: use "
                     "'bytes', 'bpe' or 'smoke'")
  smoke, bpe = variant == 'smoke', variant == 'bpe'
  c = config_base.ghn_training(
      ghn='logah-tiny', space='gpts-cpu',
      data=config_base.data_section(
          'shakespeare', batch_size=16, tokenizer='gpt2' if bpe else 'bytes',
          block_size=128),
      lr=1e-4 if bpe else 3e-4, num_steps=6 if smoke else 1500, m=2,
      warmup_steps=2 if smoke else 100, pool_size=0,
      every_steps=3 if smoke else 250)
  if bpe:
    c.space.vocab_size = 50257
  c.holdout = config_base.holdout_section(
      True, depth=6, width=96, heads=4, split='validation', batch_size=16,
      max_batches=2 if smoke else 0)
  c.log_every_steps = 2 if smoke else 25
  return c
