"""Fine-tuning from any init: steps, evaluation, resume, faults, sharding."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs_for_tests import finetune_smoke, load_config_file
from logah_jax import arch as arch_lib
from logah_jax import compiles
from logah_jax import files
from logah_jax import data as data_lib
from logah_jax import inits
from logah_jax import parallel
from logah_jax import models
from logah_jax.train import evaluate
from logah_jax.train import finetune_step
from logah_jax.train import finetuning
from logah_jax.train import optim
from logah_jax.train.data_spec import DataSpec
from logah_jax.train.loop import NonFiniteLossError
from logah_jax.validation import ConfigError


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f]


def test_evaluates_init_and_intervals_and_saves(tmp_path, monkeypatch):
  c = finetune_smoke()
  assert (c.data.split, c.eval.split, c.eval.test_split) == (
      'train', 'validation', 'test')
  result = finetuning.finetune(c, str(tmp_path))
  assert [r['step'] for r in result.evals] == [0, 2, 4, 6]
  arch = arch_lib.parse(c.arch)
  random0 = inits.make('random')(arch, c.seed)
  # step 0 is the init itself, evaluated on validation before any update
  spec = DataSpec.from_config(c.data)
  want = evaluate.evaluate(arch, random0, spec.source('validation'),
                           batch_size=50, max_batches=1)
  assert result.evals[0]['eval_loss'] == pytest.approx(want['loss'], rel=1e-6)
  assert 0 <= result.evals[-1]['eval_accuracy'] <= 1
  assert result.step == 6 and len(_losses(tmp_path)) == 3
  assert os.path.exists(tmp_path / 'training_curves.png')
  assert sorted(os.listdir(tmp_path / 'checkpoints'))[:2] == ['4', '6']
  # the test split: read once, after the last step, with the final params
  test = evaluate.evaluate(arch, result.params, spec.source('test'),
                           batch_size=50, max_batches=1)
  assert result.test['split'] == 'test' and result.test['step'] == 6
  assert result.test['loss'] == pytest.approx(test['loss'], rel=1e-6)
  assert result.test['accuracy'] == pytest.approx(test['accuracy'])
  assert finetuning.read_test(str(tmp_path)) == result.test
  assert not any('test' in str(r) for r in result.evals)  # not a curve
  # a completed run reads it back: no evaluation at all this time
  def no_eval(*args, **kwargs):
    raise AssertionError('a completed run evaluated again')
  monkeypatch.setattr(finetuning.eval_lib, 'evaluate', no_eval)
  again = finetuning.finetune(c, str(tmp_path))
  assert again.test == result.test and again.evals == result.evals
  c.eval.test_split = ''  # resumable: it changes only the read after the end
  assert finetuning.finetune(c, str(tmp_path)).test is None


def test_resume_is_bit_identical_and_steady_state_does_not_compile(tmp_path):
  c = finetune_smoke()
  full = finetuning.finetune(c, str(tmp_path / 'full'))
  part = str(tmp_path / 'part')
  finetuning.finetune(c, part, stop_after_steps=4)
  assert finetuning.read_test(part) is None  # only a finished run reads it
  stale = {'split': 'test', 'step': 6, 'max_batches': 1, 'loss': -1.0}
  files.write_json(os.path.join(part, finetuning.TEST_FILE), stale)
  # resumes at 4 and drops the stale test; a new validation interval
  # changes the curve's points, not the training
  c.eval.every_steps = 1
  # stops at 5, between two metrics rows (every 2) and checkpoints (every 3)
  finetuning.finetune(c, part, stop_after_steps=1)
  resumed = finetuning.finetune(c, part)
  assert resumed.test == full.test and resumed.test['loss'] > 0
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r['step'] for r in resumed.evals] == [0, 2, 4, 5, 6]
  c.eval.batch_size = 25  # with max_batches, other examples: refused
  with pytest.raises(ConfigError, match="'eval.batch_size'"):
    finetuning.finetune(c, part)
  assert _losses(part) == _losses(tmp_path / 'full')
  arch = arch_lib.parse(c.arch)
  tx, _ = optim.make_optimizer(c.optim, 10)
  traces = compiles.trace_counts().get(finetune_step.TRACE_NAME, 0)
  step = finetune_step.FinetuneStep(arch, tx,
                                    parallel.make_mesh({'data': -1}))
  state = step.init_state(inits.make('random')(arch, 0))
  loader = data_lib.Loader(DataSpec.from_config(c.data).source(), 8, seed=0)
  state, _ = step(state, next(loader))
  snap = compiles.snapshot()
  for _ in range(4):
    state, metrics = step(state, next(loader))
  jax.block_until_ready(metrics)
  assert compiles.trace_counts()[finetune_step.TRACE_NAME] - traces == 1
  assert (compiles.snapshot() - snap).count == 0


def test_bad_config_fails_before_any_work(tmp_path):
  cases = {
      'arch': ('vit:depth=1,width=32', 'config.arch'),
      'eval.split': ('dev', 'config.eval.split'),
      'data.split': ('trian', 'config.data.split'),
      'data.batch_size': (0, 'config.data.batch_size'),
      'eval.test_split': ('dev', 'config.eval.test_split'),
      'eval.test_max_batches': (-1, 'config.eval.test_max_batches'),
      'train.num_steps': (0, 'config.train.num_steps'),
      'init.method': ('magic', 'config.init'),
      # once ignored: the run started from random init
      'init.ghn_workdir': ('/some/ghn', 'config.init.ghn_workdir / ghn_step '
                           "are set but config.init.method='random'"),
      'init.ghn_step': (-7, 'config.init.ghn_step=-7 must be -1'),
      'param_sharding': ('zero3', 'config.param_sharding'),
  }
  for key, (value, field) in cases.items():
    c = finetune_smoke()
    section, _, leaf = key.rpartition('.')
    (c[section] if section else c)[leaf] = value
    with pytest.raises(ValueError, match=field.replace('.', r'\.')):
      finetuning.finetune(c, str(tmp_path / key))
    assert not os.path.exists(tmp_path / key / 'checkpoints')
  for split, field in (('validation', 'config.eval.split'),
                       ('train', 'config.data.split')):
    c = finetune_smoke()
    c.eval.test_split = split  # the test split must be neither
    with pytest.raises(ValueError, match=f"test_split='{split}' is also "
                       f"{field.replace('.', '[.]')}"):
      finetuning.finetune(c, str(tmp_path / split))
    assert not os.path.exists(tmp_path / split)
  for train_split in ('train', 'train[:40]', 'test[:8]+train[8:]'):
    c = finetune_smoke()
    c.data.split = train_split
    c.eval.split = 'train'  # curves on the training data
    with pytest.raises(ValueError, match=r"eval\.split='train' is also "
                       r'config\.data\.split'):
      finetuning.finetune(c, str(tmp_path / 'curves'))
  c = finetune_smoke()
  c.data.split = 'train[:40]'
  c.eval.test_split = 'train'  # the final number on the training data
  with pytest.raises(ValueError, match=r"test_split='train' is also "
                     r'config\.data\.split'):
    finetuning.finetune(c, str(tmp_path / 'final'))
  assert not os.path.exists(tmp_path / 'curves')
  assert not os.path.exists(tmp_path / 'final')
  c = finetune_smoke()
  c.data.batch_size = 6  # the 8 fake devices split the batch
  with pytest.raises(ValueError, match='batch_size=6 is not divisible by the 8'):
    finetuning.finetune(c, str(tmp_path / 'rows'))
  c = finetune_smoke(arch='vit:depth=1,width=32,heads=4,patch=8,image_size=32,'
                     'channels=1,num_classes=10')
  with pytest.raises(ValueError, match='image_size=32 but fashion_mnist'):
    finetuning.finetune(c, str(tmp_path / 'size'))
  c = finetune_smoke()
  c.data.split = 'train[5%:1%]'  # a name check passes it; tfds refuses it
  with pytest.raises(ValueError, match=r"^config\.data\.split: split "
                     r"'train\[5%:1%\]' of fashion_mnist cannot be read"):
    finetuning.finetune(c, str(tmp_path / 'slice'))
  assert not os.path.exists(tmp_path / 'slice')
  section = ml_collections.ConfigDict(dict(finetune_smoke().data.to_dict(),
                                            augment='false'))  # truthy
  with pytest.raises(ValueError, match=r"^config\.data\.augment='false' must "
                     'be true or false$'):
    DataSpec.from_config(section)
  c = load_config_file('finetune', 'text,smoke')
  c.compilation_cache = 'off'
  c.data.augment = True  # once refused only by the loader, naming no field
  with pytest.raises(ValueError, match=r'^config\.data\.augment=True applies '
                     'to image datasets; shakespeare is text$'):
    finetuning.finetune(c, str(tmp_path / 'text'))
  assert not os.path.exists(tmp_path / 'text')


def test_imagenet_is_read_at_the_targets_image_size():
  """ImageNet images are cropped and resized, so any target side is
  accepted; the run must then read them at that side, not at 224."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  c = finetune_smoke(arch='vit:depth=1,width=32,heads=4,patch=8,'
                     'image_size=32,channels=3,num_classes=1000')
  c.data.name, c.eval.test_split = 'imagenet2012', ''
  run = finetuning.build_run(c)
  with tfds.testing.mock_data(num_examples=16):
    assert next(run.data.loader(0))['image'].shape == (8, 32, 32, 3)
    assert run.data.source(run.eval.split).info.image_shape == (32, 32, 3)


def test_missing_test_data_fails_before_the_first_step(tmp_path):
  """The test split is read once, after the last step, but opened first."""
  folder = tmp_path / 'wikitext-2-raw'
  folder.mkdir()
  for name in ('wiki.train.raw', 'wiki.valid.raw'):  # no wiki.test.raw
    (folder / name).write_text(' = A = \n Some text here . \n' * 200)
  c = finetune_smoke(arch='gpt2:depth=1,width=32,heads=4,vocab_size=256,'
                     'n_positions=64,tie_embeddings=false')
  c.data.update(name='wikitext2', tokenizer='bytes', block_size=32,
                data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=(
      r'wiki\.test\.raw not found\. .* put it there, or set '
      r'config\.data\.data_dir to a directory whose wikitext-2-raw/ holds')):
    finetuning.finetune(c, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


class _NaNInit(inits.InitMethod):
  name = 'nan'

  def params(self, arch, seed):
    p = inits.make('random')(arch, seed)
    return jax.tree.map(lambda x: x * np.nan, p)


def test_non_finite_loss_stops_with_checkpoint_intact(tmp_path):
  c = finetune_smoke()
  with pytest.raises(NonFiniteLossError, match='fine-tuning step 1: loss nan'):
    finetuning.finetune(c, str(tmp_path), init=_NaNInit())
  assert not [d for d in os.listdir(tmp_path / 'checkpoints')
              if d.isdigit()]


def test_one_device_and_eight_with_fsdp_agree():
  """Two SGD steps on 1 device and on 8 (batch split, params FSDP-split)."""
  c = finetune_smoke()
  c.optim.name = 'sgd'
  arch = arch_lib.parse(c.arch)
  tx, _ = optim.make_optimizer(c.optim, 10)
  params = inits.make('random')(arch, 0)
  rng = np.random.RandomState(0)
  batches = [{'image': rng.rand(8, 28, 28, 1).astype(np.float32),
              'label': rng.randint(0, 10, 8).astype(np.int32)}
             for _ in range(2)]
  out = {}
  for rule, n_dev in (('replicate', 1), ('fsdp', 8)):
    mesh = parallel.make_mesh({'data': n_dev}, devices=jax.devices()[:n_dev])
    step = finetune_step.FinetuneStep(arch, tx, mesh, param_rule=rule,
                                      fsdp_min_mb=0)
    state = step.init_state(params)
    for batch in batches:
      state, metrics = step(state, batch)
    out[rule] = (state, metrics)
  kernel = out['fsdp'][0].params['encoder_layer_0']['mlp']['fc1']['kernel']
  assert kernel.sharding.spec != out['replicate'][0].params[
      'encoder_layer_0']['mlp']['fc1']['kernel'].sharding.spec
  assert len({str(s.index) for s in kernel.addressable_shards}) == 8
  np.testing.assert_allclose(float(out['fsdp'][1]['loss']),
                             float(out['replicate'][1]['loss']), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(out['fsdp'][0].params),
                  jax.tree.leaves(out['replicate'][0].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_step_loss_is_numpy_cross_entropy_with_label_smoothing(smoothing):
  """The step's loss (before its update) against NumPy: targets
  (1 - s) one-hot + s / K, over the model's logits on the batch."""
  arch = arch_lib.parse('vit:depth=1,width=32,heads=4,patch=7,'
                        'image_size=28,channels=1,num_classes=10')
  params = jax.tree.map(  # far from init, so the logits spread
      lambda p: p + np.random.default_rng(1).normal(0, 0.3, p.shape).astype(
          np.float32), inits.make('random')(arch, 0))
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((8, 28, 28, 1), np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  tx, _ = optim.make_optimizer(finetune_smoke().optim, 10)
  step = finetune_step.FinetuneStep(
      arch, tx, parallel.make_mesh({'data': 1}, devices=jax.devices()[:1]),
      label_smoothing=smoothing)
  _, metrics = step(step.init_state(params), batch)
  logits = np.asarray(models.build(arch).apply({'params': params},
                                               batch['image']), np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  targets = (1 - smoothing) * np.eye(10)[batch['label']] + smoothing / 10
  want = -(targets * log_probs).sum(-1).mean()
  np.testing.assert_allclose(float(metrics['loss']), want, rtol=1e-5)
