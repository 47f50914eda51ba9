"""The training loader and image augmentation, on arrays made here: epoch
order, shuffling, exact restore, sharding, normalisation."""

import numpy as np
import pytest

from logah_jax import data
from logah_jax.data import augment
from logah_jax.data import sources

# ------------------------------------------------------------ augmentation

def _naive_crop_flip(image, dy, dx, flip, pad):
  h, w, _ = image.shape
  padded = np.zeros((h + 2 * pad, w + 2 * pad, image.shape[2]), image.dtype)
  padded[pad:pad + h, pad:pad + w] = image
  out = padded[dy:dy + h, dx:dx + w]
  return out[:, ::-1] if flip else out


def test_crop_flip_matches_per_image_reference():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  params = augment.sample_crop_flip(seed=3, step=7, n=16)
  out = augment.apply_crop_flip(images, params)
  assert out.shape == images.shape and out.dtype == np.uint8
  for i in range(16):
    np.testing.assert_array_equal(out[i], _naive_crop_flip(
        images[i], params.dy[i], params.dx[i], params.flip[i], 4))
  assert params.flip.any() and not params.flip.all()
  assert set(params.dy.tolist()) <= set(range(9))


def test_crop_flip_is_deterministic_in_seed_and_step():
  a = augment.sample_crop_flip(0, 5, 64)
  b = augment.sample_crop_flip(0, 5, 64)
  c = augment.sample_crop_flip(0, 6, 64)
  d = augment.sample_crop_flip(1, 5, 64)
  np.testing.assert_array_equal(a.dx, b.dx)
  np.testing.assert_array_equal(a.flip, b.flip)
  assert not np.array_equal(a.dx, c.dx) and not np.array_equal(a.dx, d.dx)
  ident = augment.CropFlip(np.full(2, 4), np.full(2, 4), np.zeros(2, bool))
  x = np.arange(2 * 8 * 8 * 1, dtype=np.uint8).reshape(2, 8, 8, 1)
  np.testing.assert_array_equal(augment.apply_crop_flip(x, ident), x)


def test_normalize():
  x = np.full((1, 2, 2, 3), 255, np.uint8)
  out = augment.normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], [2.0, 1.0, 0.5])


# ------------------------------------------------------------------ loader

def _image_source(n, split='train', seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  info = sources.SourceInfo('cifar10', split, 'image', n, num_classes=10,
                            image_shape=(8, 8, 3), mean=(0.5,) * 3,
                            std=(0.25,) * 3)
  return sources.ArraySource(images, np.arange(n, dtype=np.int32) % 10, info)


def _text_source(n_tokens=1000, block=7):
  tokens = np.arange(n_tokens, dtype=np.int32)
  info = sources.SourceInfo('wikitext2', 'train', 'text',
                            (n_tokens - 1) // block, vocab_size=n_tokens,
                            block_size=block)
  return sources.TokenWindows(tokens, block, info)


def _take(loader, k):
  return [next(loader) for _ in range(k)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_loader_one_epoch_covers_each_example_once():
  src = _image_source(10)
  loader = data.Loader(src, 4, seed=0, num_epochs=1, drop_remainder=False,
                       normalize=False)
  batches = list(loader)
  assert [len(b['label']) for b in batches] == [4, 4, 2]
  seen = np.concatenate([b['image'] for b in batches])
  order = loader.epoch_order(0)
  np.testing.assert_array_equal(seen, src.images[order])
  assert sorted(order.tolist()) == list(range(10))
  assert list(loader) == []  # exhausted
  dropped = list(data.Loader(src, 4, num_epochs=2))
  assert len(dropped) == 4


def test_loader_shuffle_depends_on_seed_and_epoch():
  src = _image_source(50)
  a, b = data.Loader(src, 5, seed=3), data.Loader(src, 5, seed=3)
  _assert_same(_take(a, 12), _take(b, 12))
  c = data.Loader(src, 5, seed=4)
  assert not np.array_equal(a.epoch_order(0), c.epoch_order(0))
  assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
  plain = data.Loader(src, 5, shuffle=False)
  np.testing.assert_array_equal(plain.epoch_order(2), np.arange(50))


@pytest.mark.parametrize('kind', ['image', 'text'])
def test_loader_restore_continues_exactly(kind):
  src = _image_source(23) if kind == 'image' else _text_source(148)
  kwargs = dict(seed=11, augment=kind == 'image')
  ref = data.Loader(src, 4, **kwargs)
  _take(ref, 7)  # crosses the first epoch boundary (5 batches an epoch)
  state = ref.state()
  assert state == {'epoch': 1, 'batch': 2, 'seed': 11, 'batch_size': 4,
                   'num_examples': len(src)}
  assert all(isinstance(v, int) for v in state.values())
  expected = _take(ref, 9)
  resumed = data.Loader(src, 4, **kwargs)
  resumed.restore(dict(state))
  _assert_same(_take(resumed, 9), expected)


def test_loader_restore_rejects_other_streams():
  src = _image_source(23)
  state = data.Loader(src, 4, seed=1).state()
  with pytest.raises(ValueError, match='seed=1 but this loader has seed=2'):
    data.Loader(src, 4, seed=2).restore(state)
  with pytest.raises(ValueError, match='batch_size'):
    data.Loader(src, 5, seed=1).restore(state)
  with pytest.raises(ValueError, match='lacks epoch'):
    data.Loader(src, 4, seed=1).restore({'batch': 0})


def test_loader_augments_whatever_split_it_is_asked_to():
  """augment=True is honoured for any split a run trains on (a run on
  'validation' once got no augmentation and no word of it)."""
  for split in ('train', 'validation'):
    on = data.Loader(_image_source(8, split=split), 8, augment=True,
                     normalize=False, shuffle=False)
    off = data.Loader(_image_source(8, split=split), 8, normalize=False,
                      shuffle=False)
    assert on.augment and not off.augment
    np.testing.assert_array_equal(next(off)['image'], _image_source(8).images)
    assert not np.array_equal(next(on)['image'], _image_source(8).images)
  with pytest.raises(ValueError, match='augment=True applies to images'):
    data.Loader(_text_source(), 2, augment=True)


def test_loader_normalises_images():
  src = _image_source(16)
  batch = next(data.Loader(src, 16, shuffle=False))
  np.testing.assert_allclose(batch['image'],
                             (src.images / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_loader_shards_split_the_global_batch():
  src = _image_source(40)
  whole = _take(data.Loader(src, 8, seed=2, augment=True), 6)
  parts = [_take(data.Loader(src, 8, seed=2, augment=True, shard_index=i,
                             shard_count=2), 6) for i in range(2)]
  for k in range(6):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])


def test_loader_text_batches():
  src = _text_source(1000, block=7)
  batch = next(data.Loader(src, 3, seed=0))['tokens']
  assert batch.shape == (3, 8) and batch.dtype == np.int32
  np.testing.assert_array_equal(np.diff(batch, axis=1), 1)  # contiguous
  assert (batch[:, 0] % 7 == 0).all()  # window starts on block boundaries


def test_loader_argument_errors():
  src = _image_source(10)
  for bad in (0, -1, 2.0):
    with pytest.raises(ValueError, match='batch_size'):
      data.Loader(src, bad)
  with pytest.raises(ValueError, match='batch_size=11 exceeds the 10'):
    data.Loader(src, 11)
  with pytest.raises(ValueError, match='shard_count=3'):
    data.Loader(src, 4, shard_count=3)


def test_evaluation_never_augments_a_slice_of_train():
  from logah_jax.train import evaluate  # pylint: disable=g-import-not-at-top
  src = _image_source(8, split='train[4:]')
  assert data.Loader(src, 8, augment=True).augment  # training would
  loader = evaluate.eval_loader(src, 8)
  assert not loader.augment
  want = next(data.Loader(_image_source(8, split='validation'), 8,
                          shuffle=False))['image']
  np.testing.assert_array_equal(next(loader)['image'], want)
