"""The errors a bad config or input raises, and the one integer check.

A run validates every field it reads before any device work, and every
failure there is a `ConfigError` naming the field or file: the entry point
prints such an error as one line (exit code 2) and lets anything else, an
internal bug, show its traceback. This module imports nothing of logah_jax,
so every layer can raise these errors.
"""

from __future__ import annotations

import numbers


class ConfigError(ValueError):
  """A config field, or a file or directory it names, cannot work."""


class InputNotFoundError(ConfigError, FileNotFoundError):
  """A file or directory the config names does not exist (or is empty)."""


class OutputExistsError(ConfigError, FileExistsError):
  """An output the run would write already exists and may not be replaced."""


def check_int(value, field: str, minimum: int = 1) -> int:
  """`value` as an int if it is an integer >= `minimum`; else ConfigError.

  Booleans are refused (True is an int in Python, never a count here).
  """
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ConfigError(f'{field}={value!r} must be an int >= {minimum}')
  return int(value)
