"""The comparison harness: summary arithmetic, table, plot, a real run."""

import json
import os

import numpy as np
import pytest

from configs_for_tests import finetune_smoke, load_config_file
from logah_jax import inits
from logah_jax.train import compare
from logah_jax.train import compare_report
from logah_jax.train import compared_runs
from logah_jax.train import finetuning
from logah_jax.train import loop
from logah_jax.validation import ConfigError


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
  assert logah['final']['std'] == pytest.approx(np.std([0.7, 0.6], ddof=1))
  assert logah['steps_to_target'] == [10, 20]
  assert logah['median_steps_to_target'] == 15
  assert logah['fraction_of_budget'] == pytest.approx(0.5)
  rand = s['methods_summary']['random']
  # one of two seeds reached it: the median over both is over budget
  assert rand['steps_to_target'] == [30, None] and rand['reached'] == 1
  assert rand['median_steps_to_target'] is None
  assert rand['fraction_of_budget'] is None
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
  assert '| logah | 19.00 ± – | 15.00 ± – |' in md  # one seed: no std


def _reaching(first_steps, budget=100, every=25):
  """One eval row per `every` steps; seed k crosses 0.5 (the target) at
  first_steps[k] (None: never)."""
  return {k: [{'step': t, 'eval_loss': 1.0, 'eval_accuracy':
               0.6 if first is not None and t >= first else 0.4}
              for t in range(0, budget + 1, every)]
          for k, first in enumerate(first_steps)}


@pytest.mark.parametrize('first_steps, median, reached', [
    ([25, None, None], None, 1),   # 2 of 3 never: the median is over budget
    ([25, 50, None], 50.0, 2),     # not the mean over reached seeds (37.5)
    ([None, 25, 75], 75.0, 2),
    ([0, 100, 50], 50.0, 3),
    ([None, None, None], None, 0),
    ([50, None], None, 1),         # even count: (50 + inf) / 2
    ([25, 75], 50.0, 2),
])
def test_steps_to_target_is_the_median_over_all_seeds(first_steps, median,
                                                      reached):
  budget = 100
  random = {0: [{'step': t, 'eval_loss': 1.0, 'eval_accuracy': 0.5 * t / budget}
                for t in range(0, budget + 1, 25)]}  # final 0.5: the target
  costs = {m: {'upfront_flops': 7.0, 'upfront': 'x', 'step_flops': 2.0}
           for m in ('random', 'm')}
  s = compare_report.summarize({'random': random, 'm': _reaching(first_steps)},
                               family='vit', num_steps=budget, costs=costs)
  assert s['target_metric'] == 0.5
  row = s['methods_summary']['m']
  assert row['steps_to_target'] == first_steps
  assert row['reached'] == reached
  assert row['median_steps_to_target'] == median
  assert row['fraction_of_budget'] == (None if median is None
                                       else median / budget)
  assert row['median_finetune_flops_to_target'] == (
      None if median is None else 2.0 * median)
  assert row['median_total_flops_to_target'] == (
      None if median is None else 7.0 + 2.0 * median)
  md = compare_report.markdown(s)
  line = next(l for l in md.splitlines() if l.startswith('| m |'))
  n = len(first_steps)
  if median is None:
    assert f'| not reached ({reached}/{n} reached) | > 1 |' in line
    assert line.endswith('| 7.00e0 (x) | not reached | not reached |')
  else:
    assert f'| {median:.0f} ({reached}/{n} reached) | {median / budget:.2f} |' \
        in line


def test_spreads_are_sample_std_and_undefined_for_one_seed():
  finals = [0.61, 0.67, 0.73, 0.58]
  curves = {'random': {k: [{'step': 0, 'eval_accuracy': 0.1, 'eval_loss': 2.0},
                           {'step': 5, 'eval_accuracy': v, 'eval_loss': 1 - v}]
                       for k, v in enumerate(finals)},
            'one': {0: [{'step': 0, 'eval_accuracy': 0.2, 'eval_loss': 2.0},
                        {'step': 5, 'eval_accuracy': 0.7, 'eval_loss': 0.3}]}}
  s = compare_report.summarize(curves, family='vit', num_steps=5)
  rand = s['methods_summary']['random']
  # the sample std (ddof=1), computed here apart from the module
  want = np.std(np.array(finals), ddof=1)
  assert rand['final']['std'] == pytest.approx(want)
  assert rand['final']['std'] != pytest.approx(np.std(finals))
  assert rand['final_loss']['std'] == pytest.approx(want)
  one = s['methods_summary']['one']
  assert one['final'] == {'mean': pytest.approx(0.7), 'std': None}
  md = compare_report.markdown(s)
  assert f'| random | 10.00% ± 0.00 | 64.75% ± {100 * want:.2f} |' in md
  assert '| one | 20.00% ± – | 70.00% ± – | 0.30 ± – |' in md
  assert 'sample std (ddof=1)' in md


def test_test_column_reads_each_runs_one_test_read():
  tests = {'random': {0: {'split': 'test', 'loss': 1.0, 'accuracy': 0.5},
                      1: {'split': 'test', 'loss': 1.2, 'accuracy': 0.4}},
           'logah': {0: {'split': 'test', 'loss': 0.8, 'accuracy': 0.7},
                     1: {'split': 'test', 'loss': 0.6, 'accuracy': 0.6}},
           'bad': {0: None, 1: None}}
  s = compare_report.summarize(CURVES, family='vit', num_steps=30,
                               tests=tests)
  s.update(target='vit-X', data='fashion_mnist', split='validation',
           seeds=[0, 1])
  assert s['test_split'] == 'test'
  logah = s['methods_summary']['logah']
  assert logah['test'] == {'mean': pytest.approx(0.65),
                           'std': pytest.approx(np.std([0.7, 0.6], ddof=1))}
  assert logah['test_loss']['mean'] == pytest.approx(0.7)
  assert logah['test_seeds'] == 2
  # the validation numbers are untouched by the test reads
  plain = compare_report.summarize(CURVES, family='vit', num_steps=30)
  assert logah['final'] == plain['methods_summary']['logah']['final']
  md = compare_report.markdown(s)
  assert 'on fashion_mnist/validation; test: fashion_mnist/test, 2 seeds' in md
  assert '| test accuracy (mean ± std) | test loss |' in md
  assert '| 65.00% ± 7.07 | 0.70 ± 0.14 | 15 (2/2 reached) | 0.50 |' in md
  assert '| bad |' in md and md.count('| - | - |') == 1
  assert 'test on test, read once after the last step' in md


def test_markdown_and_plot(tmp_path):
  s = compare_report.summarize(CURVES, family='vit', num_steps=30)
  s.update(target='vit-X', data='fashion_mnist', split='validation',
           seeds=[0, 1])
  md = compare_report.markdown(s)
  assert "steps to RandInit's final accuracy (55.00%), median" in md
  assert '| logah | 30.00% ± 0.00 | 65.00% ± 7.07 |' in md
  assert '| 15 (2/2 reached) | 0.50 |' in md
  assert '| random |' in md and 'not reached (1/2 reached) | > 1 |' in md
  assert 'test' not in md.splitlines()[2]  # no test reads: no test column
  path = compare_report.plot(CURVES, s, str(tmp_path / 'c.png'))
  assert os.path.getsize(path) > 10_000



def test_a_table_without_the_baseline_says_why_nothing_is_reached():
  curves = {m: CURVES[m] for m in ('logah', 'bad')}
  md = compare_report.markdown(compare_report.summarize(
      curves, family='vit', num_steps=30))
  assert "No target: random was not compared" in md
  assert 'No target' not in compare_report.markdown(compare_report.summarize(
      CURVES, family='vit', num_steps=30))


def test_a_median_between_two_steps_is_shown_as_is():
  """Two seeds reaching the target at steps 5 and 10: the median is 7.5;
  the table once printed it rounded (half to even) beside the unrounded
  fraction of the budget."""
  slow = _rows([0.1, 0.2, 0.3, 0.5], every=5)  # final 0.5 at step 15
  curves = {'random': {0: slow, 1: slow},
            'fast': {0: _rows([0.1, 0.6, 0.6, 0.6], every=5),
                     1: _rows([0.1, 0.2, 0.6, 0.6], every=5)}}
  s = compare_report.summarize(curves, family='vit', num_steps=15)
  assert s['methods_summary']['fast']['median_steps_to_target'] == 7.5
  assert '| 7.5 (2/2 reached) | 0.50 |' in compare_report.markdown(s)

def test_a_diverged_seed_keeps_its_curve_and_misses_the_final():
  """'bad' seed 1 diverged at step 25 after reaching the target (0.55) at
  step 20; 'logah' seed 0 diverged at step 5, before any evaluation after
  step 0. Finals are over the seeds that finished."""
  curves = {'random': CURVES['random'],
            'logah': {0: CURVES['logah'][0][:1], 1: CURVES['logah'][1]},
            'bad': {0: CURVES['bad'][0],
                    1: _rows([0.1, 0.2, 0.56])}}  # steps 0, 10, 20
  diverged = {'logah': {0: 5}, 'bad': {1: 25}}
  s = compare_report.summarize(curves, family='vit', num_steps=30,
                               diverged=diverged)
  assert s['target_metric'] == pytest.approx(0.55)
  logah, bad = s['methods_summary']['logah'], s['methods_summary']['bad']
  assert logah['diverged'] == [[0, 5]] and logah['finished'] == 1
  assert logah['final'] == {'mean': pytest.approx(0.6), 'std': None}
  assert logah['steps_to_target'] == [None, 20]
  assert logah['median_steps_to_target'] is None  # 1 of 2: over budget
  assert bad['steps_to_target'] == [None, 20] and bad['finished'] == 1
  assert bad['final']['mean'] == pytest.approx(0.3)
  assert s['methods_summary']['random']['diverged'] == []
  md = compare_report.markdown(s)
  assert '| logah | 30.00% ± 0.00 | 60.00% ± – (1/2 finished) |' in md
  assert '| random | 10.00% ± 0.00 | 55.00% ± 7.07 |' in md
  assert ('Diverged (a non-finite training loss stopped the run): logah '
          'seed 0 at step 5; bad seed 1 at step 25.') in md
  assert 'No target' not in md
  # RandInit diverged in one seed: no target, and the table says why
  diverged['random'] = {1: 35}
  curves['random'] = {0: CURVES['random'][0], 1: CURVES['random'][1][:3]}
  md = compare_report.markdown(compare_report.summarize(
      curves, family='vit', num_steps=30, diverged=diverged))
  assert 'No target: random has no final metric for every seed' in md


def test_the_plot_bands_follow_the_seeds_that_did_not_diverge(tmp_path):
  """The first seed diverged: the band still spans the whole budget, over
  the seeds that got there."""
  seeds = {0: _rows([0.1, 0.2]), 1: _rows([0.1, 0.3, 0.5, 0.7]),
           2: _rows([0.2, 0.5, 0.6, 0.9])}
  steps, mean, std = compare_report._band(seeds, 'eval_accuracy')
  np.testing.assert_allclose(steps, [0, 10, 20, 30])
  np.testing.assert_allclose(mean, [15, 40, 55, 80])
  np.testing.assert_allclose(std, np.std([[10, 30, 50, 70],
                                          [20, 50, 60, 90]], 0, ddof=1))
  curves = {'random': seeds, 'logah': CURVES['logah']}
  s = compare_report.summarize(curves, family='vit', num_steps=30,
                               diverged={'random': {0: 12}})
  assert os.path.getsize(compare_report.plot(
      curves, s, str(tmp_path / 'c.png'))) > 10_000


class _BlowUp(inits.InitMethod):
  """RandInit with the final LayerNorm's scale at 1e30: the ViT's head
  starts at zero, so step 0 evaluates normally, but the head's gradient
  overflows and the first step's gradient norm is inf."""
  name = 'blowup'

  def params(self, arch, seed):
    p = dict(inits.make('random')(arch, seed))
    p['ln'] = dict(p['ln'], scale=p['ln']['scale'] * 1e30)
    return p


def test_a_run_that_diverges_is_recorded_and_the_others_go_on(tmp_path):
  ft = finetune_smoke(steps=4)
  methods = {'blowup': _BlowUp(), 'random': inits.make('random')}
  # the same run on its own stops the fine-tuning at step 1
  with pytest.raises(loop.NonFiniteLossError, match='gradient norm inf'):
    finetuning.finetune(ft, str(tmp_path / 'alone'), init=_BlowUp())
  for _ in range(2):  # a rerun diverges again, and again goes on
    runs = compared_runs.finetune_each(methods, [0], ft, str(tmp_path))
    assert runs.diverged == {'blowup': {0: 1}}
    assert [r['step'] for r in runs.curves['blowup'][0]] == [0]
    assert runs.tests['blowup'] == {0: None}
    assert [r['step'] for r in runs.curves['random'][0]] == [0, 2, 4]
    assert runs.tests['random'][0]['split'] == 'test'
  md = compare_report.markdown(compare_report.summarize(
      runs.curves, family='vit', num_steps=4, diverged=runs.diverged,
      tests=runs.tests))
  assert 'blowup seed 0 at step 1' in md and '(0/1 finished)' in md


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
  assert (summary['split'], summary['test_split']) == ('validation', 'test')
  for name in ('compare.json', 'compare.md', 'compare.png'):
    assert os.path.exists(tmp_path / name)
  assert json.load(open(tmp_path / 'compare.json')) == summary
  for m in ('random', 'orthogonal'):
    row = summary['methods_summary'][m]
    assert row['seeds'] == 2 and row['final']['mean'] is not None
    assert row['test_seeds'] == 2 and row['test']['mean'] is not None
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


def test_compared_runs_keep_one_evaluation_grid(tmp_path):
  """A fine-tuning run on its own may change its validation interval when
  it resumes; runs compared with each other may not, since the summary
  reads their curves step by step."""
  ft = finetune_smoke()
  methods = {'random': inits.make('random')}
  compared_runs.finetune_each(methods, [0], ft, str(tmp_path))
  ft.eval.every_steps = 1
  with pytest.raises(ConfigError, match="'eval.every_steps' is 2 there but "
                     '1 now'):
    compared_runs.finetune_each(methods, [0], ft, str(tmp_path))



def test_rerun_with_another_target_fails_before_touching_anything(
    tmp_path, monkeypatch):
  """A finished comparison rerun with a changed target once replaced its
  saved inits (and trained its GHNs) before its first run refused the
  workdir; now the runs' checkpoints are checked first."""
  c = _config('random', seeds=1)
  compared_runs.finetune_each({'random': inits.make('random')}, [0], c.finetune,
                        str(tmp_path), c.compilation_cache)
  before = _tree(tmp_path)
  _no_training(monkeypatch)
  monkeypatch.setattr(compare.init_save, 'save_init', _fails)
  c.finetune.arch = c.finetune.arch.replace('width=32', 'width=64')
  with pytest.raises(ConfigError, match=r"seed0/checkpoints holds checkpoints "
                     r"of another config: key 'arch'"):
    compare.run_compare(c, str(tmp_path))
  assert _tree(tmp_path) == before


def _fails(*args, **kwargs):
  raise AssertionError('wrote before the config was checked')


def _tree(root):
  """{relative path: bytes} of every file under `root`."""
  return {os.path.relpath(os.path.join(d, f), root):
          open(os.path.join(d, f), 'rb').read()
          for d, _, names in os.walk(root) for f in names}

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


def _no_training(monkeypatch):
  """Training anything fails the test: the checks must come first."""
  from logah_jax.train import finetuning, ghn_training, ligo_training  # pylint: disable=g-import-not-at-top

  def trains(*args, **kwargs):
    raise AssertionError('trained before the config was checked')

  for module in (ghn_training, finetuning, ligo_training):
    monkeypatch.setattr(module, 'train', trains)


def _set(config, changes, tmp):
  for key, value in changes.items():
    *sections, field = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[field] = value.format(tmp=tmp) if isinstance(value, str) else value


@pytest.mark.parametrize('change,match', [
    ({'finetune.train.num_steps': 0},
     r'^config\.finetune\.train\.num_steps=0 must be an int >= 1$'),
    ({'ghn_train.train.num_steps': 0},
     r'^config\.ghn_train\.train\.num_steps=0 must be an int >= 1$'),
    ({'finetune.optim.lr': -1.0},
     r'^config\.finetune\.optim\.lr=-1\.0 must be > 0$'),
    ({'finetune.arch': 'vit-xl'},
     r"^config\.finetune\.arch: named architecture name='vit-xl'"),
    ({'finetune.eval.split': 'train'},
     r"^config\.finetune\.eval\.split='train' is also "
     r'config\.finetune\.data\.split'),
    # read by the LiGO run too: still the fine-tuning field
    ({'finetune.data.batch_size': 0},
     r'^config\.finetune\.data\.batch_size=0 must be an int >= 1$'),
    ({'source.finetune.train.num_steps': 0},
     r'^config\.source\.finetune\.train\.num_steps=0 must be an int >= 1$'),
    ({'ligo.num_steps': 0}, r'^config\.ligo\.num_steps=0 must be an int >= 1$'),
    ({'ligo.num_steps': 3, 'ligo.optim.warmup_steps': 3},
     r'^config\.ligo\.optim\.warmup_steps=3 must be an int in '
     r'\[0, num_steps=3\)$'),
    ({'ligo.optim.lr': -1.0}, r'^config\.ligo\.optim\.lr=-1\.0 must be > 0$'),
    ({'ligo.sharing': 'some'}, r"^config\.ligo\.sharing='some' must be one "),
    # meshes and batch splits: once checked only when each run started
    ({'finetune.data.batch_size': 6},
     r'^config\.finetune\.data\.batch_size=6 is not divisible by the 8 '),
    ({'source.finetune.data.batch_size': 6},
     r'^config\.source\.finetune\.data\.batch_size=6 is not divisible '),
    ({'ghn_train.mesh.arch': 3}, r'^config\.ghn_train\.mesh: '),
    ({'finetune.mesh.data': 3}, r'^config\.finetune\.mesh: '),
    # what trains before fine-tuning may not read the splits it is judged on
    ({'ghn_train.data.split': 'train+test'},
     r"^config\.ghn_train\.data\.split='train\+test' reads "
     r"config\.finetune\.eval\.test_split='test', the split"),
    ({'source.finetune.eval.test_split': '',  # its own check passes
      'source.finetune.data.split': 'train[:100]+test'},
     r"^config\.source\.finetune\.data\.split='train\[:100\]\+test' "
     r"reads config\.finetune\.eval\.test_split='test'"),
    # once a NotADirectoryError traceback, after the workdir was made
    ({'ghn_workdir': '{tmp}/a_file/ghn'},
     r'^config\.ghn_workdir=.*/a_file/ghn: .*/a_file is a file, not a dir'),
    # a source deeper than the target: the pair is wrong, named from the target
    ({'source.finetune.arch': 'vit:depth=8,width=64,heads=4,patch=4,'
                              'image_size=28,channels=1,num_classes=10'},
     r'^config\.finetune\.arch \(grown from config\.source\): growth: '
     r'target depth=6 is smaller than the source depth=8'),
], ids=['finetune_num_steps', 'ghn_num_steps', 'finetune_lr', 'finetune_arch',
        'finetune_eval_split', 'finetune_batch', 'source_num_steps',
        'ligo_num_steps', 'ligo_warmup', 'ligo_lr', 'ligo_sharing',
        'finetune_batch_split', 'source_batch_split', 'ghn_mesh',
        'finetune_mesh', 'ghn_reads_test', 'source_reads_test',
        'ghn_workdir_in_a_file',
        'source_deeper_than_target'])
def test_sub_run_errors_name_the_comparisons_fields(monkeypatch, tmp_path,
                                                    change, match):
  """The fine-tuning, GHN, source and LiGO runs are built from sections of
  the comparison's config; their errors name the field there."""
  from logah_jax.validation import ConfigError  # pylint: disable=g-import-not-at-top
  _no_training(monkeypatch)
  c = load_config_file('compare_vits', 'smoke')
  c.methods, c.compilation_cache = 'random,logah,ligo', 'off'
  (tmp_path / 'a_file').write_text('')
  _set(c, change, tmp_path)
  with pytest.raises(ConfigError, match=match):
    compare.run_compare(c, str(tmp_path / 'run'))
  assert os.listdir(tmp_path) == ['a_file']


@pytest.mark.parametrize('methods,change,field', [
    ('random,logah', {'finetune.data.data_dir': '{tmp}/no_data'},
     'finetune'),
    ('random,logah', {'ghn_train.data.data_dir': '{tmp}/no_data'},
     'ghn_train'),
    ('random,net2net', {'source.finetune.data.data_dir': '{tmp}/no_data'},
     'source.finetune'),
], ids=['finetune', 'ghn_train', 'source'])
def test_missing_data_fail_before_any_training(monkeypatch, tmp_path, methods,
                                               change, field):
  """The plan opens every dataset the comparison reads, so missing data
  fail before a GHN, a growth source or an operator is trained."""
  import re  # pylint: disable=g-import-not-at-top
  from logah_jax.validation import InputNotFoundError  # pylint: disable=g-import-not-at-top
  _no_training(monkeypatch)
  (tmp_path / 'no_data').mkdir()
  c = load_config_file('compare_vits', 'smoke')
  c.methods, c.compilation_cache = methods, 'off'
  _set(c, change, tmp_path)
  with pytest.raises(InputNotFoundError,
                     match=rf'^config\.{re.escape(field)}\.data: Fashion-MNIST'
                     rf' not found in {re.escape(str(tmp_path))}/no_data '):
    compare.run_compare(c, str(tmp_path / 'run'))
  assert os.listdir(tmp_path) == ['no_data']
  assert not os.listdir(tmp_path / 'no_data')


def test_sub_config_renames_exactly_the_builders_paths():
  from logah_jax.validation import ConfigError, InputNotFoundError, sub_config  # pylint: disable=g-import-not-at-top
  fields = {'config.optim': 'config.ligo.optim',
            'config.train.num_steps': 'config.ligo.num_steps'}
  with pytest.raises(ConfigError) as e:
    with sub_config('config.finetune', fields, context='config.ligo'):
      raise ConfigError('config.optim.warmup_steps=3 is not below '
                        'config.train.num_steps; config.train.m, '
                        'config.optimizer and checkpoints/config.json stay')
  assert str(e.value) == (
      'config.ligo.optim.warmup_steps=3 is not below config.ligo.num_steps; '
      'config.finetune.train.m, config.finetune.optimizer and '
      'checkpoints/config.json stay')
  with pytest.raises(InputNotFoundError, match='^config.ligo: no data$'):
    with sub_config('config.finetune', fields, context='config.ligo'):
      raise InputNotFoundError('no data')
