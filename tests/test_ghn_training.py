"""GHN training: the step against a monolithic gradient, compile bound, mesh
equality, resume equality, NaN guard, load, and bad input."""

import dataclasses
import json
import os

import jax
import numpy as np
import optax
import pytest

from logah_jax import arch as arch_lib
from logah_jax import compiles
from logah_jax import ghn as ghn_lib
from logah_jax import parallel
from logah_jax.arch import batching
from logah_jax.data import Loader, get_dataset
from logah_jax.models import layers
from logah_jax.train import ghn_step
from logah_jax.train import ghn_training
from logah_jax.train import loop
from logah_jax.train import objective
from logah_jax.train import optim
from logah_jax.train.data_spec import DataSpec
from logah_jax.train.sampler import ArchSampler
from logah_jax.validation import ConfigError

import configs_for_tests as cft

GHN = ghn_lib.named('logah-tiny')


def _tiny_space(**kw):
  fields = dict(width_rules=((1, 1, 32, 48, 16),), heads=4, patches=(7,))
  fields.update(kw)
  return arch_lib.make_space('vits-cpu', **fields)


def _fmnist_batches(n, batch_size=8):
  loader = Loader(get_dataset('fashion_mnist', 'validation'), batch_size,
                  seed=0)
  return [next(loader) for _ in range(n)]


def _tx(num_steps=10):
  return optim.make_optimizer(cft.optim_section(), num_steps)[0]


def _max_abs_diff(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------- the step


def _arch_program_temp_bytes(arch, batch):
  """XLA's temp memory of `arch`'s program, lowered on shapes alone."""
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  n_pad = batching.bucket_size(ghn_lib.num_nodes(GHN, arch))
  step = ghn_step.GHNStep(GHN, arch.family, optax.sgd(0.1), mesh, m=1,
                          n_pad=n_pad)
  abstract = lambda t: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
  params = jax.eval_shape(lambda: ghn_lib.init(GHN, arch.family, 0))
  # pylint: disable=protected-access
  x_nd = step._body.lower(params['body'],
                          abstract(step.inputs([arch]))).out_info[0]
  compiled = step._compile_arch(arch, 0).lower(
      params['decoder'], x_nd, abstract(batch)).compile()
  # pylint: enable=protected-access
  return compiled.memory_analysis().temp_size_in_bytes


def test_scanned_target_blocks_keep_only_their_matmul_outputs(monkeypatch):
  """The per-architecture program's scanned blocks store their matmul
  outputs for the backward, not every residual of the scan
  (`layers.scanned_remat`): less temp memory than the same program
  without it."""
  arch = arch_lib.GPT2Config(depth=3, width=64, heads=4, vocab_size=64,
                             n_positions=128)
  batch = {'tokens': np.zeros((8, 129), np.int32)}  # attention-heavy
  kept = _arch_program_temp_bytes(arch, batch)
  monkeypatch.setattr(layers, 'scanned_remat', lambda remat: remat)
  every = _arch_program_temp_bytes(arch, batch)
  assert kept < 0.7 * every  # 0.56 when written


def test_step_equals_monolithic_gradient():
  """Per-arch grads pulled back with jax.vjp = jax.grad of the whole loss."""
  sampler = ArchSampler(_tiny_space(patches=(4, 7)), 2, seed=0, pool_size=4)
  archs = [sampler.pool[0], sampler.pool[-1]]
  assert archs[0] != archs[1]
  batch = _fmnist_batches(1)[0]
  tx = _tx()
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  n_pad = sampler.node_bucket()
  # Compiled ahead on two threads: the AOT programs are the ones checked.
  step = ghn_step.GHNStep(GHN, 'vit', tx, mesh, m=2, n_pad=n_pad, gamma=3e-5,
                          compile_workers=2)
  params = ghn_lib.init(GHN, 'vit', 0)
  state, metrics = step(step.init_state(params), archs, batch,
                        upcoming=[archs[::-1]])
  step.close()
  # pylint: disable-next=protected-access
  programs = step._arch_programs
  assert sorted(programs, key=str) == sorted([(a, 0) for a in archs], key=str)
  assert all(isinstance(p, jax.stages.Compiled) for p in programs.values())

  inputs = ghn_lib.make_inputs(GHN, 'vit', archs, n_pad)
  body = ghn_lib.body_function(GHN, 'vit')

  def total_loss(p):
    x = body(p['body'], inputs)
    losses = []
    for b, a in enumerate(archs):
      n = ghn_lib.num_nodes(GHN, a)
      w = ghn_lib.decode_function(GHN, a)(p['decoder'], x[b, :n])
      ce, _, _ = objective.task_loss(a, w, batch)
      losses.append(ce + 3e-5 * objective.frobenius_sum(w))
    return sum(losses) / len(losses)

  loss, grads = jax.jit(jax.value_and_grad(total_loss))(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = optax.apply_updates(params, updates)
  np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['grad_norm']),
                             float(optax.tree.norm(grads)), rtol=1e-4)
  assert _max_abs_diff(state.params, expected) < 1e-6
  assert int(state.step) == 1


def test_gpt_step_with_a_periodic_output_layer_equals_the_full_loss():
  """A GPT-2 whose vocabulary is larger than the decoded block: the step
  computes the logits of one period of the tiled output layer
  (`ghn.vocab_period`); its loss, accuracy and update equal those of the
  full logits, computed monolithically."""
  cfg = dataclasses.replace(GHN, max_shape=(64, 64, 16, 16))
  arch = arch_lib.GPT2Config(depth=2, width=32, heads=4, vocab_size=300,
                             n_positions=32, tie_embeddings=False)
  assert ghn_lib.vocab_period(cfg, arch) == 64
  tokens = np.random.default_rng(0).integers(0, 64, (4, 17)).astype(np.int32)
  tokens[:, 1::4] += 64  # targets past the first period, never argmax's
  batch = {'tokens': tokens}
  tx = _tx()
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  n_pad = batching.bucket_size(ghn_lib.num_nodes(cfg, arch))
  step = ghn_step.GHNStep(cfg, 'gpt2', tx, mesh, m=1, n_pad=n_pad)
  params = ghn_lib.init(cfg, 'gpt2', 0)
  state, metrics = step(step.init_state(params), [arch], batch)

  inputs = ghn_lib.make_inputs(cfg, 'gpt2', [arch], n_pad)
  n = ghn_lib.num_nodes(cfg, arch)

  def total_loss(p):
    x = ghn_lib.body_function(cfg, 'gpt2')(p['body'], inputs)
    w = ghn_lib.decode_function(cfg, arch)(p['decoder'], x[0, :n])
    ce, logits, targets = objective.task_loss(arch, w, batch)
    acc = objective.correct(logits, targets) / targets.size
    return ce + 3e-5 * objective.frobenius_sum(w), (ce, acc)

  (loss, (ce, acc)), grads = jax.jit(jax.value_and_grad(
      total_loss, has_aux=True))(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = optax.apply_updates(params, updates)
  np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['ce']), float(ce), rtol=1e-5)
  assert float(metrics['acc']) == float(acc)
  np.testing.assert_allclose(float(metrics['grad_norm']),
                             float(optax.tree.norm(grads)), rtol=1e-4)
  # AdamW's first step divides each gradient by its own size, so a gradient
  # near zero moves by up to ~1e-6 with rounding alone (scanned blocks and
  # remat here, unrolled blocks in the reference).
  assert _max_abs_diff(state.params, expected) < 2e-6


def test_init_state_is_one_program_and_a_copy():
  """The fresh state (params and AdamW moments) comes from one compiled
  program, not one per zero leaf of a new shape; it equals the eager state
  and holds its own buffers (steps donate it)."""
  from logah_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  tx = _tx()
  step = ghn_step.GHNStep(GHN, 'vit', tx, mesh, m=1, n_pad=64)
  params = ghn_lib.init(GHN, 'vit', 0)
  before = compiles.snapshot()
  state = step.init_state(params)
  jax.block_until_ready(state)
  assert (compiles.snapshot() - before).count <= 1
  assert _max_abs_diff(state, state_lib.fresh(tx, params)) == 0
  for ours, theirs in zip(jax.tree.leaves(state.params),
                          jax.tree.leaves(params)):
    assert ours.unsafe_buffer_pointer() != theirs.unsafe_buffer_pointer()


@pytest.mark.slow  # ~60 s: compiles once per architecture over a whole pool
def test_compilations_stop_once_every_pool_arch_was_seen():
  space = _tiny_space(patches=(4, 7))
  sampler = ArchSampler(space, 2, seed=3, pool_size=6)
  distinct = sampler.distinct_archs()
  assert distinct == 4  # widths {32, 48} x patches {4, 7}, 4 heads
  mesh = parallel.make_mesh({'data': 2}, devices=jax.devices()[:2])
  step = ghn_step.GHNStep(GHN, 'vit', _tx(40), mesh, m=2,
                          n_pad=sampler.node_bucket(), compile_workers=2)
  state = step.init_state(ghn_lib.init(GHN, 'vit', 0))
  batches = _fmnist_batches(1)
  seen, s = set(), 0
  traces0 = compiles.trace_counts('ghn_step').get('arch', 0)
  while len(seen) < distinct:  # each step queues the next 3 steps' archs
    state, _ = step(state, sampler.at(s), batches[0],
                    upcoming=[sampler.at(t) for t in range(s + 1, s + 4)])
    seen.update(sampler.at(s))
    s += 1
  step.close()
  jax.block_until_ready(state)
  assert compiles.trace_counts('ghn_step')['arch'] - traces0 == distinct
  before = compiles.snapshot()
  for t in range(s, s + 8):
    state, m = step(state, sampler.at(t), batches[0])
    loop.host_metrics(m)
  assert (compiles.snapshot() - before).count == 0
  assert compiles.trace_counts('ghn_step')['arch'] - traces0 == distinct


@pytest.mark.slow  # ~70 s; fine-tuning's 1-vs-8-device test stays default
def test_one_device_and_eight_devices_give_the_same_params():
  """Same steps on 1 device and on 8 (2 arch groups x 4-way data split).

  Plain SGD, so that a float-rounding difference in a tiny gradient is not
  amplified into an lr-sized step as Adam's normalisation would.
  """
  sampler = ArchSampler(_tiny_space(patches=(4, 7)), 2, seed=0, pool_size=4)
  batches = _fmnist_batches(2)
  results, losses = [], []
  for axes, n_dev in (({'data': 1}, 1), ({'arch': 2, 'data': 4}, 8)):
    mesh = parallel.make_mesh(axes, devices=jax.devices()[:n_dev])
    step = ghn_step.GHNStep(GHN, 'vit', optax.sgd(0.1), mesh, m=2,
                            n_pad=sampler.node_bucket())
    state = step.init_state(ghn_lib.init(GHN, 'vit', 0))
    for s, batch in enumerate(batches):
      state, metrics = step(state, sampler.at(s), batch)
      losses.append(float(metrics['loss']))
    results.append(jax.device_get(state.params))
    if n_dev == 8:
      assert len(step.groups) == 2
      leaf = jax.tree.leaves(state.params)[0]
      assert len(leaf.sharding.device_set) == 8
  np.testing.assert_allclose(losses[:2], losses[2:], rtol=1e-5)
  assert _max_abs_diff(*results) < 1e-6
  assert _max_abs_diff(results[0], ghn_lib.init(GHN, 'vit', 0)) > 1e-3


@pytest.mark.slow  # opt-in: keeps the default run under 15 minutes
def test_bfloat16_graphormer_trains_with_float32_params():
  cfg = ghn_lib.named('logah-tiny', dtype='bfloat16')
  sampler = ArchSampler(_tiny_space(), 1, seed=0, pool_size=1)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  step = ghn_step.GHNStep(cfg, 'vit', _tx(), mesh, m=1,
                          n_pad=sampler.node_bucket())
  state = step.init_state(ghn_lib.init(cfg, 'vit', 0))
  for s, batch in enumerate(_fmnist_batches(2)):
    state, metrics = step(state, sampler.at(s), batch)
    assert bool(metrics['finite']) and np.isfinite(float(metrics['loss']))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype('float32')}
  assert int(state.step) == 2


def test_sampler_is_a_function_of_seed_and_step():
  a = ArchSampler('vits-cpu', 3, seed=5, pool_size=10)
  b = ArchSampler('vits-cpu', 3, seed=5, pool_size=10)
  assert [a.at(s) for s in range(5)] == [b.at(s) for s in range(5)]
  assert all(x in a.pool for s in range(20) for x in a.at(s))
  fresh = ArchSampler('gpts-cpu', 2, seed=0, pool_size=0)
  assert fresh.distinct_archs() == 9  # 3 depths x 3 widths, 4 heads
  assert set(fresh.at(7)) <= set(fresh.candidates())
  with pytest.raises(ValueError, match='train.m'):
    ArchSampler('vits-cpu', 0)
  with pytest.raises(ValueError, match='pool_size'):
    ArchSampler('vits-cpu', 1, pool_size=-1)


# ------------------------------------------------------------- the loop


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """A 6-step run compiling ahead on 2 threads ('auto' is 0 on CPUs); the
  resume test below re-runs it without, and needs the same params."""
  workdir = str(tmp_path_factory.mktemp('full'))
  config = cft.smoke()
  config.train.compile_workers = '2'  # a str field, as on the command line
  return workdir, ghn_training.train_ghn(config, workdir)


@pytest.mark.slow  # the default run kills fine-tuning; -m faults kills GHN runs
def test_interrupted_run_resumes_to_the_same_params(uninterrupted, tmp_path):
  _, full = uninterrupted
  workdir = str(tmp_path)
  first = ghn_training.train_ghn(cft.smoke(), workdir, stop_after_steps=4)
  assert first.step == 4
  assert _max_abs_diff(first.params, full.params) > 0  # really stopped early
  resumed = ghn_training.train_ghn(cft.smoke(), workdir)
  assert resumed.step == full.step == 6
  assert _max_abs_diff(resumed.params, full.params) == 0.0
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == [2, 3, 4, 6]  # checkpoint at 3


def test_run_writes_metrics_plot_and_config(uninterrupted):
  workdir, result = uninterrupted
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == [2, 3, 4, 6]  # checkpoint at 3
  for key in ('loss', 'ce', 'reg', 'acc', 'grad_norm', 'lr', 'arch_per_s',
              'compiles'):
    assert all(np.isfinite(r[key]) for r in rows), key
  with open(os.path.join(workdir, 'training_curves.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  stored = json.load(open(os.path.join(workdir, 'checkpoints',
                                       'config.json')))
  assert stored['ghn']['hid'] == 64 and stored['train']['m'] == 2
  assert result.traces['body'] >= 1


@pytest.mark.slow  # ghn.load also runs in the main job's test
def test_ghn_load_returns_the_trained_ghn(uninterrupted):
  workdir, result = uninterrupted
  trained = ghn_lib.load(workdir)
  assert trained.step == 6 and trained.family == 'vit'
  # The training config, plus the widest architecture of the run's pool.
  stored = json.load(open(os.path.join(workdir, 'checkpoints',
                                       'config.json')))
  assert trained.cfg == dataclasses.replace(
      ghn_lib.named('logah-tiny'),
      trained_width=ghn_lib.trained_width(stored))
  assert trained.cfg.trained_width in (32, 48, 64, 80, 96)
  assert _max_abs_diff(trained.params, result.params) == 0.0
  target = arch_lib.ViTConfig(depth=5, width=96, heads=4, mlp_dim=384,
                              patch=7, image_size=28, channels=1,
                              num_classes=10)
  got = trained.predict(target)
  want = ghn_lib.predict(trained.cfg, result.params, target)
  assert _max_abs_diff(got, want) == 0.0
  with pytest.raises(FileNotFoundError, match='no GHN training run'):
    ghn_lib.load(os.path.join(workdir, 'nothing-here'))


@pytest.mark.slow  # the default run stops a NaN fine-tuning run (test_bad_inputs)
def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(
    uninterrupted, tmp_path, monkeypatch):
  real = DataSpec.loader

  def poisoned(data, *args):
    loader = real(data, *args)
    original = loader.__class__.__next__

    class Poisoned(loader.__class__):
      def __next__(self):
        batch = original(self)
        if self.step == 5:  # the batch of step 5
          batch['image'] = batch['image'] * np.nan
        return batch
    loader.__class__ = Poisoned
    return loader

  monkeypatch.setattr(DataSpec, 'loader', poisoned)
  workdir = str(tmp_path)
  with pytest.raises(loop.NonFiniteLossError, match='step 5.*step 3'):
    ghn_training.train_ghn(cft.smoke(), workdir)
  monkeypatch.undo()
  trained = ghn_lib.load(workdir)
  assert trained.step == 3
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(trained.params))


def test_workdir_of_another_config_is_refused_before_training(uninterrupted):
  workdir, _ = uninterrupted
  config = cft.smoke()
  config.optim.lr = 1e-3
  before = compiles.snapshot()
  with pytest.raises(ValueError, match="optim.lr"):
    ghn_training.train_ghn(config, workdir)
  assert (compiles.snapshot() - before).count == 0


@pytest.mark.parametrize('field,value,match', [
    ('data.name', 'mnist', 'Unknown dataset'),
    ('space.name', 'vits-9k', 'unknown'),
    # the section holds every field of its space: a new name alone relabels
    ('space.name', 'vits-1k', r"^config\.space\.name='vits-1k' but the other "
     r"config\.space fields are mostly those of 'vits-cpu'"),
    ('train.m', 0, 'train.m'),
    ('data.batch_size', 0, 'data.batch_size'),
    ('train.num_steps', 0, 'train.num_steps'),
    ('optim.warmup_steps', 100, 'warmup_steps'),
    ('optim.end_lr', -1e-3, r'config\.optim\.end_lr=-0\.001 must be >= 0'),
    ('optim.warmup_init', -1e-5, r'config\.optim\.warmup_init=-1e-05'),
    ('optim.b2', 1.5, r'config\.optim\.b2=1\.5 must be in \[0, 1\)'),
    ('optim.b1', -0.1, r'config\.optim\.b1=-0\.1'),
    ('optim.eps', -1.0, r'config\.optim\.eps=-1\.0 must be > 0'),
    ('train.arch_seed', -1, r'config\.train\.arch_seed=-1 must be an int'),
    ('train.gamma', float('nan'), r'config\.train\.gamma=nan must be a '
     'finite number'),
    ('train.gamma', float('inf'), r'config\.train\.gamma=inf must be a '
     'finite number'),
    # m = 2 architectures a step: a third and fourth group would stay idle
    ('mesh.arch', 4, r'^config\.mesh\.arch=4 exceeds config\.train\.m=2'),
    ('space.channels', 3, 'channels'),
    ('data.name', 'shakespeare', 'text dataset'),
])
def test_bad_config_is_one_clear_error(tmp_path, field, value, match):
  config = cft.smoke()
  section, key = field.split('.')
  config[section][key] = value
  before = compiles.snapshot()
  with pytest.raises(ValueError, match=match):
    ghn_training.train_ghn(config, str(tmp_path))
  assert (compiles.snapshot() - before).count == 0
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_every_architecture_the_run_can_draw_is_checked_first(tmp_path):
  """The decoder's limit binds at the widest architecture (48 here, whose
  patch embedding needs a 336-row block), not the deepest: a run once
  checked only the deepest, narrowest one, trained and saved, and failed
  at the first step that drew the width-48 ViT."""
  config = cft.smoke()
  config.ghn.max_shape = (128, 128, 16, 16)
  config.ghn.max_ck = 300
  before = compiles.snapshot()
  with pytest.raises(ValueError, match=r'^config\.ghn cannot predict '
                     r'vit-L1-C48\S*, an architecture of config\.space: .*'
                     r'max_ck=300'):
    ghn_training.train_ghn(config, str(tmp_path))
  assert (compiles.snapshot() - before).count == 0
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))
  config.ghn.max_ck = 400  # every candidate fits: the same config builds
  assert ghn_training.build_run(config).ghn_cfg.max_ck == 400


def test_compile_ahead_stops_at_the_last_step_run():
  """A run that stops early (`stop_after_steps`) compiles ahead only the
  architectures of the steps it runs."""
  sampler = type('Sampler', (), {'at': lambda self, i: [f'arch{i}'],
                                 'seed': 0, 'pool_size': 9, 'm': 1})()
  run = type('Run', (), {'sampler': sampler, 'compile_workers': 2,
                         'num_steps': 20, 'schedule': None, 'log_every': 5,
                         'checkpoint': loop.CheckpointOptions(5, 1, False),
                         'title': 'fake'})()
  calls = []

  def stepper(state, archs, batch, upcoming):
    calls.append((archs, list(upcoming)))
    return state, {}
  task = ghn_training._task(run, stepper, iter(range(99)), end=6)
  task.step(0, 0)
  task.step(0, 4)
  assert calls == [(['arch0'], [[f'arch{i}'] for i in range(1, 6)]),
                   (['arch4'], [['arch5']])]
  run.compile_workers = 0
  ghn_training._task(run, stepper, iter(range(99)), end=6).step(0, 1)
  assert calls[-1] == (['arch1'], [])


def test_compile_workers_setting(monkeypatch):
  assert ghn_training.compile_workers('auto') == 0  # CPU backend
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(os, 'cpu_count', lambda: 16)
  assert ghn_training.compile_workers('auto') == 8
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  assert ghn_training.compile_workers('auto') == 2
  assert ghn_training.compile_workers(3) == ghn_training.compile_workers('3') == 3
  assert ghn_training.compile_workers(0) == 0
  for bad in (-1, 'many', '-1', 1.5):
    with pytest.raises(ConfigError, match='config.train.compile_workers'):
      ghn_training.compile_workers(bad)
