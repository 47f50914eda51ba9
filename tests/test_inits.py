"""Init methods behind one interface, and architecture strings."""

import jax
import numpy as np
import pytest

from logah_jax import arch as arch_lib
from logah_jax import inits
from logah_jax import models

VIT = arch_lib.parse('vit:depth=2,width=32,heads=4,patch=7,image_size=28,'
                     'channels=1,num_classes=10')
GPT = arch_lib.parse('gpt2:depth=2,width=32,heads=4,vocab_size=61,'
                     'n_positions=16,tie_embeddings=false')


def test_parse_architecture_strings():
  assert arch_lib.parse('gpt2-large') == arch_lib.named('gpt2-large')
  assert arch_lib.parse('vit-b/2:num_classes=100') == arch_lib.named(
      'vit-b/2', num_classes=100)
  assert VIT.mlp_dim == 128 and VIT.channels == 1
  assert GPT.tie_embeddings is False and GPT.vocab_size == 61
  for cfg in (VIT, GPT, arch_lib.named('vit-b/2'),
              arch_lib.named('gpt2-small')):
    assert arch_lib.parse(arch_lib.to_spec(cfg)) == cfg
  for spec, match in (('vit:depth=6', 'missing field'),
                      ('vit-s:dept=3', "no field 'dept'"),
                      ('gpt2:depth=x,width=8,heads=1', "depth='x' must be"),
                      ('gpt2-huge', 'unknown'),
                      ('vit-s:depth', 'not field=value'),
                      ('vit-s:depth=2,depth=9', "'depth' is given twice"),
                      ('vit:depth=1,depth=5,width=8,heads=1',
                       "'depth' is given twice"),
                      ('vit-s:depthh=abc', "no field 'depthh'"),
                      ('gpt2:depth=1,width=8,heads=1,tie_embeddings=1',
                       'true or false'),
                      ('', 'expected NAME')):
    with pytest.raises(ValueError, match=match):
      arch_lib.parse(spec)


def test_stored_architectures_name_missing_and_unknown_fields():
  assert arch_lib.from_dict(arch_lib.to_dict(VIT)) == VIT
  stored = arch_lib.to_dict(GPT)
  for broken, match in (
      ({k: v for k, v in stored.items() if k != 'heads'},
       'a gpt2 architecture lacks field.s. heads'),
      ({**stored, 'foo': 1}, 'has unknown field.s. foo'),
      ({**stored, 'family': 'rnn'}, "family='rnn' is unknown"),
      (None, 'must be a mapping of its fields, not NoneType')):
    with pytest.raises(ValueError, match=match):
      arch_lib.from_dict(broken)


@pytest.mark.parametrize('name', ['random', 'orthogonal'])
def test_seeds_must_fit_a_key(name):
  """jax.random.key keeps 32 bits: seed 2**32 once gave seed 0's init."""
  method = inits.make(name)
  for seed, match in ((2 ** 32, r'below 2\*\*32'), (True, 'must be an int'),
                      (1.5, 'must be an int'), (-1, '>= 0')):
    with pytest.raises(ValueError, match=match):
      method(VIT, seed)
  method(VIT, 2 ** 32 - 1)


@pytest.mark.parametrize('arch', [VIT, GPT], ids=['vit', 'gpt2'])
def test_random_is_the_reference_init(arch):
  got = inits.make('random')(arch, 3)
  want = models.init_params(arch, jax.random.key(3))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('arch', [VIT, GPT], ids=['vit', 'gpt2'])
def test_orthogonal_matrices_and_reference_elsewhere(arch):
  orth = inits.make('orthogonal')(arch, 0)
  rand = inits.make('random')(arch, 0)
  flat_o = dict(jax.tree_util.tree_flatten_with_path(orth)[0])
  flat_r = dict(jax.tree_util.tree_flatten_with_path(rand)[0])
  n_orth = 0
  for path, w in flat_o.items():
    names = [k.key for k in path]
    w, r = np.asarray(w), np.asarray(flat_r[path])
    if names[-1] == 'kernel' and names[0] not in ('head', 'lm_head'):
      m = w.reshape(-1, w.shape[-1])  # torch's (out, in...) flattened
      gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
      np.testing.assert_allclose(gram, np.eye(len(gram)), atol=2e-5)
      n_orth += 1
    else:  # embeddings, biases, norms, the last layer: RandInit's
      np.testing.assert_array_equal(w, r)
  # ViT: conv_proj + 4 per block; GPT-2: 4 per block
  assert n_orth == (1 if arch is VIT else 0) + 4 * arch.depth
  other = inits.make('orthogonal')(arch, 1)
  kernel = [p for p in flat_o if p[-1].key == 'kernel'][0]
  other_flat = dict(jax.tree_util.tree_flatten_with_path(other)[0])
  assert not np.allclose(other_flat[kernel], flat_o[kernel])


def test_methods_and_errors():
  assert set(inits.METHODS) == {'random', 'orthogonal', 'logah',
                                'logah-transpose', 'ghn3', 'stack',
                                'interpolate', 'net2net', 'bert2bert', 'ligo'}
  with pytest.raises(ValueError, match="init method 'xavier' is unknown"):
    inits.make('xavier')
  with pytest.raises(ValueError, match='needs a GHN workdir'):
    inits.make('logah')
  with pytest.raises(ValueError, match="'net2net' needs a source"):
    inits.make('net2net')
  with pytest.raises(ValueError, match='ligo needs the directory of a trained'):
    inits.make('ligo', source='/some/params')
  with pytest.raises(ValueError, match="'checkpoint:' needs a directory"):
    inits.make('checkpoint:')
  with pytest.raises(FileNotFoundError, match='no checkpoint at'):
    inits.make('checkpoint:/nonexistent/init')(VIT, 0)


def test_interface_checks_the_tree():
  class Broken(inits.InitMethod):
    name = 'broken'

    def params(self, arch, seed):
      p = inits.make('random')(arch, seed)
      p['head']['kernel'] = p['head']['kernel'][:, :3]
      return p
  with pytest.raises(ValueError, match=r"init 'broken'.*'head/kernel' does "
                     r'not match: init has \(32, 3\), target expects '
                     r'\(32, 10\)'):
    Broken()(VIT, 0)
