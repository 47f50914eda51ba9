"""Tests for logah_jax.export.hf_gpt2: the Hugging Face GPT-2 exporter.

The default tests check names, layouts, files and errors without torch; the
`hf` group (opt-in, `bash launch/setup_hf.sh`) loads the export with
`transformers.GPT2LMHeadModel.from_pretrained` and compares its logits with
our Flax model's.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from configs_for_tests import random_params
from logah_jax import arch, checkpoint, models
from logah_jax.arch import GPT2Config, ViTConfig
from logah_jax.export import hf_gpt2

TIED = GPT2Config(depth=2, width=16, heads=2, vocab_size=37, n_positions=12)
UNTIED = GPT2Config(depth=2, width=16, heads=2, vocab_size=37, n_positions=12,
                    tie_embeddings=False)
# For the hf group: big enough that a wrong layout cannot hide.
HF_TIED = GPT2Config(depth=2, width=64, heads=4, vocab_size=503,
                     n_positions=128)
HF_UNTIED = GPT2Config(depth=2, width=64, heads=4, vocab_size=503,
                       n_positions=128, tie_embeddings=False)


def _hf_shapes(cfg):
  """HF GPT2LMHeadModel's persistent tensors, written out by hand."""
  d, v = cfg.width, cfg.vocab_size
  shapes = {'transformer.wte.weight': (v, d),
            'transformer.wpe.weight': (cfg.n_positions, d),
            'transformer.ln_f.weight': (d,), 'transformer.ln_f.bias': (d,)}
  for i in range(cfg.depth):
    pre = f'transformer.h.{i}.'
    shapes.update({
        pre + 'ln_1.weight': (d,), pre + 'ln_1.bias': (d,),
        pre + 'attn.c_attn.weight': (d, 3 * d),
        pre + 'attn.c_attn.bias': (3 * d,),
        pre + 'attn.c_proj.weight': (d, d), pre + 'attn.c_proj.bias': (d,),
        pre + 'ln_2.weight': (d,), pre + 'ln_2.bias': (d,),
        pre + 'mlp.c_fc.weight': (d, 4 * d), pre + 'mlp.c_fc.bias': (4 * d,),
        pre + 'mlp.c_proj.weight': (4 * d, d), pre + 'mlp.c_proj.bias': (d,)})
  if not cfg.tie_embeddings:
    shapes['lm_head.weight'] = (v, d)
  return shapes


# ------------------------------------------------------------ state dict


@pytest.mark.parametrize('cfg', [TIED, UNTIED])
def test_state_dict_names_shapes_and_values(cfg):
  params = random_params(cfg)
  sd = hf_gpt2.state_dict(params, cfg)
  assert {k: v.shape for k, v in sd.items()} == _hf_shapes(cfg)
  assert len(sd) == 4 + 12 * cfg.depth + (not cfg.tie_embeddings)
  assert sum(v.size for v in sd.values()) == arch.num_params(cfg)
  for v in sd.values():
    assert v.dtype == np.float32 and v.flags['C_CONTIGUOUS']
  # Values: Conv1D weights as Flax kernels (in, out), the untied head as
  # nn.Linear (out, in), LayerNorm scale -> weight, embeddings as they are.
  np.testing.assert_array_equal(sd['transformer.h.1.attn.c_attn.weight'],
                                params['h_1']['attn']['c_attn']['kernel'])
  np.testing.assert_array_equal(sd['transformer.h.0.mlp.c_proj.bias'],
                                params['h_0']['mlp']['c_proj']['bias'])
  np.testing.assert_array_equal(sd['transformer.h.0.ln_2.weight'],
                                params['h_0']['ln_2']['scale'])
  np.testing.assert_array_equal(sd['transformer.wpe.weight'],
                                params['wpe']['embedding'])
  if not cfg.tie_embeddings:
    np.testing.assert_array_equal(sd['lm_head.weight'],
                                  params['lm_head']['kernel'].T)


def test_state_dict_casts_bfloat16_to_float32():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_params(TIED))
  sd = hf_gpt2.state_dict(params, TIED)
  assert {v.dtype for v in sd.values()} == {np.dtype(np.float32)}
  np.testing.assert_array_equal(sd['transformer.wte.weight'],
                                np.asarray(params['wte']['embedding'],
                                           np.float32))


def test_config_json():
  c = hf_gpt2.config_json(UNTIED)
  assert c['model_type'] == 'gpt2' and c['architectures'] == [
      'GPT2LMHeadModel']
  assert (c['n_layer'], c['n_embd'], c['n_head']) == (2, 16, 2)
  assert (c['vocab_size'], c['n_positions'], c['n_ctx']) == (37, 12, 12)
  assert c['n_inner'] is None and c['activation_function'] == 'gelu_new'
  assert c['layer_norm_epsilon'] == 1e-5
  assert c['tie_word_embeddings'] is False
  assert c['bos_token_id'] is None and c['eos_token_id'] is None
  assert hf_gpt2.config_json(TIED)['tie_word_embeddings'] is True
  small = hf_gpt2.config_json(arch.named('gpt2-small'))
  assert small['bos_token_id'] == small['eos_token_id'] == 50256
  assert (small['n_layer'], small['n_embd'], small['n_head']) == (12, 768, 12)
  json.dumps(c)  # JSON-ready


# ------------------------------------------------------------------ files


@pytest.mark.parametrize('cfg', [TIED, UNTIED])
def test_export_round_trip(tmp_path, cfg):
  params = random_params(cfg, seed=1)
  out = hf_gpt2.export(params, cfg, tmp_path / 'hf')
  assert out == str(tmp_path / 'hf')
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
  assert os.listdir(tmp_path) == ['hf']  # no temporary left behind
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f) == hf_gpt2.config_json(cfg)
  loaded = load_file(os.path.join(out, 'model.safetensors'))
  want = hf_gpt2.state_dict(params, cfg)
  assert loaded.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(loaded[k], want[k])
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(os.path.join(out, 'model.safetensors'), 'np') as f:
    assert f.metadata() == {'format': 'pt'}


def test_export_refuses_existing_dir_unless_overwrite(tmp_path):
  out = tmp_path / 'hf'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  params = random_params(TIED)
  with pytest.raises(FileExistsError, match='already exists'):
    hf_gpt2.export(params, TIED, out)
  assert os.listdir(out) == ['keep.txt']
  hf_gpt2.export(params, TIED, out, overwrite=True)
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
  assert os.listdir(tmp_path) == ['hf']


def test_export_errors_write_nothing(tmp_path):
  out = tmp_path / 'hf'
  params = random_params(TIED)
  bad = jax.tree.map(lambda x: x, params)
  bad['h_1']['mlp']['c_fc']['kernel'] = jnp.zeros((16, 32))
  with pytest.raises(ValueError, match=r"'h_1/mlp/c_fc/kernel' has shape "
                     r'\(16, 32\) but .* expects \(16, 64\)'):
    hf_gpt2.export(bad, TIED, out)
  with pytest.raises(ValueError, match="'lm_head/kernel' of shape"):
    hf_gpt2.export(params, UNTIED, out)  # untied config, tied params
  extra = {**params, 'lm_head': {'kernel': jnp.zeros((16, 37))}}
  with pytest.raises(ValueError, match="'lm_head/kernel' .* not part of"):
    hf_gpt2.export(extra, TIED, out)
  nan = jax.tree.map(lambda x: x, params)
  nan['h_0']['attn']['c_proj']['bias'] = jnp.full((16,), jnp.nan)
  with pytest.raises(ValueError, match=r"'h_0/attn/c_proj/bias' holds NaN"):
    hf_gpt2.export(nan, TIED, out)
  vit = ViTConfig(depth=1, width=8, heads=2, mlp_dim=16, patch=4,
                  image_size=8)
  for fn in (lambda: hf_gpt2.export(params, vit, out),
             lambda: hf_gpt2.state_dict(params, vit),
             lambda: hf_gpt2.config_json(vit)):
    with pytest.raises(ValueError, match='GPT-2 only'):
      fn()
  assert not os.listdir(tmp_path)


def _save_init(path, cfg, params):
  checkpoint.save_params(path, params, metadata={
      'arch': arch.to_dict(cfg), 'arch_name': cfg.name, 'family': cfg.family})


def test_export_checkpoint(tmp_path):
  params = random_params(UNTIED, seed=2)
  _save_init(tmp_path / 'init', UNTIED, params)
  out = hf_gpt2.export_checkpoint(tmp_path / 'init', tmp_path / 'hf')
  loaded = load_file(os.path.join(out, 'model.safetensors'))
  want = hf_gpt2.state_dict(params, UNTIED)
  assert loaded.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(loaded[k], want[k])
  vit = ViTConfig(depth=1, width=8, heads=2, mlp_dim=16, patch=4,
                  image_size=8)
  _save_init(tmp_path / 'vit', vit, models.init_params(vit, jax.random.key(0)))
  with pytest.raises(ValueError, match='GPT-2 only'):
    hf_gpt2.export_checkpoint(tmp_path / 'vit', tmp_path / 'hf_vit')
  assert not (tmp_path / 'hf_vit').exists()
  # missing parents are made
  nested = hf_gpt2.export_checkpoint(tmp_path / 'init', tmp_path / 'a/b/hf')
  assert sorted(os.listdir(nested)) == ['config.json', 'model.safetensors']


def test_export_checkpoint_checks_out_dir_before_reading_the_init(
    tmp_path, monkeypatch):
  """A large init takes a while to read: an out_dir that cannot be
  written is refused first."""
  _save_init(tmp_path / 'init', TIED, random_params(TIED))
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'file').write_text('not a directory')

  def no_read(*args, **kwargs):
    raise AssertionError('read the init before checking out_dir')

  monkeypatch.setattr(checkpoint, 'restore_params', no_read)
  with pytest.raises(FileExistsError, match='taken already exists'):
    hf_gpt2.export_checkpoint(tmp_path / 'init', tmp_path / 'taken')
  with pytest.raises(ValueError, match=r'^out_dir=.*/file/hf: .*/file is a '
                     'file, not a directory$'):
    hf_gpt2.export_checkpoint(tmp_path / 'init', tmp_path / 'file/hf')
  assert (tmp_path / 'file').read_text() == 'not a directory'


def _cli(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'logah_jax.export.hf_gpt2',
                         *args], capture_output=True, text=True, env=env,
                        timeout=300, check=False)


def test_command_line(tmp_path):
  _save_init(tmp_path / 'init', TIED, random_params(TIED))
  run = _cli(f'--init_dir={tmp_path / "init"}', f'--out_dir={tmp_path / "hf"}')
  assert run.returncode == 0, run.stderr
  assert sorted(os.listdir(tmp_path / 'hf')) == ['config.json',
                                                 'model.safetensors']
  run = _cli(f'--init_dir={tmp_path / "init"}', f'--out_dir={tmp_path / "hf"}')
  assert run.returncode == 2
  assert run.stderr.startswith('error: ') and 'already exists' in run.stderr
  run = _cli(f'--init_dir={tmp_path / "none"}', f'--out_dir={tmp_path / "x"}')
  assert run.returncode == 2 and 'no checkpoint at' in run.stderr
  run = _cli(f'--out_dir={tmp_path / "x"}')
  assert run.returncode == 2 and run.stderr.startswith('error: ')
  run = _cli(f'--init_dir={tmp_path / "init"}',  # once a traceback
             f'--out_dir={tmp_path / "hf" / "config.json" / "sub"}')
  assert run.returncode == 2, run.stderr
  assert run.stderr.startswith('error: out_dir=')
  assert 'config.json is a file, not a directory' in run.stderr


# --------------------------------------------- opt-in: torch + transformers


def _hf_logits(out_dir, tokens):
  """transformers' logits (eval mode, float32) and the loaded model."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  model, info = transformers.GPT2LMHeadModel.from_pretrained(
      out_dir, output_loading_info=True)
  # Every tensor HF expects is in the file, and nothing else.
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  assert model.dtype == torch.float32
  model.eval()
  with torch.no_grad():
    logits = model(torch.from_numpy(np.array(tokens, np.int64))).logits
  return logits.numpy(), model


@pytest.mark.hf
@pytest.mark.parametrize('cfg', [HF_TIED, HF_UNTIED])
def test_transformers_logits_match(tmp_path, cfg):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  params = random_params(cfg, seed=3, std=0.1)
  tokens = jax.random.randint(jax.random.key(4), (2, cfg.n_positions), 0,
                              cfg.vocab_size)
  want = np.asarray(models.build(cfg).apply({'params': params}, tokens))
  got, model = _hf_logits(hf_gpt2.export(params, cfg, tmp_path / 'hf'),
                          tokens)
  assert np.abs(want).max() > 0.5  # a non-trivial head: the test can fail
  # float32 lands within ~2e-6; the exact GELU instead of gelu_new is 8e-4 off.
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # Tied means one tensor in torch too; untied keeps its own head.
  tied = (model.lm_head.weight.data_ptr()
          == model.transformer.wte.weight.data_ptr())
  assert tied == cfg.tie_embeddings
  n = sum(p.numel() for p in model.parameters())
  assert n == arch.num_params(cfg)


@pytest.mark.hf
def test_transformers_loads_exported_checkpoint(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  params = random_params(HF_UNTIED, seed=5, std=0.1)
  _save_init(tmp_path / 'init', HF_UNTIED, params)
  out = hf_gpt2.export_checkpoint(tmp_path / 'init', tmp_path / 'hf')
  tokens = jax.random.randint(jax.random.key(6), (3, 40), 0,
                              HF_UNTIED.vocab_size)
  want = np.asarray(models.build(HF_UNTIED).apply({'params': params}, tokens))
  got, _ = _hf_logits(out, tokens)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
