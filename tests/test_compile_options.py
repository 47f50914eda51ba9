"""XLA options of GHN training's per-architecture programs (quick compile).

That they leave losses and gradients unchanged is checked with the
depth-sharing step test (tests/test_depth_sharing.py), whose own-depth
program is compiled with them.
"""

import jax
import numpy as np
import optax
import pytest

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
      'xla_cpu_use_fusion_emitters': False}
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
  assert ghn_training.quick_compile('auto') is False  # CPU backend
  assert ghn_training.quick_compile('false') is False
  assert ghn_training.quick_compile('true') is True
  assert ghn_training.quick_compile('True') is True
  assert ghn_training.quick_compile('FALSE') is False
  assert ghn_training.quick_compile(True) is True
  assert ghn_training.quick_compile(False) is False
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert ghn_training.quick_compile('auto') is True
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert ghn_training.quick_compile('auto') is False
  for bad in ('yes', 1, None):
    with pytest.raises(ConfigError, match='config.train.quick_compile'):
      ghn_training.quick_compile(bad)


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
