r"""Text comparison: every init method x 3 seeds on a GPT-2 wider and deeper
than any GHN training architecture, fine-tuned on Shakespeare (bytes).

GHNs: LoGAH-Tiny (both factorisations) and GHN-3-Tiny trained as in
configs/shakespeare_gpts.py (m = 2), but for 600 steps instead of 1,500 to fit
a 2-core CPU, on a pool of 16 draws (8 distinct architectures) of `gpts-cpu`
(depth 2-4, width 32-96).
Target: GPT-2 depth 6, width 128, 4 heads, untied, 128 tokens (1.3M params).
Fine-tuning: 150 AdamW steps of 16 x 128 tokens, evaluated every 25 steps on
32 validation blocks (the curves, steps to RandInit's final); the test plays
are read once per run, after the last step, whole (the test column).
docs/results.md has the numbers.

  python -m logah_jax.main --config=configs/compare_gpts.py \
      --workdir=/tmp/compare_gpts

Variants: ':smoke' (2 methods x 2 seeds, a few steps; tests).
"""

import copy

from logah_jax import config_base

TARGET = ('gpt2:depth=6,width=128,heads=4,vocab_size=256,n_positions=128,'
          'tie_embeddings=false')

# The growth methods' source: half the target's depth and width, same head
# size, pretrained with the target's recipe for SOURCE_STEPS steps.
SOURCE = ('gpt2:depth=3,width=64,heads=2,vocab_size=256,n_positions=128,'
          'tie_embeddings=false')
SOURCE_STEPS = 300


def get_config(arg: str | None = None):
  variant = config_base.parse_arg(arg, {'variant': 'full'})['variant']
  if variant not in ('full', 'smoke'):
    raise ValueError(f"configs/compare_gpts.py variant {variant!r}: use '' "
                     "or 'smoke'")
  smoke = variant == 'smoke'
  data = config_base.data_section('shakespeare', batch_size=16,
                                  tokenizer='bytes', block_size=128)
  ghn = config_base.ghn_training(
      ghn='logah-tiny', space='gpts-cpu', data=data, lr=3e-4,
      num_steps=4 if smoke else 600, m=2, warmup_steps=1 if smoke else 50,
      pool_size=2 if smoke else 16, every_steps=500)
  steps = 4 if smoke else 150
  ft = config_base.finetuning(
      arch=TARGET, data=config_base.data_section(
          'shakespeare', batch_size=16, tokenizer='bytes', block_size=128),
      optim=config_base.optim_section(5e-4, warmup_steps=1 if smoke else 15,
                                      weight_decay=5e-2, clip_norm=1.0),
      num_steps=steps, eval_split='validation', test_split='test',
      eval_every_steps=2 if smoke else 25, every_steps=steps)
  ft.eval.batch_size = 16
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
  return c
