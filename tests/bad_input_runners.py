"""How test_bad_inputs.py runs its cases: the `python -m logah_jax.main`
subprocess, the cases' setup functions, and the runners of the cases that
need more than one plain run (a read-only parent, a full disk, a signal,
a non-finite loss)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import configs_for_tests as cft

ROOT = cft.ROOT
FULL_DISK_BYTES = 64 * 1024  # RLIMIT_FSIZE of the full-disk case


def workdir_is_a_file(paths):
  with open(paths['file'], 'w') as f:
    f.write('not a directory\n')


# Run before main in the child (no preexec_fn: JAX threads make fork unsafe
# here), then exec main, which keeps the limits and ignored signals.
_EXEC_MAIN = ('import os, sys; os.execv(sys.executable, [sys.executable, '
              "'-m', 'logah_jax.main', *sys.argv[1:]])")
# As root: lose the capabilities to ignore file modes (from the bounding set;
# exec then leaves them out of the permitted set).
_DROP_DAC = ('import ctypes; prctl = ctypes.CDLL(None, use_errno=True).prctl\n'
             'for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH\n'
             '  if prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP\n'
             '    raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")\n')
# A full disk: write() beyond the limit fails with EFBIG instead of SIGXFSZ.
_FILE_LIMIT = ('import resource, signal\n'
               'resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0}))\n'
               'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n')


def locked_parent(paths):
  os.makedirs(paths['locked'])
  os.chmod(paths['locked'], 0o555)


def run_not_writable(argv, env, paths):
  """Writes under a 0o555 directory fail for a user; root ignores modes, so
  as root the child first drops CAP_DAC_OVERRIDE (and DAC_READ_SEARCH)."""
  prelude = ''
  if os.geteuid() == 0:
    probe = subprocess.run([sys.executable, '-c', _DROP_DAC],
                           capture_output=True, text=True)
    if probe.returncode:  # this container does not let root drop them
      pytest.skip('root ignores the 0o555 mode and cannot drop '
                  f'CAP_DAC_OVERRIDE here: {probe.stderr.strip()[-200:]}')
    prelude = _DROP_DAC
  try:
    return main(argv, env, prelude=prelude)
  finally:
    os.chmod(paths['locked'], 0o755)  # so that pytest can clean up


def run_full_disk(argv, env, paths):
  del paths
  return main(argv, env, prelude=_FILE_LIMIT.format(FULL_DISK_BYTES))


def _step_dirs(workdir):
  root = os.path.join(workdir, 'runs', 'random', 'seed0', 'checkpoints')
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def _run_until(argv, env, sig, ready, out_path, timeout=300):
  """Starts the command, sends `sig` once ready(stdout so far) holds."""
  with open(out_path, 'w') as out:
    proc = subprocess.Popen([sys.executable, '-m', 'logah_jax.main', *argv],
                            stdout=out, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    start = time.time()
    while proc.poll() is None:
      if ready(open(out_path).read()):
        proc.send_signal(sig)
        break
      if time.time() - start > timeout:
        proc.kill()  # never got there: the asserts on its output fail
        break
      time.sleep(0.2)
    _, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(argv, proc.returncode,
                                     open(out_path).read(), err)


def run_interrupted(argv, env, paths):
  """SIGINT once the comparison's run has a checkpoint; the same command
  then resumes from it (SIGTERM once it says so). Returns the second run;
  the first must also end with one line and exit code 2."""
  workdir = paths['tmp'] + '/compare'
  first = _run_until(argv, env, signal.SIGINT,
                     lambda out: bool(_step_dirs(workdir)),
                     paths['tmp'] + '/first.out')
  lines = first.stderr.splitlines()
  assert first.returncode == 2, first.stderr[-3000:]
  assert len(lines) == 1 and re.fullmatch(
      rf'error: interrupted \(SIGINT\); run the same command again to '
      rf'resume from {re.escape(workdir)}', lines[0]), first.stderr[-3000:]
  steps = _step_dirs(workdir)
  assert steps, 'the first run was stopped before its first checkpoint'
  saved = tree_hash(os.path.join(workdir, 'runs', 'random', 'seed0',
                                  'checkpoints', str(steps[-1])))
  second = _run_until(argv, env, signal.SIGTERM,
                      lambda out: 'resuming at step' in out,
                      paths['tmp'] + '/second.out')
  assert f'resuming at step {steps[-1]}' in second.stdout, second.stdout[-2000:]
  assert saved == tree_hash(os.path.join(
      workdir, 'runs', 'random', 'seed0', 'checkpoints', str(steps[-1])))
  return second


def run_non_finite(argv, env, paths):
  """The run stops at step 2; step 1 is its last checkpoint, restorable
  with its checksums and finite; nothing after it was written."""
  from logah_jax import checkpoint, checksums  # pylint: disable=g-import-not-at-top
  proc = main(argv, env)
  directory = os.path.join(paths['tmp'], 'run', 'checkpoints')
  assert os.path.isdir(directory), proc.stderr[-3000:]
  assert sorted(os.listdir(directory)) == ['1', 'config.json']
  with checkpoint.CheckpointManager(directory, async_save=False) as mngr:
    state, extra = mngr.restore(1)  # verifies every leaf's checksum
  assert extra['step'] == 1 and not checksums.nonfinite_leaves(state)
  return proc


def damage(paths):
  """Truncates the largest array file of a copy of the saved init."""
  data = os.path.join(paths['damaged'], 'params', 'ocdbt.process_0', 'd')
  largest = max((os.path.join(data, f) for f in os.listdir(data)),
                key=os.path.getsize)
  os.truncate(largest, 100)


def env_for(extra=None):
  env = {k: v for k, v in os.environ.items()
         if k != 'XLA_FLAGS' and not (k.startswith('LOGAH_') and k not in (
             'LOGAH_DATA_DIR', 'LOGAH_JAX_CACHE_DIR'))}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **(extra or {}))
  return env


def main(argv, env, prelude=''):
  """`python -m logah_jax.main ARGV`; `prelude` runs first in the child."""
  cmd = ([sys.executable, '-c', prelude + _EXEC_MAIN] if prelude
         else [sys.executable, '-m', 'logah_jax.main'])
  return subprocess.run([*cmd, *argv], capture_output=True, text=True,
                        cwd=ROOT, env=env, timeout=300)


def tree_hash(top) -> dict:
  """Every path under `top` -> sha256 of its contents ('dir' for folders)."""
  out = {}
  for root, dirs, files in os.walk(top):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), top)] = 'dir'
    for f in files:
      path = os.path.join(root, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, top)] = hashlib.sha256(fh.read()).hexdigest()
  return out
