"""XLA options of GHN training's per-architecture programs (quick compile).

That they leave losses and gradients unchanged is checked with the
depth-sharing step test (tests/test_depth_sharing.py), whose own-depth
program is compiled with them.
"""

import jax
import numpy as np
import optax
import pytest

from configs_for_tests import smoke

from logah_jax import arch as arch_lib
from logah_jax import compiles
from logah_jax import ghn as ghn_lib
from logah_jax import parallel
from logah_jax.arch import batching
from logah_jax.train import ghn_step
from logah_jax.train import ghn_training
from logah_jax.validation import ConfigError

GHN = ghn_lib.named('logah-tiny')


def test_quick_compile_options_per_backend():
  assert compiles.quick_compile_options('cpu') == {
      'xla_cpu_use_fusion_emitters': False,
      'xla_backend_optimization_level': 1}
  assert compiles.quick_compile_options('gpu') == {
      'xla_gpu_autotune_level': 0}
  assert compiles.quick_compile_options('tpu') is None
  # copies: a caller cannot change the module's defaults
  compiles.quick_compile_options('cpu')['xla_cpu_use_fusion_emitters'] = 1
  assert compiles.QUICK_CPU_COMPILE['xla_cpu_use_fusion_emitters'] is False
  compiles.quick_compile_options('gpu')['xla_gpu_autotune_level'] = 4
  assert compiles.QUICK_GPU_COMPILE['xla_gpu_autotune_level'] == 0


def test_gpu_quick_compile_options_are_known_to_xla():
  """XLA checks option names and value types on any backend: the GPU
  options must compile here (a misspelt one would otherwise fail only on a
  GPU), and the check itself rejects a misspelt name."""
  lowered = jax.jit(lambda x: x * 2).lower(np.ones(3, np.float32))
  out = lowered.compile(compiles.quick_compile_options('gpu'))(
      np.ones(3, np.float32))
  np.testing.assert_array_equal(out, 2 * np.ones(3))
  with pytest.raises(Exception, match='xla_gpu_autotune_levl'):
    lowered.compile({'xla_gpu_autotune_levl': 0})


def test_quick_compile_setting(monkeypatch):
  # 'auto' on CPUs: quick below 60 visits per GPT-2 program, 450 per ViT one
  assert ghn_training.quick_compile('auto', 59.5, 'gpt2') is True
  assert ghn_training.quick_compile('auto', 60, 'gpt2') is False
  assert ghn_training.quick_compile('auto', 449, 'vit') is True
  assert ghn_training.quick_compile('auto', 450, 'vit') is False
  for visits in (1, 10**6):  # an explicit value ignores the visits
    assert ghn_training.quick_compile('false', visits, 'vit') is False
    assert ghn_training.quick_compile('true', visits, 'vit') is True
    assert ghn_training.quick_compile('True', visits, 'vit') is True
    assert ghn_training.quick_compile('FALSE', visits, 'vit') is False
    assert ghn_training.quick_compile(True, visits, 'vit') is True
    assert ghn_training.quick_compile(False, visits, 'vit') is False
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  for family in ('gpt2', 'vit'):
    assert ghn_training.quick_compile('auto', 1399, family) is True
    assert ghn_training.quick_compile('auto', 1400, family) is False
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  for family in ('gpt2', 'vit'):
    assert ghn_training.quick_compile('auto', 1, family) is False
  for bad in ('yes', 1, None):
    with pytest.raises(ConfigError, match='config.train.quick_compile'):
      ghn_training.quick_compile(bad, 1, 'vit')


@pytest.mark.parametrize('share', ['true', 'false'])
def test_auto_quick_compile_counts_the_runs_visits_per_program(share):
  """build_run's 'auto' divides steps x m by the programs the step will
  compile (the step's own program_arch over the candidates)."""
  config = smoke()
  config.space.width_rules = ((1, 3, 32, 48, 16),)  # depths to share
  config.train.pool_size = 0  # the whole space: 6 architectures
  config.train.share_depths = share
  run = ghn_training.build_run(config)
  candidates = run.sampler.candidates()
  step = ghn_step.GHNStep(
      run.ghn_cfg, run.family, optax.sgd(0.1),
      parallel.make_mesh({'data': 1}, devices=jax.devices()[:1]),
      m=run.sampler.m, n_pad=64,
      share_depths=candidates if share == 'true' else ())
  programs = len({step.program_arch(a) for a in candidates})
  assert ghn_training.program_count(run.sampler, share == 'true') == programs
  if share == 'true':
    assert programs < len(set(candidates))  # depths were shared
  m = run.sampler.m
  limit = compiles.QUICK_COMPILE_PAYS_BELOW[('cpu', 'vit')]  # ViTs on a CPU
  assert run.num_steps * m / programs < limit and run.quick_compile
  config.train.num_steps = -(-limit * programs // m)  # limit visits or more
  assert not ghn_training.build_run(config).quick_compile
  config.train.num_steps = (limit * programs - 1) // m  # fewer
  assert ghn_training.build_run(config).quick_compile


def test_arch_programs_are_compiled_with_the_step_options():
  """An option XLA does not know fails the architecture's program: the
  step's options reach XLA's compiler."""
  arch = arch_lib.GPT2Config(depth=1, width=32, heads=4, vocab_size=64,
                             n_positions=16)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  n_pad = batching.bucket_size(ghn_lib.num_nodes(GHN, arch))
  step = ghn_step.GHNStep(GHN, 'gpt2', optax.sgd(0.1), mesh, m=1,
                          n_pad=n_pad,
                          compiler_options={'xla_cpu_no_such_option': True})
  # Shapes are enough to lower.
  abstract = lambda t: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
  params = jax.eval_shape(lambda: ghn_lib.init(GHN, 'gpt2', 0))
  # pylint: disable=protected-access
  x_nd = step._body.lower(params['body'],
                          abstract(step.inputs([arch]))).out_info[0]
  lowered = step._compile_arch(arch, 0).lower(
      params['decoder'], x_nd, abstract({'tokens': np.zeros((2, 9),
                                                            np.int32)}))
  with pytest.raises(Exception, match='xla_cpu_no_such_option'):
    lowered.compile()
