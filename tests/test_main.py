"""The entry point and the config files: launch, locked overrides, holdout."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from logah_jax import arch as arch_lib
from logah_jax import checkpoint
from logah_jax import main as main_lib
from logah_jax import models
from logah_jax.train import demo as demo_lib
from logah_jax.train import evaluate
from logah_jax.train import ghn_training
from logah_jax.train import holdout
from logah_jax.train.data_spec import DataSpec
from logah_jax.validation import ConfigError

import configs_for_tests as cft

ROOT = cft.ROOT
CONFIG_VARIANTS = [
    ('default', None), ('default', 'smoke'),
    ('shakespeare_gpts', None), ('shakespeare_gpts', 'bpe'),
    ('shakespeare_gpts', 'smoke'),
    ('paper_vits', None), ('paper_vits', 'dataset=cifar100,ghn=logah-small,m=4'),
    ('paper_vits', 'ghn=ghn3-tiny,m=8'),
    ('paper_gpts', None), ('paper_gpts', 'dataset=wikitext103,ghn=logah-base'),
    ('paper_gpts', 'ghn=logah-large,m=2'),
]


@pytest.mark.parametrize('name,arg', CONFIG_VARIANTS)
def test_every_config_variant_is_valid(name, arg):
  config = cft.load_config_file(name, arg)
  if config.data.batch_size % jax.device_count():
    # the paper's 6 GPT-2 blocks per step split over 1, 2, 3 or 6 devices,
    # not over these 8: refused at once, and the override the config's
    # docstring gives works
    with pytest.raises(ConfigError, match=(
        rf'^config\.data\.batch_size={config.data.batch_size} is not '
        rf'divisible by the {jax.device_count()} devices')):
      ghn_training.build_run(config)
    config.data.batch_size = 8
  run = ghn_training.build_run(config)  # every check a launch makes first
  assert run.num_steps >= 1
  target = holdout.holdout_arch(config)
  largest = max(arch_lib.num_params(a) for a in run.sampler.candidates())
  assert arch_lib.num_params(target) > largest  # held out and larger
  doc = open(os.path.join(ROOT, 'configs', f'{name}.py')).read()
  assert f'--config=configs/{name}.py' in doc  # the docstring's launch line


def test_paper_settings_follow_the_spec():
  c = cft.load_config_file('paper_vits', 'dataset=cifar100,m=4')
  assert (c.optim.lr, c.optim.weight_decay, c.optim.clip_norm) == (3e-4, 1e-2,
                                                                  5.0)
  assert c.data.batch_size == 64 and c.data.augment and c.train.m == 4
  assert c.ghn.num_classes == 100 and c.train.gamma == 3e-5
  assert c.train.num_steps == 300 * 781
  g = cft.load_config_file('paper_gpts', 'dataset=wikitext2')
  assert (g.optim.lr, g.train.m, g.data.batch_size) == (1e-4, 2, 6)
  assert g.data.block_size == 1024 and g.space.vocab_size == 50257
  with pytest.raises(ValueError, match='variant key'):
    cft.load_config_file('paper_vits', 'datset=cifar10')


def _main(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'logah_jax.main', *args],
                        capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=120)


def test_mistyped_override_is_an_error(tmp_path):
  out = _main('--config=configs/default.py:smoke', '--config.ghn.rnak=3',
              f'--workdir={tmp_path}')
  assert out.returncode != 0
  assert 'rnak' in out.stderr
  assert not os.listdir(tmp_path)


def test_bad_value_override_is_one_line_error(tmp_path):
  out = _main('--config=configs/default.py:smoke', '--config.train.m=0',
              f'--workdir={tmp_path}')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith('error: config.train.m=0')
  assert 'Traceback' not in out.stderr


@pytest.mark.parametrize('key,value,match', [
    ('arch.heads', 5, 'heads'), ('arch.width', 0, 'width'),
    ('max_batches', -1, r'config\.holdout\.max_batches=-1'),
    ('batch_size', 0, r'config\.holdout\.batch_size=0'),
    ('seed', -2, r'config\.holdout\.seed=-2')])
def test_bad_holdout_fails_before_training(tmp_path, key, value, match):
  config = cft.load_config_file('default', 'smoke')
  config.compilation_cache = 'off'
  section, _, leaf = key.rpartition('.')
  (config.holdout[section] if section else config.holdout)[leaf] = value
  with pytest.raises(ValueError, match=match):
    main_lib.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))
  config = cft.load_config_file('default', 'smoke')
  config.compilation_cache = 'off'
  config.holdout.split = 'valid'
  with pytest.raises(ValueError, match='holdout.split'):
    main_lib.run(config, str(tmp_path))
  config.holdout.split = 'train'  # the prediction scored on training images
  config.demo.enabled = False  # (the demo refuses it as its test split too)
  with pytest.raises(ValueError, match=r"holdout\.split='train' is also "
                     r'config\.data\.split'):
    main_lib.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


@pytest.mark.parametrize('demo', [False, True])
def test_missing_holdout_or_demo_data_fails_before_training(tmp_path, demo):
  """The held-out split (test) and the demo's curves (validation) are read
  after GHN training, but opened before it."""
  missing = 'wiki.valid.raw' if demo else 'wiki.test.raw'
  folder = tmp_path / 'data' / 'wikitext-2-raw'
  folder.mkdir(parents=True)
  for name in ('wiki.train.raw', 'wiki.valid.raw', 'wiki.test.raw'):
    if name != missing:
      (folder / name).write_text(' = A = \n Some text here . \n' * 400)
  config = cft.load_config_file('shakespeare_gpts', 'smoke')
  config.compilation_cache = 'off'
  config.data.update(name='wikitext2', data_dir=str(tmp_path / 'data'))
  config.holdout.split = 'test'
  config.demo.enabled = demo
  with pytest.raises(FileNotFoundError, match=missing):
    main_lib.run(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_main_job_trains_predicts_scores_and_saves(tmp_path):
  config = cft.load_config_file('default', 'smoke')
  config.compilation_cache = 'off'
  config.holdout.batch_size = 200
  workdir = str(tmp_path)
  result = main_lib.run(config, workdir)
  h = result['holdout']
  assert h['num_params'] > h['largest_training_params']
  for row in h['results'].values():
    assert 0.0 <= row['accuracy'] <= 1.0 and row['examples'] == 200
  assert json.load(open(os.path.join(workdir, 'holdout.json'))) == h
  target = holdout.holdout_arch(config)
  abstract = models.abstract_params(target)
  restored = checkpoint.restore_params(os.path.join(workdir,
                                                    'predicted_init'),
                                       abstract_params=abstract)
  expected = _predict_with_loaded_ghn(workdir, target)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  meta = checkpoint.read_metadata(os.path.join(workdir, 'predicted_init'))
  assert meta['arch'] == arch_lib.to_dict(target)
  assert meta['generator']['step'] == 6 and meta['code_version']
  # the demo: both inits fine-tuned on the same budget, table and plot
  demo = result['demo']
  assert demo['methods'] == ['LoGAH init', 'random init']
  assert demo['num_steps'] == 2 and demo['target'] == target.name
  for row in demo['methods_summary'].values():
    assert row['seeds'] == 1 and 0 <= row['final']['mean'] <= 1
    assert row['test_seeds'] == 1 and 0 <= row['test']['mean'] <= 1
  # curves on validation, the held-out (test) split read once at the end
  assert (demo['split'], demo['test_split']) == ('validation', 'test')
  # step 0 of the fine-tuning is the init itself, on validation
  logah0 = demo['methods_summary']['LoGAH init']['step0']['mean']
  val = evaluate.evaluate(target, restored, DataSpec.from_config(
      config.data).source('validation'), batch_size=200, max_batches=1)
  assert logah0 == pytest.approx(val['accuracy'], abs=1e-6)
  for name in ('compare.md', 'compare.json', 'compare.png'):
    assert os.path.exists(os.path.join(workdir, 'demo', name))
  # the same command again re-scores: every check passes on its own runs
  again = main_lib.run(config, workdir)
  assert again['demo']['methods_summary'] == demo['methods_summary']


def test_demo_needs_the_holdout(tmp_path):
  config = cft.load_config_file('default', 'smoke')
  config.holdout.enabled = False
  with pytest.raises(ValueError, match='config.demo.enabled needs'):
    main_lib.run(config, str(tmp_path))
  config = cft.load_config_file('default', 'smoke')
  config.compilation_cache = 'off'
  config.demo.lr = -1.0
  with pytest.raises(ValueError, match=r'config\.demo: .*lr=-1\.0'):
    main_lib.run(config, str(tmp_path))
  for split, train in (('train', 'train'), ('dev', 'train'),
                       ('train', 'train[:1000]')):  # never the training data
    config = cft.load_config_file('default', 'smoke')
    config.compilation_cache = 'off'
    config.data.split, config.demo.eval_split = train, split
    with pytest.raises(ValueError, match=f"demo.eval_split='{split}'"):
      main_lib.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))
  # curves on validation, the held-out split read once after the last step
  ft = demo_lib.demo_config(cft.load_config_file('default', 'smoke'))
  assert (ft.data.split, ft.eval.split, ft.eval.test_split) == (
      'train', 'validation', 'test')


def _predict_with_loaded_ghn(workdir, target):
  from logah_jax import ghn  # pylint: disable=g-import-not-at-top
  return ghn.load(workdir).predict(target)


@pytest.mark.parametrize('key,value,match', [
    ('mlp_dim', 128, r'^config\.holdout\.arch: mlp_dim=128: a GPT-2 block'),
    ('patch', 3, r'^config\.holdout\.arch: patch=3: a GPT-2 has no patches')])
def test_gpt_holdout_refuses_vit_only_fields(tmp_path, key, value, match):
  """Once ignored: the held-out GPT-2 was built without them."""
  config = cft.load_config_file('shakespeare_gpts', 'smoke')
  config.compilation_cache = 'off'
  config.holdout.enabled = True
  config.holdout.arch[key] = value
  with pytest.raises(ValueError, match=match):
    main_lib.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_a_demo_of_another_target_is_refused_before_training(tmp_path):
  """A rerun with another held-out target once replaced holdout.json and the
  predicted init, and only then found the demo's runs of the old target."""
  config = cft.load_config_file('default', 'smoke')
  config.compilation_cache = 'off'
  old = demo_lib.demo_config(config)
  old.arch = old.arch.replace('width=', 'width=1')  # another target
  for label, method in demo_lib.demo_methods(config, str(tmp_path)).items():
    run = tmp_path / 'demo' / 'runs' / label / f'seed{config.seed}'
    (run / 'checkpoints' / '3').mkdir(parents=True)  # a finished step
    stored = demo_lib.compared_runs.seed_config(old, method, config.seed,
                                                config.compilation_cache)
    (run / 'checkpoints' / 'config.json').write_text(
        json.dumps(stored.to_dict()))
  with pytest.raises(ValueError, match=r"seed0/checkpoints holds checkpoints "
                     r"of another config: key 'arch'"):
    main_lib.run(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['demo']
