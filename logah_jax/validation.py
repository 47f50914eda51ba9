"""The errors a bad config or input raises, the integer check, and the
renaming of a sub-run's field paths to the user's config (`sub_config`).

A run validates every field it reads before any device work, and every
failure there is a `ConfigError` naming the field or file: the entry point
prints such an error as one line (exit code 2) and lets anything else, an
internal bug, show its traceback. This module imports nothing of logah_jax,
so every layer can raise these errors.
"""

from __future__ import annotations

import contextlib
import numbers
import re


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


def check_seed(value, field: str) -> int:
  """A seed: an int in [0, 2**32). `jax.random.key` keeps 32 bits of a
  larger one, so two seeds would give one stream."""
  seed = check_int(value, field, 0)
  if seed >= 2 ** 32:
    raise ConfigError(f'{field}={value!r} must be below 2**32')
  return seed


# A dotted config path in a message: `config.` and at least one name, not
# part of a longer word, a quoted value or a file path (config.json,
# checkpoints/config.json).
_CONFIG_PATH = re.compile(r'(?<![\w./\'"-])config(?:\.(?!json\b)\w+)+')


def check_step(value, field: str) -> int | None:
  """A checkpoint step field: -1 (the latest: None) or an int >= 0."""
  if value == -1 and not isinstance(value, bool):
    return None
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ConfigError(f'{field}={value!r} must be -1 (the latest '
                      'checkpoint) or a step >= 0')
  return value


def rename_fields(message: str, fields: dict) -> str:
  """`message` with each dotted config path renamed by `fields`.

  `fields` maps a path (a field or a section: 'config', 'config.optim',
  'config.train.num_steps') to the path it stands for; the longest key that
  is the whole path or a leading part of it (up to a dot) wins, and a path
  no key covers stays as it is.
  """
  keys = sorted(fields, key=len, reverse=True)

  def rename(match):
    path = match.group(0)
    for key in keys:
      if path == key or path.startswith(key + '.'):
        return fields[key] + path[len(key):]
    return path

  return _CONFIG_PATH.sub(rename, message)


@contextlib.contextmanager
def sub_config(section: str, fields: dict | None = None,
               context: str | None = None):
  """Names a sub-run's bad field by its path in the user's config.

  A job that builds a run from a part of its config (the comparison's
  fine-tuning from `config.finetune`) calls the run's builder inside this;
  the builder names fields as `config.<path>` of the part it was given. A
  ConfigError raised inside gets `config.` renamed to `section.`, or, for a
  path of `fields` (the sub-run's path -> the user's: fields the job derives
  from elsewhere), to that; a message that names no config field gets
  `context: ` (default `section`) in front. The error keeps its class.
  """
  renames = {'config': section, **(fields or {})}
  try:
    yield
  except ConfigError as e:
    message = str(e)
    if _CONFIG_PATH.search(message):
      message = rename_fields(message, renames)
    else:
      message = f'{context or section}: {message}'
    try:
      renamed = type(e)(message)
    except TypeError:  # a subclass with other arguments
      renamed = ConfigError(message)
    raise renamed from e
