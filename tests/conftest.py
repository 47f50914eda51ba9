"""Test setup, done before JAX starts its backend: 8 fake CPU devices, and
XLA's quick CPU compile options for every program.

Most of the suite's time is XLA compiling small programs; with the options
GHN training uses for its short-lived programs (`compiles.QUICK_CPU_COMPILE`:
the older loop emitters, LLVM at -O1) the default run takes about 30% less.
They change how fused elementwise code is generated, not what it computes.
`LOGAH_TESTS_XLA_DEFAULTS=1` runs the suite with XLA's own defaults instead;
tests that compare the two kinds of program pin them per program.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def _add_flag(flag: str) -> None:
  name = flag.split('=')[0]
  if name + '=' not in os.environ.get('XLA_FLAGS', ''):  # the caller's wins
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' '
                               + flag).strip()


_add_flag('--xla_force_host_platform_device_count=8')
if os.environ.get('LOGAH_TESTS_XLA_DEFAULTS', '') not in ('1', 'true'):
  from logah_jax import compiles  # pylint: disable=g-import-not-at-top
  for _key, _value in compiles.QUICK_CPU_COMPILE.items():
    _add_flag(f'--{_key}={str(_value).lower()}')
