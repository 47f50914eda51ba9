"""A family-independent view of a target's params, for growing them.

Growth operators act on roles, not on Flax paths: the residual width, whole
attention heads, the MLP's hidden units. `to_canonical` rewrites a ViT or
GPT-2 params tree into

  {'outer': {name: array}, 'blocks': {name: array with a leading layer axis}}

with the fused q/k/v projection split into q, k and v and every attention
tensor head-major as (…, heads, head_dim, …), so no operator can mix q with k
or move a channel from one head to another. `AXES` labels each axis with the
expansion that grows it (None: the axis keeps its size):

  emb_out / emb_in  the residual width, where a tensor writes / reads it
  q, k, v           whole heads of the query, key, value projections
  v_in              whole heads, where the output projection reads them
  fc_out / fc_in    MLP hidden units, written by fc1 / read by fc2

The final LayerNorm reads the residual stream and feeds only the head, so it
takes the in-side expansion and the head the out-side one; that is what lets
width growth preserve a tied GPT-2 head exactly (docs/growth.md).
`from_canonical` is the inverse.
"""

from __future__ import annotations

import jax.numpy as jnp

from logah_jax.arch.configs import GPT2Config, ViTConfig
from logah_jax.validation import ConfigError

# Block tensors (after the leading layer axis) and the module they belong to;
# a module's tensors share its depth coefficients (docs/growth.md).
BLOCK_AXES = {
    'ln1_scale': ('emb_out',), 'ln1_bias': ('emb_out',),
    'q_kernel': ('emb_in', 'q', None), 'q_bias': ('q', None),
    'k_kernel': ('emb_in', 'k', None), 'k_bias': ('k', None),
    'v_kernel': ('emb_in', 'v', None), 'v_bias': ('v', None),
    'o_kernel': ('v_in', None, 'emb_out'), 'o_bias': ('emb_out',),
    'ln2_scale': ('emb_out',), 'ln2_bias': ('emb_out',),
    'fc1_kernel': ('emb_in', 'fc_out'), 'fc1_bias': ('fc_out',),
    'fc2_kernel': ('fc_in', 'emb_out'), 'fc2_bias': ('emb_out',),
}
MODULES = ('ln1', 'q', 'k', 'v', 'o', 'ln2', 'fc1', 'fc2')
MODULE_OF = {name: name.split('_')[0] for name in BLOCK_AXES}
# Modules whose output enters the residual stream: zeroing them makes a block
# the identity (Net2Net's deeper operator).
RESIDUAL_WRITERS = ('o', 'fc2')

OUTER_AXES = {
    'vit': {'patch_kernel': (None, None, None, 'emb_out'),
            'patch_bias': ('emb_out',),
            'class_token': (None, None, 'emb_out'),
            'pos_embedding': (None, None, 'emb_out'),
            'ln_f_scale': ('emb_in',), 'ln_f_bias': ('emb_in',),
            'head_kernel': ('emb_out', None), 'head_bias': (None,)},
    'gpt2': {'wte': (None, 'emb_out'), 'wpe': (None, 'emb_out'),
             'ln_f_scale': ('emb_in',), 'ln_f_bias': ('emb_in',),
             'head_kernel': ('emb_out', None)},
}


def role_sizes(arch) -> dict[str, int]:
  """The size of every expanded axis of `arch`."""
  heads = arch.heads
  return {'emb_out': arch.width, 'emb_in': arch.width, 'q': heads, 'k': heads,
          'v': heads, 'v_in': heads, 'fc_out': arch.mlp_dim,
          'fc_in': arch.mlp_dim}


def _names(arch):
  """(block name of layer i, attention, fused qkv, out proj, fc1, fc2)."""
  if isinstance(arch, ViTConfig):
    return (lambda i: f'encoder_layer_{i}', 'self_attention', 'in_proj',
            'out_proj', 'fc1', 'fc2')
  return lambda i: f'h_{i}', 'attn', 'c_attn', 'c_proj', 'c_fc', 'c_proj'


def to_canonical(params, arch) -> dict:
  """Flax params of `arch` -> {'outer': {...}, 'blocks': {...}} (see module)."""
  block, attn, qkv, out, fc1, fc2 = _names(arch)
  heads, width = arch.heads, arch.width
  hd = width // heads
  layers = [params[block(i)] for i in range(arch.depth)]

  def stack(fn):
    return jnp.stack([fn(p) for p in layers])

  blocks = {
      'ln1_scale': stack(lambda p: p['ln_1']['scale']),
      'ln1_bias': stack(lambda p: p['ln_1']['bias']),
      'ln2_scale': stack(lambda p: p['ln_2']['scale']),
      'ln2_bias': stack(lambda p: p['ln_2']['bias']),
      'o_kernel': stack(lambda p: p[attn][out]['kernel'].reshape(
          heads, hd, width)),
      'o_bias': stack(lambda p: p[attn][out]['bias']),
      'fc1_kernel': stack(lambda p: p['mlp'][fc1]['kernel']),
      'fc1_bias': stack(lambda p: p['mlp'][fc1]['bias']),
      'fc2_kernel': stack(lambda p: p['mlp'][fc2]['kernel']),
      'fc2_bias': stack(lambda p: p['mlp'][fc2]['bias']),
  }
  for index, name in enumerate('qkv'):  # [q | k | v], each head-major
    cols = slice(index * width, (index + 1) * width)
    blocks[f'{name}_kernel'] = stack(lambda p, c=cols: p[attn][qkv][
        'kernel'][:, c].reshape(width, heads, hd))
    blocks[f'{name}_bias'] = stack(lambda p, c=cols: p[attn][qkv][
        'bias'][c].reshape(heads, hd))
  if isinstance(arch, ViTConfig):
    outer = {'patch_kernel': params['conv_proj']['kernel'],
             'patch_bias': params['conv_proj']['bias'],
             'class_token': params['class_token'],
             'pos_embedding': params['pos_embedding'],
             'ln_f_scale': params['ln']['scale'],
             'ln_f_bias': params['ln']['bias'],
             'head_kernel': params['head']['kernel'],
             'head_bias': params['head']['bias']}
  else:
    wte = params['wte']['embedding']
    outer = {'wte': wte, 'wpe': params['wpe']['embedding'],
             'ln_f_scale': params['ln_f']['scale'],
             'ln_f_bias': params['ln_f']['bias'],
             'head_kernel': (wte.T if arch.tie_embeddings
                             else params['lm_head']['kernel'])}
  return {'outer': outer, 'blocks': blocks}


def from_canonical(canon: dict, arch) -> dict:
  """The inverse of `to_canonical` (a tied GPT-2 keeps `wte` as its head)."""
  block, attn, qkv, out, fc1, fc2 = _names(arch)
  width = arch.width
  b, o = canon['blocks'], canon['outer']
  params = {}
  for i in range(arch.depth):
    fused_kernel = jnp.concatenate(
        [b[f'{n}_kernel'][i].reshape(width, width) for n in 'qkv'], axis=1)
    fused_bias = jnp.concatenate(
        [b[f'{n}_bias'][i].reshape(width) for n in 'qkv'])
    mlp = {fc1: {'kernel': b['fc1_kernel'][i], 'bias': b['fc1_bias'][i]}}
    mlp[fc2] = {'kernel': b['fc2_kernel'][i], 'bias': b['fc2_bias'][i]}
    params[block(i)] = {
        'ln_1': {'scale': b['ln1_scale'][i], 'bias': b['ln1_bias'][i]},
        attn: {qkv: {'kernel': fused_kernel, 'bias': fused_bias},
               out: {'kernel': b['o_kernel'][i].reshape(width, width),
                     'bias': b['o_bias'][i]}},
        'ln_2': {'scale': b['ln2_scale'][i], 'bias': b['ln2_bias'][i]},
        'mlp': mlp}
  if isinstance(arch, ViTConfig):
    params.update(
        conv_proj={'kernel': o['patch_kernel'], 'bias': o['patch_bias']},
        class_token=o['class_token'], pos_embedding=o['pos_embedding'],
        ln={'scale': o['ln_f_scale'], 'bias': o['ln_f_bias']},
        head={'kernel': o['head_kernel'], 'bias': o['head_bias']})
  else:
    params.update(wte={'embedding': o['wte']},
                  wpe={'embedding': o['wpe']},
                  ln_f={'scale': o['ln_f_scale'], 'bias': o['ln_f_bias']})
    if not arch.tie_embeddings:
      params['lm_head'] = {'kernel': o['head_kernel']}
  return params


def check_pair(small, large) -> None:
  """ConfigError naming the field when `small` cannot grow into `large`.

  Growth keeps the head size (new heads are whole heads; the attention scale
  1/sqrt(head size) never changes) and everything that is not a width or a
  depth: image and patch size, channels, classes, vocabulary, positions.
  """
  for cfg, what in ((small, 'source'), (large, 'target')):
    if not isinstance(cfg, (ViTConfig, GPT2Config)):
      raise ConfigError(f'growth {what} {cfg!r} is not a ViT or GPT-2 config')
  if small.family != large.family:
    raise ConfigError(f'growth: the source {small.name} is a {small.family} '
                      f'but the target {large.name} is a {large.family}')
  grow = ['depth', 'width', 'heads', 'mlp_dim']
  for field in grow:
    a, b = getattr(small, field), getattr(large, field)
    if b < a:
      raise ConfigError(f'growth: target {field}={b} is smaller than the '
                        f'source {field}={a} ({small.name} -> {large.name})')
  hd_small, hd_large = small.width // small.heads, large.width // large.heads
  if hd_small != hd_large:
    raise ConfigError(
        f'growth: target heads={large.heads} gives head size {hd_large} but '
        f'the source has head size {hd_small}; growth adds whole heads, so '
        f'set heads={large.width // hd_small}' if large.width % hd_small == 0
        else f'growth: target width={large.width} is not a multiple of the '
        f'source head size {hd_small}')
  if isinstance(small, ViTConfig):
    same = ('patch', 'image_size', 'channels', 'num_classes')
  else:
    same = ('vocab_size', 'n_positions')
    if large.tie_embeddings and not small.tie_embeddings:
      raise ConfigError(
          'growth: target tie_embeddings=true but the source has an untied '
          'LM head; grow into an untied target instead')
  for field in same:
    a, b = getattr(small, field), getattr(large, field)
    if a != b:
      raise ConfigError(f'growth: target {field}={b} differs from the source '
                        f'{field}={a}; growth changes only depth and widths')
