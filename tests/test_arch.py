"""Architecture configs, spaces, named models and closed-form counts."""

import collections

import pytest

from logah_jax import arch

# Published counts (Hugging Face GPT-2, torchvision ViT), written as literals.
PUBLISHED = {
    'gpt2-small': 124_439_808,
    'gpt2-medium': 354_823_168,
    'gpt2-large': 774_030_080,
    'vit-s/16': 22_050_664,
    'vit-b/16': 86_567_656,
    'vit-l/16': 304_326_632,
}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_num_params_matches_published(name):
  assert arch.num_params(arch.named(name)) == PUBLISHED[name]


@pytest.mark.parametrize('size', ['small', 'medium', 'large'])
def test_untied_gpt2_adds_one_vocab_matrix(size):
  tied = arch.named(f'gpt2-{size}')
  untied = arch.named(f'gpt2-{size}-untied')
  assert not untied.tie_embeddings
  assert (arch.num_params(untied) - arch.num_params(tied)
          == tied.vocab_size * tied.width)


@pytest.mark.parametrize('name, millions', [
    ('vit-s/2', 21.44), ('vit-b/2', 85.34), ('vit-l/2', 302.69),
    ('gpt2-small-untied', 163.04), ('gpt2-medium-untied', 406.29),
    ('gpt2-large-untied', 838.36)])
def test_paper_measured_counts(name, millions):
  # Counts of the reference PyTorch models, measured by instantiating them
  # (CIFAR-100 ViTs); the paper's App. C gives them rounded.
  cfg = arch.named(name, num_classes=100) if name.startswith('vit') else (
      arch.named(name))
  assert round(arch.num_params(cfg) / 1e6, 2) == millions


def test_named_variants():
  assert arch.named('vit-s') == arch.named('vit-s/16')
  cifar = arch.named('vit-b/2')
  assert (cifar.patch, cifar.image_size, cifar.num_patches) == (2, 32, 256)
  assert arch.named('vit-b/2', num_classes=100).num_classes == 100
  for name in arch.names():
    cfg = arch.named(name)
    assert cfg.family in arch.FAMILIES


@pytest.mark.parametrize('kwargs, field', [
    (dict(depth=2, width=100, heads=3, mlp_dim=8, patch=4, image_size=32), 'width=100'),
    (dict(depth=0, width=96, heads=3, mlp_dim=8, patch=4, image_size=32), 'depth=0'),
    (dict(depth=2, width=96, heads=3, mlp_dim=8, patch=5, image_size=32), 'image_size=32'),
    (dict(depth=2, width=96, heads=3, mlp_dim=-1, patch=4, image_size=32), 'mlp_dim=-1'),
    (dict(depth=2.0, width=96, heads=3, mlp_dim=8, patch=4, image_size=32), 'depth=2.0'),
])
def test_vit_config_rejects_bad_fields(kwargs, field):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    arch.ViTConfig(**kwargs)


def test_gpt2_config_rejects_bad_fields():
  with pytest.raises(ValueError, match='width=50'):
    arch.GPT2Config(depth=2, width=50, heads=4)
  with pytest.raises(ValueError, match='vocab_size=0'):
    arch.GPT2Config(depth=2, width=64, heads=4, vocab_size=0)
  with pytest.raises(ValueError, match='tie_embeddings'):
    arch.GPT2Config(depth=2, width=64, heads=4, tie_embeddings=1)


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="name='vit-xxl'"):
    arch.named('vit-xxl')
  with pytest.raises(ValueError, match="space='vits-2k'"):
    arch.sample('vits-2k', 3, 0)
  with pytest.raises(ValueError, match="'depthh'"):
    arch.named('vit-s', depthh=3)
  with pytest.raises(ValueError, match="'widths_rule'"):
    arch.make_space('vits-1k', widths_rule=())


def test_dict_round_trip():
  for cfg in [arch.named('vit-b/2'), arch.named('gpt2-small-untied')]:
    assert arch.from_dict(arch.to_dict(cfg)) == cfg
  with pytest.raises(ValueError, match="family='resnet'"):
    arch.from_dict({'family': 'resnet'})


def test_sampling_is_deterministic_by_seed():
  a = arch.sample('vits-1k', 50, seed=1)
  assert a == arch.sample('vits-1k', 50, seed=1)
  assert a != arch.sample('vits-1k', 50, seed=2)


def test_vits_1k_distribution():
  nets = arch.sample('vits-1k', 1000, seed=1)
  depths = collections.Counter(c.depth for c in nets)
  assert set(depths) == set(range(3, 10))
  assert min(depths.values()) > 100  # uniform: ~143 each
  for c in nets:
    if c.depth >= 6:
      assert c.width in range(128, 257, 32)
    elif c.depth >= 4:
      assert c.width in range(256, 385, 32)
    else:
      assert c.width in range(384, 513, 32)
    assert c.mlp_dim == 4 * c.width
    assert c.patch in (2, 4) and c.image_size == 32
    expected_heads = ((3, 6, 12) if c.width % 12 == 0 else
                      (3, 6) if c.width % 6 == 0 else
                      (3,) if c.width % 3 == 0 else (4, 8))
    assert c.heads in expected_heads
  # 192 % 12 == 0: all three head counts must occur.
  assert {c.heads for c in nets if c.width == 192} == {3, 6, 12}
  # Paper: "params <= ~10M" for ViTs-1K.
  assert max(arch.num_params(c) for c in nets) < 11e6


def test_gpts_1k_distribution():
  nets = arch.sample('gpts-1k', 500, seed=0)
  for c in nets:
    assert 3 <= c.depth <= 9 and c.heads == 8 and c.width % 8 == 0
    assert not c.tie_embeddings and c.vocab_size == 50257
    lo, hi = (72, 176) if c.depth >= 6 else (128, 176) if c.depth >= 4 else (176, 256)
    assert lo <= c.width <= hi
  counts = [arch.num_params(c) for c in nets]
  # Paper Fig. 8b: about 8-29M, dominated by the two 50257 x D embeddings.
  assert 7e6 < min(counts) and max(counts) < 31e6


def test_cpu_spaces_fit_the_offline_data():
  for c in arch.sample('vits-cpu', 100, seed=0):
    assert (c.image_size, c.channels, c.num_classes) == (28, 1, 10)
  for c in arch.sample('gpts-cpu', 100, seed=0):
    assert (c.vocab_size, c.n_positions) == (256, 128)


def test_space_overrides_and_validation():
  space = arch.make_space('vits-cpu', num_classes=47)
  assert all(c.num_classes == 47 for c in arch.sample(space, 10, seed=0))
  with pytest.raises(ValueError, match='heads=5'):
    arch.make_space('gpts-cpu', heads=5)
  with pytest.raises(ValueError, match='overlap'):
    arch.make_space('vits-cpu', width_rules=((2, 3, 32, 64, 16),
                                             (3, 4, 32, 64, 16)))
  with pytest.raises(ValueError, match='image_size=30'):
    arch.make_space('vits-cpu', image_size=30)
  # each of these was accepted and failed (or was ignored) only when drawn
  with pytest.raises(ValueError, match=r"heads='vit' gives 8 heads to width "
                     '68'):
    arch.make_space('vits-cpu', width_rules=((2, 4, 64, 72, 4),))
  with pytest.raises(ValueError, match='mlp_ratio=2: GPT-2 blocks'):
    arch.make_space('gpts-cpu', mlp_ratio=2)
  with pytest.raises(ValueError, match='patches is empty'):
    arch.make_space('vits-cpu', patches=())
  every_draw = arch.make_space('vits-cpu', width_rules=((2, 4, 48, 96, 24),))
  assert {c.width % c.heads for c in arch.sample(every_draw, 50, 0)} == {0}
