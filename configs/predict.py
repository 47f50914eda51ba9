r"""Predict one architecture's init with a trained GHN; save it for orbax.

  python -m logah_jax.main --config=configs/predict.py \
      --config.ghn_workdir=/tmp/logah_shakespeare --config.arch=gpt2-large \
      --workdir=/tmp/gpt2_large_init

`arch` is a named architecture (gpt2-small/medium/large[-untied],
vit-s/b/l[/2|/16]), a named one with fields replaced
('vit-b/2:num_classes=100'), or every field spelled out
('vit:depth=6,width=96,heads=6,patch=4,image_size=28,channels=1,
num_classes=10'). The family must be the one the GHN was trained on. WORKDIR
becomes the checkpoint: WORKDIR/params holds {'params': ...} (README shows how
to restore it without logah_jax), WORKDIR/metadata the provenance.

`fill` says how a target wider than the GHN's training architectures is
filled (docs/extrapolation.md): '' keeps the GHN's own (default 'widen'),
'decoder' decodes every width (on a CPU, the quickest cold prediction of
GPT-2-Large: docs/performance.md), 'tile' or 'widen'.
"""

import ml_collections


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f'configs/predict.py takes no variant (got {arg!r}); '
                     'set --config.arch and --config.ghn_workdir')
  c = ml_collections.ConfigDict()
  c.job = 'predict'
  c.ghn_workdir = ''
  c.ghn_step = -1  # -1: the latest checkpoint
  c.arch = 'gpt2-large'
  c.fill = ''  # '' = the GHN's own; 'decoder', 'tile' or 'widen'
  c.overwrite = False
  c.compilation_cache = ''
  return c
