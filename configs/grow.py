r"""Grow a saved small model into a larger target; save the init for orbax.

  python -m logah_jax.main --config=configs/grow.py \
      --config.source=/tmp/small/final_params --config.method=ligo \
      --workdir=/tmp/grown_init

`source` is a params directory whose metadata names its architecture: the
`final_params` of a completed fine-tuning run, or any saved init. `method` is
stack, interpolate, net2net, bert2bert or ligo (docs/growth.md); `arch` the
target (any architecture string, as in configs/predict.py), at least as deep
and wide as the source, with the same head size. LiGO first trains its
operator for `ligo.num_steps` steps on `data` (in `ligo_workdir`, default
WORKDIR-ligo; resumable), with the large model's forward in `compute_dtype`
('auto': bfloat16 on GPUs and TPUs, float32 on CPUs) and `remat`. WORKDIR
becomes the checkpoint, in the layout of configs/predict.py's output.

Variants: '' grows into the Fashion-MNIST ViT of configs/compare_vits.py;
'text' into the Shakespeare GPT-2 of configs/compare_gpts.py; 'smoke' (or
'text,smoke') trains the operator for 2 steps (tests).
"""

import ml_collections

from logah_jax import config_base

VIT = ('vit:depth=6,width=128,heads=8,patch=4,image_size=28,channels=1,'
       'num_classes=10')
GPT = ('gpt2:depth=6,width=128,heads=4,vocab_size=256,n_positions=128,'
       'tie_embeddings=false')


def get_config(arg: str | None = None):
  words = set((arg or '').replace(',', ' ').split())
  unknown = words - {'text', 'smoke'}
  if unknown:
    raise ValueError(f'configs/grow.py variant {sorted(unknown)}: use '
                     "'text' and/or 'smoke'")
  smoke = 'smoke' in words
  c = ml_collections.ConfigDict()
  c.job = 'grow'
  c.method = 'ligo'
  c.source = ''
  if 'text' in words:
    c.arch = GPT
    c.data = config_base.data_section('shakespeare', batch_size=16,
                                      tokenizer='bytes', block_size=128)
  else:
    c.arch = VIT
    c.data = config_base.data_section('fashion_mnist', batch_size=64)
  c.seed = 0
  c.overwrite = False
  c.ligo_workdir = ''
  _, c.growth, c.ligo = config_base.growth_sections(
      source=None, ligo_steps=2 if smoke else 100)
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  c.log_every_steps = 1 if smoke else 25
  c.compilation_cache = ''
  config_base.add_compute_fields(c)  # of the large model while LiGO learns
  return c
