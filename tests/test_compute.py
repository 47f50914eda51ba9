"""Compute dtype, attention implementation and rematerialisation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from logah_jax import arch as arch_lib
from logah_jax import models
from logah_jax import parallel
from logah_jax.models import layers
from logah_jax.train import compute as compute_lib
from logah_jax.train import finetune_step
from logah_jax.train import objective
from logah_jax.train.compute import Compute
from logah_jax.validation import ConfigError

GPT = arch_lib.GPT2Config(depth=2, width=64, heads=4, vocab_size=97,
                          n_positions=32, tie_embeddings=False)
VIT = arch_lib.ViTConfig(depth=2, width=32, heads=2, mlp_dim=64, patch=4,
                         image_size=16, channels=3, num_classes=5)


def _batch(arch, b=4, seed=0):
  rng = np.random.default_rng(seed)
  if isinstance(arch, arch_lib.ViTConfig):
    return {'image': rng.normal(size=(b, 16, 16, 3)).astype(np.float32),
            'label': rng.integers(0, 5, b).astype(np.int32)}
  return {'tokens': rng.integers(0, 97, (b, 17)).astype(np.int32)}


def test_auto_is_float32_on_cpu_and_bad_values_name_the_field():
  assert jax.default_backend() == 'cpu'
  assert compute_lib.resolve_dtype('auto') == jnp.float32
  assert compute_lib.resolve_dtype('bfloat16') == jnp.bfloat16
  with pytest.raises(ConfigError, match='config.compute_dtype'):
    compute_lib.resolve_dtype('float16')
  bad = ml_collections.ConfigDict(dict(compute_dtype='auto', remat='yes'))
  with pytest.raises(ConfigError, match='config.remat'):
    compute_lib.from_config(bad)
  got = compute_lib.from_config(
      ml_collections.ConfigDict(dict(compute_dtype='auto', remat=True)))
  assert got == Compute(jnp.float32, True)
  assert 'float32 on cpu' in got.describe() and 'remat on' in got.describe()
  scanned = Compute(jnp.float32, False).describe(scan=True)
  assert 'blocks scanned, remat keeping matmul outputs' in scanned
  assert 'remat off' in Compute(jnp.float32, False).describe()
  assert 'blocks scanned, remat on' in got.describe(scan=True)


def test_cudnn_attention_only_for_16_bit_inputs_on_gpus(monkeypatch):
  assert layers.attention_implementation(jnp.bfloat16, 64, 1024) == 'recompute'
  with layers.attention_as_on('gpu'):
    assert layers.attention_implementation(jnp.float32, 64, 1024) is None
    assert layers.attention_implementation(jnp.bfloat16, 64, 1024) == 'cudnn'
  assert layers.attention_implementation(jnp.float32, 64, 1024) == 'recompute'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert layers.attention_implementation(jnp.bfloat16, 64, 1024) is None
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert layers.attention_implementation(jnp.bfloat16, 64, 1024) == 'cudnn'
  assert layers.attention_implementation(jnp.float16, 128, 64) == 'cudnn'
  assert layers.attention_implementation(jnp.float32, 64, 1024) is None
  assert layers.attention_implementation(jnp.bfloat16, 14, 1024) is None
  assert layers.attention_implementation(jnp.bfloat16, 256, 1024) is None
  assert layers.attention_implementation(jnp.bfloat16, 64, 197) is None


@pytest.mark.parametrize('arch', [GPT, pytest.param(VIT, marks=pytest.mark.slow)],
                         ids=['gpt2', 'vit'])
def test_remat_changes_memory_not_values(arch):
  params = models.init_params(arch, jax.random.key(0))
  batch = _batch(arch)

  def grads(remat):
    fn = lambda p: objective.task_loss(arch, p, batch, remat=remat)[0]
    return jax.jit(jax.value_and_grad(fn))(params)

  (loss, g), (loss_r, g_r) = grads(False), grads(True)
  assert jax.tree.structure(g) == jax.tree.structure(g_r)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  # remat really recomputes: the backward holds a checkpoint (remat) region
  jaxpr = jax.make_jaxpr(jax.grad(
      lambda p: objective.task_loss(arch, p, batch, remat=True)[0]))(params)
  assert 'remat' in str(jaxpr) or 'checkpoint' in str(jaxpr)
  jaxpr = jax.make_jaxpr(jax.grad(
      lambda p: objective.task_loss(arch, p, batch)[0]))(params)
  assert 'remat' not in str(jaxpr) and 'checkpoint' not in str(jaxpr)


@pytest.mark.parametrize('arch', [GPT, pytest.param(VIT, marks=pytest.mark.slow)],
                         ids=['gpt2', 'vit'])
def test_bfloat16_step_stays_close_to_float32_with_float32_state(arch):
  mesh = parallel.make_mesh({parallel.DATA: 1}, jax.devices()[:1])
  tx = optax.adamw(1e-3)
  params = models.init_params(arch, jax.random.key(1))
  if 'head' in params:  # ViT's head starts at zero: give it a signal
    params['head']['kernel'] = 0.1 * jax.random.normal(
        jax.random.key(2), params['head']['kernel'].shape)
  batch = _batch(arch, b=8, seed=1)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    step = finetune_step.FinetuneStep(arch, tx, mesh,
                                      compute=Compute(dtype))
    state, metrics = step(step.init_state(params), batch)
    out[dtype] = state, jax.device_get(metrics)
  (s32, m32), (s16, m16) = out[jnp.float32], out[jnp.bfloat16]
  assert {x.dtype for x in jax.tree.leaves((s16.params, s16.opt_state))
          if x.ndim} == {jnp.dtype(jnp.float32)}
  assert bool(m16['finite'])
  np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=2e-2)
  np.testing.assert_allclose(m16['grad_norm'], m32['grad_norm'], rtol=5e-2)
  # Adam's first update is ~lr * sign(g): bf16 may flip only tiny gradients.
  d32 = jax.tree.map(lambda a, b: np.asarray(a - b), s32.params, params)
  d16 = jax.tree.map(lambda a, b: np.asarray(a - b), s16.params, params)
  flat32 = np.concatenate([x.ravel() for x in jax.tree.leaves(d32)])
  flat16 = np.concatenate([x.ravel() for x in jax.tree.leaves(d16)])
  assert np.mean(np.sign(flat32) == np.sign(flat16)) > 0.9
  assert np.corrcoef(flat32, flat16)[0, 1] > 0.9
  # and it really ran in bfloat16: the losses are not bit-identical
  assert m16['loss'] != m32['loss']


def test_runs_read_and_check_the_compute_fields():
  from configs_for_tests import finetune_smoke  # pylint: disable=g-import-not-at-top
  from logah_jax.train import finetuning  # pylint: disable=g-import-not-at-top
  c = finetune_smoke()
  assert (c.compute_dtype, c.remat) == ('auto', False)
  run = finetuning.build_run(c)
  assert run.compute == Compute(jnp.float32, False)  # auto on a CPU
  assert {'compute_dtype', 'remat'} <= set(finetuning.RESUMABLE_KEYS)
  c.compute_dtype = 'fp8'
  with pytest.raises(ConfigError, match=r"config.compute_dtype='fp8'"):
    finetuning.build_run(c)
