"""The grow job and growth in the comparison harness, end to end (tiny)."""

import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_for_tests import finetune_smoke, load_config_file
from logah_jax import arch, checkpoint, compiles, growth, main, models
from logah_jax import inits, parallel
from logah_jax.train import compare, finetuning, flops, grow_job
from logah_jax.growth import ligo
from logah_jax.inits import growth_source
from logah_jax.inits import save as init_save
from logah_jax.train import ligo_training
from logah_jax.train import state as state_lib
from logah_jax.train.compute import Compute
from logah_jax.validation import ConfigError

SMALL = ('vit:depth=1,width=16,heads=2,mlp_dim=64,patch=7,image_size=28,'
         'channels=1,num_classes=10')
LARGE = ('vit:depth=2,width=32,heads=4,mlp_dim=128,patch=7,image_size=28,'
         'channels=1,num_classes=10')


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A 4-step fine-tuned tiny ViT: its final_params are the source."""
  workdir = str(tmp_path_factory.mktemp('source'))
  finetuning.finetune(finetune_smoke(SMALL, steps=4), workdir)
  return os.path.join(workdir, finetuning.FINAL_PARAMS)


def _grow_config(source_dir, method, target=LARGE):
  c = load_config_file('grow', 'smoke')
  c.method, c.source, c.arch = method, source_dir, target
  c.data.batch_size = 8
  c.compilation_cache = 'off'
  return c


def _hash_tree(path):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      digest.update(name.encode())
      digest.update(open(os.path.join(root, name), 'rb').read())
  return digest.hexdigest()


@pytest.mark.parametrize('name,arg', [('compare_vits', None),
                                      ('compare_gpts', None), ('grow', None),
                                      ('grow', 'text')])
def test_growth_configs_have_every_field_main_reads(name, arg):
  c = load_config_file(name, arg)
  assert c.compilation_cache == '' and c.job in main.JOBS
  if name.startswith('compare'):
    assert 'ligo' in c.methods and c.source.finetune.arch
    assert c.ligo.num_steps == 100 and c.ligo.optim.weight_decay == 0.0


def test_source_is_a_restorable_params_checkpoint(source):
  meta = checkpoint.read_metadata(source)
  assert arch.from_dict(meta['arch']) == arch.parse(SMALL)
  assert meta['method'] == 'finetuned' and meta['steps'] == 4


@pytest.mark.slow  # opt-in: keeps the default run under 15 minutes
def test_grow_net2net_saves_the_grown_function(source, tmp_path):
  out = str(tmp_path / 'init')
  result = main.run(_grow_config(source, 'net2net'), out)['grow']
  small, large = arch.parse(SMALL), arch.parse(LARGE)
  grown = checkpoint.restore_params(
      out, abstract_params=models.abstract_params(large))
  params = checkpoint.restore_params(
      source, abstract_params=models.abstract_params(small))
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  np.testing.assert_allclose(
      models.build(large).apply({'params': grown}, x),
      models.build(small).apply({'params': params}, x), atol=1e-4)
  meta = checkpoint.read_metadata(out)
  assert meta['method'] == 'net2net' and meta['source'] == source
  assert meta['function_preserving'] and result['operator'] == ''


def test_grow_ligo_trains_the_operator_then_saves(source, tmp_path):
  out = str(tmp_path / 'init')
  traces = compiles.trace_counts().get(ligo_training.TRACE_NAME, 0)
  c = _grow_config(source, 'ligo')
  c.ligo.num_steps = 3
  result = main.run(c, out)['grow']
  # one compiled program for all three operator steps
  assert compiles.trace_counts()[ligo_training.TRACE_NAME] - traces == 1
  assert result['operator'] == f'{out}-ligo/operator'
  meta = checkpoint.read_metadata(result['operator'])
  assert meta['kind'] == 'ligo-operator' and meta['steps'] == 3
  small, large = arch.parse(SMALL), arch.parse(LARGE)
  grown = checkpoint.restore_params(
      out, abstract_params=models.abstract_params(large))
  operator, _ = growth_source.load_operator(result['operator'], small, large)
  # the saved operator is three optimizer steps from its init, replayed here
  # outside LigoStep and the loop, on the loader's first three batches
  run = ligo_training.build_run(grow_job.ligo_run_config(c), source)
  small_params = growth_source.load_params(source, small)
  loader = run.data.loader(run.seed, 0, 1)
  grad_fn = jax.jit(jax.grad(
      lambda op, batch: ligo_training.objective(
          op, small_params, batch, small, large, run.label_smoothing,
          run.compute)[0]))
  update = jax.jit(lambda state, grads: state_lib.guarded_update(
      state, grads, 0.0, run.tx)[0])
  start = ligo.init_operator(small, large, key=jax.random.key(c.seed),
                             scheme=run.scheme, sharing=run.sharing,
                             split_noise=run.split_noise)
  state = state_lib.fresh(run.tx, start)
  for _ in range(3):
    state = update(state, grad_fn(state.params, next(loader)))
  leaves = jax.tree_util.tree_leaves_with_path(operator)
  for (path, got), first, replayed in zip(leaves, jax.tree.leaves(start),
                                          jax.tree.leaves(state.params)):
    name = jax.tree_util.keystr(path)
    assert not np.allclose(got, first), name  # it trained
    np.testing.assert_allclose(got, replayed, rtol=1e-4, atol=1e-6,
                               err_msg=name)
  # the saved init is that operator applied to the source
  want = growth.grow('ligo', small_params, small, large, operator=operator)
  for got, expected in zip(jax.tree.leaves(grown), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_operator_run_stopped_early_returns_no_operator(source, tmp_path):
  """A call that stops before the last step names no operator (none is
  written yet); the resumed run then saves the one-call run's operator."""
  c = _grow_config(source, 'ligo')
  c.ligo.num_steps = 3
  run = ligo_training.build_run(grow_job.ligo_run_config(c), source)
  part = str(tmp_path / 'part')
  assert ligo_training.train(run, part, stop_after_steps=2) is None
  assert not os.path.exists(ligo_training.operator_dir(part))
  assert ligo_training.train(run, part) == ligo_training.operator_dir(part)
  whole = ligo_training.train(run, str(tmp_path / 'whole'))
  small, large = arch.parse(SMALL), arch.parse(LARGE)
  got, _ = growth_source.load_operator(ligo_training.operator_dir(part),
                                       small, large)
  want, _ = growth_source.load_operator(whole, small, large)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('change,match', [
    (dict(arch=SMALL.replace('width=16', 'width=8').replace('heads=2',
                                                           'heads=1')),
     (r'^config\.arch \(grown from config\.source\): growth: target '
      'width=8 is smaller')),
    (dict(arch=LARGE.replace('heads=4', 'heads=2')), 'head size'),
    (dict(arch='gpt2:depth=2,width=32,heads=4,vocab_size=256,'
          'n_positions=128'), 'is a vit but the target'),
    (dict(method='stackbert'), "config.method: growth method 'stackbert'"),
    (dict(source='/nonexistent/params'), 'no checkpoint at'),
    (dict(arch=LARGE.replace('patch=7', 'patch=4')), 'patch'),
])
def test_bad_growth_input_fails_before_work_and_touches_nothing(
    source, tmp_path, change, match):
  out = tmp_path / 'init'
  out.mkdir()
  (out / 'keep.txt').write_text('existing output')
  before, source_hash = _hash_tree(out), _hash_tree(source)
  c = _grow_config(source, 'stack')
  for key, value in change.items():
    c[key] = value
  with pytest.raises(ConfigError, match=match):
    main.run(c, str(out))
  assert _hash_tree(out) == before and _hash_tree(source) == source_hash
  assert not os.path.exists(f'{out}-ligo')


@pytest.mark.parametrize('dtype,remat', [('bfloat16', True),
                                         ('float32', False)])
def test_ligo_operator_step_runs_the_large_model_in_the_config_dtype(
    source, tmp_path, dtype, remat):
  c = _grow_config(source, 'ligo')
  c.compute_dtype, c.remat = dtype, remat
  run = ligo_training.build_run(grow_job.ligo_run_config(c), source)
  assert run.compute == Compute(jnp.dtype(dtype), remat)
  step = ligo_training.LigoStep(
      run, parallel.make_mesh({parallel.DATA: 1}, jax.devices()[:1]))
  program = str(jax.make_jaxpr(step._update)(  # pylint: disable=protected-access
      step.abstract_state(), models.abstract_params(run.small),
      flops.abstract_batch(run.large, 8)))
  # the grown params stay float32; the large model's matmuls take its dtype
  assert ('bf16' in program) == (dtype == 'bfloat16')
  assert ('remat' in program or 'checkpoint' in program) == remat
  c.compute_dtype = 'fp8'
  with pytest.raises(ConfigError, match=r"^config\.compute_dtype='fp8'"):
    main.run(c, str(tmp_path / 'init'))
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('change,match', [
    ({'num_steps': 0}, r'^config\.ligo\.num_steps=0 must be an int >= 1$'),
    ({'optim.warmup_steps': 2},
     r'^config\.ligo\.optim\.warmup_steps=2 must be an int in '
     r'\[0, num_steps=2\)$'),
    ({'optim.lr': -1.0}, r'^config\.ligo\.optim\.lr=-1\.0 must be > 0$'),
    ({'init': 'magic'}, r"^config\.ligo\.init='magic' must be one of"),
], ids=['num_steps', 'warmup', 'lr', 'init'])
def test_operator_run_errors_name_the_grow_configs_fields(source, tmp_path,
                                                          change, match):
  c = _grow_config(source, 'ligo')
  for key, value in change.items():
    *sections, field = key.split('.')
    node = c.ligo
    for section in sections:
      node = node[section]
    node[field] = value
  with pytest.raises(ConfigError, match=match):
    main.run(c, str(tmp_path / 'init'))
  assert not os.listdir(tmp_path)


def test_operator_run_without_data_writes_nothing(source, tmp_path):
  """A LiGO run reads the source and opens the data before it writes its
  workdir: the failed command leaves nothing that would refuse the
  corrected one as another config."""
  (tmp_path / 'no_data').mkdir()
  out = str(tmp_path / 'init')
  c = _grow_config(source, 'ligo')
  c.data.data_dir = str(tmp_path / 'no_data')
  with pytest.raises(ConfigError, match='Fashion-MNIST not found in'):
    main.run(c, out)
  assert sorted(os.listdir(tmp_path)) == ['no_data']
  assert not os.listdir(tmp_path / 'no_data')
  c.data.data_dir = ''
  result = main.run(c, out)['grow']
  assert result['operator'] == f'{out}-ligo/operator'
  assert os.path.isdir(result['operator']) and os.path.isdir(out)


def test_existing_output_and_non_params_source_are_refused(source, tmp_path):
  out = tmp_path / 'init'
  out.mkdir()
  (out / 'keep.txt').write_text('x')
  with pytest.raises(ConfigError, match='already exists'):
    main.run(_grow_config(source, 'stack'), str(out))
  with pytest.raises(ConfigError, match='not a params checkpoint'):
    main.run(_grow_config(os.path.dirname(source), 'stack'),
             str(tmp_path / 'other'))
  # with overwrite, the grown init once replaced the source it was read from
  source_hash = _hash_tree(source)
  c = _grow_config(source, 'stack')
  c.overwrite = True
  with pytest.raises(ConfigError, match=r'^--workdir=.* overlaps '
                     r'config\.source '):
    main.run(c, source)
  assert _hash_tree(source) == source_hash


@pytest.mark.slow
def test_comparison_pretrains_the_source_once_and_grows_from_it(tmp_path):
  c = load_config_file('compare_vits', 'smoke')
  c.methods, c.seeds = 'random,net2net,ligo', 1
  c.finetune = finetune_smoke(LARGE, steps=4)
  c.source.finetune = finetune_smoke(SMALL, steps=4)
  c.ligo.num_steps = 2
  c.ligo.optim.warmup_steps = 1
  c.compilation_cache = 'off'
  summary = compare.run_compare(c, str(tmp_path))
  assert summary['methods'] == ['random', 'net2net', 'ligo']
  assert os.path.isdir(tmp_path / 'source' / 'final_params')
  assert os.path.isdir(tmp_path / 'ligo' / 'operator')
  assert os.path.isdir(tmp_path / 'inits' / 'ligo')  # deterministic: saved
  described = summary['describe']['net2net']
  assert described['source_arch'] == arch.parse(SMALL).name
  # net2net starts exactly where the source ended (function preserved)
  src_eval = finetuning.report.read_metrics(
      str(tmp_path / 'source' / finetuning.EVAL_FILE))[-1]
  n2n_eval = summary['methods_summary']['net2net']['step0']['mean']
  assert n2n_eval == pytest.approx(src_eval['eval_accuracy'])
  # equal-compute accounting: the source's pretraining is upfront for every
  # growth method, LiGO adds its operator steps, random has none
  rows = summary['methods_summary']
  source_cost = flops.finetune_flops(arch.parse(SMALL), 8, 4)
  assert rows['random']['upfront_flops'] == 0
  assert rows['net2net']['upfront_flops'] == pytest.approx(source_cost)
  assert rows['ligo']['upfront_flops'] == pytest.approx(
      source_cost + 2 * flops.ligo_step_flops(arch.parse(SMALL),
                                              arch.parse(LARGE), 8))
  assert 'one source serves every target' in rows['ligo']['upfront']
  # a second call trains nothing again and reproduces the summary
  again = compare.run_compare(c, str(tmp_path))
  assert again['methods_summary'] == summary['methods_summary']
  assert growth.FUNCTION_PRESERVING['net2net']


def test_ligo_workdir_of_another_source_is_refused(source, tmp_path):
  """The operator run is bound to its source: growing another source with
  the same (default) LiGO workdir neither resumes nor reuses its operator."""
  other = str(tmp_path / 'other_source')
  shutil.copytree(source, other)  # same params and arch, another source
  out = str(tmp_path / 'init')
  c = _grow_config(source, 'ligo')
  c.ligo.num_steps = 2
  main.run(c, out)
  c.source, c.overwrite = other, True
  with pytest.raises(ConfigError, match='source'):
    main.run(c, out)
  # without the run's checkpoints, the finished operator's metadata refuses
  shutil.rmtree(f'{out}-ligo/checkpoints')
  with pytest.raises(ConfigError, match=f'trained from {source}'):
    main.run(c, out)
  assert checkpoint.read_metadata(f'{out}-ligo/operator')['source'] == source


@pytest.mark.parametrize('where', ['in_output', 'output', 'source',
                                   'in_source', 'around_source'])
def test_ligo_workdir_overlapping_output_or_source_is_refused_first(
    source, tmp_path, where):
  """Saving the init found the output taken by the operator's run after
  training (or, with overwrite, deleted the operator); a LiGO workdir in the
  source wrote checkpoints into it."""
  out = str(tmp_path / 'init')
  ligo_dir = {'in_output': os.path.join(out, 'op'), 'output': out + '/',
              'source': source, 'in_source': os.path.join(source, 'op'),
              'around_source': os.path.dirname(source)}[where]
  source_hash = _hash_tree(source)
  c = _grow_config(source, 'ligo')
  c.ligo_workdir, c.overwrite = ligo_dir, True
  with pytest.raises(ConfigError, match=r'^config\.ligo_workdir=.* overlaps'):
    main.run(c, out)
  assert not os.path.exists(out) and _hash_tree(source) == source_hash
  assert not os.path.exists(os.path.join(source, 'op'))


def test_function_preserving_is_stated_for_the_target(source):
  """net2net keeps the function only at an integer width ratio; a saved
  init's metadata (and the comparison tables) say so per target."""
  method = inits.make('net2net', source=source,
                      growth_options={'split_noise': 0.5})
  odd = arch.parse(LARGE.replace('width=32,heads=4', 'width=24,heads=4'))
  assert method.describe(arch.parse(LARGE))['function_preserving']
  assert not method.describe(odd)['function_preserving']
  assert growth.preserves_function('net2net', arch.parse(SMALL),
                                   arch.parse(LARGE))
  assert not growth.preserves_function('stack', arch.parse(SMALL),
                                       arch.parse(LARGE))
  meta = init_save.metadata(method, odd, seed=0)
  assert meta['function_preserving'] is False
