"""Config errors: the one integer check, and what the entry point does with
a config error (one line, exit 2) versus any other exception (traceback)."""

import numpy as np
import pytest

from logah_jax import main as main_lib
from logah_jax import validation
from logah_jax.validation import ConfigError, check_int


def test_check_int_refuses_bools_floats_and_small_values():
  assert check_int(3, 'a.b') == 3
  got = check_int(np.int64(4), 'a.b', 0)
  assert got == 4 and type(got) is int  # stored as a Python int
  for value, minimum in ((True, 0), (2.0, 1), ('3', 1), (0, 1), (-1, 0)):
    with pytest.raises(ConfigError, match=rf"a\.b={value!r} must be an int "
                       rf'>= {minimum}'):
      check_int(value, 'a.b', minimum)


def test_input_errors_are_config_errors_and_os_errors():
  assert issubclass(validation.InputNotFoundError, FileNotFoundError)
  assert issubclass(validation.OutputExistsError, FileExistsError)
  for cls in (validation.InputNotFoundError, validation.OutputExistsError):
    assert issubclass(cls, ConfigError) and issubclass(cls, ValueError)


def _main(monkeypatch, error):
  def run(config, workdir):
    raise error
  monkeypatch.setattr(main_lib, 'run', run)
  monkeypatch.setattr(main_lib, '_CONFIG', type('C', (), {'value': None}))
  monkeypatch.setattr(main_lib, '_WORKDIR', type('W', (), {'value': '/x'}))
  main_lib.main(['main'])


def test_main_prints_config_errors_and_raises_anything_else(monkeypatch,
                                                            capsys):
  with pytest.raises(SystemExit) as e:
    _main(monkeypatch, validation.InputNotFoundError('no GHN in /x'))
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == 'error: no GHN in /x'
  # an internal bug, even a ValueError, is not swallowed into one line
  for bug in (ValueError('shapes (2,) and (3,) differ'), KeyError('w')):
    with pytest.raises(type(bug)):
      _main(monkeypatch, bug)
