r"""Fine-tune one target from one init: the building block of comparisons.

Default: the main job's held-out ViT (depth 6, width 96) on Fashion-MNIST,
AdamW with a cosine schedule, trained on 'train' (the first 55,000 training
images), evaluated every 100 steps on 'validation' (the last 5,000), and
scored once on 'test' after the last step (test.json).
Pick the init with --config.init.method (random, orthogonal, logah,
logah-transpose, ghn3 with --config.init.ghn_workdir, or checkpoint:DIR for
an init saved by configs/predict.py or the main job):

  python -m logah_jax.main --config=configs/finetune.py --workdir=/tmp/ft \
      --config.init.method=checkpoint:/tmp/logah_demo/predicted_init

Variants: ':text' fine-tunes the Shakespeare GPT-2 (depth 6, width 96, byte
tokens) instead, with curves on the validation plays and the test plays read
once at the end; ':smoke' (or 'text,smoke') runs a few steps (tests).
"""

from logah_jax import config_base

VIT = ('vit:depth=6,width=96,heads=6,patch=4,image_size=28,channels=1,'
       'num_classes=10')
GPT = ('gpt2:depth=6,width=96,heads=4,vocab_size=256,n_positions=128,'
       'tie_embeddings=false')


def get_config(arg: str | None = None):
  words = set((arg or '').replace(',', ' ').split())
  unknown = words - {'text', 'smoke'}
  if unknown:
    raise ValueError(f'configs/finetune.py variant {sorted(unknown)}: use '
                     "'text' and/or 'smoke'")
  smoke = 'smoke' in words
  steps = 6 if smoke else 600
  if 'text' in words:
    data = config_base.data_section('shakespeare', batch_size=16,
                                    tokenizer='bytes', block_size=128)
    arch = GPT
  else:
    data = config_base.data_section('fashion_mnist', batch_size=64)
    arch = VIT
  c = config_base.finetuning(
      arch=arch, data=data, num_steps=steps, eval_split='validation',
      test_split='test',
      eval_every_steps=3 if smoke else 100, every_steps=3 if smoke else 200,
      optim=config_base.optim_section(1e-3, warmup_steps=2 if smoke else 50,
                                      weight_decay=5e-2, clip_norm=1.0))
  if smoke:
    c.eval.max_batches = 1
    c.eval.test_max_batches = 1
    c.log_every_steps = 2
  return c
