"""Small files a run writes and reads back: atomic writes, strict JSONL.

A run can be killed at any instant (pre-emption, SIGKILL, a full disk), so
every file that is rewritten goes to a temporary sibling first and is renamed
into place: a reader sees the old file or the new one, never half of either.
Append-only logs (`metrics.jsonl`) may end in a line cut by a kill; readers
accept exactly that and reject any other damage, naming the file and line.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

from logah_jax.validation import ConfigError


def check_writable_dir(path: str, field: str) -> None:
  """ConfigError naming `field` unless `path` is (or can become) a
  directory this process may write to; checked before any work."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'{field}={path} is a file, not a directory')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(f'{field}={path}: {parent} is a file, not a '
                      'directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f'{field}={path}: {parent} is not writable')


def check_apart(path: str, field: str, others) -> None:
  """ConfigError unless `path` (named `field`) and each (other path, its
  name) of `others` are separate folders, neither inside the other: an
  output that holds an input (or lies in it) would be deleted or written
  into by an overwrite."""
  def real(p):
    return os.path.realpath(os.path.abspath(p))
  mine = real(path)
  for other, what in others:
    theirs = real(other)
    if (mine == theirs or mine.startswith(theirs + os.sep)
        or theirs.startswith(mine + os.sep)):
      raise ConfigError(f'{field}={path} overlaps {what} {other}: give a '
                        'folder of its own')


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *,
                 binary: bool = False) -> None:
  """Calls `write(f)` on a temporary sibling of `path`, then renames it.

  The data is flushed to disk before the rename, so after a crash `path`
  holds either its previous content or all of the new one. An error while
  writing (a full disk, say) removes the temporary and leaves `path` as it
  was.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=os.path.basename(path) + '.tmp-')
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path, text: str) -> None:
  atomic_write(path, lambda f: f.write(text))


def write_json(path, obj, **dump_kwargs) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs))


def write_jsonl(path, rows) -> None:
  """Replaces `path` with one JSON object per line."""
  write_text(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))


def save_figure(fig, path, **savefig_kwargs) -> None:
  """A matplotlib Figure saved atomically (the format follows the suffix)."""
  fmt = os.path.splitext(os.fspath(path))[1].lstrip('.') or 'png'
  atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs),
               binary=True)


def read_jsonl(path) -> list[dict]:
  """The JSON objects of a JSONL file, one per line.

  A last line without its newline that does not parse was cut by a kill
  mid-append and is dropped. Any other line that is not a JSON object raises
  ConfigError naming the file and line.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    data = f.read()
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ConfigError(f'{path}: not UTF-8 text ({e})') from None
  lines = text.split('\n')
  rows = []
  for number, line in enumerate(lines, 1):
    last = number == len(lines)  # text after the final newline, if any
    if not line.strip():
      if last:
        continue
      raise ConfigError(f'{path}:{number}: empty line inside a JSONL file')
    try:
      row = json.loads(line)
    except ValueError as e:
      if last:
        continue  # cut short by a kill while appending
      raise ConfigError(f'{path}:{number}: not a JSON line ({e})') from None
    if not isinstance(row, dict):
      raise ConfigError(f'{path}:{number}: expected a JSON object, got '
                        f'{type(row).__name__}')
    rows.append(row)
  return rows
