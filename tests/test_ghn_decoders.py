"""The two parameter decoders and the write-back of kernels and position
embeddings larger than the decoded block, against NumPy references."""

import dataclasses

import jax
import numpy as np
import pytest

from configs_for_tests import SMALL_GHN as SMALL, SMALL_GHN3
from ghn_checks import assert_same_structure, finite_forward
from logah_jax import arch, ghn
from logah_jax.ghn import plan as plan_lib
from logah_jax.ghn.decoders import FullRankDecoder, LowRankDecoder


def _decoder_params(cfg, seed=0):
  dec = LowRankDecoder(cfg.hid, cfg.rank, cfg.max_ck, cfg.factorization)
  x = jax.random.normal(jax.random.key(seed), (3, cfg.hid))
  return dec, dec.init(jax.random.key(seed + 1), x, 1, 1)['params'], x


@pytest.mark.parametrize('factorization', ['paper', 'transpose'])
def test_lowrank_factors_equal_full_computation(factorization):
  cfg = ghn.GHNConfig(hid=16, heads=2, rank=4, max_shape=(32, 32, 16, 16),
                      max_ck=64, factorization=factorization)
  dec, params, x = _decoder_params(cfg)
  p = jax.tree.map(np.asarray, params)
  relu = lambda v: np.maximum(v, 0)
  lin = lambda v, q: v @ q['kernel'] + q['bias']
  h = lin(relu(lin(relu(lin(np.asarray(x), p['m1'])), p['m2'])), p['m3'])
  h = h.reshape(3, 2 * cfg.rank, cfg.rank)
  y = lin(relu(h), p['m4'])  # the full [n, 2r, K] output
  k = cfg.max_ck
  if factorization == 'paper':  # row-major reinterpretation, as the paper
    z = y.reshape(3, 2 * k, cfg.rank)
    a, b = z[:, :k], np.swapaxes(z[:, k:], 1, 2)
  else:
    a, b = np.swapaxes(y[:, :cfg.rank], 1, 2), y[:, cfg.rank:]
  for rows, cols in [(1, 1), (5, 17), (40, 64), (64, 3)]:
    want = a[:, :rows] @ b[:, :, :cols]
    got = dec.apply({'params': params}, x, rows, cols)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_lowrank_decodes_kernels_beyond_16x16_whole():
  # A patch-32 kernel: LoGAH's decoder emits the full (c_out*32) x (c_in*32)
  # product; only GHN-3's full-rank decoder is limited to 16x16 and resized.
  cfg = dataclasses.replace(SMALL, normalize=False)
  target = arch.ViTConfig(depth=1, width=32, heads=2, mlp_dim=64, patch=32,
                          image_size=64, channels=3, num_classes=10)
  params = ghn.init(cfg, 'vit', seed=0)
  x = ghn.node_embeddings(cfg, params, [target])[0]
  plan = plan_lib.make_plan(cfg, target)
  node = next(p.node for p in plan.nodes
              if p.slots[0].slot.path == ('conv_proj', 'kernel'))
  dec = LowRankDecoder(cfg.hid, cfg.rank, cfg.max_ck, cfg.factorization)
  w = np.asarray(dec.apply({'params': params['decoder']}, x[node:node + 1],
                           32 * 32, 3 * 32))[0]  # [c_out*kh, c_in*kw]
  want = w.reshape(32, 32, 3, 32).transpose(0, 2, 1, 3)  # (o, i, kh, kw)
  for one_per_shape in (True, False):
    got = ghn.decode(cfg, params, target, x[:ghn.num_nodes(cfg, target)],
                     per_shape=one_per_shape)['conv_proj']['kernel']
    np.testing.assert_allclose(np.asarray(got).transpose(3, 2, 0, 1), want,
                               rtol=2e-5, atol=1e-6)


def test_factorizations_differ():
  a = ghn.GHNConfig(hid=16, heads=2, rank=4, max_ck=64,
                    max_shape=(32, 32, 16, 16))
  b = dataclasses.replace(a, factorization='transpose')
  dec_a, params, x = _decoder_params(a)
  dec_b, _, _ = _decoder_params(b)
  wa = dec_a.apply({'params': params}, x, 8, 8)
  wb = dec_b.apply({'params': params}, x, 8, 8)
  assert not np.allclose(wa, wb)


def test_fullrank_conv_equals_full_block_then_crop():
  dec = FullRankDecoder(hid=8, spatial=16, num_classes=5)
  x = jax.random.normal(jax.random.key(0), (2, 8))
  params = dec.init(jax.random.key(1), x)['params']
  p = jax.tree.map(np.asarray, params)
  h = np.maximum(np.asarray(x) @ p['fc_kernel'] + p['fc_bias'], 0)
  h = h.reshape(2, 32, 16, 16).transpose(0, 2, 3, 1)  # [n, 16, 16, 4D]
  h = np.maximum(h @ p['conv1']['kernel'] + p['conv1']['bias'], 0)
  full = (h @ p['conv2']['kernel'] + p['conv2']['bias']).reshape(
      2, 16, 16, 8, 8).transpose(0, 3, 4, 1, 2)  # [n, D, D, 16, 16]
  for kh, kw in [(1, 1), (2, 2), (3, 5), (16, 16)]:
    r0, c0 = 8 - kh // 2, 8 - kw // 2
    want = full[..., r0:r0 + kh, c0:c0 + kw]
    got = dec.apply({'params': params}, x, kh, kw, method=FullRankDecoder.conv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _np_bilinear(grid, size):
  """[..., h, w] -> [..., size, size], bilinear with half-pixel centres and
  edge clamping (PyTorch's F.interpolate(mode='bilinear'), which GHN-3's
  ConvDecoder3 applies to grids beyond 16x16), one axis at a time."""
  for axis in (-2, -1):
    n = grid.shape[axis]
    src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = (src - lo).reshape([-1 if a == axis % grid.ndim else 1
                               for a in range(grid.ndim)])
    grid = (np.take(grid, lo, axis=axis) * (1 - frac)
            + np.take(grid, hi, axis=axis) * frac)
  return grid


def test_ghn3_position_embedding_beyond_16x16_is_resized():
  # A 34x34 patch grid: GHN-3 decodes 16x16 and resizes it bilinearly to
  # 34x34, so the embedding has all 1 + 34*34 rows on both decode paths.
  cfg = SMALL_GHN3
  target = arch.ViTConfig(depth=1, width=48, heads=3, mlp_dim=64, patch=2,
                          image_size=68, channels=3, num_classes=10)
  s, c = 34, target.width
  params = ghn.init(cfg, 'vit', seed=0)
  n = ghn.num_nodes(cfg, target)
  x = ghn.node_embeddings(cfg, params, [target])[0, :n]
  node = next(p.node for p in plan_lib.make_plan(cfg, target).nodes
              if p.slots[0].slot.path == ('pos_embedding',))
  raw = np.asarray(FullRankDecoder(cfg.hid, 16, cfg.num_classes).apply(
      {'params': params['decoder']}, x[node:node + 1], 16, 16,
      method=FullRankDecoder.conv))[0, 0]  # [hid (channels), 16, 16]
  grid = np.tile(raw, (-(-c // cfg.hid), 1, 1))[:c]  # tiled along C
  want = np.concatenate([
      0.02 * np.asarray(jax.random.normal(jax.random.key(0), (1, c))),
      _np_bilinear(grid, s).reshape(c, s * s).T])[None]
  for one_per_shape in (True, False):
    pred = ghn.decode(cfg, params, target, x, per_shape=one_per_shape)
    assert_same_structure(pred, target)
    np.testing.assert_allclose(pred['pos_embedding'], want, rtol=1e-5,
                               atol=1e-6, err_msg=f'{one_per_shape=}')
  finite_forward(target, pred)


def test_ghn3_kernel_beyond_16x16_is_resized():
  # A 32x32 patch kernel: GHN-3 decodes 16x16, tiles the channels and
  # resizes bilinearly, then scales by the fan-in rule, on both paths.
  cfg = SMALL_GHN3
  target = arch.ViTConfig(depth=1, width=48, heads=3, mlp_dim=64, patch=32,
                          image_size=64, channels=3, num_classes=10)
  params = ghn.init(cfg, 'vit', seed=0)
  n = ghn.num_nodes(cfg, target)
  x = ghn.node_embeddings(cfg, params, [target])[0, :n]
  node, slot = next((p.node, sp) for p in plan_lib.make_plan(cfg, target).nodes
                    for sp in p.slots
                    if sp.slot.path == ('conv_proj', 'kernel'))
  assert slot.norm == 'fan_in'
  raw = np.asarray(FullRankDecoder(cfg.hid, 16, cfg.num_classes).apply(
      {'params': params['decoder']}, x[node:node + 1], 16, 16,
      method=FullRankDecoder.conv))[0]  # [hid out, hid in, 16, 16]
  block = np.tile(raw, (2, 1, 1, 1))[:48, :3]  # torch layout [out, in, h, w]
  want = (_np_bilinear(block, 32) * slot.scale).transpose(2, 3, 1, 0)
  for one_per_shape in (True, False):
    pred = ghn.decode(cfg, params, target, x, per_shape=one_per_shape)
    assert_same_structure(pred, target)
    np.testing.assert_allclose(pred['conv_proj']['kernel'], want, rtol=1e-5,
                               atol=1e-6, err_msg=f'{one_per_shape=}')
