"""Fine-tuning with the blocks stacked and run as one scan (`scan_blocks`)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs_for_tests import finetune_smoke
from configs_for_tests import load_config_file
from configs_for_tests import random_params
from logah_jax import arch as arch_lib
from logah_jax import checkpoint as ckpt_lib
from logah_jax import compiles
from logah_jax import models
from logah_jax import parallel
from logah_jax.models import layers
from logah_jax.train import compare
from logah_jax.train import finetune_step
from logah_jax.train import finetuning
from logah_jax.train import objective
from logah_jax.train import optim
from logah_jax.validation import ConfigError

VIT3 = ('vit:depth=3,width=32,heads=4,patch=7,image_size=28,channels=1,'
        'num_classes=10')
GPT3 = 'gpt2:depth=3,width=32,heads=4,vocab_size=61,n_positions=16'


def _batches(arch, n=2):
  rng = np.random.default_rng(0)
  if arch.family == 'gpt2':
    return [{'tokens': rng.integers(0, arch.vocab_size, (8, 17)).astype(
        np.int32)} for _ in range(n)]
  return [{'image': rng.random((8, 28, 28, 1), np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
          for _ in range(n)]


def test_unstacking_compiles_one_program_per_leaf_shape():
  """reference_params runs one program per leaf shape and sharding, block i
  an argument, however deep the model; each leaf is a copy of its block."""
  tx = optax.sgd(0.1)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  for depth in (2, 7):  # widths of no other test: nothing compiled before
    arch = arch_lib.parse(f'gpt2:depth={depth},width=24,heads=2,'
                          'vocab_size=43,n_positions=8')
    step = finetune_step.FinetuneStep(arch, tx, mesh, scan_blocks=True)
    params = random_params(arch, seed=depth)
    state = step.init_state(params)
    before = compiles.snapshot()
    back = step.reference_params(state.params)
    compiled = (compiles.snapshot() - before).count
    assert list(back) == sorted(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    assert not {x.unsafe_buffer_pointer() for x in jax.tree.leaves(back)} & {
        x.unsafe_buffer_pointer() for x in jax.tree.leaves(state.params)}
    stacked = {x.shape for x in jax.tree.leaves(state.params[layers.STACKED])}
    others = {x.shape for k, v in state.params.items()
              if k != layers.STACKED for x in jax.tree.leaves(v)}
    # the others' copies were compiled for the 2-block model already
    assert compiled == len(stacked) + (len(others) if depth == 2 else 0)


@pytest.mark.parametrize('spec,rule,n_dev', [(VIT3, 'fsdp', 8),
                                             (GPT3, 'replicate', 1)],
                         ids=['vit-fsdp8', 'gpt2'])
def test_scanned_steps_equal_unrolled_steps(spec, rule, n_dev):
  """Two SGD steps from the same params (Adam's first steps, about
  lr x sign(g), would magnify rounding in near-zero gradients): the same
  losses and params, and each stacked leaf split like its blocks, with the
  layer axis whole."""
  arch = arch_lib.parse(spec)
  c = finetune_smoke()
  c.optim.name = 'sgd'
  tx, _ = optim.make_optimizer(c.optim, 10)
  mesh = parallel.make_mesh({'data': n_dev}, devices=jax.devices()[:n_dev])
  params = random_params(arch, seed=2, std=0.1)
  out = {}
  for scan in (False, True):
    step = finetune_step.FinetuneStep(arch, tx, mesh, param_rule=rule,
                                      fsdp_min_mb=0, scan_blocks=scan)
    state = step.init_state(params)
    losses = []
    for batch in _batches(arch):
      state, metrics = step(state, batch)
      losses.append(float(metrics['loss']))
    out[scan] = (step, state, losses)
  (_, u_state, u_losses), (scanned, s_state, s_losses) = (
      out[False], out[True])
  assert set(s_state.params) == {
      k for k in u_state.params if k not in models.block_names(arch)} | {
          layers.STACKED}
  np.testing.assert_allclose(s_losses, u_losses, rtol=1e-6)
  back = scanned.reference_params(s_state.params)
  assert jax.tree.structure(back) == jax.tree.structure(u_state.params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(u_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    assert a.sharding == b.sharding  # the export's layout
  first_block = u_state.params[models.block_names(arch)[0]]
  for stacked, block in zip(jax.tree.leaves(s_state.params[layers.STACKED]),
                            jax.tree.leaves(first_block)):
    assert stacked.shape == (arch.depth, *block.shape)
    assert tuple(stacked.sharding.spec) == (None, *block.sharding.spec)
  if rule == 'fsdp':
    assert any(parallel.DATA in tuple(x.sharding.spec)
               for x in jax.tree.leaves(s_state.params[layers.STACKED]))


def test_stacked_sharding_refuses_blocks_split_differently():
  mesh = parallel.make_mesh({'data': 8})
  one = parallel.data_sharded(mesh)
  with pytest.raises(ValueError, match='one sharding'):
    parallel.stacked_sharding(one, parallel.replicated(mesh))
  assert tuple(parallel.stacked_sharding(one, one).spec) == (None, 'data')


def test_scanned_run_resumes_exports_per_block_and_keeps_its_layout(tmp_path):
  c = finetune_smoke(arch=VIT3)
  c.optim.name = 'sgd'  # AdamW's sign-like first steps magnify rounding
  plain = finetuning.finetune(c, str(tmp_path / 'plain'))
  c.scan_blocks = True
  full = finetuning.finetune(c, str(tmp_path / 'full'))
  # the same training as the unrolled run, up to float rounding
  assert [r['step'] for r in full.evals] == [r['step'] for r in plain.evals]
  np.testing.assert_allclose([r['eval_loss'] for r in full.evals],
                             [r['eval_loss'] for r in plain.evals], rtol=1e-5)
  arch = arch_lib.parse(c.arch)
  assert jax.tree.structure(full.params) == jax.tree.structure(
      models.abstract_params(arch))
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  exported = ckpt_lib.restore_params(
      str(tmp_path / 'full' / finetuning.FINAL_PARAMS),
      abstract_params=models.abstract_params(arch))
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  part = str(tmp_path / 'part')
  finetuning.finetune(c, part, stop_after_steps=3)
  with ckpt_lib.CheckpointManager(os.path.join(part, 'checkpoints'),
                                  async_save=False) as mngr:
    stored, _ = mngr.restore()  # the stored tree, as nested dicts
  assert set(stored['params']) == {'class_token', 'conv_proj', 'head', 'ln',
                                   'pos_embedding', layers.STACKED}
  assert stored['params'][layers.STACKED]['mlp']['fc1']['kernel'].shape == (
      3, 32, 128)
  resumed = finetuning.finetune(c, part)
  assert resumed.evals == full.evals
  for a, b in zip(jax.tree.leaves(resumed.params),
                  jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c.scan_blocks = False  # the checkpoints hold the stacked layout
  with pytest.raises(ConfigError, match=r"key 'scan_blocks' is True there "
                     r'but False now'):
    finetuning.finetune(c, part)
  # a workdir from before the option (no such key) holds per-block blocks:
  # the unrolled run's, with the key taken out
  old = str(tmp_path / 'plain')
  path = os.path.join(old, 'checkpoints', ckpt_lib.CONFIG_FILE)
  with open(path) as f:
    stored = json.load(f)
  del stored['scan_blocks']
  with open(path, 'w') as f:
    json.dump(stored, f)
  c.scan_blocks = True
  with pytest.raises(ConfigError, match=r"key 'scan_blocks' is False there "
                     r'but True now'):
    finetuning.finetune(c, old)
  c.scan_blocks = False
  again = finetuning.finetune(c, old)  # finished: restores, trains nothing
  assert again.step == 6 and again.evals == plain.evals
  bad = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
  bad.scan_blocks = 1  # a config file's slip: not a bool
  with pytest.raises(ConfigError, match=r'config\.scan_blocks=1 must be'):
    finetuning.finetune(bad, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad')


def test_the_ligo_run_of_a_comparison_leaves_the_block_layout_out():
  c = load_config_file('compare_vits', 'smoke')
  c.finetune.scan_blocks = True
  assert 'scan_blocks' not in compare.ligo_config(c)  # LiGO never reads it


def test_optimizer_moments_take_their_params_shardings_not_a_shapes():
  """depth = n_positions = 16: the stacked LayerNorm scales have wpe's shape
  (16, 32), but are replicated (each block's is below fsdp_min_mb) while wpe
  is split. Each AdamW moment must take its own param's sharding."""
  arch = arch_lib.parse('gpt2:depth=16,width=32,heads=4,vocab_size=61,'
                        'n_positions=16')
  tx, _ = optim.make_optimizer(finetune_smoke().optim, 10)
  step = finetune_step.FinetuneStep(
      arch, tx, parallel.make_mesh({'data': 8}), param_rule='fsdp',
      fsdp_min_mb=1 / 1024, scan_blocks=True)
  state = step.abstract_state()
  wpe = state.params['wpe']['embedding']
  scale = state.params[layers.STACKED]['ln_1']['scale']
  assert wpe.shape == scale.shape
  assert tuple(wpe.sharding.spec) == (None, parallel.DATA)
  assert parallel.DATA not in tuple(scale.sharding.spec)
  for moment in ('mu', 'nu'):
    tree = optax.tree_utils.tree_get(state.opt_state, moment)
    assert jax.tree.structure(tree) == jax.tree.structure(state.params)
    for m, p in zip(jax.tree.leaves(tree), jax.tree.leaves(state.params)):
      assert m.shape == p.shape and m.sharding == p.sharding


@pytest.mark.parametrize('spec', [GPT3, VIT3], ids=['gpt2', 'vit'])
def test_scanned_blocks_keep_only_matmul_outputs_for_the_backward(spec):
  """A scan stores every residual of its body's derivative; with
  `REMAT_DOTS` only the matmul outputs are kept (XLA's memory analysis of
  the compiled loss and gradient), for the same values."""
  arch = arch_lib.parse(spec)
  params = models.stack_blocks(arch, random_params(arch, seed=3, std=0.1))
  batch = _batches(arch, 1)[0]
  temp, out = {}, {}
  for remat in (False, layers.REMAT_DOTS, True):
    f = jax.jit(jax.value_and_grad(lambda p, remat=remat: objective.task_loss(
        arch, p, batch, scan=True, remat=remat)[0]))
    temp[remat] = f.lower(params).compile().memory_analysis(
        ).temp_size_in_bytes
    out[remat] = f(params)
  assert temp[True] < temp[layers.REMAT_DOTS] < 0.75 * temp[False]
  for a, b in zip(jax.tree.leaves(out[layers.REMAT_DOTS]),
                  jax.tree.leaves(out[False])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-7)
  tx, _ = optim.make_optimizer(finetune_smoke().optim, 10)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  assert finetune_step.FinetuneStep(
      arch, tx, mesh, scan_blocks=True).block_remat == layers.REMAT_DOTS
  assert not finetune_step.FinetuneStep(arch, tx, mesh).block_remat


def test_cudnn_attention_keeps_its_blocks_unrematerialised(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  dots = layers.REMAT_DOTS
  assert layers.block_remat(dots, jnp.bfloat16, 64, 1024) is False  # cuDNN
  assert layers.block_remat(dots, jnp.float32, 64, 1024) == dots
  assert layers.block_remat(dots, jnp.bfloat16, 64, 197) == dots  # odd T
  assert layers.block_remat(True, jnp.bfloat16, 64, 1024) is True
