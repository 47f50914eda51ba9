"""Predicted inits as checkpoints: the predict job, restore (also sharded and
without logah_jax, as README shows), mismatch errors, GHN init methods."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs_for_tests import ROOT, load_config_file, save_untrained_ghn, smoke
from logah_jax import arch as arch_lib
from logah_jax import checkpoint
from logah_jax import ghn as ghn_lib
from logah_jax import inits
from logah_jax import main as main_lib
from logah_jax import models
from logah_jax.train import compare

TARGET = ('vit:depth=3,width=64,heads=4,patch=7,image_size=28,channels=1,'
          'num_classes=10')


@pytest.fixture(scope='module')
def ghn_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ghn'))
  save_untrained_ghn(workdir, smoke(), 2)  # reading a run needs no training
  return workdir


def _predict_config(ghn_workdir, arch=TARGET):
  c = load_config_file('predict')
  c.ghn_workdir = ghn_workdir
  c.arch = arch
  c.compilation_cache = 'off'
  return c


def test_predict_job_writes_params_layout_and_metadata(ghn_workdir, tmp_path):
  out = str(tmp_path / 'init')
  result = main_lib.run(_predict_config(ghn_workdir), out)
  arch = arch_lib.parse(TARGET)
  assert result['predict']['method'] == 'logah'
  restored = checkpoint.restore_params(
      out, abstract_params=models.abstract_params(arch))
  want = ghn_lib.load(ghn_workdir).predict(arch)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  meta = checkpoint.read_metadata(out)
  assert arch_lib.from_dict(meta['arch']) == arch
  assert meta['method'] == 'logah' and meta['generator']['step'] == 2
  assert meta['generator']['ghn']['decoder'] == 'lowrank'
  assert meta['code_version']
  # an existing output is refused before any work, and left as it was
  before = sorted(os.listdir(out))
  with pytest.raises(FileExistsError, match='overwrite'):
    main_lib.run(_predict_config(ghn_workdir), out)
  assert sorted(os.listdir(out)) == before


def test_predict_job_notes_a_target_of_other_data(ghn_workdir, tmp_path,
                                                  capsys):
  """The GHN trained on 1-channel, 10-class, 28-pixel images: a 3-channel,
  100-class target is still predicted, with a note for each field."""
  main_lib.run(_predict_config(ghn_workdir), str(tmp_path / 'same'))
  assert 'note:' not in capsys.readouterr().out
  other = TARGET.replace('channels=1', 'channels=3').replace(
      'num_classes=10', 'num_classes=100')
  main_lib.run(_predict_config(ghn_workdir, other), str(tmp_path / 'other'))
  notes = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith('note:')]
  assert notes == [
      'note: config.arch has num_classes=100 but the GHN trained on '
      'fashion_mnist targets with num_classes=10: the classifier head is '
      'predicted for a shape the GHN never trained on.',
      'note: config.arch has channels=3 but the GHN trained on fashion_mnist '
      'targets with channels=1: the patch embedding is predicted for a shape '
      'the GHN never trained on.']
  assert checkpoint.read_metadata(str(tmp_path / 'other'))['arch'][
      'num_classes'] == 100


def test_predict_job_fill_reaches_the_prediction(ghn_workdir, tmp_path):
  arch = arch_lib.parse(TARGET)  # width 64, wider than the GHN's 48
  c = _predict_config(ghn_workdir)
  c.fill = 'decoder'
  out = str(tmp_path / 'init')
  main_lib.run(c, out)
  restored = checkpoint.restore_params(
      out, abstract_params=models.abstract_params(arch))
  want = ghn_lib.load(ghn_workdir, fill='decoder').predict(arch)
  widen = ghn_lib.load(ghn_workdir).predict(arch)
  assert ghn_lib.load(ghn_workdir).cfg.fill == 'widen'
  for a, b, w in zip(jax.tree.leaves(restored), jax.tree.leaves(want),
                     jax.tree.leaves(widen)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(not np.array_equal(a, w) for a, w in zip(
      jax.tree.leaves(restored), jax.tree.leaves(widen)))
  assert checkpoint.read_metadata(out)['generator']['ghn']['fill'] == 'decoder'
  c.fill = 'stretch'
  with pytest.raises(ValueError, match="config.fill='stretch'"):
    main_lib.run(c, str(tmp_path / 'other'))
  assert not os.path.exists(tmp_path / 'other')


def test_predict_job_rejects_bad_input(ghn_workdir, tmp_path):
  for arch, match in (('gpt2-small', 'is a gpt2 but the GHN'),
                      ('vit:depth=3', 'config.arch'),
                      ('vit-q', 'config.arch')):
    with pytest.raises(ValueError, match=match):
      main_lib.run(_predict_config(ghn_workdir, arch), str(tmp_path / 'o'))
  (tmp_path / 'not_a_ghn').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no GHN training run'):
    main_lib.run(_predict_config(str(tmp_path / 'not_a_ghn')),
                 str(tmp_path / 'o'))
  assert not os.path.exists(tmp_path / 'o')
  c = _predict_config(ghn_workdir)
  c.ghn_step = -7  # once taken as 'the latest'
  with pytest.raises(ValueError, match=r'^config\.ghn_step=-7 must be -1 '):
    main_lib.run(c, str(tmp_path / 'o'))
  # an empty output folder the user made survives a bad input
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no GHN training run'):
    main_lib.run(_predict_config(str(tmp_path / 'none')),
                 str(tmp_path / 'empty'))
  assert os.listdir(tmp_path / 'empty') == []


def test_predict_into_the_ghns_own_folder_is_refused(tmp_path):
  """With overwrite, saving the init once replaced the GHN run it had
  just read."""
  ghn = tmp_path / 'ghn'
  save_untrained_ghn(str(ghn), smoke(), 2)
  before = sorted(os.listdir(ghn / 'checkpoints'))
  for out in (ghn, ghn / 'init', tmp_path):
    c = _predict_config(str(ghn))
    c.overwrite = True
    with pytest.raises(ValueError, match=r'^--workdir=.* overlaps '
                       r'config\.ghn_workdir '):
      main_lib.run(c, str(out))
  assert sorted(os.listdir(ghn / 'checkpoints')) == before
  assert ghn_lib.load(str(ghn)).step == 2


def test_restore_into_other_architecture_names_param_and_shapes(
    ghn_workdir, tmp_path):
  out = str(tmp_path / 'init')
  main_lib.run(_predict_config(ghn_workdir), out)
  other = arch_lib.parse(TARGET.replace('width=64', 'width=48'))
  with pytest.raises(ValueError, match=re.escape(
      "parameter 'class_token' does not match: checkpoint has (1, 1, 64), "
      'target expects (1, 1, 48)')):
    checkpoint.restore_params(out, abstract_params=models.abstract_params(
        other))
  with pytest.raises(ValueError, match=(
      r'holds an init of vit-\S+, not of the target vit-\S+ \(mlp_dim=256 '
      r'there, 192 here; width=64 there, 48 here\)$')):
    inits.make(f'checkpoint:{out}')(other, 0)
  # shapes alone cannot tell the head count: the metadata can
  fewer_heads = arch_lib.parse(TARGET.replace('heads=4', 'heads=2'))
  assert models.abstract_params(fewer_heads) == models.abstract_params(
      arch_lib.parse(TARGET))
  with pytest.raises(ValueError, match=r'\(heads=4 there, 2 here\)$'):
    inits.make(f'checkpoint:{out}')(fewer_heads, 0)


def _readme_snippet() -> str:
  text = open(os.path.join(ROOT, 'README.md')).read()
  start = text.index('<!-- restore-snippet -->')
  block = text[start:].split('```python\n', 1)[1].split('```', 1)[0]
  return block


def test_readme_restores_into_a_sharded_train_state_without_logah_jax(
    ghn_workdir, tmp_path):
  """README's snippet, run with jax/flax/optax/orbax only, on 8 devices."""
  out = str(tmp_path / 'init')
  main_lib.run(_predict_config(ghn_workdir), out)
  snippet = _readme_snippet()
  assert 'logah_jax' not in snippet
  arch = arch_lib.parse(TARGET)
  model, x = models.build(arch), models.dummy_input(arch, 8)
  namespace = {'path': out, 'model': model, 'x': x}
  exec(snippet, namespace)  # pylint: disable=exec-used
  state = namespace['state']
  assert namespace['metadata']['arch']['width'] == 64
  kernel = state.params['encoder_layer_0']['mlp']['fc1']['kernel']
  assert len(kernel.sharding.device_set) == 8
  assert kernel.sharding.spec[-1] == 'data'  # split, not just replicated
  want = checkpoint.restore_params(out)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the restored state trains: a jitted step through the model itself (a
  # mesh of explicit axes restored the values but could not run the model)
  @jax.jit
  def step(state):
    loss = lambda p: state.apply_fn({'params': p}, x).astype('float32').mean()
    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(grads=grads), value
  stepped, value = step(state)
  assert int(stepped.step) == 1
  np.testing.assert_allclose(
      value, model.apply({'params': want}, x).mean(), rtol=1e-5, atol=1e-6)


def test_ghn_method_checks_decoder_and_caches_prediction(ghn_workdir):
  arch = arch_lib.parse(TARGET)
  method = inits.make('logah', ghn_workdir=ghn_workdir)
  assert method.deterministic
  a, b = method(arch, 0), method(arch, 1)
  assert a is b  # predicted once for all seeds of a comparison
  assert method.describe()['generator']['step'] == 2
  for name, field in (('ghn3', 'decoder'),
                      ('logah-transpose', 'factorization')):
    with pytest.raises(ValueError, match=f'has {field}='):
      inits.make(name, ghn_workdir=ghn_workdir).prepare()


def test_training_config_swaps_only_the_decoder():
  base = smoke()
  t = compare.ghn_training_config(base, 'logah-transpose')
  assert t.ghn.factorization == 'transpose' and base.ghn.factorization == (
      'paper')
  g = compare.ghn_training_config(base, 'ghn3')
  assert g.ghn.decoder == 'fullrank' and g.ghn.hid == base.ghn.hid
  assert g.ghn.num_classes == base.ghn.num_classes
  assert g.data.to_dict() == base.data.to_dict()
  assert g.optim.to_dict() == base.optim.to_dict()
  with pytest.raises(ValueError, match='config.ghn3_name'):
    compare.ghn_training_config(base, 'ghn3', 'logah-tiny')
  # a base Graphormer of other sizes: GHN-3 would differ in more than the
  # decoder (it once kept ghn3-tiny's sizes silently)
  base.ghn.update(hid=128, layers=5, heads=16)
  with pytest.raises(ValueError, match=(
      r"^config\.ghn3_name='ghn3-tiny' has Graphormer sizes .* set "
      r"config\.ghn3_name='ghn3-small'$")):
    compare.ghn_training_config(base, 'ghn3')
  g = compare.ghn_training_config(base, 'ghn3', 'ghn3-small')
  assert (g.ghn.hid, g.ghn.layers, g.ghn.heads) == (128, 5, 16)
  base.ghn.hid = 96
  with pytest.raises(ValueError, match='leave ghn3 out of config.methods'):
    compare.ghn_training_config(base, 'ghn3', 'ghn3-small')


@pytest.mark.slow  # opt-in: keeps the default run under 15 minutes
def test_predict_job_from_the_command_line(ghn_workdir, tmp_path):
  out = str(tmp_path / 'cli')

  def predict():
    return subprocess.run(
        [sys.executable, '-m', 'logah_jax.main', '--config=configs/predict.py',
         f'--config.ghn_workdir={ghn_workdir}', f'--config.arch={TARGET}',
         '--config.compilation_cache=off', f'--workdir={out}'],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'PYTHONPATH': ROOT})
  proc = predict()
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'saved to' in proc.stdout
  again = predict()
  assert again.returncode == 2 and 'error:' in again.stderr
  assert json.loads(open(os.path.join(out, 'metadata', 'metadata')).read())[
      'method'] == 'logah'


@pytest.mark.parametrize('kwargs, field', [
    (dict(fill='tiel'), "fill='tiel'"),
    (dict(fill_noise=20.0), 'fill_noise=20.0')])
def test_ghn_load_blames_the_argument_not_the_stored_config(ghn_workdir,
                                                            kwargs, field):
  with pytest.raises(ValueError) as e:
    ghn_lib.load(ghn_workdir, **kwargs)
  assert str(e.value).startswith(f'ghn.load({ghn_workdir!r}, {field}): ')
  assert 'does not describe' not in str(e.value)


def test_ghn_load_refuses_params_of_another_shape(tmp_path):
  """A stored config whose decoder rank is not the params' is refused: the
  tree structure alone matches."""
  save_untrained_ghn(str(tmp_path), smoke(), 2)
  path = tmp_path / 'checkpoints' / 'config.json'
  stored = json.loads(path.read_text())
  stored['ghn']['rank'] += 1
  path.write_text(json.dumps(stored))
  with pytest.raises(ValueError, match='do not match'):
    ghn_lib.load(str(tmp_path))


def test_reading_a_ghn_leaves_the_save_of_a_run_still_training(tmp_path):
  """Predicting from a GHN whose run is still training once deleted that
  run's unfinished save (orbax cleans up temporary folders on opening)."""
  save_untrained_ghn(str(tmp_path), smoke(), 2)
  unfinished = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp' / 'state'
  unfinished.mkdir(parents=True)
  (unfinished / 'part').write_text('being written')
  assert ghn_lib.load(str(tmp_path)).step == 2
  assert (unfinished / 'part').read_text() == 'being written'
