"""How a prediction is compiled: per-shape programs equal the traced decoder,
are compiled once each on their own thread, and are reused across depths;
the traced decoder reads its nodes with slices, not gathers."""

import collections
import concurrent.futures
import dataclasses
import itertools
import threading

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from configs_for_tests import SMALL_GHN as SMALL, SMALL_GHN3
from ghn_checks import assert_same_structure
from logah_jax import arch, ghn
from logah_jax.ghn import plan as plan_lib
from logah_jax.ghn import per_shape, rows, writeback


@pytest.mark.parametrize('ghn_cfg', [
    SMALL, pytest.param(SMALL_GHN3, marks=pytest.mark.slow)],
                         ids=['lowrank', 'fullrank'])
def test_per_shape_prediction_equals_the_traced_decoder(ghn_cfg):
  # `predict` runs the write-back as programs compiled per tensor shape;
  # GHN training traces `decode_function` into its step. Same values.
  for cfg in [arch.GPT2Config(depth=3, width=64, heads=4, vocab_size=300,
                              n_positions=64, tie_embeddings=False),
              arch.ViTConfig(depth=2, width=48, heads=3, mlp_dim=96, patch=7,
                             image_size=28, channels=1, num_classes=10)]:
    params = ghn.init(ghn_cfg, cfg.family, seed=0)
    n = ghn.num_nodes(ghn_cfg, cfg)
    x = ghn.node_embeddings(ghn_cfg, params, [cfg])[0, :n]
    traced = ghn.decode(ghn_cfg, params, cfg, x, per_shape=False)
    per_shape = ghn.decode(ghn_cfg, params, cfg, x)
    assert jax.tree.structure(per_shape) == jax.tree.structure(traced)
    for a, b in zip(jax.tree.leaves(per_shape), jax.tree.leaves(traced)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _m4_products(cfg, target):
  """The traced decoder's products by M4's kernel (or its leading columns),
  as (width, input rows) pairs, and the plan's request groups."""
  params = ghn.init(cfg, target.family, seed=0)
  x = jnp.zeros((ghn.num_nodes(cfg, target), cfg.hid))
  jaxpr = jax.make_jaxpr(ghn.decode_function(cfg, target))(
      params['decoder'], x)
  rank = params['decoder']['m4']['kernel'].shape[0]  # M4's kernel: [r, K]

  def products(jaxpr):  # M4's products: the only ones by an r-row matrix
    out = []
    for eqn in jaxpr.eqns:
      if (eqn.primitive.name == 'dot_general' and eqn.invars[1].aval.ndim == 2
          and eqn.invars[1].aval.shape[0] == rank):
        out.append((eqn.invars[1].aval.shape[1], eqn.invars[0].aval.shape[0]))
      for sub in jax_core.jaxprs_in_params(eqn.params):
        out += products(sub)
    return out
  return products(jaxpr.jaxpr), len(plan_lib.make_plan(cfg, target).groups())


def test_traced_decoder_multiplies_by_m4_in_a_few_products_for_all_small_requests(
    monkeypatch):
  """The 'paper' factors of every request of at most K / r rows and
  columns read two rows of Y; the traced decoder computes those for all
  its nodes in at most `leading_products()` products (not two per request
  group), each only as wide as the widest of its requests reads (not all
  K columns)."""
  target = arch.GPT2Config(depth=3, width=64, heads=4, vocab_size=300,
                           n_positions=64, tie_embeddings=False)
  # three on CPUs, one on accelerators, where they cost more to compile
  # than they save
  assert writeback.leading_products('cpu') == 3
  assert writeback.leading_products('gpu') == 1
  assert writeback.leading_products('tpu') == 1
  assert jax.default_backend() == 'cpu'
  few, _ = _m4_products(SMALL, target)
  monkeypatch.setattr(writeback, 'LEADING_PRODUCTS', {'cpu': 1})
  one, groups = _m4_products(SMALL, target)
  # one product, as wide as the widest request reads: a vector group's
  # [2 x 128] blocks (the GHN's largest) come from a 256 x 1 product, whose
  # factors read 256 x r columns of K
  assert groups > 2 and [w for w, _ in one] == [256 * SMALL.rank]
  assert one[0][0] < SMALL.max_ck
  assert len(few) == 3 and max(w for w, _ in few) == 256 * SMALL.rank
  # the same nodes' rows, in fewer columns: the cheapest split into three
  # classes by width of the requests that read the leading rows
  dec = writeback.decoder_module(SMALL)
  items = []
  for req, nodes in plan_lib.make_plan(SMALL, target).groups().items():
    shape = writeback._factor_shape(req)  # pylint: disable=protected-access
    if dec.reads_leading_rows(*shape):
      items.append((max(shape) * SMALL.rank, 2 * len(nodes)))
  assert sum(n for _, n in few) == one[0][1] == sum(n for _, n in items)
  assert sum(w * n for w, n in few) == _brute_force_split(items, 3)
  assert sum(w * n for w, n in few) < 0.8 * one[0][0] * one[0][1]
  monkeypatch.setattr(writeback, '_leading_rows', lambda *_: {})
  per_group, _ = _m4_products(SMALL, target)
  assert len(per_group) == 2 * groups


def _brute_force_split(items, max_classes):
  """The least total cost of any split of `items` into at most
  `max_classes` classes, each costing its rows x its widest width."""
  best = float('inf')
  for labels in itertools.product(range(max_classes), repeat=len(items)):
    cost = 0
    for c in set(labels):
      members = [items[i] for i, l in enumerate(labels) if l == c]
      cost += max(w for w, _ in members) * sum(n for _, n in members)
    best = min(best, cost)
  return best


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('max_classes', [1, 2, 3])
def test_width_classes_is_the_cheapest_split(seed, max_classes):
  rng = np.random.default_rng(seed)
  items = [(int(w), int(n)) for w, n in zip(rng.choice([64, 128, 320, 512,
                                                        1024], 6),
                                            rng.integers(1, 30, 6))]
  classes = rows.width_classes(items, max_classes)
  assert sorted(i for c in classes for i in c) == list(range(len(items)))
  assert 1 <= len(classes) <= max_classes
  widest = [items[c[0]][0] for c in classes]
  assert widest == sorted(widest, reverse=True)
  assert all(items[c[0]][0] == max(items[i][0] for i in c) for c in classes)
  cost = sum(items[c[0]][0] * sum(items[i][1] for i in c) for c in classes)
  assert cost == _brute_force_split(items, max_classes)


@pytest.mark.parametrize('sel', [
    [3], [0, 2, 4, 6], [1, 7, 12, 17, 22], [0, 5, 20, 21], [2, 1, 0],
    [5, 5, 5], [1, 3, 7, 8, 12, 13], list(range(9)), list(range(27))])
def test_take_rows_equals_numpy_indexing_with_its_gradient(sel):
  x = np.arange(27.0 * 2).reshape(27, 2)
  np.testing.assert_array_equal(rows.take_rows(jnp.asarray(x), sel),
                                x[sel])
  w = np.arange(2.0 * len(sel)).reshape(-1, 2) + 1
  got = jax.grad(lambda x: jnp.sum(rows.take_rows(x, sel) * w))(
      jnp.asarray(x))
  want = np.zeros_like(x)
  np.add.at(want, sel, w)
  np.testing.assert_array_equal(got, want)


def _gathered(jaxpr, out=None) -> list:
  """The shapes of the arrays `jaxpr` gathers from or scatters into."""
  out = [] if out is None else out
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('gather', 'scatter-add'):
      out.append((eqn.primitive.name, eqn.invars[0].aval.shape))
    for sub in jax_core.jaxprs_in_params(eqn.params):
      _gathered(sub, out)
  return out


@pytest.mark.parametrize('target', [
    arch.GPT2Config(depth=4, width=64, heads=4, vocab_size=300,
                    n_positions=64, tie_embeddings=False),
    arch.ViTConfig(depth=4, width=48, heads=3, mlp_dim=96, patch=7,
                   image_size=28, channels=1, num_classes=10)],
                         ids=['gpt2', 'vit'])
def test_traced_decoder_reads_recipes_with_slices(target):
  """A recipe's nodes are one per block (and at most a few others), evenly
  spaced in plan order, and its leaves are rows of its group's output: the
  decoder reads both with slices, whose gradients are pads. The gradient
  of the traced decoder, as GHN training takes it, gathers and scatters
  only the node embeddings of the plan's nodes and their small hidden
  rows, once each: never the decoder's wide outputs or the leaves."""
  params = ghn.init(SMALL, target.family, seed=0)
  x = jnp.zeros((ghn.num_nodes(SMALL, target), SMALL.hid))
  decode = ghn.decode_function(SMALL, target, stacked=True)
  loss = lambda p, x: sum(jnp.sum(v) for v in jax.tree.leaves(decode(p, x)))
  got = _gathered(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(
      params['decoder'], x).jaxpr)
  n_params = len(plan_lib.make_plan(SMALL, target).nodes)
  hidden = (n_params, 2 * SMALL.rank, SMALL.rank)
  assert sorted(got) == sorted([('gather', x.shape), ('scatter-add', x.shape),
                                ('gather', hidden),
                                ('scatter-add', hidden)]), got


@pytest.mark.parametrize('committed', [False, True])
def test_prediction_programs_are_compiled_once_each_on_the_compile_thread(
    committed):
  # The per-shape programs are compiled ahead on a thread; the calls must
  # find them in jit's cache (same avals and shardings), not compile again,
  # whether the GHN's arrays are committed to a device (restored) or not.
  cfg = dataclasses.replace(SMALL, hid=40 if committed else 48)  # new programs
  target = arch.GPT2Config(depth=3, width=96, heads=4, vocab_size=300,
                           n_positions=64)
  params = ghn.init(cfg, 'gpt2', seed=0)
  if committed:
    params = jax.device_put(params, jax.devices()[0])
    assert jax.tree.leaves(params)[0].committed
  compiled = collections.Counter()

  def listener(event, duration, **kw):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      compiled[kw.get('fun_name'), threading.current_thread().name] += 1

  x = ghn.node_embeddings(cfg, params, [target])[0, :ghn.num_nodes(cfg,
                                                                   target)]
  groups = plan_lib.make_plan(cfg, target).groups()
  n_recipes = len({r for nodes in groups.values()
                   for r in writeback.recipes(nodes)})
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    got = ghn.decode(cfg, params, target, x)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.config.update('jax_enable_compilation_cache', cache)
  on = lambda name: {t: n for (f, t), n in compiled.items() if f == name}
  assert on('jit(group)') == {'logah-compile_0': len(groups)}
  # leaf programs are keyed by shapes, which other tests may have compiled
  assert set(on('jit(leaf)')) == {'logah-compile_0'}
  assert 0 < on('jit(leaf)')['logah-compile_0'] <= n_recipes
  assert set(on('jit(_block_of)')) == {'logah-compile_0'}
  assert set(on('jit(hidden)')) == {'logah-compile_0'}
  want = ghn.decode(cfg, params, target, x, per_shape=False)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_predicting_several_archs_compiles_on_one_thread():
  cfg = dataclasses.replace(SMALL, hid=36, heads=4)  # new programs
  targets = [arch.GPT2Config(depth=d, width=w, heads=4, vocab_size=300,
                             n_positions=64) for d, w in ((2, 96), (3, 160))]
  params = ghn.init(cfg, 'gpt2', seed=0)
  threads = collections.defaultdict(set)

  def listener(event, duration, **kw):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      threads[kw.get('fun_name')].add(threading.get_ident())

  cache = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    got = ghn.predict(cfg, params, targets)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.config.update('jax_enable_compilation_cache', cache)
  ahead = set().union(*(threads[f'jit({name})'] for name in
                        ('hidden', 'group', '_block_of', 'leaf')))
  assert len(ahead) == 1 and threading.get_ident() not in ahead
  for target, params_of in zip(targets, got):
    assert_same_structure(params_of, target)


def test_a_failed_prediction_cancels_the_compiles_not_started(monkeypatch):
  cfg = dataclasses.replace(SMALL, hid=44)  # programs no other test compiled
  target = arch.GPT2Config(depth=4, width=96, heads=4, vocab_size=300,
                           n_positions=64)
  params = ghn.init(cfg, 'gpt2', seed=0)
  plan = plan_lib.make_plan(cfg, target)
  x = jax.ShapeDtypeStruct((ghn.num_nodes(cfg, target), cfg.hid), jnp.float32)
  ahead = per_shape.compile_ahead(cfg, params['decoder'], plan, x)

  def fail(*args):
    raise RuntimeError('decode failed')
  monkeypatch.setattr(per_shape, '_decode', fail)
  with pytest.raises(RuntimeError, match='decode failed'):
    per_shape.decode_arch_per_shape(cfg, params['decoder'],
                                    jnp.zeros(x.shape), plan, {}, ahead)
  concurrent.futures.wait(list(ahead.futures.values()))
  assert sum(f.cancelled() for f in ahead.futures.values()) > 0


def test_deeper_model_of_known_shapes_compiles_no_new_leaf_program():
  params = ghn.init(SMALL, 'gpt2', seed=0)
  shallow, deep = (arch.GPT2Config(depth=d, width=64, heads=4, vocab_size=300,
                                   n_positions=64) for d in (2, 5))
  ghn.predict(SMALL, params, shallow)
  before = ghn.trace_counts()
  ghn.predict(SMALL, params, deep)
  after = ghn.trace_counts()
  assert after['decode.leaf'] == before['decode.leaf']
  # the decoder groups (their node count grew) and the body do compile
  assert after['decode.group'] > before['decode.group']
