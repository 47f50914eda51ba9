"""GPT-2 inits as Hugging Face checkpoints: config.json + model.safetensors.

A predicted init is only useful if people can train from it with the tools
they already use, so this writes a GPT-2 params tree (predicted or trained) in
`GPT2LMHeadModel`'s names and layouts; `from_pretrained(dir)` loads it as is:

  python -m logah_jax.export.hf_gpt2 --init_dir=DIR --out_dir=OUT

Our Flax GPT-2 already uses HF's module names, and HF's Conv1D stores weights
as (in, out) like Flax's Dense kernels, so only the leaf names change
(kernel/scale/embedding -> weight); the one transpose is the untied `lm_head`
(an nn.Linear, (vocab, width)). With tied embeddings no `lm_head.weight` is
written: HF ties it to `transformer.wte.weight` when loading.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from safetensors.numpy import save_file

from logah_jax import arch as arch_lib
from logah_jax import checkpoint
from logah_jax import files
from logah_jax import models
from logah_jax import tree_compare
from logah_jax.arch.configs import GPT2Config

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
GPT2_EOT = 50256  # <|endoftext|> of the GPT-2 BPE, HF's bos and eos
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight',
               'bias': 'bias'}
_TMP_SUFFIX, _OLD_SUFFIX = '.logah-tmp', '.logah-old'


def _check_cfg(cfg) -> None:
  if not isinstance(cfg, GPT2Config):
    raise ValueError(f'hf_gpt2 exports GPT-2 only; got config {cfg!r}.')


def _check_params(params, cfg) -> None:
  """Raises ValueError naming the first param that differs from `cfg`'s."""
  have = {tree_compare.path_str(p): tuple(np.shape(x))
          for p, x in jax.tree.leaves_with_path(params)}
  want = {tree_compare.path_str(p): tuple(x.shape)
          for p, x in jax.tree.leaves_with_path(models.abstract_params(cfg))}
  for name, shape in want.items():
    if name not in have:
      raise ValueError(f"params lack '{name}' of shape {shape} that "
                       f'{cfg.name} has.')
    if have[name] != shape:
      raise ValueError(f"param '{name}' has shape {have[name]} but "
                       f'{cfg.name} expects {shape}.')
  for name, shape in have.items():
    if name not in want:
      raise ValueError(f"param '{name}' of shape {shape} is not part of "
                       f'{cfg.name}.')


def state_dict(params, cfg: GPT2Config) -> dict[str, np.ndarray]:
  """Our params as `GPT2LMHeadModel`'s state dict: contiguous float32 arrays.

  Names are HF's (`transformer.h.0.attn.c_attn.weight`, ...); `lm_head.weight`
  only when untied. HF's non-persistent buffers (`attn.bias`, `masked_bias`)
  are not part of a checkpoint and are not written.
  """
  _check_cfg(cfg)
  _check_params(params, cfg)
  sd = {}
  for path, leaf in jax.tree.leaves_with_path(jax.device_get(params)):
    names = [k.key for k in path]
    leaf = np.asarray(leaf, np.float32)
    if not np.isfinite(leaf).all():
      raise ValueError(f"param '{tree_compare.path_str(path)}' holds NaN or "
                       'Inf values; an init to train from must be finite.')
    if names[0] == 'lm_head':  # nn.Linear: (out, in)
      sd['lm_head.weight'] = leaf.T
      continue
    if names[0].startswith('h_'):  # Flax h_3 -> torch ModuleList h.3
      names[0] = 'h.' + names[0][2:]
    names[-1] = _LEAF_NAMES[names[-1]]
    sd['transformer.' + '.'.join(names)] = leaf
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def config_json(cfg: GPT2Config) -> dict:
  """HF's `config.json` for `cfg`.

  The dropouts are HF's GPT-2 defaults (0.1): our model has none, which is the
  same function in `model.eval()` (the logits match), and in `train()` the
  exported model fine-tunes like any HF GPT-2. Set them to 0.0 in the file to
  train without dropout. bos/eos are GPT-2's `<|endoftext|>` when the vocab is
  the GPT-2 BPE's (50257); otherwise null (if left out, HF would assume 50256).
  """
  _check_cfg(cfg)
  eot = GPT2_EOT if cfg.vocab_size == 50257 else None
  return {
      'architectures': ['GPT2LMHeadModel'],
      'model_type': 'gpt2',
      'vocab_size': cfg.vocab_size,
      'n_positions': cfg.n_positions, 'n_ctx': cfg.n_positions,
      'n_embd': cfg.width, 'n_layer': cfg.depth, 'n_head': cfg.heads,
      'n_inner': None,  # 4 * n_embd, as ours
      'activation_function': 'gelu_new',  # tanh GELU, as models/gpt2.py
      'layer_norm_epsilon': 1e-5,  # as models/gpt2.py
      'initializer_range': 0.02,
      'resid_pdrop': 0.1, 'embd_pdrop': 0.1, 'attn_pdrop': 0.1,
      'scale_attn_weights': True,
      'scale_attn_by_inverse_layer_idx': False,
      'reorder_and_upcast_attn': False,
      'tie_word_embeddings': cfg.tie_embeddings,
      'bos_token_id': eot, 'eos_token_id': eot,
      'use_cache': True,
      'torch_dtype': 'float32',
  }


def check_out_dir(out_dir, overwrite: bool) -> str:
  """The absolute `out_dir`, if an export may write it: absent (or
  `overwrite`), under a directory this process may write to (missing
  parents are created)."""
  path = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} already exists; pass overwrite=True '
                          '(--overwrite) to replace it')
  files.check_writable_dir(path, 'out_dir')
  return path


def export(params, cfg: GPT2Config, out_dir, *, overwrite: bool = False) -> str:
  """Writes `config.json` and `model.safetensors` for HF into `out_dir`.

  Everything is checked before anything is written; the files go to a sibling
  `<out_dir>.logah-tmp` renamed into place once complete, so a failed export
  never leaves a half-written or damaged `out_dir`. Local paths only.

  Returns:
    The absolute path of `out_dir`.

  Raises:
    ValueError: `cfg` is not a GPT2Config, or a param does not fit it or is
      not finite.
    FileExistsError: `out_dir` exists and overwrite is False.
    ConfigError: `out_dir` cannot be written (a file on its path, a folder
      this process may not write to).
  """
  path = check_out_dir(out_dir, overwrite)
  sd = state_dict(params, cfg)
  config = config_json(cfg)
  tmp, old = path + _TMP_SUFFIX, path + _OLD_SUFFIX
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
      json.dump(config, f, indent=2)
      f.write('\n')
    save_file(sd, os.path.join(tmp, WEIGHTS_FILE), metadata={'format': 'pt'})
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(path):  # between the renames the old copy sits at `old`
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)
  os.rename(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
  return path


def export_checkpoint(init_dir, out_dir, *, overwrite: bool = False) -> str:
  """Exports a predicted init written by `checkpoint.save_params`.

  Its metadata must hold the ArchConfig under 'arch' (as the held-out
  evaluation writes it). Returns the absolute path of `out_dir`.
  """
  metadata = checkpoint.read_metadata(init_dir)
  if not isinstance(metadata, dict) or 'arch' not in metadata:
    raise ValueError(f"{init_dir}: metadata has no 'arch' entry, so the "
                     'architecture of the init is unknown')
  try:
    cfg = arch_lib.from_dict(metadata['arch'])
  except TypeError as e:  # a field GPT2Config/ViTConfig does not have
    raise ValueError(f"{init_dir}: metadata 'arch' is not an ArchConfig: "
                     f'{e}') from e
  _check_cfg(cfg)
  check_out_dir(out_dir, overwrite)  # before reading the whole init
  params = checkpoint.restore_params(
      init_dir, abstract_params=models.abstract_params(cfg))
  return export(params, cfg, out_dir, overwrite=overwrite)


def main(argv) -> None:
  f = flags.FLAGS
  if not f['verbosity'].present:  # orbax logs every file at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    if len(argv) > 1:
      raise ValueError(f'unexpected arguments: {argv[1:]}')
    if not f.init_dir or not f.out_dir:
      raise ValueError('--init_dir and --out_dir are required')
    out = export_checkpoint(f.init_dir, f.out_dir, overwrite=f.overwrite)
  except (ValueError, OSError) as e:  # OSError: a path we cannot write
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'wrote {out}')


if __name__ == '__main__':
  flags.DEFINE_string('init_dir', None, 'Predicted init (save_params output).')
  flags.DEFINE_string('out_dir', None, 'Directory to write for HF.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing out_dir.')
  app.run(main)
