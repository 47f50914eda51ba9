r"""The paper's GPT-2 settings: LoGAH on GPTs-1K with WikiText-2/103.

The paper's recipe (docs/algorithm.md §6.2): AdamW lr 1e-4, weight decay
1e-2, clip 5, 6 blocks of 1024 GPT-2 BPE tokens per step, m = 2, cosine
schedule after a 5-epoch warm-up. Needs wiki.{train,valid,test}.raw in
DATA_DIR/wikitext-2-raw or DATA_DIR/wikitext-103-raw (see BUILD.md). Launch,
e.g. LoGAH-Base on WikiText-103 over all local accelerators:

  python -m logah_jax.main \
      --config=configs/paper_gpts.py:dataset=wikitext103,ghn=logah-base \
      --workdir=$HOME/runs/logah_b_wt103

The paper's 6 blocks per step split over 1, 2, 3 or 6 devices; on 4 or 8,
add --config.data.batch_size=8 (or expose 6 devices), else the launch stops
at once naming the batch.

Variant keys: dataset (wikitext2 | wikitext103), ghn (logah-tiny ...
logah-large), m (2), epochs (300 for WikiText-2, 90 for WikiText-103).
"""

from logah_jax import config_base

# 6 x 1024-token blocks per step: WikiText-2 train has ~2.4M GPT-2 tokens,
# WikiText-103 ~118M.
STEPS_PER_EPOCH = {'wikitext2': 390, 'wikitext103': 19200}
DEFAULT_EPOCHS = {'wikitext2': 300, 'wikitext103': 90}


def get_config(arg: str | None = None):
  opts = config_base.parse_arg(arg, {'dataset': 'wikitext2',
                                     'ghn': 'logah-tiny', 'm': 2,
                                     'epochs': 0})
  dataset = opts['dataset']
  if dataset not in STEPS_PER_EPOCH:
    raise ValueError(f'configs/paper_gpts.py dataset={dataset!r}: use '
                     'wikitext2 or wikitext103')
  per_epoch = STEPS_PER_EPOCH[dataset]
  epochs = opts['epochs'] or DEFAULT_EPOCHS[dataset]
  c = config_base.ghn_training(
      ghn=opts['ghn'], space='gpts-1k',
      data=config_base.data_section(dataset, batch_size=6, tokenizer='gpt2',
                                    block_size=1024),
      lr=1e-4, num_steps=epochs * per_epoch, m=opts['m'],
      warmup_steps=5 * per_epoch, pool_size=0,
      every_steps=min(per_epoch, 1000))
  c.log_every_steps = 50
  # GPT-2 small (untied), never seen in training, evaluated after training.
  c.holdout = config_base.holdout_section(
      True, depth=12, width=768, heads=12, split='validation', batch_size=8,
      max_batches=50)
  return c
