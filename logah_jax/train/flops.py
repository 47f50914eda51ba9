"""FLOPs of target training and GHN training, for equal-compute comparisons.

Comparing inits step for step hides the work done before step 0 (training a
GHN, pretraining a source model), so the comparison harness also reports
FLOPs. Conventions: a multiply-add is 2 FLOPs, and only matmul-like work is
counted (dense layers, convolutions, attention's two batched matmuls):
elementwise ops, softmax, LayerNorm, GELU, the loss and the optimizer update
are left out (4-7% of XLA's count of a training step for the width-64 test
targets, less for wider ones). Embedding lookups are gathers: 0 FLOPs.

Target models are counted analytically (`forward_flops`) and checked against
XLA's own count in tests/test_flops.py; a GHN's training is counted by XLA
(`ghn_training_flops`), because its decoders have no short formula.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp

from logah_jax import ghn as ghn_lib
from logah_jax.growth import ligo
from logah_jax import parallel
from logah_jax.arch.configs import GPT2Config, ViTConfig
from logah_jax.train import ghn_step
from logah_jax.validation import ConfigError, check_int


def _seq_len(arch, seq_len: int | None) -> int:
  """Tokens per example that the model sees; checked against `arch`."""
  if isinstance(arch, ViTConfig):
    if seq_len is not None and seq_len != arch.seq_len:
      raise ConfigError(f'seq_len={seq_len} for {arch.name}: a ViT always '
                        f'sees {arch.seq_len} tokens (patches + class token)')
    return arch.seq_len
  if isinstance(arch, GPT2Config):
    if seq_len is None:
      return arch.n_positions
    t = check_int(seq_len, 'seq_len')
    if t > arch.n_positions:
      raise ConfigError(f'seq_len={t} exceeds n_positions='
                        f'{arch.n_positions} of {arch.name}')
    return t
  raise ConfigError(f'FLOPs of {arch!r}: neither a ViTConfig nor a GPT2Config')


def forward_flops(arch, batch_size: int, seq_len: int | None = None) -> float:
  """Matmul FLOPs of one forward pass of `models.build(arch)` on a batch.

  Args:
    arch: a ViTConfig or GPT2Config.
    batch_size: examples in the batch.
    seq_len: GPT-2: the model's input length (the data's block_size; loader
      batches hold block_size + 1 tokens and the model reads [:, :-1]);
      default n_positions. ViT: None or arch.seq_len (patches + class token).

  Per block, with T tokens and width C: the fused q/k/v projection 2T·C·3C,
  attention scores QK^T 2T²C and weights·V 2T²C (summed over heads), the
  output projection 2T·C², the MLP 2·2T·C·mlp_dim. Causal GPT-2 attention is
  counted over the full T×T score matrix because that is what XLA computes
  (the mask is applied after the matmul). ViT adds the patch-embedding conv
  and a head on the class token only; GPT-2 adds the LM head over all T
  tokens (tied or not, it is the same matmul).
  """
  b = check_int(batch_size, 'batch_size')
  t = _seq_len(arch, seq_len)
  c = arch.width
  block = (2 * t * c * 3 * c        # fused q/k/v
           + 2 * 2 * t * t * c      # QK^T and weights @ V
           + 2 * t * c * c          # output projection
           + 2 * 2 * t * c * arch.mlp_dim)  # MLP up and down
  if isinstance(arch, ViTConfig):
    patch_in = arch.patch * arch.patch * arch.channels
    stem = 2 * arch.num_patches * patch_in * c
    head = 2 * c * arch.num_classes  # class token only
  else:
    stem = 0  # token and position embeddings are gathers
    head = 2 * t * c * arch.vocab_size
  return float(b * (stem + arch.depth * block + head))


def train_step_flops(arch, batch_size: int,
                     seq_len: int | None = None) -> float:
  """FLOPs of one training step: 3 x forward.

  The backward pass of a matmul computes two matmuls of the forward's size
  (gradient w.r.t. the input and w.r.t. the weight), hence backward = 2 x
  forward. This slightly over-counts the ViT patch embedding, whose input
  (the images) needs no gradient; the optimizer update is elementwise and
  not counted.
  """
  return 3.0 * forward_flops(arch, batch_size, seq_len)


def finetune_flops(arch, batch_size: int, num_steps: int,
                   seq_len: int | None = None) -> float:
  """FLOPs of `num_steps` fine-tuning steps of `arch` (no evaluation)."""
  steps = check_int(num_steps, 'num_steps', 0)
  return steps * train_step_flops(arch, batch_size, seq_len)


def _flops_of(analysis) -> float | None:
  """'flops' of a cost analysis: a dict, or a list of per-module dicts."""
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  values = [a['flops'] for a in analysis if a and 'flops' in a]
  return float(sum(values)) if values else None


def lowered_flops(lowered) -> float:
  """XLA's FLOPs of a `jax.stages.Lowered`, compiling only if it must.

  The lowered (unoptimised, unpartitioned) module is the global program, so
  its count is the whole step's however many devices would run it.
  """
  flops = _flops_of(lowered.cost_analysis())
  if flops is None:
    flops = _flops_of(lowered.compile().cost_analysis())
  if flops is None:
    raise RuntimeError('XLA cost analysis gave no FLOPs on this backend')
  return flops


def xla_flops(fn, *args) -> float:
  """XLA's FLOPs of `fn(*args)`, traced and lowered only (nothing runs).

  `args` may be arrays or `jax.ShapeDtypeStruct`s. XLA counts every op
  (elementwise ones included), so it is a little above `forward_flops`.
  """
  return lowered_flops(jax.jit(fn).lower(*args))


def abstract_batch(arch, batch_size: int, seq_len: int | None = None) -> dict:
  """ShapeDtypeStructs of a loader batch for `arch` (see `forward_flops`).

  ViT: {'image': (B, H, W, C) float32, 'label': (B,) int32}; GPT-2:
  {'tokens': (B, seq_len + 1) int32}.
  """
  b, t = check_int(batch_size, 'batch_size'), _seq_len(arch, seq_len)
  if isinstance(arch, ViTConfig):
    s = arch.image_size
    return {'image': jax.ShapeDtypeStruct((b, s, s, arch.channels),
                                          jnp.float32),
            'label': jax.ShapeDtypeStruct((b,), jnp.int32)}
  return {'tokens': jax.ShapeDtypeStruct((b, t + 1), jnp.int32)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def drawn_architectures(run,
                        num_steps: int | None = None) -> collections.Counter:
  """{ArchConfig: times drawn} in the first `num_steps` steps of `run`.

  The sampler is a pure function of the step, so replaying it without
  training gives exactly the architectures training sees.
  """
  n = run.num_steps if num_steps is None else check_int(num_steps,
                                                        'num_steps', 0)
  return collections.Counter(a for step in range(n)
                             for a in run.sampler.at(step))


def ghn_training_flops(run, num_steps: int | None = None) -> float:
  """FLOPs of training the GHN of `run` (a `ghn_training.GHNRun`).

  Counted by XLA on the programs that `ghn_step.GHNStep` runs, lowered on
  abstract inputs (never compiled, never executed): per step, the Graphormer
  body forward on the m padded graphs and the `finish` program (the body's
  vjp: forward again and backward, then the update), plus, for each of the
  m architectures the deterministic sampler draws at that step, its
  program: decoder, target forward and backward on the batch, and the
  regulariser. Architecture programs are lowered once per distinct
  architecture and weighted by how often the replayed sampler draws it.
  XLA counts every op, elementwise ones included. Holdout evaluation,
  checkpoints and data loading are not counted. The count is global (all
  devices of the mesh together).

  Lowering traces each program, so `compiles.trace_counts('ghn_step')` sees
  one trace per program here (none of them compiles).

  Args:
    run: from `ghn_training.build_run`.
    num_steps: the first this many steps; default `run.num_steps`.
  """
  n = run.num_steps if num_steps is None else check_int(num_steps,
                                                        'num_steps', 0)
  counts = drawn_architectures(run, n)
  if not n:
    return 0.0
  sampler, cfg = run.sampler, run.ghn_cfg
  mesh = parallel.make_mesh({parallel.DATA: 1}, jax.devices()[:1])
  stepper = ghn_step.GHNStep(
      cfg, run.family, run.tx, mesh, m=sampler.m,
      n_pad=sampler.node_bucket(cfg.cutoff), gamma=run.gamma,
      label_smoothing=run.label_smoothing)
  params = jax.eval_shape(lambda: ghn_lib.init(cfg, run.family, run.seed))
  inputs = _abstract(ghn_lib.make_inputs(cfg, run.family, sampler.at(0),
                                         stepper.n_pad))
  # pylint: disable=protected-access  (the very programs training runs)
  body = stepper._body.lower(params['body'], inputs)
  x_ND = body.out_info[0]
  seq_len = run.data.block_size if run.family == 'gpt2' else None
  archs_flops, aux = 0.0, None
  for arch, times in counts.items():
    batch = abstract_batch(arch, run.data.batch_size, seq_len)
    # unrolled: XLA counts a scanned loop's body once, not once per block
    lowered = stepper._compile_arch(arch, 0, scan=False).lower(
        params['decoder'], x_ND, batch)
    aux = lowered.out_info[2]
    archs_flops += times * lowered_flops(lowered)
  m = sampler.m
  finish = stepper._finish.lower(
      stepper.abstract_state(params), inputs, (x_ND,) * m,
      (params['decoder'],) * m, (aux,) * m)
  # pylint: enable=protected-access
  return n * (lowered_flops(body) + lowered_flops(finish)) + archs_flops


def run_seq_len(arch, data) -> int | None:
  """The model input length of a run's data (`DataSpec`): block size for text."""
  return data.block_size if isinstance(arch, GPT2Config) else None


def ligo_step_flops(small, large, batch_size: int,
                    seq_len: int | None = None, sharing: str = 'layer'
                    ) -> float:
  """One LiGO operator step: the large model's training step, plus growing
  its params and the operator's gradient (`ligo.materialise_flops`)."""
  grow = ligo.materialise_flops(small, large, sharing)
  return (train_step_flops(large, batch_size, seq_len) + grow['forward']
          + grow['backward'])
