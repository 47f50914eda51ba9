"""The comparison harness: summary arithmetic, table, plot, a real run."""

import json
import os

import pytest

from configs_for_tests import finetune_smoke, load_config_file
from logah_jax.train import compare
from logah_jax.train import compare_report


def _rows(values, every=10):
  return [{'step': i * every, 'eval_accuracy': v, 'eval_loss': 1 - v}
          for i, v in enumerate(values)]


CURVES = {
    'random': {0: _rows([0.1, 0.3, 0.5, 0.6]), 1: _rows([0.1, 0.2, 0.4, 0.5])},
    'logah': {0: _rows([0.3, 0.56, 0.6, 0.7]), 1: _rows([0.3, 0.5, 0.56, 0.6])},
    'bad': {0: _rows([0.1, 0.1, 0.2, 0.3]), 1: _rows([0.1, 0.2, 0.3, 0.56])},
}


def test_summary_steps_to_randinit_final():
  s = compare_report.summarize(CURVES, family='vit', num_steps=30)
  assert s['target_metric'] == pytest.approx(0.55)
  logah = s['methods_summary']['logah']
  assert logah['step0'] == {'mean': pytest.approx(0.3), 'std': 0.0}
  assert logah['final']['mean'] == pytest.approx(0.65)
  assert logah['final']['std'] == pytest.approx(0.05)
  assert logah['steps_to_target'] == [10, 20]
  assert logah['mean_steps_to_target'] == 15
  assert logah['fraction_of_budget'] == pytest.approx(0.5)
  rand = s['methods_summary']['random']
  assert rand['steps_to_target'] == [30, None] and rand['reached'] == 1
  assert s['methods_summary']['bad']['steps_to_target'] == [None, 30]


def test_summary_lower_is_better_for_perplexity():
  curves = {m: {0: [{'step': 0, 'eval_perplexity': a, 'eval_loss': 1.0},
                    {'step': 5, 'eval_perplexity': b, 'eval_loss': 1.0}]}
            for m, (a, b) in {'random': (250.0, 20.0),
                              'logah': (19.0, 15.0)}.items()}
  s = compare_report.summarize(curves, family='gpt2', num_steps=5)
  assert s['higher_is_better'] is False and s['target_metric'] == 20.0
  assert s['methods_summary']['logah']['steps_to_target'] == [0]
  md = compare_report.markdown(s)
  assert '| logah | 19.00 ± 0.00 | 15.00 ± 0.00 |' in md


def test_markdown_and_plot(tmp_path):
  s = compare_report.summarize(CURVES, family='vit', num_steps=30)
  s.update(target='vit-X', data='fashion_mnist', split='test', seeds=[0, 1])
  md = compare_report.markdown(s)
  assert "steps to RandInit's final accuracy (55.00%)" in md
  assert '| logah | 30.00% ± 0.00 | 65.00% ± 5.00 |' in md
  assert '| 15 (2/2 seeds) | 0.50 |' in md
  assert '| random |' in md and '30 (1/2 seeds)' in md
  path = compare_report.plot(CURVES, s, str(tmp_path / 'c.png'))
  assert os.path.getsize(path) > 10_000


def _config(methods='random,orthogonal', seeds=2):
  c = load_config_file('compare_vits', 'smoke')
  c.methods, c.seeds = methods, seeds
  ft = finetune_smoke(steps=4)
  ft.eval.every_steps = 2
  c.finetune = ft
  c.compilation_cache = 'off'
  return c


@pytest.mark.slow  # opt-in: keeps the default run under 15 minutes
def test_run_compare_writes_tables_and_resumes(tmp_path):
  c = _config()
  summary = compare.run_compare(c, str(tmp_path))
  assert summary['methods'] == ['random', 'orthogonal']
  assert summary['seeds'] == [0, 1]
  for name in ('compare.json', 'compare.md', 'compare.png'):
    assert os.path.exists(tmp_path / name)
  assert json.load(open(tmp_path / 'compare.json')) == summary
  for m in ('random', 'orthogonal'):
    row = summary['methods_summary'][m]
    assert row['seeds'] == 2 and row['final']['mean'] is not None
    for seed in (0, 1):
      evals = tmp_path / 'runs' / m / f'seed{seed}' / 'eval.jsonl'
      assert [json.loads(l)['step'] for l in open(evals)] == [0, 2, 4]
  # seeds draw different random inits and data orders (the ViT head starts
  # at zero, so they differ from the first update on)
  second = [json.loads(open(tmp_path / 'runs' / 'random' / f'seed{s}' /
                            'eval.jsonl').readlines()[1])['eval_loss']
            for s in (0, 1)]
  assert second[0] != second[1]
  # a second call finds every run finished and reproduces the summary
  again = compare.run_compare(c, str(tmp_path))
  assert again['methods_summary'] == summary['methods_summary']


def test_bad_comparison_fails_before_training(tmp_path):
  for methods, match in (('random,xavier', "'xavier' is not one of"),
                         ('random,random', 'repeats'), ('', 'empty')):
    with pytest.raises(ValueError, match=match):
      compare.run_compare(_config(methods), str(tmp_path))
  with pytest.raises(ValueError, match='config.seeds'):
    compare.run_compare(_config(seeds=0), str(tmp_path))
  c = _config('random,logah')
  c.ghn_train = load_config_file('shakespeare_gpts', 'smoke')
  with pytest.raises(ValueError, match='trains gpt2 GHNs but the target'):
    compare.run_compare(c, str(tmp_path))
  assert not os.path.exists(tmp_path / 'runs')
