"""glibc's malloc settings of the entry points: what they ask for, that the
entry point re-executes itself once to get them, and that they stop a
repeated CPU step from faulting its buffers in again."""

import os
import subprocess
import sys

import pytest

from logah_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program with 64 MB temps (16,384 pages each), run 10 times; prints the
# median page faults of the runs after the first.
_FAULTS_SCRIPT = r'''
import resource
import jax, jax.numpy as jnp
x = jnp.ones((4096, 512)) / 512
loss = lambda x: jnp.sum(jax.nn.log_softmax(x @ x.T)[:, 0])
step = jax.jit(jax.grad(loss)).lower(x).compile()
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[1:])[4])
'''


def _env(**changes):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'LOGAH_JAX_REEXECUTED')}
  env.update({'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT, **changes})
  return env


def _run(code: str, env) -> list[str]:
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  return out.stdout.strip().splitlines()


def _median_faults(malloc: str) -> int:
  env = host_memory.with_tunables(_env(LOGAH_JAX_MALLOC=malloc))
  return int(_run(_FAULTS_SCRIPT, env)[-1])


def _huge_pages_available() -> bool:
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      return '[never]' not in f.read()
  except OSError:
    return False


needs_glibc = pytest.mark.skipif(not host_memory._glibc(),  # pylint: disable=protected-access
                                 reason='glibc tunables')


def test_what_each_choice_asks_for():
  cpu = {'JAX_PLATFORMS': 'cpu'}
  if host_memory._glibc():  # pylint: disable=protected-access
    assert host_memory.tunables(cpu) == {'glibc.malloc.hugetlb': '1'}
    assert host_memory.tunables(dict(cpu, LOGAH_JAX_MALLOC='reuse')) == {
        'glibc.malloc.hugetlb': '1', 'glibc.malloc.arena_max': '1',
        'glibc.malloc.mmap_max': '0',
        'glibc.malloc.trim_threshold': str(2**62)}
  assert host_memory.tunables(dict(cpu, LOGAH_JAX_MALLOC='system')) == {}
  for platforms in ('cuda', 'cpu,tpu'):  # host memory is not the step's
    assert host_memory.tunables({'JAX_PLATFORMS': platforms,
                                 'LOGAH_JAX_MALLOC': 'reuse'}) == {}
  with pytest.raises(ValueError, match="LOGAH_JAX_MALLOC='fast'"):
    host_memory.tunables({'LOGAH_JAX_MALLOC': 'fast'})


@needs_glibc
def test_the_users_tunables_are_kept_and_win():
  env = host_memory.with_tunables(
      {'JAX_PLATFORMS': 'cpu', 'LOGAH_JAX_MALLOC': 'reuse',
       'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4:glibc.pthread.x=1'})
  assert env['GLIBC_TUNABLES'].split(':') == [
      'glibc.malloc.arena_max=4', 'glibc.pthread.x=1',
      'glibc.malloc.hugetlb=1', 'glibc.malloc.mmap_max=0',
      f'glibc.malloc.trim_threshold={2**62}']


@needs_glibc
def test_the_entry_point_reexecutes_itself_once_with_the_tunables():
  code = ('import os\nfrom logah_jax import host_memory\nprint("ran", '
          'os.getpid())\nhost_memory.reexec_with_tunables()\n'
          'print(os.environ.get("GLIBC_TUNABLES"))')
  first, again, tunables = _run(code, _env())
  assert first == again  # the same process, run a second time
  assert tunables == 'glibc.malloc.hugetlb=1'
  for env in (_env(LOGAH_JAX_MALLOC='system'), _env(JAX_PLATFORMS='cuda'),
              _env(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')):
    assert len(_run(code, env)) == 2, env  # ran once, as it was


@needs_glibc
def test_reuse_keeps_a_repeated_step_from_faulting():
  """With glibc's defaults the median run here faulted about 18,000 pages
  (unless the kernel backs every mapping with huge pages on its own)."""
  assert _median_faults('reuse') < 800


@needs_glibc
@pytest.mark.skipif(not _huge_pages_available(),
                    reason='the kernel has transparent huge pages off')
def test_huge_pages_cut_the_faults_of_a_repeated_step():
  assert _median_faults('auto') * 4 < _median_faults('system')
