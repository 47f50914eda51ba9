"""Filling targets wider than every training architecture (ghn fills)."""

import dataclasses

import jax
import numpy as np
import pytest

from logah_jax import arch, ghn, models
from logah_jax.train import extrapolation

# A small untrained GHN said to have trained up to width 32: whether the
# fills keep a function does not depend on what the GHN learnt.
CFG = ghn.GHNConfig(hid=32, layers=2, heads=4, rank=8,
                    max_shape=(128, 128, 16, 16), max_ck=8192,
                    trained_width=32)
P, W = 32, 64  # trained width and target width, head size 16 in both


def _targets(family):
  if family == 'vit':
    make = lambda w: arch.ViTConfig(depth=2, width=w, heads=w // 16,
                                    mlp_dim=4 * w, patch=7, image_size=28,
                                    channels=1, num_classes=10)
  else:
    make = lambda w: arch.GPT2Config(depth=2, width=w, heads=w // 16,
                                     vocab_size=256, n_positions=32,
                                     tie_embeddings=False)
  return make(W), make(P)


def _narrow(wide_params, narrow_abstract):
  """The trained-width params inside a widened tree, written with NumPy: on
  each widened axis the first part of each fused chunk; kernels (input on
  Flax axis -2) times how often their input was repeated."""
  def cut(path, wide, narrow):
    x = np.asarray(wide)
    names = [getattr(k, 'key', None) for k in path]
    for axis, (t, p) in enumerate(zip(x.shape, narrow.shape)):
      if t == p:
        continue
      chunks = t // W if t % W == 0 and p % P == 0 and t // W == p // P else 1
      x = np.moveaxis(x, axis, 0)
      x = x.reshape(chunks, t // chunks, *x.shape[1:])[:, :p // chunks]
      x = np.moveaxis(x.reshape(p, *x.shape[2:]), 0, axis)
      if names[-1] == 'kernel' and axis == x.ndim - 2:
        x = x * (t / p)
    return x
  return jax.tree_util.tree_map_with_path(cut, wide_params, narrow_abstract)


def _outputs(target, params):
  model = models.build(target)
  if target.family == 'vit':
    x = jax.random.normal(jax.random.key(3), (2, 28, 28, 1))
  else:
    x = jax.random.randint(jax.random.key(3), (2, 16), 0, 256)
  return np.asarray(model.apply({'params': params}, x))


# GHN-3's full-rank decoder writes blocks of at most hid x hid (16 here),
# tiled up to the trained width before the fill widens them.
CFG3 = dataclasses.replace(CFG, decoder='fullrank', rank=0, hid=16,
                           max_shape=(16, 16, 16, 16))


@pytest.mark.parametrize('family,cfg', [
    # the low-rank ViT case (~20 s) is opt-in; the GPT-2 one runs by default,
    # as the only case where 'tile' and 'widen' differ (GHN-3's 16-wide
    # blocks tile q, k and v alike)
    pytest.param('vit', CFG, marks=pytest.mark.slow), ('gpt2', CFG),
    ('vit', CFG3)], ids=['vit', 'gpt2', 'vit-fullrank'])
def test_widen_without_noise_computes_the_trained_width_model(family, cfg):
  wide, narrow = _targets(family)
  params = ghn.init(cfg, family, seed=0)
  pred = ghn.predict(dataclasses.replace(cfg, fill='widen', fill_noise=0.0),
                     params, wide)
  small = _narrow(pred, models.abstract_params(narrow))
  np.testing.assert_allclose(_outputs(wide, pred), _outputs(narrow, small),
                             rtol=2e-4, atol=2e-5)
  if cfg.decoder == 'fullrank':
    return  # 16-wide blocks tile q, k and v alike: 'tile' is 'widen' here
  # Plain tiling repeats q, k, v as one block: not the same function.
  tiled = ghn.predict(dataclasses.replace(cfg, fill='tile'), params, wide)
  small = _narrow(tiled, models.abstract_params(narrow))
  assert not np.allclose(_outputs(wide, tiled), _outputs(narrow, small),
                         rtol=1e-2)


def test_widen_normalises_for_the_trained_width_and_repeated_inputs():
  # fc1, torch [4C, C]: the published rule scales by sqrt(2 / fan-in); at
  # the trained width the fan-in is P, and the input is repeated W / P times.
  wide, _ = _targets('vit')
  params = ghn.init(CFG, 'vit', seed=0)
  cfg = dataclasses.replace(CFG, fill='widen', fill_noise=0.0)
  norm = ghn.predict(cfg, params, wide)['encoder_layer_1']['mlp']['fc1']
  raw = ghn.predict(dataclasses.replace(cfg, normalize=False), params,
                    wide)['encoder_layer_1']['mlp']['fc1']
  np.testing.assert_allclose(
      np.asarray(norm['kernel']),
      np.asarray(raw['kernel']) * np.sqrt(2 / P) * (P / W), rtol=1e-5,
      atol=1e-7)


@pytest.mark.slow  # opt-in: keeps the default run under 15 minutes
def test_fills_change_only_targets_wider_than_trained():
  params = ghn.init(CFG, 'vit', seed=0)
  wide, narrow = _targets('vit')
  base = ghn.predict(dataclasses.replace(CFG, fill='decoder'), params,
                     narrow)
  for fill in ('tile', 'widen'):
    got = ghn.predict(dataclasses.replace(CFG, fill=fill), params, narrow)
    jax.tree.map(np.testing.assert_array_equal, got, base)
  # A GHN of unknown trained width decodes every row, as 'decoder' does.
  untrained = dataclasses.replace(CFG, trained_width=0, fill='widen')
  jax.tree.map(np.testing.assert_array_equal,
               ghn.predict(untrained, params, wide),
               ghn.predict(dataclasses.replace(CFG, fill='decoder'), params,
                           wide))


@pytest.mark.slow  # opt-in: keeps the default run under 15 minutes
def test_widen_noise_touches_only_the_repeats():
  params = ghn.init(CFG, 'vit', seed=0)
  wide, _ = _targets('vit')
  quiet = ghn.predict(dataclasses.replace(CFG, fill='widen', fill_noise=0.0),
                      params, wide)
  noisy = ghn.predict(dataclasses.replace(CFG, fill='widen', fill_noise=0.1),
                      params, wide)
  a = np.asarray(quiet['encoder_layer_0']['mlp']['fc2']['kernel'])  # [4C, C]
  b = np.asarray(noisy['encoder_layer_0']['mlp']['fc2']['kernel'])
  # Flax [in = 4 chunks of 64, out = 64]: decoded entries are rows j < 32 of
  # each chunk and columns < 32; everything else is a repeat.
  decoded = np.zeros_like(a, bool)
  decoded[(np.arange(4 * W) % W < P)[:, None] & (np.arange(W) < P)[None]] = True
  np.testing.assert_array_equal(a[decoded], b[decoded])
  diff = (b - a)[~decoded]
  assert np.all(diff != 0)
  np.testing.assert_allclose(diff.std(), 0.1 * b.std(), rtol=0.15)
  # Deterministic: the same prediction twice.
  again = ghn.predict(dataclasses.replace(CFG, fill='widen', fill_noise=0.1),
                      params, wide)
  np.testing.assert_array_equal(
      b, again['encoder_layer_0']['mlp']['fc2']['kernel'])


def test_trained_width_is_the_widest_pool_architecture():
  run_config = {'space': {'name': 'vits-cpu', 'heads': 'vit'},
                'train': {'pool_size': 3, 'arch_seed': 5}}
  want = max(a.width for a in arch.sample('vits-cpu', 3, 5))
  assert ghn.trained_width(run_config) == want
  run_config['train']['pool_size'] = 0
  assert ghn.trained_width(run_config) == 96  # the whole space


def test_bad_fill_names_the_field():
  with pytest.raises(ValueError, match='GHNConfig.fill'):
    dataclasses.replace(CFG, fill='stretch')
  with pytest.raises(ValueError, match='fill_noise'):
    dataclasses.replace(CFG, fill_noise=-1.0)


def test_extrapolation_targets():
  space = arch.make_space('vits-cpu')
  got = extrapolation.targets(space, 32, 4, [1, 1.5, 4], 2.0, 16, patch=7)
  assert [(m, a.width, a.heads, a.depth, a.patch, a.mlp_dim)
          for m, a in got] == [(1, 32, 2, 8, 7, 128), (1.5, 48, 3, 8, 7, 192),
                               (4, 128, 8, 8, 7, 512)]


def _target(width, curves, diverged):
  from logah_jax.train import compare_report  # pylint: disable=g-import-not-at-top
  summary = compare_report.summarize(curves, family='vit', num_steps=2,
                                     baseline='random', diverged=diverged)
  summary['family'] = 'vit'
  return {'multiple': width / 32, 'ratio': width / 32, 'arch': f'w{width}',
          'width': width, 'depth': 4, 'metric': 'accuracy',
          'target_metric': summary['target_metric'],
          'rows': {k: extrapolation._row(summary, k, curves[k])
                   for k in curves}}


def test_table_counts_diverged_seeds_and_has_no_target_without_randinit():
  """At width 64 one 'tile' seed diverged (its final is the other seed's);
  at width 128 a RandInit seed diverged, so there is no target: '-', not
  'not reached'."""
  rows = lambda *accs: [{'step': i, 'eval_accuracy': a, 'eval_loss': 1 - a}
                        for i, a in enumerate(accs)]
  ok = {0: rows(0.1, 0.3, 0.5), 1: rows(0.1, 0.3, 0.7)}
  results = {'trained_width': 32, 'trained_depth': 4, 'fills': ['tile'],
             'seeds': [0, 1], 'num_steps': 2, 'split': 'validation',
             'targets': [
                 _target(64, {'random': ok,
                              'tile': {0: rows(0.6, 0.7, 0.8),
                                       1: rows(0.6)}}, {'tile': {1: 1}}),
                 _target(128, {'random': {0: ok[0], 1: rows(0.1)},
                               'tile': ok}, {'random': {1: 1}})]}
  md = extrapolation.markdown(results).splitlines()
  assert md[4] == ('| 64 (2x) | 60.0% ± 14.1 | 60.0% (0.40) / 80.0% '
                   '(1 diverged) / 0 | 10.0% (0.90) |')
  assert md[5] == ('| 128 (4x) | 50.0% (1 diverged) | 10.0% (0.90) / '
                   '60.0% ± 14.1 / - | 10.0% (0.90) |')
  assert 'Diverged: seeds whose training loss turned non-finite' in md[-1]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['extrapolation_vits', 'extrapolation_gpts'])
def test_extrapolate_job_end_to_end(name, tmp_path):
  from configs_for_tests import load_config_file  # pylint: disable=g-import-not-at-top
  from logah_jax import main  # pylint: disable=g-import-not-at-top
  c = load_config_file(name, 'smoke')
  with c.unlocked():
    c.finetune.train.num_steps = 2
    c.finetune.eval.every_steps = 1
    c.finetune.checkpoint.every_steps = 2
  out = main.run(c, str(tmp_path))['extrapolate']
  trained = out['trained_width']
  widths = [t['width'] for t in out['targets']]
  assert widths[0] >= trained and widths[-1] > trained
  first, last = out['targets'][0]['rows'], out['targets'][-1]['rows']
  assert set(last) == {'random', 'decoder', 'tile', 'widen'}
  if widths[0] == trained:  # the fills coincide within the trained width
    assert first['tile'] == first['decoder'] == first['widen']
  assert last['widen']['step0'] != last['decoder']['step0']
  table = (tmp_path / 'extrapolation.md').read_text()
  assert table.count('\n| ') == len(widths) + 1  # and the header
  assert (tmp_path / 'extrapolation.png').stat().st_size > 0


def test_main_ghn_variant_trains_the_main_jobs_ghn():
  """':main_ghn' reuses the main job's workdir: its GHN run must be that job's
  (the checkpoint manager refuses a workdir of another config)."""
  from configs_for_tests import load_config_file  # pylint: disable=g-import-not-at-top
  c = load_config_file('extrapolation_vits', 'main_ghn')
  main_job = load_config_file('default').to_dict()
  main_job['holdout']['enabled'] = main_job['demo']['enabled'] = False
  assert c.ghn_train.to_dict() == main_job
  assert (c.width_multiples, c.depth_multiple, c.seeds) == ('2', 2.0, 3)


def _no_training(monkeypatch):
  """Training anything fails the test: the checks must come first."""
  from logah_jax.train import finetuning, ghn_training  # pylint: disable=g-import-not-at-top

  def trains(*args, **kwargs):
    raise AssertionError('trained before the config was checked')

  monkeypatch.setattr(ghn_training, 'train', trains)
  monkeypatch.setattr(finetuning, 'train', trains)


@pytest.mark.parametrize('change,match', [
    ({'finetune.train.num_steps': 0},
     r'^config\.finetune\.train\.num_steps=0 must be an int >= 1$'),
    ({'finetune.optim.lr': -1.0},
     r'^config\.finetune\.optim\.lr=-1\.0 must be > 0$'),
    ({'finetune.eval.split': 'train'},
     r"^config\.finetune\.eval\.split='train' is also "
     r'config\.finetune\.data\.split'),
    ({'ghn_train.train.num_steps': 0},
     r'^config\.ghn_train\.train\.num_steps=0 must be an int >= 1$'),
    # the targets take their image size from the GHN's space
    ({'finetune.data.name': 'cifar10'},
     r'^config\.ghn_train\.space\.image_size=28 but cifar10 images are '
     r'32x32$'),
    ({'finetune.data.data_dir': '{tmp}/no_data'},
     r'^config\.finetune\.data: Fashion-MNIST not found in {tmp}/no_data '),
    # the trained-width GHN fits max_ck, the 8x target's patch kernel not
    ({'ghn_train.ghn.max_ck': 512, 'ghn_train.ghn.max_shape': (512, 512, 16,
                                                               16),
      'width_multiples': '1,8', 'fills': 'widen,decoder'},
     r"^config\.ghn_train: the GHN cannot predict the target vit-L6-C192\S* "
     r"\(fill 'decoder'\): node conv_proj\.weight: .* GHNConfig\.max_ck=512"),
    ({'patch': 5}, r'^config\.patch=5: a target cannot be built: '
     r'.*not divisible by patch=5'),
    ({'patch': -1}, r'^config\.patch=-1 must be an int >= 0$'),
    ({'depth_multiple': float('nan')},
     r'^config\.depth_multiple=nan must be a number > 0$'),
    ({'depth_multiple': 0.0},
     r'^config\.depth_multiple=0\.0 must be a number > 0$'),
    # the GHN may not train on the split the targets are measured on
    ({'ghn_train.data.split': 'train+validation'},
     r"^config\.ghn_train\.data\.split='train\+validation' reads "
     r"config\.finetune\.eval\.split='validation'"),
], ids=['finetune_num_steps', 'finetune_lr', 'finetune_eval_split',
        'ghn_num_steps', 'finetune_data_of_other_images', 'missing_data',
        'ghn_cannot_predict_target', 'patch', 'negative_patch',
        'nan_depth_multiple', 'zero_depth_multiple', 'ghn_reads_validation'])
def test_bad_config_fails_before_the_ghn_trains(monkeypatch, tmp_path, change,
                                                match):
  """Every target's fine-tuning run, the GHN's prediction of it and the data
  are checked before GHN training; the error names the user's field."""
  import re  # pylint: disable=g-import-not-at-top
  from configs_for_tests import load_config_file  # pylint: disable=g-import-not-at-top
  from logah_jax.validation import ConfigError  # pylint: disable=g-import-not-at-top
  _no_training(monkeypatch)
  (tmp_path / 'no_data').mkdir()
  c = load_config_file('extrapolation_vits', 'smoke')
  c.compilation_cache = 'off'
  for key, value in change.items():
    *sections, field = key.split('.')
    node = c
    for section in sections:
      node = node[section]
    node[field] = (value.format(tmp=tmp_path) if isinstance(value, str)
                   else value)
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError,
                     match=match.format(tmp=re.escape(str(tmp_path)))):
    extrapolation.run_extrapolation(c, str(workdir))
  assert not workdir.exists()


def test_every_targets_runs_are_checked_before_the_ghn_trains(monkeypatch,
                                                              tmp_path):
  """A rerun with a changed recipe must be refused before GHN training, by
  the checkpoints of each target's runs where `finetune_all` puts them."""
  from configs_for_tests import load_config_file  # pylint: disable=g-import-not-at-top
  from logah_jax.train import compared_runs  # pylint: disable=g-import-not-at-top
  _no_training(monkeypatch)
  checked = []
  monkeypatch.setattr(compared_runs, 'check_runs',
                      lambda methods, seeds, ft, workdir, cache: checked.append(
                          (sorted(methods), seeds, ft.arch, workdir)))
  c = load_config_file('extrapolation_vits', 'smoke')
  c.compilation_cache = 'off'
  with pytest.raises(AssertionError, match='trained before'):
    extrapolation.run_extrapolation(c, str(tmp_path))
  run = extrapolation.ghn_training.build_run(c.ghn_train)
  widest = max(a.width for a in run.sampler.candidates())
  plan = extrapolation.targets(
      run.space, widest, max(a.depth for a in run.sampler.candidates()),
      extrapolation._floats(c.width_multiples, 'm'), c.depth_multiple,
      c.head_size, c.get('patch', 0))
  fills = extrapolation.fills_of(c)
  assert checked == [
      (sorted(['random', *(fills if t.width > widest else fills[:1])]),
       list(range(c.seeds)), extrapolation.arch_lib.to_spec(t),
       str(tmp_path / 'targets' / t.name)) for _, t in plan]
