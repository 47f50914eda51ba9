"""Atomic writes and strict JSONL reading."""

import json
import os

import pytest

from logah_jax import files
from logah_jax.train import report
from logah_jax.validation import ConfigError


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'holdout.json'
  files.write_json(path, {'v': 1})

  def fail(f):
    f.write('{"v": 2')  # half written, then the disk fills
    raise OSError(28, 'No space left on device')

  with pytest.raises(OSError, match='No space'):
    files.atomic_write(path, fail)
  assert json.loads(path.read_text()) == {'v': 1}
  assert os.listdir(tmp_path) == ['holdout.json']


def test_jsonl_tolerates_only_a_cut_last_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n{"step": 2}\n{"st')
  assert files.read_jsonl(path) == [{'step': 1}, {'step': 2}]
  path.write_text('{"step": 1}\n{"step": 2}\n')
  assert files.read_jsonl(path) == [{'step': 1}, {'step': 2}]


@pytest.mark.parametrize('text, line, what', [
    ('{"step": 1}\n{"st\n{"step": 3}\n', 2, 'not a JSON line'),
    ('{"step": 1}\n\n{"step": 3}\n', 2, 'empty line'),
    ('{"step": 1}\n[1, 2]\n', 2, 'expected a JSON object'),
])
def test_jsonl_rejects_damage_inside_naming_file_and_line(tmp_path, text, line,
                                                          what):
  path = tmp_path / 'eval.jsonl'
  path.write_text(text)
  with pytest.raises(ConfigError, match=f'{path}:{line}: {what}'):
    files.read_jsonl(path)


def test_metrics_log_resume_drops_later_rows_and_a_cut_line(tmp_path):
  path = tmp_path / report.METRICS_FILE
  path.write_text(''.join(json.dumps({'step': s}) + '\n' for s in (1, 2, 3, 4))
                  + '{"step": 5, "lo')
  log = report.MetricsLog(str(tmp_path), resume_step=2)
  assert [r['step'] for r in files.read_jsonl(path)] == [1, 2]
  log.write({'step': 3})
  assert [r['step'] for r in files.read_jsonl(path)] == [1, 2, 3]
  assert path.read_text().endswith('\n')
