"""The hypernetwork: counts, config, vocabulary, predictions, gradients."""

import collections
import dataclasses

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from configs_for_tests import SMALL_GHN as SMALL, SMALL_GHN3
from ghn_checks import assert_same_structure, finite_forward
from logah_jax import arch, ghn, models
from logah_jax.arch import batching
from logah_jax.ghn import plan as plan_lib
from logah_jax.ghn import vocab
from logah_jax.ghn.graphormer import GraphormerLayer

TINY = ghn.named('logah-tiny')

# LoGAH Table 1 and GHN-3 (arXiv 2405.16287 Table 1; docs/algorithm.md §4),
# written as literals.
PAPER_COUNTS = {
    ('logah-tiny', 'vit', None): 2_539_324,
    ('logah-small', 'vit', None): 21_404_604,
    ('logah-base', 'vit', None): 78_215_380,
    ('logah-large', 'vit', None): 289_357_524,
    ('logah-tiny', 'gpt2', None): 2_539_324 + 64 // 4,
    ('logah-large', 'gpt2', None): 289_357_524 + 256 // 4,
}
GHN3_MILLIONS = {'ghn3-tiny': 6.907, 'ghn3-small': 35.810,
                 'ghn3-large': 214.669, 'ghn3-xl': 654.365}


@pytest.mark.parametrize('key', sorted(PAPER_COUNTS))
def test_logah_counts_equal_the_paper(key):
  name, family, ncls = key
  assert ghn.num_params(ghn.named(name), family, ncls) == PAPER_COUNTS[key]


@pytest.mark.parametrize('name', sorted(GHN3_MILLIONS))
def test_ghn3_counts_equal_the_paper(name):
  n = ghn.num_params(ghn.named(name), 'vit', num_classes=1000)
  assert round(n / 1e6, 3) == GHN3_MILLIONS[name]


def test_logah_count_independent_of_classes():
  counts = {ghn.num_params(TINY, 'vit', c) for c in (10, 100, 1000)}
  assert counts == {2_539_324}


@pytest.mark.parametrize('kwargs, field', [
    (dict(rank=0), 'rank=0'), (dict(rank=-3), 'rank=-3'),
    (dict(hid=60, heads=8), 'hid=60'), (dict(decoder='mlp'), 'decoder'),
    (dict(factorization='svd'), 'factorization'),
    (dict(max_ck=100), 'max_ck=100'), (dict(dtype='float16'), 'dtype'),
    (dict(cutoff=255), 'cutoff=255 must be at most 254'),
    (dict(max_shape=(2048, 2048, True, True)), r'max_shape\[2\]=True'),
    (dict(normalize='false'), "normalize='false' must be True or False"),
    (dict(final_ln=None), 'final_ln=None must be True or False'),
    (dict(decoder='fullrank', hid=64, max_shape=(64, 64, 4, 8)),
     'full-rank decoder needs h == w'),
])
def test_bad_ghn_config_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ghn.GHNConfig(**kwargs)


def test_ghn_config_takes_numpy_ints_as_ints():
  cfg = ghn.GHNConfig(max_shape=tuple(np.int64(v) for v in (2048, 2048, 16,
                                                            16)))
  assert cfg.max_shape == (2048, 2048, 16, 16)
  assert all(type(v) is int for v in cfg.max_shape)
  assert cfg == ghn.GHNConfig()  # one cache key, one program


def test_named_ghns():
  assert ghn.named('logah-small').rank == 90
  assert ghn.named('ghn3-large').max_shape == (256, 256, 16, 16)
  with pytest.raises(ValueError, match="name='logah-xxl'"):
    ghn.named('logah-xxl')
  with pytest.raises(ValueError, match="'rnak'"):
    ghn.named('logah-tiny', rnak=3)


@pytest.mark.parametrize('name', ['logah-tiny', 'ghn3-tiny'])
def test_embedding_tables_start_at_std_of_their_own_width(name):
  # GHN-3's `_init_embed`: trunc-normal of std w^-1/2 for a table w wide,
  # so the (d/4)-wide channel and spatial tables start at 2 d^-1/2. Tables
  # of one width are pooled so that each check has thousands of entries.
  body = ghn.init(ghn.named(name), 'vit', seed=0)['body']
  by_width = collections.defaultdict(list)
  for path, leaf in jax.tree_util.tree_leaves_with_path(body):
    if jax.tree_util.keystr(path).endswith(("['embedding']",
                                            "['edge_embed']")):
      by_width[leaf.shape[1]].append(np.asarray(leaf).ravel())
  d = ghn.named(name).hid
  assert sorted(by_width) == [d // 4, d]
  for width, tables in by_width.items():
    values = np.concatenate(tables)
    assert values.size > 5000, (width, values.size)
    np.testing.assert_allclose(values.std(), width ** -0.5, rtol=0.1,
                               err_msg=f'width {width}')


def test_shape_vocabulary():
  ch = vocab.channel_vocab('vit', 10)
  assert len(ch) == 391 and len(vocab.channel_vocab('gpt2', 10)) == 392
  idx = lambda v: int(ch[vocab.channel_index(ch, np.array(v))])
  assert [idx(v) for v in (1, 2, 3, 4, 7, 10, 100, 384, 50257)] == [
      1, 1, 3, 8, 8, 10, 96, 384, 8192]
  gpt = vocab.channel_vocab('gpt2', 10)
  assert int(gpt[vocab.channel_index(gpt, np.array(50257))]) == 50257
  sp = vocab.spatial_vocab(16)
  assert list(sp) == [1, 3, 5, 7, 9, 11, 13, 14, 15, 16]
  assert [int(sp[vocab.spatial_index(sp, np.array(v))]) for v in
          (1, 2, 12, 14, 32)] == [1, 3, 11, 14, 16]
  with pytest.raises(ValueError, match='negative'):
    vocab.shape_indices(np.array([[-1, 1, 1, 1]]), 'vit', 10, 16)


def test_min_size_examples():
  got = {v: vocab.min_size(v, 2048) for v in
         (384, 768, 1024, 1152, 1280, 1536, 2304, 3072, 5120, 50257, 100,
          1000, 3)}
  assert got == {384: 512, 768: 2048, 1024: 2048, 1152: 2048, 1280: 2048,
                 1536: 2048, 2304: 2048, 3072: 2048, 5120: 2048,
                 50257: 2048, 100: 100, 1000: 1000, 3: 4}


def test_key_table_matches_the_original_for_vit_s():
  # The keys the original code produces for ViT-S/2 on CIFAR-100
  # (docs/algorithm.md §4.1).
  cfg = arch.named('vit-s/2', num_classes=100)
  keys = collections.Counter(p.key for p in plan_lib.make_plan(TINY, cfg).nodes)
  assert keys == {(512, 4, 2, 2): 1, (512, 0): 50, (1, 384, 16, 16): 1,
                  (2048, 512, 1, 1): 24, (2048, 0): 24, (512, 512, 1, 1): 12,
                  (512, 2048, 1, 1): 12, (100, 512): 1, (100, -1): 1}


SAMPLED = (arch.sample('vits-cpu', 3, 0) + arch.sample('gpts-cpu', 3, 0)
           + arch.sample('vits-1k', 2, 1) + arch.sample('gpts-1k', 1, 1))


@pytest.mark.parametrize('ghn_cfg', [
    pytest.param(SMALL, marks=pytest.mark.slow),
    pytest.param(SMALL_GHN3, marks=pytest.mark.slow)], ids=['logah', 'ghn3'])
def test_predict_sampled_architectures(ghn_cfg):
  for family in ('vit', 'gpt2'):
    params = ghn.init(ghn_cfg, family, seed=0)
    cfgs = [c for c in SAMPLED if c.family == family]
    preds = ghn.predict(ghn_cfg, params, cfgs)
    for cfg, pred in zip(cfgs, preds):
      assert_same_structure(pred, cfg)
      finite_forward(cfg, pred)


_SLOW_NAMES = ('gpt2-large', 'gpt2-large-untied', 'gpt2-medium',
               'gpt2-medium-untied',
               'vit-b/16', 'vit-b/2', 'vit-l/2',
               'vit-l/16')  # covered by their twins


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_NAMES else n
    for n in arch.names() if n not in ('vit-s', 'vit-b', 'vit-l')])
def test_predict_named_structure(name):  # the bare vit-x names are aliases
  cfg = arch.named(name)
  params = ghn.init(TINY, cfg.family, seed=0)
  pred = jax.eval_shape(lambda p: ghn.predict(TINY, p, cfg), params)
  assert_same_structure(pred, cfg)


@pytest.mark.parametrize('name', [
    pytest.param('vit-s/2', marks=pytest.mark.slow), 'gpt2-small-untied'])
def test_predict_named_runs_to_finite_logits(name):
  cfg = arch.named(name)
  pred = ghn.predict(TINY, ghn.init(TINY, cfg.family, seed=0), cfg)
  assert_same_structure(pred, cfg)
  finite_forward(cfg, pred)


@pytest.mark.slow  # about 40 s: several architectures padded into one batch
def test_batched_prediction_equals_solo():
  cfgs = [arch.ViTConfig(depth=2, width=64, heads=4, mlp_dim=256, patch=4,
                         image_size=28, channels=1, num_classes=10),
          arch.ViTConfig(depth=9, width=128, heads=4, mlp_dim=512, patch=4,
                         image_size=28, channels=1, num_classes=10),
          arch.ViTConfig(depth=3, width=96, heads=6, mlp_dim=384, patch=7,
                         image_size=28, channels=1, num_classes=10)]
  params = ghn.init(SMALL, 'vit', seed=3)
  batch = ghn.predict(SMALL, params, cfgs)
  for cfg, got in zip(cfgs, batch):
    solo = ghn.predict(SMALL, params, cfg)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(solo)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_real_nodes():
  cfg = arch.sample('vits-cpu', 1, 4)[0]
  params = ghn.init(SMALL, 'vit', seed=0)
  n = plan_lib.make_plan(SMALL, cfg).graph.n_nodes
  small = ghn.node_embeddings(SMALL, params, [cfg], n_pad=64)[0, :n]
  big = ghn.node_embeddings(SMALL, params, [cfg], n_pad=256)[0, :n]
  np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-5)


def test_predictions_are_deterministic():
  cfg = arch.named('vit-s/2')
  params = ghn.init(SMALL, 'vit', seed=0)
  a, b = ghn.predict(SMALL, params, cfg), ghn.predict(SMALL, params, cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_fresh_ghn_predicts_unit_norm_weights_and_small_biases():
  cfg = arch.named('vit-s/2', num_classes=100)
  pred = ghn.predict(TINY, ghn.init(TINY, 'vit', seed=0), cfg)
  layer = pred['encoder_layer_3']
  for ln in (layer['ln_1'], layer['ln_2'], pred['ln']):
    assert abs(float(ln['scale'].mean()) - 1.0) < 0.05
    assert float(jnp.abs(ln['bias']).max()) < 0.1
  assert float(jnp.abs(layer['mlp']['fc1']['bias']).max()) < 0.1


def test_normalisation_is_exactly_the_published_rule():
  cfg = arch.GPT2Config(depth=8, width=64, heads=4, vocab_size=256,
                        n_positions=32, tie_embeddings=False)
  params = ghn.init(SMALL, 'gpt2', 0)
  pred = ghn.predict(SMALL, params, cfg)
  raw = ghn.predict(dataclasses.replace(SMALL, normalize=False), params, cfg)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # HF Conv1D (in, out): fan-in scaling uses numel(p[0]) = out features
  # (docs/algorithm.md §5.2), beta = 2; residual projections also
  # / sqrt(2 * depth) = 4.
  for name, out_f, residual in [('c_attn', 192, False), ('c_proj', 64, True)]:
    scale = np.sqrt(2 / out_f) / (4.0 if residual else 1.0)
    close(pred['h_2']['attn'][name]['kernel'],
          raw['h_2']['attn'][name]['kernel'] * scale)
  close(pred['h_2']['mlp']['c_proj']['kernel'],
        raw['h_2']['mlp']['c_proj']['kernel'] * np.sqrt(2 / 64) / 4.0)
  close(pred['h_2']['ln_1']['scale'],
        2 * jax.nn.sigmoid(0.5 * raw['h_2']['ln_1']['scale']))
  close(pred['h_2']['attn']['c_attn']['bias'],
        jnp.tanh(0.2 * raw['h_2']['attn']['c_attn']['bias']))
  close(pred['wte']['embedding'], raw['wte']['embedding'])  # never rescaled


@pytest.mark.parametrize('vocab', [50257, 1000])
def test_tiling_repeats_with_the_key_period(vocab):
  # GPT-2 vocab 50257 > max_shape 2048: rows repeat with period 2048 (128
  # for this GHN). 393 copies are tiled by jnp.tile, 8 (1000 rows) joined.
  cfg = arch.GPT2Config(depth=1, width=64, heads=4, vocab_size=vocab,
                        tie_embeddings=False)
  pred = ghn.predict(SMALL, ghn.init(SMALL, 'gpt2', 0), cfg)
  wte = np.asarray(pred['wte']['embedding'])  # (vocab, 64)
  # every row, the cut last copy (50257 = 392 x 128 + 81) included
  np.testing.assert_array_equal(wte, wte[np.arange(vocab) % 128])
  assert not np.allclose(wte[0], wte[1])


def test_vocab_period_only_where_the_output_layer_repeats_exactly():
  """`ghn.vocab_period`, which lets GHN training compute one period of the
  logits: the predicted output layer's period, and 0 wherever the layer
  does not repeat exactly (one block covers the vocabulary; GHN-3's decoder;
  the 'widen' fill's noise on a widened width)."""
  cfg = arch.GPT2Config(depth=1, width=64, heads=4, vocab_size=1000,
                        tie_embeddings=False)
  assert ghn.vocab_period(SMALL, cfg) == 128
  kernel = np.asarray(ghn.predict(SMALL, ghn.init(SMALL, 'gpt2', 0),
                                  cfg)['lm_head']['kernel'])  # (64, 1000)
  np.testing.assert_array_equal(kernel, kernel[:, np.arange(1000) % 128])
  tied = dataclasses.replace(cfg, tie_embeddings=True)
  assert ghn.vocab_period(SMALL, tied) == 128
  assert ghn.vocab_period(SMALL, dataclasses.replace(cfg, vocab_size=100)) == 0
  assert ghn.vocab_period(SMALL_GHN3, cfg) == 0
  widened = dataclasses.replace(SMALL, trained_width=32, fill='widen')
  assert ghn.vocab_period(widened, cfg) == 0
  quiet = dataclasses.replace(widened, fill_noise=0.0)
  assert ghn.vocab_period(quiet, cfg) == 128
  kernel = np.asarray(ghn.predict(quiet, ghn.init(SMALL, 'gpt2', 0),
                                  cfg)['lm_head']['kernel'])
  np.testing.assert_array_equal(kernel, kernel[:, np.arange(1000) % 128])


@pytest.mark.parametrize('tied', [False, True])
def test_first_period_decode_is_the_leading_part_of_the_full_one(tied):
  """`ghn.tiled_periods` names exactly the vocabulary matrices that repeat
  (each row i is row i mod period), and `decode_function(first_period=True)`
  returns their first period and every other leaf unchanged."""
  cfg = arch.GPT2Config(depth=2, width=64, heads=4, vocab_size=1000,
                        tie_embeddings=tied)
  periods = ghn.tiled_periods(SMALL, cfg)
  want = {('wte', 'embedding'): 128}
  if not tied:
    want[('lm_head', 'kernel')] = 128
  assert periods == want
  params = ghn.init(SMALL, 'gpt2', 0)
  n_pad = batching.bucket_size(ghn.num_nodes(SMALL, cfg))
  x = ghn.node_embeddings(SMALL, params, [cfg], n_pad)[0]
  x = x[:ghn.num_nodes(SMALL, cfg)]
  full = jax.jit(ghn.decode_function(SMALL, cfg))(params['decoder'], x)
  first = jax.jit(ghn.decode_function(SMALL, cfg, first_period=True))(
      params['decoder'], x)
  rows = np.arange(1000) % 128
  wte = np.asarray(full['wte']['embedding'])
  np.testing.assert_array_equal(wte, wte[rows])
  np.testing.assert_array_equal(first['wte']['embedding'], wte[:128])
  if not tied:
    kernel = np.asarray(full['lm_head']['kernel'])
    np.testing.assert_array_equal(kernel, kernel[:, rows])
    np.testing.assert_array_equal(first['lm_head']['kernel'], kernel[:, :128])
  rest = lambda t: {k: v for k, v in t.items() if k not in ('wte', 'lm_head')}
  for a, b in zip(jax.tree.leaves(rest(full)), jax.tree.leaves(rest(first))):
    np.testing.assert_array_equal(a, b)
  assert ghn.tiled_periods(SMALL_GHN3, cfg) == {}
  noisy = dataclasses.replace(SMALL, trained_width=32, fill='widen')
  assert ghn.tiled_periods(noisy, cfg) == {}


def test_second_prediction_does_not_recompile():
  cfg = arch.sample('gpts-cpu', 1, 9)[0]
  params = ghn.init(SMALL, 'gpt2', seed=0)
  ghn.predict(SMALL, params, cfg)
  before = ghn.trace_counts()
  ghn.predict(SMALL, params, cfg)
  ghn.predict(SMALL, params, [cfg])
  assert ghn.trace_counts() == before


def test_family_mismatch_and_unplaceable_shapes_raise():
  params = ghn.init(SMALL, 'vit', seed=0)
  with pytest.raises(ValueError, match="family='vit'"):
    ghn.predict(SMALL, params, arch.named('gpt2-small'))
  tiny_k = ghn.GHNConfig(hid=32, heads=4, rank=4, max_ck=128,
                         max_shape=(128, 128, 16, 16))
  wide = arch.ViTConfig(depth=1, width=256, heads=4, mlp_dim=256, patch=2,
                        image_size=32)  # pos-emb needs 256 * 16 columns
  with pytest.raises(ValueError, match='max_ck=128'):
    ghn.predict(tiny_k, ghn.init(tiny_k, 'vit', 0), wide)


@pytest.mark.slow  # the GHN step's gradient is checked against a monolithic
@pytest.mark.parametrize('ghn_cfg', [SMALL, SMALL_GHN3], ids=['logah', 'ghn3'])
def test_gradients_reach_every_used_ghn_parameter(ghn_cfg):
  cfg = arch.ViTConfig(depth=2, width=48, heads=3, mlp_dim=96, patch=7,
                       image_size=28, channels=1, num_classes=10)
  params = ghn.init(ghn_cfg, 'vit', seed=0)
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  y = jnp.arange(4) % 10
  model = models.build(cfg)

  def loss(p):
    emb = ghn.node_embeddings(ghn_cfg, p, [cfg])
    n = plan_lib.make_plan(ghn_cfg, cfg).graph.n_nodes
    target = ghn.decode(ghn_cfg, p, cfg, emb[0, :n])
    logits = model.apply({'params': target}, x)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

  grads = jax.grad(loss)(params)
  zero = [jax.tree_util.keystr(path) for path, g in
          jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  # Unused by design: LoGAH's two Linear(1, 1) placeholders (kept only for
  # parameter-count parity with the paper).
  expected = ([] if ghn_cfg.decoder == 'fullrank' else
              ["['bias_class']['bias']", "['bias_class']['kernel']",
               "['decoder_1d']['bias']", "['decoder_1d']['kernel']"])
  assert sorted(zero) == expected


@pytest.mark.slow  # ~40 s; the step-vs-monolithic test covers it end to end
def test_stacked_decode_and_scanned_target_equal_the_unrolled_ones():
  # GHN training decodes blocks straight into the stacked layout and runs
  # the target as a scan: same params, same loss, same gradients.
  from logah_jax.train import objective  # pylint: disable=g-import-not-at-top
  cfg = arch.GPT2Config(depth=3, width=64, heads=4, vocab_size=300,
                        n_positions=64, tie_embeddings=False)
  batch = {'tokens': (np.arange(34).reshape(2, 17) * 7 % 300).astype(
      np.int32)}
  params = ghn.init(SMALL, 'gpt2', seed=0)
  n = ghn.num_nodes(SMALL, cfg)
  x = ghn.node_embeddings(SMALL, params, [cfg])[0, :n]
  out = {}
  for stacked in (False, True):
    decode = ghn.decode_function(SMALL, cfg, stacked=stacked)

    def loss(dec_params, x_ND, decode=decode, stacked=stacked):
      w = decode(dec_params, x_ND)
      ce = objective.task_loss(cfg, w, batch, scan=stacked)[0]
      return ce + 0.1 * objective.frobenius_sum(w)
    out[stacked] = (jax.jit(decode)(params['decoder'], x),
                    jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
                        params['decoder'], x))
  (w_u, (l_u, g_u)), (w_s, (l_s, g_s)) = out[False], out[True]
  want = models.stack_blocks(cfg, w_u)
  assert jax.tree.structure(w_s) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(w_s), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(l_s, l_u, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_u)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_graphormer_layer_keeps_attention_logits_float32():
  # docs/algorithm.md §3: in bfloat16 the QK^T product accumulates into
  # float32 logits and the softmax stays float32; the layer's output stays
  # close to the float32 layer's.
  b, n, d, h = 1, 7, 32, 4
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (b, n, d))
  bias = jax.random.normal(keys[1], (b, h, n, n))
  mask = (jnp.arange(n) < n - 1)[None]
  pair_mask = mask[:, :, None] & mask[:, None, :]
  params = GraphormerLayer(d, h).init(keys[2], x, bias, pair_mask)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    layer = GraphormerLayer(d, h, dtype)
    out[dtype] = layer.apply(params, x, bias, pair_mask)
  jaxpr = jax.make_jaxpr(GraphormerLayer(d, h, jnp.bfloat16).apply)(
      params, x, bias, pair_mask)

  def eqns(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from eqns(sub)
  qk = [e for e in eqns(jaxpr.jaxpr) if e.primitive.name == 'dot_general'
        and e.outvars[0].aval.shape == (b, h, n, n)]
  assert len(qk) == 1
  assert [v.aval.dtype for v in qk[0].invars] == [jnp.bfloat16] * 2
  assert qk[0].outvars[0].aval.dtype == jnp.float32
  exps = [e for e in eqns(jaxpr.jaxpr) if e.primitive.name == 'exp']
  assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)
  np.testing.assert_allclose(np.asarray(out[jnp.bfloat16], np.float32),
                             out[jnp.float32], rtol=0, atol=2e-2)


def test_predict_takes_any_iterable_and_refuses_bad_node_embeddings():
  cfg = arch.sample('vits-cpu', 1, 4)[0]
  params = ghn.init(SMALL, 'vit', seed=0)
  assert ghn.predict(SMALL, params, []) == []
  (one,) = ghn.predict(SMALL, params, iter([cfg]))
  assert_same_structure(one, cfg)
  with pytest.raises(ValueError, match="family=None \\('vit:"):
    ghn.predict(SMALL, params, 'vit:depth=2')
  # decode reads node rows by index, which JAX clamps: a short or foreign
  # x must be refused, not decoded into other params
  n = ghn.num_nodes(SMALL, cfg)
  x = ghn.node_embeddings(SMALL, params, [cfg])[0]
  for bad in (x[:n - 1], x[:n, :SMALL.hid // 2], x[None, :n]):
    for per_shape in (True, False):
      with pytest.raises(ValueError, match=f'at least {n} rows of '
                         f'{SMALL.hid}'):
        ghn.decode(SMALL, params, cfg, bad, per_shape=per_shape)


def test_params_of_another_num_classes_are_not_taken_for_another_family():
  """A ViT GHN's channel table (num_classes=10) has as many rows as a GPT-2
  GHN's under num_classes=16: the targets' family decides, and the message
  names num_classes beside the other family instead of the family alone."""
  cfg = arch.sample('vits-cpu', 1, 4)[0]
  params = ghn.init(SMALL, 'vit', seed=0)
  other = dataclasses.replace(SMALL, num_classes=16)
  assert ghn.family_of(other, params) == 'gpt2'  # the size alone misleads
  for call in (ghn.predict, ghn.node_embeddings):
    with pytest.raises(ValueError, match='GHNConfig.num_classes=16, not of '
                       r'vit targets \(391\)\. .*or under another '
                       'num_classes'):
      call(other, params, [cfg])
