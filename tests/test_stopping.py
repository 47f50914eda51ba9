"""Two jax.distributed processes stop at the same step boundary when only
one of them receives the signal (`train/stopping.py`).

The processes run no JAX computation, only the boundaries of a loop, so this
runs in the default suite; `tests/test_multiprocess.py` (opt-in) stops and
resumes a real two-process training run the same way.
"""

import os
import socket
import subprocess
import sys

import pytest

from configs_for_tests import ROOT

_SCRIPT = r'''
import os, signal, sys, time
process, port, sig = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from logah_jax.train import stopping
for s in (signal.SIGINT, signal.SIGTERM):  # as logah_jax.main does, first
  signal.signal(s, lambda n, f: stopping.interrupt(signal.Signals(n).name))
import jax
jax.distributed.initialize(f'localhost:{port}', 2, process,
                           initialization_timeout=60)
with stopping.deferred():
  for boundary in range(3000):
    stop = stopping.requested()
    if stop:
      print(f'stopped at boundary {boundary} by {stop}', flush=True)
      break
    if process == 1 and boundary == 5:
      os.kill(os.getpid(), getattr(signal, sig))
    time.sleep(0.01)
  else:
    print('never stopped', flush=True)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('sig', ['SIGTERM', 'SIGINT'])
def test_a_signal_to_one_process_stops_both_at_one_boundary(sig):
  port = str(_free_port())
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('LOGAH_', 'XLA_FLAGS'))}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, '-c', _SCRIPT, str(i), port, sig],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
           for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  lines = [[l for l in out.splitlines() if l.startswith(('stopped', 'never'))]
           for out in outs]
  assert all(p.returncode == 0 for p in procs), outs
  (first,), (second,) = lines
  # process 0 learns of it from JAX's preemption service, as a SIGTERM
  assert first.replace('SIGTERM', sig) == second, (first, second)
  assert second.endswith(f'by {sig}')
  assert int(second.split()[3]) > 5
