"""Building blocks of the ml-collections configs in configs/.

Config files stay short and declarative: they call these helpers and set the
fields that differ. Every field a job reads exists in the returned ConfigDict
(no None placeholders), so `--config.a.b=...` overrides are typed, and a
mistyped key fails because main.py locks the config.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from logah_jax import arch as arch_lib
from logah_jax import ghn as ghn_lib


def ghn_section(name: str, **overrides) -> ml_collections.ConfigDict:
  """The GHNConfig fields of the named GHN (logah-tiny, ghn3-small, ...)
  that training uses: the prediction-time ones (how wider targets are
  filled) are chosen when predicting."""
  fields = ghn_lib.to_dict(ghn_lib.named(name, **overrides))
  for key in ghn_lib.PREDICTION_FIELDS:
    fields.pop(key)
  return ml_collections.ConfigDict(fields)


def space_section(name: str, **overrides) -> ml_collections.ConfigDict:
  """`name` plus every field of that space, so each can be overridden.

  `heads` is a string in the config ('vit' for the ViTs-1K rule, or a number
  such as '8'), so either kind of value can override it.
  """
  space = arch_lib.make_space(name, **overrides)
  fields = dataclasses.asdict(space)
  fields.pop('family')
  fields['heads'] = str(fields['heads'])
  return ml_collections.ConfigDict(dict(name=name, **fields))


def optim_section(lr: float, *, name: str = 'adamw', schedule: str = 'cosine',
                  warmup_steps: int = 0, warmup_init: float = 1e-5,
                  end_lr: float = 0.0, weight_decay: float = 1e-2,
                  clip_norm: float = 5.0, momentum: float = 0.9):
  """Optimizer fields read by `train.optim.make_optimizer`."""
  return ml_collections.ConfigDict(dict(
      name=name, lr=lr, schedule=schedule, warmup_steps=warmup_steps,
      warmup_init=warmup_init, end_lr=end_lr, weight_decay=weight_decay,
      clip_norm=clip_norm, b1=0.9, b2=0.999, eps=1e-8, momentum=momentum))


def data_section(name: str, *, batch_size: int, split: str = 'train',
                 augment: bool = False, tokenizer: str = 'gpt2',
                 block_size: int = 1024) -> ml_collections.ConfigDict:
  """Dataset fields; data_dir '' means $LOGAH_DATA_DIR or ~/.cache/logah_jax."""
  return ml_collections.ConfigDict(dict(
      name=name, split=split, batch_size=batch_size, augment=augment,
      tokenizer=tokenizer, block_size=block_size, data_dir=''))


def holdout_section(enabled: bool = False, *, depth: int = 1, width: int = 8,
                    heads: int = 1, mlp_dim: int = 0, patch: int = 4,
                    split: str = 'test', batch_size: int = 500,
                    max_batches: int = 0, seed: int = 0):
  """A held-out target predicted after training (family from the space).

  mlp_dim 0 means 4 x width; max_batches 0 evaluates the whole split.
  """
  return ml_collections.ConfigDict(dict(
      enabled=enabled, arch=dict(depth=depth, width=width, heads=heads,
                                 mlp_dim=mlp_dim, patch=patch),
      split=split, batch_size=batch_size, max_batches=max_batches, seed=seed))


def ghn_training(*, ghn: str, space: str, data: ml_collections.ConfigDict,
                 lr: float, num_steps: int, m: int = 1,
                 warmup_steps: int = 0, pool_size: int = 1000,
                 every_steps: int = 500) -> ml_collections.ConfigDict:
  """A complete GHN-training config (job 'train_ghn')."""
  c = ml_collections.ConfigDict()
  c.job = 'train_ghn'
  c.seed = 0
  space_c = space_section(space)
  classes = space_c.num_classes
  c.ghn = ghn_section(ghn, num_classes=classes)
  c.space = space_c
  c.data = data
  c.train = ml_collections.ConfigDict(dict(
      num_steps=num_steps, m=m, pool_size=pool_size, arch_seed=1,
      gamma=3e-5, label_smoothing=0.0, compile_workers='auto',
      share_depths='auto', quick_compile='auto'))
  c.optim = optim_section(lr, warmup_steps=warmup_steps)
  c.mesh = ml_collections.ConfigDict(dict(arch=1, data=-1))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=every_steps, keep=3, async_save=True))
  c.log_every_steps = 10
  c.compilation_cache = ''  # '' = ~/.cache/logah_jax/xla; 'off' = none
  add_compute_fields(c)
  c.holdout = holdout_section()
  c.demo = demo_section()
  return c


def add_compute_fields(c: ml_collections.ConfigDict) -> None:
  """compute_dtype ('auto': bfloat16 on GPU/TPU, float32 on CPU; or
  'float32' / 'bfloat16') and remat (recompute target blocks' activations in
  the backward pass) of the targets a run trains or evaluates."""
  c.compute_dtype = 'auto'
  c.remat = False


def demo_section(enabled: bool = False, *, num_steps: int = 100,
                 eval_every_steps: int = 25, eval_max_batches: int = 2,
                 eval_split: str = 'validation', batch_size: int = 64,
                 lr: float = 5e-4,
                 warmup_steps: int = 10) -> ml_collections.ConfigDict:
  """After the held-out score: fine-tune it from predicted and random init.

  Same budget and recipe for both (AdamW, cosine, weight decay 0.05, clip 1),
  trained on the GHN's training split. The curves are evaluated on
  `eval_split` (a split disjoint from the training split; Fashion-MNIST's
  'validation' is the last 5,000 training images) every `eval_every_steps`
  steps (`eval_max_batches` batches of holdout.batch_size; 0 = all); the
  held-out split (`holdout.split`, e.g. 'test') is read once, after the last
  step, for the table's final row (`holdout.max_batches` batches).
  """
  return ml_collections.ConfigDict(dict(
      enabled=enabled, num_steps=num_steps, eval_every_steps=eval_every_steps,
      eval_max_batches=eval_max_batches, eval_split=eval_split,
      batch_size=batch_size, lr=lr, warmup_steps=warmup_steps))


def parse_arg(arg: str | None, defaults: dict) -> dict:
  """'key=value,key=value' variant strings of get_config(arg), typed.

  A bare word is accepted for the first key ('cifar100' = 'dataset=cifar100').
  """
  out = dict(defaults)
  if not arg:
    return out
  first = next(iter(defaults))
  for part in arg.split(','):
    key, sep, value = part.partition('=')
    if not sep:
      key, value = first, key
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config variant key {key!r} is unknown; known: '
                       f'{", ".join(defaults)}')
    kind = type(defaults[key])
    try:
      out[key] = kind(value.strip())
    except ValueError as e:
      raise ValueError(f'config variant {key}={value!r}: expected '
                       f'{kind.__name__}') from e
  return out


def eval_section(*, split: str = 'validation', every_steps: int = 100,
                 batch_size: int = 500, max_batches: int = 0,
                 test_split: str = '', test_max_batches: int = 0):
  """Evaluation of a fine-tuning run.

  `split` (a validation split) is scored at step 0, every `every_steps`
  steps (0: only at the start and the end) and at the end, on `max_batches`
  batches (0 = all): the curves and anything chosen from them. `test_split`
  ('' = none) is read once, after the last step, on `test_max_batches`
  batches (0 = all): the final number a table reports.
  """
  return ml_collections.ConfigDict(dict(
      split=split, every_steps=every_steps, batch_size=batch_size,
      max_batches=max_batches, test_split=test_split,
      test_max_batches=test_max_batches))


def finetuning(*, arch: str, data: ml_collections.ConfigDict,
               optim: ml_collections.ConfigDict, num_steps: int,
               init: str = 'random', ghn_workdir: str = '',
               eval_every_steps: int = 100, eval_split: str = 'validation',
               test_split: str = '',
               every_steps: int = 500) -> ml_collections.ConfigDict:
  """A complete fine-tuning config (job 'finetune').

  `arch` is an architecture string (`arch.parse`: 'gpt2-medium',
  'vit:depth=6,width=96,...'); `init` an init method ('random',
  'orthogonal', 'logah', 'logah-transpose', 'ghn3' with `ghn_workdir`, or
  'checkpoint:DIR'). `seed` draws the init and the data order. Curves are
  evaluated on `eval_split`; `test_split` ('' = none) is read once at the end
  (`eval_section`).
  """
  c = ml_collections.ConfigDict()
  c.job = 'finetune'
  c.seed = 0
  c.arch = arch
  c.init = ml_collections.ConfigDict(dict(
      method=init, ghn_workdir=ghn_workdir, ghn_step=-1))  # -1: latest
  c.data = data
  c.train = ml_collections.ConfigDict(dict(num_steps=num_steps,
                                           label_smoothing=0.0))
  c.optim = optim
  c.eval = eval_section(split=eval_split, every_steps=eval_every_steps,
                        test_split=test_split)
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  c.param_sharding = 'replicate'  # or 'fsdp' for targets too big to copy
  c.fsdp_min_mb = 4.0  # with 'fsdp', leaves smaller than this replicate
  # Blocks stacked and run as one scan: compiles one block, not all of them
  # (docs/performance.md: on a CPU, GPT-2-M compiled in a third of the time
  # and stepped 9-42% slower; GPT-2-L needs 8-37% less memory). Fixed
  # for the life of a run.
  c.scan_blocks = False
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=every_steps, keep=2, async_save=True))
  c.log_every_steps = 25
  c.compilation_cache = ''
  add_compute_fields(c)
  return c


def growth_sections(*, source: ml_collections.ConfigDict | None,
                    ligo_steps: int = 100, ligo_lr: float = 1e-3):
  """(source, growth, ligo) sections of a job that grows a small model.

  `source.params` is a small model's params directory; '' lets the
  comparison harness pretrain it with the fine-tuning config
  `source.finetune` (None: no source training configured). `growth` holds the
  closed-form options; `ligo` the operator's steps, optimizer (Adam, short
  warmup, then constant, no weight decay) and its starting point.
  """
  src = ml_collections.ConfigDict(dict(params=''))
  if source is not None:
    src.finetune = source
  grow = ml_collections.ConfigDict(dict(split_noise=0.5, bert2bert_mode='aki'))
  ligo = ml_collections.ConfigDict(dict(
      num_steps=ligo_steps, init='stack', sharing='layer', split_noise=0.5,
      optim=optim_section(ligo_lr, name='adamw', schedule='constant',
                          warmup_steps=min(10, ligo_steps - 1), weight_decay=0.0,
                          clip_norm=1.0)))
  return src, grow, ligo


def comparison(*, ghn_train: ml_collections.ConfigDict,
               finetune: ml_collections.ConfigDict, seeds: int = 3,
               methods: str = ('random,orthogonal,logah,logah-transpose,ghn3,'
                              'stack,interpolate,net2net,bert2bert,ligo'),
               ghn3_name: str = 'ghn3-tiny',
               source: ml_collections.ConfigDict | None = None,
               ligo_steps: int = 100) -> ml_collections.ConfigDict:
  """A comparison config (job 'compare'): methods x seeds on one target.

  `ghn_train` is the LoGAH training config every GHN method derives from
  (GHN-3 swaps in `ghn3_name`'s full-rank decoder); `finetune` the run each
  (method, seed) makes. `ghn_workdir` '' keeps the GHNs in WORKDIR/ghn.
  `source` is the fine-tuning config that pretrains the growth methods'
  small model (in WORKDIR/source) unless `source.params` names one.
  """
  c = ml_collections.ConfigDict()
  c.job = 'compare'
  c.methods = methods
  c.seeds = seeds
  c.ghn3_name = ghn3_name
  c.ghn_workdir = ''
  with ghn_train.unlocked():
    ghn_train.holdout.enabled = False
  c.ghn_train = ghn_train
  c.finetune = finetune
  c.source, c.growth, c.ligo = growth_sections(source=source,
                                               ligo_steps=ligo_steps)
  c.compilation_cache = ''
  return c


def extrapolation(*, ghn_train: ml_collections.ConfigDict,
                  finetune: ml_collections.ConfigDict, seeds: int = 3,
                  width_multiples: str = '1,1.5,2,3,4',
                  depth_multiple: float = 2.0, head_size: int = 16,
                  patch: int = 0,
                  fills: str = 'decoder,tile,widen') -> ml_collections.ConfigDict:
  """An extrapolation config (job 'extrapolate').

  `ghn_train` trains the GHN (in WORKDIR/ghn unless `ghn_workdir` names
  one); targets are `width_multiples` x its largest training width at
  `depth_multiple` x its largest depth, with `head_size` (and, for ViTs,
  `patch`; 0 = the space's last); each is fine-tuned with `finetune` from
  random init and from the prediction under each of `fills`.
  """
  c = ml_collections.ConfigDict()
  c.job = 'extrapolate'
  c.ghn_workdir = ''
  with ghn_train.unlocked():
    ghn_train.holdout.enabled = False
    if 'demo' in ghn_train:
      ghn_train.demo.enabled = False
  c.ghn_train = ghn_train
  c.finetune = finetune
  c.seeds = seeds
  c.width_multiples = width_multiples
  c.depth_multiple = depth_multiple
  c.head_size = head_size
  c.patch = patch
  c.fills = fills
  c.fill_noise = -1.0  # the noise of 'widen'; -1: GHNConfig's default
  c.compilation_cache = ''
  return c
